"""ServerApp of the Flower SuperLink baseline: the Message-API FedAvg (flwr.serverapp)
with federated evaluation every round, timed like legacy_server.py. Writes the round
times and the clients' reported compute to run_config["out-path"] after every round."""
import json
import time
from itertools import pairwise
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flbench import task

app = ServerApp()


class TimedFedAvg(FedAvg):
    def __init__(self, out: str = "", **kwargs):
        super().__init__(**kwargs)
        self.rounds: dict[int, dict] = {}
        self.out, self.started = out, time.time()

    def write(self) -> None:
        """The rounds so far (rewritten after every round, so a run stopped early still
        leaves its finished rounds): a round's end is the next round's start."""
        if not self.out:
            return
        rounds = [dict(self.rounds[k]) for k in sorted(self.rounds) if "end" in self.rounds[k]]
        for this, following in pairwise(rounds):
            this["end"] = following["start"]
        tmp = Path(self.out + ".tmp")
        tmp.write_text(json.dumps({"started": self.started, "rounds": rounds}))
        tmp.rename(self.out)

    def configure_train(self, server_round, arrays, config, grid):
        self.rounds[server_round] = {"round": server_round, "start": time.time()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        self.rounds[server_round]["fit_compute_s"] = [m.content["metrics"]["compute_s"] for m in ok]
        self.rounds[server_round]["fit_failures"] = len(replies) - len(ok)
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        answer = super().aggregate_evaluate(server_round, replies)
        ok = [m for m in replies if not m.has_error()]
        record = self.rounds[server_round]
        record["eval_s"] = [m.content["metrics"]["eval_s"] for m in ok]
        record["eval_failures"] = len(replies) - len(ok)
        record["accuracy"] = float(answer["accuracy"]) if answer is not None else None
        record["end"] = time.time()
        self.write()
        return answer


@app.main()
def main(grid: Grid, context: Context) -> None:
    n = int(context.run_config["num-nodes"])
    strategy = TimedFedAvg(out=str(context.run_config["out-path"]), fraction_train=1.0, fraction_evaluate=1.0,
                           min_train_nodes=n, min_evaluate_nodes=n, min_available_nodes=n)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(task.initial_state()),
                   num_rounds=int(context.run_config["num-server-rounds"]), timeout=600,
                   train_config=ConfigRecord({}))
