"""`make demo`: the whole portal on this machine, running a real federated job.

Migrates, creates the demo user, partitions breast-cancer data over 3 sites, starts
the portal (embedded worker) and 3 node agents, launches a FedAvg job through the REST
API and prints each round. Keeps serving until Ctrl-C, or with --exit-when-done exits
0 when the job succeeded (1 with the reason if it did not).

Ctrl-C (SIGINT, also where it was inherited ignored, as `make demo &` in a script gets
it), SIGTERM and SIGHUP (unless inherited ignored, as under nohup) stop it at any
moment: every process it started (the portal, the agents, their trainers and spare
trainers, a `manage.py` step under way) is stopped, SIGTERM first and SIGKILL after a
grace (LocalStack.stop), and it exits 128 + the signal's number (130 for Ctrl-C, 143
for SIGTERM). The work runs in a thread, so the main thread only waits for it or for
a signal: a signal never lands half-way through starting a process."""
import secrets
import signal
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from flportal.localstack import LocalStack, free_port

DEMO_JOB = {
    "model": "logreg", "strategy": "fedavg", "optimizer": "sgd", "optimizer_params": {"lr": 0.1},
    "dataset": "breast_cancer", "rounds": 5, "local_epochs": 1, "batch_size": 8,
    "min_clients": 3, "clients_required": 2, "round_timeout_s": 60, "seed": 0,
}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Command(BaseCommand):
    help = "Run the demo: portal + 3 local nodes + a FedAvg job on breast-cancer data."

    def add_arguments(self, parser):
        parser.add_argument("--exit-when-done", action="store_true")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--rounds", type=int, default=DEMO_JOB["rounds"])

    def handle(self, *args, exit_when_done, port, rounds, **options):
        received = []  # the signals that arrived; the handler only records them
        for sig in STOP_SIGNALS:
            if sig != signal.SIGHUP or signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, lambda signum, frame: received.append(signum))
        stack = LocalStack(workdir=settings.DATA_DIR / "demo", port=free_port(port))
        password = secrets.token_urlsafe(9)
        outcome = {}

        def work():
            try:
                outcome["job"] = self._run(stack, password, rounds)
                if not exit_when_done:
                    self.stdout.write("The portal keeps serving; press Ctrl-C to stop.")
            except BaseException as exc:  # the main thread reports it, unless it is stopping
                outcome["error"] = exc

        worker = threading.Thread(target=work, name="demo", daemon=True)
        worker.start()
        try:
            while not received and (worker.is_alive() or not (exit_when_done or "error" in outcome)):
                time.sleep(0.2)  # a signal interrupts it; its handler runs here, in the main thread
        finally:
            why = f" ({signal.Signals(received[0]).name})" if received else ""
            self.stdout.write(f"Stopping the portal and the agents{why}...")
            stack.stop()  # the worker starts nothing from here on; a further signal is only recorded
        if received:
            self.stderr.write(f"Stopped by {signal.Signals(received[0]).name}.")
            sys.exit(128 + received[0])
        if "error" in outcome:
            raise outcome["error"]
        return self._finish(outcome["job"])

    def _run(self, stack: LocalStack, password: str, rounds: int) -> dict:
        started = time.monotonic()
        self.stdout.write("Setting up the database, the demo user and data for 3 nodes...")
        stack.setup(username="demo", password=password)
        stack.make_data(dataset="breast_cancer", nodes=3)
        agents = stack.register_nodes(3)
        stack.start()
        with stack.api() as api:
            response = api.post("/api/v1/jobs/", json={"name": "demo: FedAvg on breast cancer", "start": True,
                                                       "nodes": [a.name for a in agents],
                                                       "spec": {**DEMO_JOB, "rounds": rounds}})
            response.raise_for_status()
            job = response.json()
        self.stdout.write(self.style.SUCCESS(
            f"\nPortal: {stack.url}/jobs/{job['id']}/   (log in as demo / {password})\n"
            f"Job #{job['id']} launched on {', '.join(a.name for a in agents)} "
            f"({time.monotonic() - started:.1f} s after start)\n"))
        return stack.wait_job(job["id"], timeout=600, on_poll=self._progress_printer())

    def _progress_printer(self):
        shown = set()
        self.final_metrics = {}

        def show(job, rounds):  # each round's model's evaluation, once it is in (it rides on the next round)
            for rnd in rounds:
                if rnd["kind"] == "train" and rnd["evaluation"] and rnd["number"] not in shown:
                    shown.add(rnd["number"])
                    m = self.final_metrics = rnd["evaluation"]
                    self.stdout.write(f"round {rnd['number']}/{job['spec']['rounds']}: validation accuracy "
                                      f"{m.get('accuracy', float('nan')):.4f}  loss {m.get('loss', float('nan')):.4f}"
                                      f"  ({int(m.get('num_nodes', 0))} nodes, "
                                      f"{int(m.get('num_examples', 0))} examples)")
        return show

    def _finish(self, job: dict) -> None:
        if job["status"] == "succeeded":
            m = self.final_metrics
            self.stdout.write(self.style.SUCCESS(
                f"Job #{job['id']} succeeded: {job['status_reason']}. "
                f"Final model (round {job['final_model']['round']}, sha256 {job['final_model']['sha256'][:12]}...): "
                f"validation accuracy {m.get('accuracy', float('nan')):.4f}, loss {m.get('loss', float('nan')):.4f}"))
            return
        self.stderr.write(f"Job #{job['id']} {job['status']}: {job['status_reason']}")
        raise SystemExit(1)
