"""The local work of a Flower baseline client: the very same model, data split and
training code as an flportal trainer (``fl``, plain PyTorch without Django), so
the two stacks differ only in their framework cost. ``PYTHONPATH`` must hold the
repository root. Runs under bench/.venv only."""
import time

import numpy as np
import torch

from fl import data as fl_data
from fl import networks, training

MODEL = "logreg"
MODEL_PARAMS = {"in_features": 64, "num_classes": 10}
SEED = 0
LR, BATCH_SIZE, LOCAL_EPOCHS, VAL_FRACTION = 0.1, 32, 1, 0.2


def initial_state() -> dict[str, torch.Tensor]:
    """Round-0 weights: torch nn.Linear(64, 10) seeded like an flportal job with seed 0."""
    return networks.build_model(MODEL, MODEL_PARAMS, seed=SEED).state_dict()


class Site:
    """One site's data (the same .npz file an flportal agent serves, the same split)."""

    def __init__(self, path: str):
        X, y = fl_data.load_dataset(path)
        self.X_tr, self.y_tr, self.X_val, self.y_val = fl_data.train_val_split(
            X, y, val_fraction=VAL_FRACTION, seed=SEED)

    def train(self, state: dict, server_round: int) -> tuple[dict, int, dict]:
        """As agent.local.LocalSite.train: train one epoch, then evaluate on the
        validation split; ``compute_s`` covers both (perf_counter, in this process)."""
        model = networks.build_model(MODEL, MODEL_PARAMS, seed=SEED)
        model.load_state_dict(state)
        started = time.perf_counter()
        fit = training.train_local(model, self.X_tr, self.y_tr, epochs=LOCAL_EPOCHS, batch_size=BATCH_SIZE,
                                   optimizer="sgd", optimizer_params={"lr": LR}, seed=SEED + server_round,
                                   device="cpu")
        val = training.evaluate(model, self.X_val, self.y_val, device="cpu")
        compute_s = time.perf_counter() - started
        metrics = {"train_loss": fit["train_loss"], "val_accuracy": val["accuracy"], "compute_s": compute_s}
        return model.state_dict(), int(fit["num_examples"]), metrics

    def evaluate(self, state: dict) -> tuple[float, int, dict]:
        """As LocalSite.evaluate: loss and accuracy on the validation split; ``eval_s``
        times the model build, the weight load and the evaluation."""
        started = time.perf_counter()
        model = networks.build_model(MODEL, MODEL_PARAMS, seed=SEED)
        model.load_state_dict(state)
        result = training.evaluate(model, self.X_val, self.y_val, device="cpu")
        eval_s = time.perf_counter() - started
        return float(result["loss"]), int(result["num_examples"]), {"accuracy": result["accuracy"], "eval_s": eval_s}


def to_ndarrays(state: dict) -> list[np.ndarray]:
    return [tensor.detach().cpu().numpy() for tensor in state.values()]


def from_ndarrays(arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    names = list(initial_state().keys())
    return {name: torch.from_numpy(np.array(array, copy=True)) for name, array in zip(names, arrays)}
