"""Final validation accuracy of FedAvg, FedProx, FedAdam and FedMedian on non-IID digits
(Dirichlet α=0.3 over 3 sites), 20 rounds each, on a real local stack (portal, 3 agents,
trainers), from one run. Prints a table and writes bench/out/strategies_noniid.json.

    .venv/bin/python bench/strategies_noniid.py [--rounds 20] [--model logreg]
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flportal.localstack import LocalStack, all_pages

STRATEGIES = [("fedavg", {}), ("fedprox", {"mu": 0.01}), ("fedadam", {"eta": 0.05}), ("fedmedian", {})]


def run(rounds: int, model: str) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix="flportal-bench-"))
    stack = LocalStack(workdir=workdir, env={"FLPORTAL_DATA_DIR": str(workdir / "portal"), "DATABASE_URL": "",
                                             "REDIS_URL": "", "FLPORTAL_HEARTBEAT_INTERVAL_S": "1"})
    rows = []
    try:
        stack.setup(username="bench")
        stack.make_data(dataset="digits", nodes=3, scheme="dirichlet", alpha=0.3, seed=0)
        stack.register_nodes(3)
        stack.start()
        for strategy, params in STRATEGIES:
            rows.append(_job(stack, strategy, params, rounds, model))
            print(f"{strategy:10s} final accuracy {rows[-1]['final_accuracy']:.4f}  ({rows[-1]['seconds']:.1f} s)")
    finally:
        stack.stop()
    return rows


def _job(stack, strategy: str, params: dict, rounds: int, model: str) -> dict:
    spec = {"model": model, "dataset": "digits", "strategy": strategy, "strategy_params": params,
            "optimizer": "sgd", "optimizer_params": {"lr": 0.1}, "batch_size": 16, "rounds": rounds,
            "clients_required": 3, "round_timeout_s": 120, "seed": 0}
    started = time.monotonic()
    with stack.api() as api:
        job = api.post("/api/v1/jobs/", json={"name": strategy, "nodes": [a.name for a in stack.agents],
                                              "start": True, "spec": spec}).json()
    job = stack.wait_job(job["id"], timeout=600)
    with stack.api() as api:
        evaluated = [r["evaluation"] for r in all_pages(api, f"/api/v1/jobs/{job['id']}/rounds/")
                     if r["kind"] == "train"]
    return {"strategy": strategy, "params": params, "status": job["status"], "rounds": rounds,
            "final_accuracy": evaluated[-1]["accuracy"], "final_loss": evaluated[-1]["loss"],
            "accuracy_by_round": [e["accuracy"] for e in evaluated],
            "seconds": time.monotonic() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--model", default="logreg")
    opts = parser.parse_args()
    rows = run(opts.rounds, opts.model)
    print("\n| strategy | final validation accuracy | final loss | seconds |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['strategy']} | {row['final_accuracy']:.4f} | {row['final_loss']:.4f} | {row['seconds']:.1f} |")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "strategies_noniid.json").write_text(json.dumps(rows, indent=2))
    return 0 if all(r["status"] == "succeeded" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
