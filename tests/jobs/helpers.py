"""Helpers for driving the FL server synchronously: write a node's update file, submit
results through the services, find a job's open round, count rows."""
from pathlib import Path

import torch

from fl.serialization import load_state_dict, save_state_dict, state_dict_to_bytes
from jobs.models import JobEvent, MetricPoint, ModelVersion, Round, Update
from jobs.services import artifacts


def model_state(version: ModelVersion) -> dict[str, torch.Tensor]:
    return load_state_dict(artifacts.absolute(version.path))


def perturbed(rnd: Round, seed: int) -> dict[str, torch.Tensor]:
    """The round's model plus seeded noise (a plausible local update)."""
    gen = torch.Generator().manual_seed(seed)
    return {name: t + torch.randn(t.shape, generator=gen, dtype=t.dtype)
            for name, t in model_state(rnd.model_version).items()}


def update_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return state_dict_to_bytes(state)


def write_update(state: dict[str, torch.Tensor], directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.safetensors"
    save_state_dict(state, path)
    return path


def open_round(job, kind: str | None = None) -> Round:
    rounds = Round.objects.filter(job=job, status=Round.Status.OPEN)
    if kind:
        rounds = rounds.filter(kind=kind)
    return rounds.get()


AUTO = object()


def submit_train(rnd: Round, node, tmp_path: Path, *, seed: int, num_examples: int, metrics: dict | None = None,
                 evaluation=AUTO):
    """Submit a perturbed copy of the round's model for `node` via update_submit;
    returns (update, created, state). `evaluation` (num_examples, metrics) of the model
    the round started from; by default a plausible one when the round evaluates first."""
    from jobs.services.updates import update_submit

    if evaluation is AUTO:
        evaluation = (num_examples, {"loss": 0.5, "accuracy": 0.75}) if rnd.evaluate_first else None
    state = perturbed(rnd, seed)
    path = write_update(state, tmp_path / "uploads", f"r{rnd.pk}-{node.name}")
    update, created = update_submit(round_id=rnd.pk, node=node, upload=path, num_examples=num_examples,
                                    metrics=metrics or {}, evaluation=evaluation)
    return update, created, state


def submit_eval(rnd: Round, node, *, num_examples: int, metrics: dict):
    from jobs.services.updates import update_submit

    return update_submit(round_id=rnd.pk, node=node, upload=None, num_examples=num_examples, metrics=metrics)


def close(rnd: Round) -> Round:
    """round_close of a round that its last result moved to aggregating, as the
    worker's round_close_task does."""
    from jobs.services.flow import round_close

    rnd.refresh_from_db()
    assert rnd.status == Round.Status.AGGREGATING, f"round {rnd.number} ({rnd.kind}) is {rnd.status}"
    closed = round_close(round_id=rnd.pk)
    assert closed is not None
    return closed


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """Hand-computed example-weighted mean (float64, cast back)."""
    total = float(sum(weights))
    return {name: (sum(s[name].double() * w for s, w in zip(states, weights)) / total).to(states[0][name].dtype)
            for name in states[0]}


def row_counts() -> dict[str, int]:
    return {"updates": Update.objects.count(), "metrics": MetricPoint.objects.count(),
            "models": ModelVersion.objects.count(), "events": JobEvent.objects.count(),
            "rounds": Round.objects.count()}
