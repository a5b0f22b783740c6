"""Flower 1.41 legacy client (``flwr.client.start_client``, deprecated) for the round
overhead benchmark: one site, its .npz file. Runs under bench/.venv with PYTHONPATH
holding the repository root. Start it only once the server listens (it dies otherwise).

    python bench/flower/legacy_client.py --server 127.0.0.1:P --data site-1/digits.npz
"""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flbench import task
from flwr.client import NumPyClient, start_client


class SiteClient(NumPyClient):
    def __init__(self, site: task.Site):
        self.site = site

    def fit(self, parameters, config):
        state, num_examples, metrics = self.site.train(task.from_ndarrays(parameters), int(config.get("round", 0)))
        return task.to_ndarrays(state), num_examples, metrics

    def evaluate(self, parameters, config):
        return self.site.evaluate(task.from_ndarrays(parameters))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--data", required=True)
    opts = parser.parse_args()
    start_client(server_address=opts.server, client=SiteClient(task.Site(opts.data)).to_client(), insecure=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
