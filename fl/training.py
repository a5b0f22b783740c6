"""Optimizers, local training and evaluation: what a site runs each round."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .metrics import binary_auroc
from .params import ParamError, check_schema, validate_params


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite (learning rate too high, usually)."""


@dataclass(frozen=True)
class OptimizerEntry:
    """One registered optimizer: ``factory(params_iter, **cleaned_params)``."""

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    schema: dict = field(default_factory=dict)
    description: str = ""


OPTIMIZERS: dict[str, OptimizerEntry] = {}


def register_optimizer(
    name: str, factory: Callable[..., torch.optim.Optimizer], schema: dict, description: str = ""
) -> OptimizerEntry:
    """Add an optimizer to ``OPTIMIZERS``; ValueError for a malformed schema."""
    check_schema(schema)
    OPTIMIZERS[name] = OptimizerEntry(name, factory, schema, description)
    return OPTIMIZERS[name]


def build_optimizer(
    name: str, params_iter: Iterable[torch.nn.Parameter], params: dict | None
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params_iter`` from validated ``params``.

    Raises ParamError: field ``optimizer`` for an unknown name,
    ``optimizer_params.<name>`` for a refused parameter.
    """
    entry = OPTIMIZERS.get(name) if isinstance(name, str) else None
    if entry is None:
        known = ", ".join(sorted(OPTIMIZERS))
        raise ParamError("optimizer", f"unknown optimizer {name!r} (known: {known})")
    cleaned = validate_params(entry.schema, params, prefix="optimizer_params")
    return entry.factory(params_iter, **cleaned)


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_local(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    optimizer: str,
    optimizer_params: dict,
    seed: int,
    device: torch.device | str | None = None,
    proximal_mu: float = 0.0,
) -> dict:
    """Train ``model`` in place with cross-entropy on shuffled minibatches.

    Deterministic for a seed on a given device: batch order comes from a private
    ``torch.Generator``, and dropout draws from the global RNG seeded inside
    ``fork_rng`` (the caller's RNG state is restored). With ``proximal_mu > 0`` the loss
    gets FedProx's ``mu/2 * ||w - w_start||^2``, ``w_start`` being the weights at entry.
    ``device=None`` means ``pick_device()``; the model is moved back to CPU and to its
    previous train/eval mode before returning.

    Returns ``{"train_loss", "train_accuracy", "num_examples"}``: the mean cross-entropy
    (without the proximal term) and accuracy over the last epoch, and ``len(X)``.
    Raises ValueError for bad arguments or labels the model has no output for,
    ParamError for a refused optimizer, TrainingDiverged for a non-finite loss.
    """
    _check_training_args(X, y, epochs, batch_size, proximal_mu)
    device = torch.device(device) if device is not None else pick_device()
    was_training = model.training
    _move(model, device).train()
    try:
        with torch.random.fork_rng(devices=_cuda_indices(device)):
            _seed_dropout(seed, device)
            stats = _run_epochs(model, X, y, epochs, batch_size, optimizer,
                                optimizer_params, seed, device, proximal_mu)
    finally:
        _move(model, torch.device("cpu")).train(was_training)
    return {**stats, "num_examples": len(X)}


def _move(model: nn.Module, device: torch.device) -> nn.Module:
    """``model.to(device)`` unless it is there already: ``to`` walks every submodule and
    tensor even then (a tenth of a small model's round on the CPU, four times a round)."""
    first = next(iter(model.parameters()), None)
    if first is None or first.device != device:
        model.to(device)
    return model


def _seed_dropout(seed: int, device: torch.device) -> None:
    """Seed the global generators dropout draws from: the CPU one, and CUDA's when
    training there. (torch.manual_seed seeds every backend; on a site without CUDA, XPU
    or MTIA each of those is a lazy call that formats a stack trace: about 3 ms of a
    trainer's round, measured with yappi on bench/round_overhead.py.)"""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


def evaluate(
    model: nn.Module, X: np.ndarray, y: np.ndarray, *, batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict:
    """Mean cross-entropy and accuracy of ``model`` on ``(X, y)``, without gradients.

    Returns ``{"loss", "accuracy", "num_examples"}``, plus ``"auroc"`` for a binary
    task (a model with 2 outputs) when ``y`` holds both classes: the exact rank-based
    AUROC (``metrics.binary_auroc``, ties counted one half) of the score
    ``logit_1 - logit_0``, which orders examples as the softmax probability of class 1
    does without its float32 saturation into ties. ``device=None`` means
    ``pick_device()``; the model goes back to CPU and its previous mode afterwards.
    Raises ValueError for empty or mismatched data, or labels without an output.
    """
    _check_training_args(X, y, 1, batch_size, 0.0)
    device = torch.device(device) if device is not None else pick_device()
    was_training = model.training
    _move(model, device).eval()
    try:
        with torch.no_grad():
            total_loss, correct, scores = _evaluate_batches(model, X, y, batch_size, device)
    finally:
        _move(model, torch.device("cpu")).train(was_training)
    n = len(X)
    result = {"loss": total_loss / n, "accuracy": correct / n, "num_examples": n}
    auroc = binary_auroc(scores, np.asarray(y)) if scores is not None else None
    if auroc is not None:
        result["auroc"] = auroc
    return result


def _evaluate_batches(model, X, y, batch_size: int, device) -> tuple[float, int, np.ndarray | None]:
    """Summed cross-entropy, number of correct predictions, and for 2-output models
    the float64 scores ``logit_1 - logit_0`` (else None)."""
    features, labels = _to_tensors(X, y, device)
    first = model(features[:1])
    _check_outputs(first, int(labels.max()))
    binary = first.shape[1] == 2
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    scores = []
    for start in range(0, len(labels), batch_size):
        logits = model(features[start:start + batch_size])
        batch_labels = labels[start:start + batch_size]
        total_loss += F.cross_entropy(logits, batch_labels, reduction="sum")
        correct += (logits.argmax(dim=1) == batch_labels).sum()
        if binary:
            scores.append(logits[:, 1].double() - logits[:, 0].double())
    score_array = torch.cat(scores).cpu().numpy() if binary else None
    return total_loss.item(), int(correct.item()), score_array


def _run_epochs(model, X, y, epochs, batch_size, optimizer, optimizer_params,
                seed, device, proximal_mu) -> dict:
    features, labels = _to_tensors(X, y, device)
    opt = build_optimizer(optimizer, model.parameters(), optimizer_params)
    start_weights = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    shuffler = torch.Generator().manual_seed(seed)
    n, highest_label = len(labels), int(labels.max())
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=shuffler).to(device)
        # Sums stay on the device: one host sync per epoch, not per batch.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            logits = model(features[batch])
            if epoch == 1 and start == 0:
                _check_outputs(logits, highest_label)
            loss = F.cross_entropy(logits, labels[batch])
            opt.zero_grad(set_to_none=True)
            (loss + _proximal_term(model, start_weights, proximal_mu)).backward()
            opt.step()
            loss_sum += loss.detach() * len(batch)
            correct += (logits.argmax(dim=1) == labels[batch]).sum()
        if not math.isfinite(loss_sum.item()):
            raise TrainingDiverged(f"training loss became {loss_sum.item()} in epoch {epoch}")
    return {"train_loss": loss_sum.item() / n, "train_accuracy": correct.item() / n}


def _proximal_term(model: nn.Module, start_weights, mu: float) -> torch.Tensor | float:
    """FedProx (Li et al., 2020): mu/2 * ||w - w_start||^2 over all parameters."""
    if start_weights is None:
        return 0.0
    squared = sum((p - p0).pow(2).sum() for p, p0 in zip(model.parameters(), start_weights))
    return 0.5 * mu * squared


def _check_training_args(X, y, epochs: int, batch_size: int, proximal_mu: float) -> None:
    if len(X) == 0 or len(X) != len(y):
        raise ValueError(f"need matching, non-empty X and y, got {len(X)} and {len(y)} rows")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not (math.isfinite(proximal_mu) and proximal_mu >= 0):
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu!r}")


def _check_outputs(logits: torch.Tensor, highest: int) -> None:
    """A label without an output makes cross_entropy fail obscurely (a device-side
    assert on CUDA), so say it plainly."""
    if logits.ndim != 2 or highest >= logits.shape[1]:
        raise ValueError(
            f"labels go up to {highest} but the model gives outputs of shape "
            f"{tuple(logits.shape[1:])} per example"
        )


def _to_tensors(X, y, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.as_tensor(np.asarray(X), dtype=torch.float32).to(device)
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long).to(device)
    return features, labels


def _cuda_indices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


_LR = {"type": "float", "min": 0.0, "min_exclusive": True, "max": 10.0, "help": "learning rate"}
_BETA = {"type": "float", "min": 0.0, "max": 1.0, "max_exclusive": True}
_DECAY = {"type": "float", "min": 0.0, "help": "weight decay (L2 penalty)"}


def _sgd(params_iter, *, lr, momentum, weight_decay, nesterov):
    if nesterov and momentum == 0:
        raise ParamError("optimizer_params.nesterov", "requires momentum > 0")
    return torch.optim.SGD(params_iter, lr=lr, momentum=momentum,
                           weight_decay=weight_decay, nesterov=nesterov)


def _adam(params_iter, *, lr, beta1, beta2, weight_decay):
    return torch.optim.Adam(params_iter, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)


def _adamw(params_iter, *, lr, beta1, beta2, weight_decay):
    return torch.optim.AdamW(params_iter, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)


register_optimizer("sgd", _sgd, {
    "lr": {**_LR, "default": 0.1},
    "momentum": {**_BETA, "default": 0.0, "help": "momentum factor"},
    "weight_decay": {**_DECAY, "default": 0.0},
    "nesterov": {"type": "bool", "default": False, "help": "Nesterov momentum"},
}, "Stochastic gradient descent")
register_optimizer("adam", _adam, {
    "lr": {**_LR, "default": 0.001},
    "beta1": {**_BETA, "default": 0.9, "help": "first-moment decay"},
    "beta2": {**_BETA, "default": 0.999, "help": "second-moment decay"},
    "weight_decay": {**_DECAY, "default": 0.0},
}, "Adam (Kingma & Ba, 2015)")
register_optimizer("adamw", _adamw, {
    "lr": {**_LR, "default": 0.001},
    "beta1": {**_BETA, "default": 0.9, "help": "first-moment decay"},
    "beta2": {**_BETA, "default": 0.999, "help": "second-moment decay"},
    "weight_decay": {**_DECAY, "default": 0.01},
}, "AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019)")
