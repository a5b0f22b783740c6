from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fl.data import write_partitions


class Command(BaseCommand):
    help = "Partition a dataset that scikit-learn ships across N node data directories."
    requires_system_checks = []  # fast: the demo and tests call these often

    def add_arguments(self, parser):
        parser.add_argument("--dataset", default="breast_cancer", choices=["breast_cancer", "digits"])
        parser.add_argument("--nodes", type=int, default=3)
        parser.add_argument("--out", default="var/demo/data")
        parser.add_argument("--scheme", default="iid", choices=["iid", "dirichlet"])
        parser.add_argument("--alpha", type=float, default=0.5)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, dataset, nodes, out, scheme, alpha, seed, **options):
        if nodes < 1:
            raise CommandError("--nodes must be at least 1")
        paths = write_partitions(dataset, nodes, Path(out), scheme=scheme, alpha=alpha, seed=seed)
        for path in paths:
            self.stdout.write(str(path))
