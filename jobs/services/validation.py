"""Validation of a job's specification against the catalog, at creation time."""
import math

import torch
from django.conf import settings

from core.errors import ValidationFailed
from fl import networks, strategies, training
from fl.params import ParamError, validate_params

# name: (type, default, min, max); None = no bound. Validated before any model code runs.
POLICY_FIELDS = {
    "rounds": (int, 5, 1, 10_000),
    "local_epochs": (int, 1, 1, 1_000),
    "batch_size": (int, 32, 1, 100_000),
    "min_clients": (int, 1, 1, None),
    "clients_per_round": (int, None, 1, None),
    "clients_required": (int, 1, 1, None),
    "round_timeout_s": (float, 300.0, 1.0, 7 * 24 * 3600.0),
    "buffer_size": (int, -1, -1, None),
    "evaluate_every": (int, 1, 1, 10_000),
    "seed": (int, 0, 0, 2**31 - 1),
    "val_fraction": (float, 0.2, 0.01, 0.9),
}


def clean_job_spec(spec: dict, nodes: list) -> dict:
    """Return the Job fields for `spec` (defaults filled), or raise ValidationFailed
    whose message and `field` name the first bad field."""
    try:
        return _clean(dict(spec), nodes)
    except ParamError as exc:
        raise ValidationFailed(str(exc), field=exc.field) from exc


def _clean(spec: dict, nodes: list) -> dict:
    known = set(POLICY_FIELDS) | {"model", "model_params", "strategy", "strategy_params",
                                  "optimizer", "optimizer_params", "dataset", "cross_site_validation"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ParamError(unknown[0], "unknown field")
    out = {name: _number(name, spec.get(name), *bounds) for name, bounds in POLICY_FIELDS.items()}
    _check_policy(out, len(nodes))
    out["cross_site_validation"] = spec.get("cross_site_validation", False)
    if not isinstance(out["cross_site_validation"], bool):
        raise ParamError("cross_site_validation", "must be true or false")
    out["dataset"] = _dataset(spec.get("dataset"), nodes)
    out["model"] = _choice("model", spec.get("model"), networks.MODELS)
    schema = networks.MODELS[out["model"]].schema
    model_params = spec.get("model_params") or {}
    if not isinstance(model_params, dict):
        raise ParamError("model_params", "must be an object")
    model_params = _infer_shapes(dict(model_params), schema, out["dataset"], nodes)
    out["model_params"] = validate_params(schema, model_params, prefix="model_params")
    out["strategy"] = _choice("strategy", spec.get("strategy", "fedavg"), strategies.STRATEGIES)
    out["strategy_params"] = validate_params(strategies.get_strategy(out["strategy"]).schema,
                                             spec.get("strategy_params"), prefix="strategy_params")
    _check_round_size(out)
    _check_model_builds(out)
    out["optimizer"] = _choice("optimizer", spec.get("optimizer", "sgd"), training.OPTIMIZERS)
    out["optimizer_params"] = validate_params(training.OPTIMIZERS[out["optimizer"]].schema,
                                              spec.get("optimizer_params"), prefix="optimizer_params")
    return out


def _number(name, value, kind, default, low, high):
    if value is None:
        return default
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value))
            or (kind is int and isinstance(value, float) and not value.is_integer())):
        raise ParamError(name, f"must be {'an integer' if kind is int else 'a finite number'}")
    value = kind(value) if kind is int else float(value) if abs(value) < 1e300 else math.inf
    if (low is not None and value < low) or (high is not None and value > high):
        raise ParamError(name, f"must be between {low} and {high if high is not None else '∞'}")
    return value


def _check_policy(out: dict, n_nodes: int) -> None:
    if out["min_clients"] > n_nodes:
        raise ParamError("min_clients", f"is {out['min_clients']} but only {n_nodes} nodes are chosen")
    per_round = out["clients_per_round"] or n_nodes
    if per_round > n_nodes:
        raise ParamError("clients_per_round", f"is {per_round} but only {n_nodes} nodes are chosen")
    if out["clients_required"] > per_round:
        raise ParamError("clients_required",
                         f"is {out['clients_required']} but only {per_round} nodes take part in a round")
    if out["buffer_size"] == 0 or out["buffer_size"] > per_round:
        raise ParamError("buffer_size", f"must be -1 (all) or between 1 and {per_round}")
    if out["buffer_size"] != -1 and out["buffer_size"] < out["clients_required"]:
        raise ParamError("buffer_size", "must be at least clients_required")


def _check_round_size(out: dict) -> None:
    needed = strategies.get_strategy(out["strategy"]).min_updates(out["strategy_params"])
    if out["clients_required"] < needed:
        raise ParamError("clients_required", f"{out['strategy']} with these strategy_params needs at least "
                                             f"{needed} updates per round")


def _check_model_builds(out: dict) -> None:
    """Build the model once now, on the meta device (shapes only, no memory), so a model
    that does not fit its params (a CNN whose image size does not match the features)
    or whose updates could never be uploaded is refused here, not at start."""
    try:
        with torch.device("meta"):
            model = networks.build_model(out["model"], out["model_params"], seed=out["seed"])
    except ParamError:
        raise
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ParamError("model_params", f"the model cannot be built: {exc}") from exc
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size > settings.FLPORTAL_MAX_UPDATE_BYTES:
        raise ParamError("model_params", f"the model's weights take {size} bytes, more than the "
                                         f"{settings.FLPORTAL_MAX_UPDATE_BYTES} an update may have")


def _choice(field: str, value, registry) -> str:
    if not isinstance(value, str) or value not in registry:
        raise ParamError(field, f"unknown {field} {value!r}; choose one of {', '.join(sorted(registry))}")
    return value


def _dataset(value, nodes: list) -> str:
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or value.startswith("."):
        raise ParamError("dataset", "required: the name of a dataset the nodes offer")
    lacking = [n.name for n in nodes if n.datasets and n.dataset(value) is None]
    if lacking:
        raise ParamError("dataset", f"{value!r} is not offered by {', '.join(lacking)}")
    return value


def _infer_shapes(params: dict, schema: dict, dataset: str, nodes: list) -> dict:
    """Fill in_features/num_classes (where the model takes them) from what the nodes
    report for the dataset."""
    described = [d for d in (n.dataset(dataset) for n in nodes) if d]
    if not described or not {"in_features", "num_classes"} <= set(schema):
        return params
    if len({d["n_features"] for d in described}) > 1:
        raise ParamError("dataset", f"{dataset!r} has different feature counts on different nodes")
    params.setdefault("in_features", described[0]["n_features"])
    params.setdefault("num_classes", max(2, max(d["num_classes"] for d in described)))
    return params
