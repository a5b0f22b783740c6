"""Flower 1.41 legacy server (``flwr.server.start_server``, deprecated) for the round
overhead benchmark. Runs under bench/.venv with PYTHONPATH holding the repository root.

    python bench/flower/legacy_server.py --port P --clients 10 --rounds 10 --out times.json

FedAvg over all clients every round with federated evaluation every round, initial
weights those of the flportal job. Writes per-round wall times (configure_fit of a round
to configure_fit of the next; the last round to the end of aggregate_evaluate) and each
client's reported fit/evaluate compute to ``--out``.
"""
import argparse
import json
import os
import sys
import time
from itertools import pairwise
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flbench import task
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerConfig, start_server
from flwr.server.strategy import FedAvg


class TimedFedAvg(FedAvg):
    """FedAvg that records when each round starts and ends and what clients report."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rounds: dict[int, dict] = {}

    def configure_fit(self, server_round, parameters, client_manager):
        self.rounds[server_round] = {"round": server_round, "start": time.time(), "fit_compute_s": [],
                                     "eval_s": []}
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        self.rounds[server_round]["fit_compute_s"] = [r.metrics["compute_s"] for _, r in results]
        self.rounds[server_round]["fit_failures"] = len(failures)
        return super().aggregate_fit(server_round, results, failures)

    def aggregate_evaluate(self, server_round, results, failures):
        answer = super().aggregate_evaluate(server_round, results, failures)
        record = self.rounds[server_round]
        record["eval_s"] = [r.metrics["eval_s"] for _, r in results]
        record["eval_failures"] = len(failures)
        record["accuracy"] = (sum(r.metrics["accuracy"] * r.num_examples for _, r in results)
                              / max(1, sum(r.num_examples for _, r in results)))
        record["end"] = time.time()
        return answer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    n = opts.clients
    strategy = TimedFedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=n, min_evaluate_clients=n,
                           min_available_clients=n, on_fit_config_fn=lambda r: {"round": r},
                           initial_parameters=ndarrays_to_parameters(task.to_ndarrays(task.initial_state())))
    started = time.time()
    start_server(server_address=f"127.0.0.1:{opts.port}", config=ServerConfig(num_rounds=opts.rounds),
                 strategy=strategy)
    rounds = [strategy.rounds[k] for k in sorted(strategy.rounds)]
    for this, following in pairwise(rounds):
        this["end"] = following["start"]  # the round period: everything until the next round starts
    Path(opts.out).write_text(json.dumps({"started": started, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
