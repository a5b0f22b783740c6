"""Local work of a trainer: train and evaluate a downloaded model on the site's own data.

Uses the FL core (``fl``: plain PyTorch, no Django). The data never leaves this
module except as weights, example counts and metrics.
"""

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from agent.sitedata import SiteError, find_dataset, is_safe_name
from fl import data as fl_data
from fl import networks, serialization, training
from fl.params import parse_model_paths

log = logging.getLogger("flportal.trainer")


@dataclass(frozen=True)
class TrainResult:
    weights: bytes
    num_examples: int
    metrics: dict[str, float]


def dataset_path(data_dir: Path, name: Any) -> Path:
    """``data_dir/<name>.npz`` or ``.csv``, whichever exists; SiteError otherwise."""
    if not is_safe_name(name):
        raise SiteError(f"unsafe or missing dataset name {name!r}")
    path = find_dataset(data_dir, name)
    if path is None:
        raise SiteError(f"dataset {name!r} not found in {data_dir} (.npz or .csv)")
    return path


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the finite numeric values, as floats (NaN/Inf are not valid JSON numbers)."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class LocalSite:
    """The site's data for one job, loaded once and split once, plus the device to use.

    ``dataset`` (from the agent) names the local dataset; when None, the job config's
    ``dataset`` is used. Raises SiteError for anything the job cannot run with here.
    """

    def __init__(self, data_dir: Path, dataset: str | None = None, device: Any = None):
        self.data_dir = Path(data_dir)
        self.dataset = dataset
        self.device = device if device is not None else training.pick_device()
        self._arrays: dict[str, tuple] = {}
        self._splits: dict[tuple, tuple] = {}
        self._models: dict[str, nn.Module] = {}  # the last architecture built (a trainer runs one job)
        register_user_models()

    def split(self, config: dict) -> tuple:
        """(X_train, y_train, X_val, y_val) for the job config, cached."""
        name = self.dataset or config.get("dataset")
        val_fraction = float(config.get("val_fraction", 0.2))
        seed = int(config.get("seed", 0))
        key = (name, val_fraction, seed)
        if key not in self._splits:
            X, y = self._load(name)
            try:
                self._splits[key] = fl_data.train_val_split(X, y, val_fraction=val_fraction, seed=seed)
            except ValueError as exc:
                raise SiteError(f"cannot split dataset {name!r}: {exc}") from exc
        return self._splits[key]

    def _load(self, name: Any) -> tuple:
        if name not in self._arrays:
            path = dataset_path(self.data_dir, name)
            try:
                self._arrays[name] = fl_data.load_dataset(path)
            except ValueError as exc:
                raise SiteError(str(exc)) from exc
            log.info("loaded dataset %s: %d examples", path, len(self._arrays[name][1]))
        return self._arrays[name]

    def model(self, config: dict, weights: bytes) -> nn.Module:
        """The job's model with the downloaded weights loaded (strictly). The module is
        built once per architecture and reused: every round loads all of its weights and
        buffers, and training makes a new optimizer."""
        key = json.dumps([config.get("model"), config.get("model_params") or {}, config.get("seed", 0)], sort_keys=True)
        try:
            if key not in self._models:
                self._models = {key: networks.build_model(config["model"], config.get("model_params") or {},
                                                          seed=int(config.get("seed", 0)))}
            model = self._models[key]
            model.load_state_dict(serialization.load_state_dict(weights))
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise SiteError(f"cannot build the job's model from the downloaded weights: {exc}") from exc
        return model

    def train(self, task: dict, weights: bytes) -> TrainResult:
        """Train one round as the task's config says; return new weights and metrics.

        The seed is ``config.seed + round`` so that rounds shuffle differently. Metrics:
        train_loss, train_accuracy, val_loss, val_accuracy, val_auroc (binary tasks),
        compute_s, on_cuda (1.0 when trained on a GPU) (finite only).
        Raises SiteError when the config or the data make training impossible.
        """
        config = task["config"]
        X_tr, y_tr, X_val, y_val = self.split(config)
        model = self.model(config, weights)
        started = time.perf_counter()
        fit = _guarded("training", lambda: training.train_local(
            model, X_tr, y_tr,
            epochs=int(config.get("local_epochs", 1)), batch_size=int(config.get("batch_size", 32)),
            optimizer=config.get("optimizer", "sgd"), optimizer_params=config.get("optimizer_params") or {},
            seed=int(config.get("seed", 0)) + int(task.get("round", 0)),
            device=self.device, proximal_mu=float(config.get("proximal_mu") or 0.0)))
        metrics = {"train_loss": fit["train_loss"], "train_accuracy": fit["train_accuracy"]}
        if len(y_val):
            val = _guarded("evaluation", lambda: training.evaluate(model, X_val, y_val, device=self.device))
            metrics.update({f"val_{name}": val[name] for name in ("loss", "accuracy", "auroc") if name in val})
        metrics["compute_s"] = time.perf_counter() - started
        metrics["on_cuda"] = 1.0 if str(self.device).startswith("cuda") else 0.0  # which device trained
        payload = serialization.state_dict_to_bytes(model.state_dict())
        return TrainResult(payload, int(fit["num_examples"]), finite_metrics(metrics))

    def evaluate(self, task: dict, weights: bytes) -> tuple[int, dict[str, float]]:
        """(num_examples, {"loss", "accuracy"[, "auroc"], "eval_s"}) of the downloaded
        model on the val split; eval_s: seconds of local work (model build, weight load,
        evaluation).

        With an empty validation split (val_fraction 0) the train split is used, so the
        portal still gets a number; a warning says so. Raises SiteError like ``train``.
        """
        config = task["config"]
        X_tr, y_tr, X_val, y_val = self.split(config)
        if not len(y_val):
            log.warning("empty validation split; evaluating on the training split")
            X_val, y_val = X_tr, y_tr
        started = time.perf_counter()
        model = self.model(config, weights)
        result = _guarded("evaluation", lambda: training.evaluate(model, X_val, y_val, device=self.device))
        metrics = {name: result[name] for name in ("loss", "accuracy", "auroc") if name in result}
        metrics["eval_s"] = time.perf_counter() - started
        return int(result["num_examples"]), finite_metrics(metrics)


def register_user_models() -> None:
    """The user models the portal knows (FLPORTAL_MODELS, README) must be known here
    too: the same environment variable, the same factories importable at the site."""
    try:
        networks.register_from_settings(parse_model_paths(os.environ.get("FLPORTAL_MODELS")))
    except ValueError as exc:
        raise SiteError(f"FLPORTAL_MODELS: {exc}") from exc


def _guarded(what: str, work: Callable[[], dict]) -> dict:
    """Run ``work``; turn the FL core's refusals (bad params or labels, a diverged loss)
    into SiteError so the trainer exits with the reason instead of a traceback."""
    try:
        return work()
    except (ValueError, RuntimeError) as exc:
        raise SiteError(f"{what} failed: {exc}") from exc
