"""Round overhead: what a federated round costs beyond the slowest site's own work,
flportal's production stack side by side with Flower 1.41 (legacy and SuperLink paths),
all in one run on this machine, on loopback.

    .venv/bin/python bench/round_overhead.py [--nodes 10] [--rounds 10] [--superlink-rounds 2]
        [--superlink-budget 100] [--systems flportal flower_legacy flower_superlink] [--keep]

Systems: flportal's production stack through LocalStack (PostgreSQL, Redis, separate
Celery worker and beat, uvicorn, one agent per site; the job through the REST API);
Flower 1.41's legacy path (bench/flower/legacy_server.py and legacy_client.py:
`start_server` / `start_client`, clients started once the server's port listens); its
supported path (bench/flower/pyproject.toml + flbench/: `flower-superlink` on one
HTTP port with its default in-memory state, one `flower-supernode` per site in the
default subprocess isolation, the app submitted with `flwr run`). Flower code runs
under bench/.venv only. The SuperLink path costs about a minute per round here, so it
runs 2 rounds within a time budget (the rounds finished by then are used, and the
summary says so).

Workload (the same for every system): logistic regression (torch nn.Linear(64, 10)) on
scikit-learn's digits split IID over the sites (`make_demo_data --dataset digits`, the
same .npz files for everyone), the same 80/20 train/validation split and training code
(fl), SGD lr 0.1, batch 32, 1 local epoch, FedAvg over all sites, federated
evaluation after every round, one process per site, OMP_NUM_THREADS=1.

How a round is counted. A *full round* n is one training round plus one federated
evaluation, and a window of wall time holding exactly that work. Flower: from
`configure_fit` of round n to that of round n+1 (the last: to the end of
`aggregate_evaluate`), holding fit(n) and evaluate(n). flportal evaluates a model on the
way into the next round (docs/PROTOCOL.md: a train round's nodes evaluate the model they
receive, then train), so its window is from the opening of train round n to that of
train round n+1, holding evaluate(n-1) and fit(n); the last window runs to the close of
the last model's evaluate round, so it holds one evaluation more.
    overhead(n) = wall(n) - max over sites of fit compute(n) - max over sites of eval compute in the window
Both are what each site reports, perf_counter in the training process, the same code
everywhere: `compute_s` (local training plus the validation pass) and `eval_s` (model
build, weight load, evaluation). Round 1 holds one-time costs (flportal: trainer
processes start after round 1 opens; Flower: clients connect, torch's first optimizer
step imports torch._dynamo) and no evaluation for flportal, so the statistics are over
rounds 2..N. For flportal it also reports where a round's time goes (portal timestamps
and trainer log lines) and the CPU each kind of process used per round (/proc).
Sites heartbeat every 5 s (the product's default).

Prints a table and writes bench/out/round_overhead.json.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_PYTHON, ROOT, summary, table, write_result
from simnodes import tree_cpu_seconds
from stacklogs import first, free_redis_db, iso_time, sweep, trainer_logs

from flportal.localstack import LocalStack, all_pages, child_pids, drop_database, free_port, production_env

REDIS_DBS = [10, 11, 15, 8, 7, 6, 5]  # free_redis_db() takes the first that nobody uses (bench/scale.py: 13, queries: 14,
# live_latency: 12, tests/e2e: 9)
FLOWER_DIR = ROOT / "bench" / "flower"
TARGET_MS, TARGET_RATIO = 50.0, 0.5
PORTAL_PROCESSES = os.cpu_count() or 1  # `serve --processes`, one per core, as README's production section says
SYSTEMS = ["flportal", "flower_legacy", "flower_superlink"]


# ---------------------------------------------------------------- flportal

def make_data(workdir: Path, nodes: int) -> list[Path]:
    """The sites' .npz files, shared by every system: `make_demo_data --dataset digits`."""
    subprocess.run([sys.executable, "manage.py", "make_demo_data", "--dataset", "digits", "--nodes", str(nodes),
                    "--out", str(workdir / "data")], cwd=ROOT, check=True, capture_output=True, timeout=120,
                   env={**os.environ, "DATABASE_URL": "", "REDIS_URL": "", "FLPORTAL_DATA_DIR": str(workdir / "portal")})
    return [workdir / "data" / f"site-{k}" / "digits.npz" for k in range(1, nodes + 1)]


def spec(rounds: int, nodes: int) -> dict:
    return {"model": "logreg", "dataset": "digits", "strategy": "fedavg", "optimizer": "sgd",
            "optimizer_params": {"lr": 0.1}, "batch_size": 32, "local_epochs": 1, "rounds": rounds,
            "evaluate_every": 1, "clients_required": nodes, "round_timeout_s": 120, "seed": 0}


def register_nodes(stack: LocalStack, count: int) -> None:
    """LocalStack.register_nodes, the `node_register` commands run two at a time (each
    is a Django start-up: seconds on this machine)."""
    from concurrent.futures import ThreadPoolExecutor

    from flportal.localstack import Agent

    ports = [free_port() for _ in range(count)]

    def register(k: int) -> Agent:
        creds = json.loads(stack.manage("node_register", f"site-{k}", "--agent-url", f"http://127.0.0.1:{ports[k - 1]}",
                                        "--json").splitlines()[-1])
        return Agent(f"site-{k}", ports[k - 1], stack.workdir / "data" / f"site-{k}", creds["token"], creds["agent_key"])

    with ThreadPoolExecutor(2) as pool:
        stack.agents.extend(pool.map(register, range(1, count + 1)))


def run_flportal(workdir: Path, nodes: int, rounds: int) -> dict:
    """A real production stack (PostgreSQL, Redis, separate Celery worker and beat,
    uvicorn, one agent per site); one job through the REST API; the rounds from it."""
    database = f"flbench_overhead_{os.getpid()}"
    stack, env = None, {}
    try:
        env = production_env(database, redis_db=free_redis_db(REDIS_DBS))
        stack = LocalStack(workdir=workdir, env={**env, "FLPORTAL_DATA_DIR": str(workdir / "portal")},
                           heartbeat_interval=5.0, portal_processes=PORTAL_PROCESSES)
        stack.setup(username="bench")
        register_nodes(stack, nodes)  # their data: make_data() wrote it to <workdir>/data
        stack.start(celery=True)
        with stack.api() as api:
            answer = api.post("/api/v1/jobs/", json={"name": "round overhead", "start": True, "spec": spec(rounds, nodes),
                                                     "nodes": [a.name for a in stack.agents]})
            answer.raise_for_status()
            job_id = answer.json()["id"]
        job, cpu = wait_job_with_cpu(stack, workdir, job_id, timeout=60 + 15 * rounds)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job['status_reason']}")
        with stack.api() as api:
            rounds_api = all_pages(api, f"/api/v1/jobs/{job_id}/rounds/", {"limit": 100})
            compute = all_pages(api, f"/api/v1/jobs/{job_id}/metrics/",
                                {"phase": "fit", "name": "compute_s", "limit": 1000})
            evals = all_pages(api, f"/api/v1/jobs/{job_id}/metrics/", {"phase": "eval", "name": "eval_s", "limit": 1000})
        result = flportal_rounds(rounds_api, compute, evals, trainer_logs(workdir, job_id), rounds)
        result["cpu_s_per_round"] = {k: v / (rounds - 1) for k, v in cpu.items()} if rounds > 1 else {}
        return result
    finally:
        if stack is not None:
            stack.stop()
        sweep("FLPORTAL_DATA_DIR", str(workdir / "portal"))
        release(database, env)


def release(database: str, env: dict) -> None:
    """Drop the benchmark's database and empty its Redis db (free for the next run)."""
    try:
        drop_database(database)
    except Exception as exc:
        print(f"dropping database {database}: {exc}", file=sys.stderr)
    if env.get("REDIS_URL"):
        import redis

        redis.Redis.from_url(env["REDIS_URL"], socket_connect_timeout=5).flushdb()


def _cpu_s(pid: int) -> float:
    """utime + stime of a live process, seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _service_pid(needle: str) -> int | None:
    """The pid of this machine's service whose command line holds `needle` (the
    PostgreSQL postmaster, Redis), the oldest if several."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle.encode() in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                found.append(int(entry.name))
        except OSError:
            pass
    return min(found) if found else None


def _trainer_pids(workdir: Path) -> list[int]:
    marker = f"FLPORTAL_DATA_DIR={workdir / 'portal'}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and b"agent.trainer" in (entry / "cmdline").read_bytes()
                    and marker in (entry / "environ").read_bytes().split(b"\0")):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def wait_job_with_cpu(stack: LocalStack, workdir: Path, job_id: int, timeout: float) -> tuple[dict, dict]:
    """Poll the job (as LocalStack.wait_job does: its detail every 0.5 s, no extra
    requests) until it ends; return it and the CPU seconds each kind of process used
    from the opening of round 2 to the end (round 1 holds the trainers' start)."""
    fixed = {"portal": [stack.portal.pid] + child_pids(stack.portal.pid), "celery worker": [stack.processes[0].pid],
             "agents": [a.process.pid for a in stack.agents]}
    trees = {"PostgreSQL (every backend)": _service_pid("postgres -D"), "Redis": _service_pid("redis-server")}
    trainers: dict[int, list[float]] = {}
    mark = None
    end = time.monotonic() + timeout
    with stack.api() as api:
        while time.monotonic() < end:
            job = api.get(f"/api/v1/jobs/{job_id}/").json()
            # the job's trainers are all running by round 2; a process that starts later is
            # an agent's new warm spare (started once its run ended), not the job's work
            for pid in _trainer_pids(workdir) if mark is None else list(trainers):
                seen = trainers.setdefault(pid, [_cpu_s(pid)] * 2)
                seen[1] = max(seen[1], _cpu_s(pid))  # 0 once the process is gone: keep the last reading
            if mark is None and (job.get("current_round") or 0) >= 2:
                mark = {k: sum(_cpu_s(p) for p in pids) for k, pids in fixed.items()}
                mark.update({k: tree_cpu_seconds(pid) for k, pid in trees.items() if pid})
                for values in trainers.values():
                    values[0] = values[1]
            if job["status"] in ("succeeded", "failed", "cancelled"):
                cpu = {k: sum(_cpu_s(p) for p in pids) - mark[k] for k, pids in fixed.items()} if mark else {}
                if mark:
                    cpu.update({k: tree_cpu_seconds(pid) - mark[k] for k, pid in trees.items() if pid})
                if mark:
                    cpu["trainers (all sites)"] = sum(v[1] - v[0] for v in trainers.values())
                return job, cpu
            stack.check_alive()
            time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not end within {timeout} s")


def flportal_rounds(rounds_api: list[dict], compute: list[dict], evals: list[dict], logs: dict, n_rounds: int) -> dict:
    """Per full round: wall, slowest fit compute, slowest evaluation(s) in its window,
    and where the rest of the time went (portal timestamps and trainer log lines)."""
    by = {(r["kind"], r["number"]): r for r in rounds_api}
    fit, evaluated = _per_round(compute), _per_round(evals)  # eval points carry the evaluated version
    out = []
    for n in range(1, n_rounds + 1):
        train = by[("train", n)]
        start = iso_time(train["opened_at"])
        last = ("train", n + 1) not in by
        end = iso_time(by[("evaluate", n)]["closed_at"] if last else by[("train", n + 1)]["opened_at"])
        windows_evals = [n - 1] + ([n] if last else [])  # folded into round n; the last model's own round
        row = {"round": n, "wall_s": end - start, "fit_compute_s": max(fit[n]), "n_fit": len(fit[n]),
               "eval_s": sum(max(evaluated[k]) for k in windows_evals if k in evaluated)}
        row.update(_phase("train", train, logs, n, r"trained on"))
        if last:
            row.update(_phase("eval", by[("evaluate", n)], logs, n, r"evaluated on"))
        out.append(row)
    return {"rounds": out}


def _per_round(points: list[dict]) -> dict[int, list[float]]:
    """{round: [value per node]} of metric points (aggregates left out)."""
    out: dict[int, list[float]] = {}
    for point in points:
        if point["node"] is not None:
            out.setdefault(point["round"], []).append(point["value"])
    return out


def _phase(prefix: str, rnd: dict, logs: dict, n: int, done: str) -> dict:
    """Breakdown of one portal round, from its opening to its closing, slowest site: its
    task's arrival (trainer log), its local work (log lines), its result's way to the
    portal (the log line after the work to the update's `received_at`: upload, checks,
    persisted), then the portal's own steps."""
    opened, aggregating, closed = (iso_time(rnd[k]) for k in ("opened_at", "aggregating_at", "closed_at"))
    action = "train" if prefix == "train" else "evaluate"
    received = {u["node"]: iso_time(u["received_at"]) for u in rnd["updates"]}
    got, worked, submitted = [], [], []
    for site, lines in logs.items():
        t_task = first(lines, rf"^round {n}: {action} with model version")
        t_done = first([line for line in lines if t_task is not None and line[0] >= t_task], rf"^round {n}: {done}")
        if None not in (t_task, t_done) and site in received:
            got.append(t_task - opened)
            worked.append(t_done - t_task)
            submitted.append(received[site] - t_done)
    return {f"{prefix}_task_latency_s": max(got, default=None),  # round opened -> last trainer has its task
            f"{prefix}_work_s": max(worked, default=None),  # (evaluation +) local work, from the log lines
            f"{prefix}_submit_s": max(submitted, default=None),  # upload, checks, persisted
            f"{prefix}_last_update_to_aggregating_s": aggregating - max(received.values()) if received else None,
            f"{prefix}_aggregate_close_s": closed - aggregating,  # the close task: aggregate, write, open the next
            f"{prefix}_round_s": closed - opened}


# ---------------------------------------------------------------- Flower

def flower_env(workdir: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "FLWR_HOME": str(workdir / "flwr-home"),
            "PATH": f"{BENCH_PYTHON.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLBENCH_MARK": str(workdir)}


class Processes:
    """Child processes in their own sessions, logged to files, stopped as groups."""

    def __init__(self, workdir: Path, env: dict):
        self.workdir, self.env, self.all = workdir, env, []

    def spawn(self, name: str, argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
        with open(self.workdir / f"{name}.log", "ab") as log:
            process = subprocess.Popen([str(a) for a in argv], cwd=cwd or self.workdir, env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.all.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.all):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, 15)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 5
        for process in self.all:
            try:
                process.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, 9)
                except ProcessLookupError:
                    pass
                process.wait(5)
        sweep("FLBENCH_MARK", self.env["FLBENCH_MARK"])  # what left its session (SuperExec, app processes)


def wait_port(port: int, timeout: float, alive=lambda: True) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not alive():
            raise RuntimeError(f"the process meant to listen on {port} exited")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def run_flower_legacy(workdir: Path, data: list[Path], rounds: int) -> dict:
    """`start_server` + `start_client` (gRPC bidi), clients started once the port listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir, flower_env(workdir))
    out, port = workdir / "legacy.json", free_port()
    try:
        server = procs.spawn("legacy-server", [BENCH_PYTHON, FLOWER_DIR / "legacy_server.py", "--port", port,
                                               "--clients", len(data), "--rounds", rounds, "--out", out])
        wait_port(port, 60, alive=lambda: server.poll() is None)
        for k, path in enumerate(data, 1):
            procs.spawn(f"legacy-client-{k}", [BENCH_PYTHON, FLOWER_DIR / "legacy_client.py", "--server",
                                               f"127.0.0.1:{port}", "--data", path])
        server.wait(timeout=60 + 15 * rounds)
        if server.returncode != 0 or not out.exists():
            raise RuntimeError(f"Flower legacy server exited {server.returncode}; see {workdir}/legacy-server.log")
        return json.loads(out.read_text())
    finally:
        procs.stop()


def run_flower_superlink(workdir: Path, data: list[Path], rounds: int, database: bool = False,
                         budget_s: float = 100.0) -> dict:
    """flower-superlink (one HTTP port; its default in-memory state, or SQLite with
    `database`) + one flower-supernode per site
    (default subprocess isolation: a `flwr-clientapp` process per message), the app
    submitted with `flwr run`, runtime dependency installation off. Stopped after
    `budget_s` seconds from submission with the rounds finished by then."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = flower_env(workdir)
    home = Path(env["FLWR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    procs = Processes(workdir, env)
    out = workdir / "superlink.json"
    bin_dir = BENCH_PYTHON.parent
    try:
        link = procs.spawn("superlink", [bin_dir / "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", port,
                                         *(["--database", home / "superlink.db"] if database else []),
                                         "--disable-runtime-dependency-installation"])
        wait_port(port, 90, alive=lambda: link.poll() is None)
        for k, path in enumerate(data, 1):
            procs.spawn(f"supernode-{k}", [bin_dir / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                                           "--host", "127.0.0.1", "--port", free_port(),
                                           "--node-config", f'data-path="{path}"'])
        submit = subprocess.run([bin_dir / "flwr", "run", FLOWER_DIR, "bench", "--format", "json", "--run-config",
                                 f'num-server-rounds={rounds} num-nodes={len(data)} out-path="{out}"'],
                                env=env, cwd=workdir, capture_output=True, text=True, timeout=120)
        if submit.returncode != 0:
            raise RuntimeError(f"flwr run failed ({submit.returncode}): {submit.stdout}\n{submit.stderr}")
        run_id = json.loads(submit.stdout)["run-id"]
        end = time.monotonic() + budget_s

        def done() -> int:
            return len(json.loads(out.read_text())["rounds"]) if out.exists() else 0

        while time.monotonic() < end and done() < rounds:
            time.sleep(1)
            if link.poll() is not None:
                raise RuntimeError(f"flower-superlink exited {link.returncode}; see {workdir}/superlink.log")
        if done() == 0:
            raise TimeoutError(f"Flower run {run_id} finished no round in {budget_s:g} s; see {workdir}")
        raw = json.loads(out.read_text())
        if len(raw["rounds"]) < rounds:
            raw["stopped_early"] = f"{len(raw['rounds'])} of {rounds} rounds within the {budget_s:g} s budget"
        return raw
    finally:
        procs.stop()


def flower_rounds(raw: dict) -> dict:
    out = []
    for r in raw["rounds"]:
        if r.get("fit_failures") or r.get("eval_failures") or not r["fit_compute_s"] or not r["eval_s"]:
            raise RuntimeError(f"Flower round {r['round']} had failures: {r}")
        out.append({"round": r["round"], "wall_s": r["end"] - r["start"], "fit_compute_s": max(r["fit_compute_s"]),
                    "eval_s": max(r["eval_s"]), "n_fit": len(r["fit_compute_s"]), "accuracy": r.get("accuracy")})
    return {"rounds": out, **({"stopped_early": raw["stopped_early"]} if raw.get("stopped_early") else {})}


# ---------------------------------------------------------------- report

def overheads(result: dict) -> dict:
    """Add per-round overheads; summary statistics over rounds 2..N (ms)."""
    for r in result["rounds"]:
        r["overhead_s"] = r["wall_s"] - r["fit_compute_s"] - r["eval_s"]
        r["overhead_no_eval_sub_s"] = r["wall_s"] - r["fit_compute_s"]
    steady = [r for r in result["rounds"] if r["round"] >= 2] or result["rounds"]
    ms = lambda key: summary([1000 * r[key] for r in steady])
    result.update({"overhead_ms": ms("overhead_s"), "overhead_no_eval_sub_ms": ms("overhead_no_eval_sub_s"),
                   "wall_ms": ms("wall_s"), "fit_compute_ms": ms("fit_compute_s"), "eval_ms": ms("eval_s"),
                   "round1_overhead_ms": 1000 * result["rounds"][0]["overhead_s"]})
    return result


def breakdown(result: dict) -> list[dict]:
    """Median over rounds 2..N of each part of a flportal full round (ms)."""
    steady = [r for r in result["rounds"] if r["round"] >= 2]
    keys = [k for r in steady for k in r if k.startswith(("train_", "eval_")) and k != "eval_s"]
    rows = []
    for key in dict.fromkeys(keys):
        values = [r[key] for r in steady if r.get(key) is not None]
        if values:
            rows.append({"part": key.removesuffix("_s"), "median ms": 1000 * statistics.median(values),
                         "max ms": 1000 * max(values)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--superlink-rounds", type=int, default=2,
                        help="rounds for Flower's SuperLink path (about a minute each on this 2-core machine, "
                             "so the statistics there are over round 2 only; default 2)")
    parser.add_argument("--superlink-budget", type=float, default=100.0,
                        help="seconds the SuperLink run may take after submission; the rounds finished by "
                             "then are used (default 100)")
    parser.add_argument("--superlink-database", action="store_true",
                        help="give the SuperLink a SQLite --database (here a reply push then failed with "
                             "'database is locked' and the run hung; default: its in-memory state)")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS),
                        help="what to measure (default: all three)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="flportal-bench-overhead-"))
    try:
        return measure(opts, workdir)
    finally:
        if opts.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(opts, workdir: Path) -> int:
    systems, errors, started = {}, {}, time.monotonic()
    data = make_data(workdir, opts.nodes)
    runs = {"flportal": (lambda: run_flportal(workdir, opts.nodes, opts.rounds), None),
            "flower_legacy": (lambda: run_flower_legacy(workdir / "legacy", data, opts.rounds), flower_rounds),
            "flower_superlink": (lambda: run_flower_superlink(workdir / "superlink", data, opts.superlink_rounds,
                                                              opts.superlink_database, opts.superlink_budget),
                                 flower_rounds)}
    for name in [s for s in SYSTEMS if s in opts.systems]:
        run, convert = runs[name]
        t0 = time.monotonic()
        try:
            raw = run()
            systems[name] = overheads(convert(raw) if convert else raw)
            print(f"{name}: median overhead {systems[name]['overhead_ms']['median']:.1f} ms "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
        except Exception as exc:
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED ({errors[name]})", flush=True)
    report(systems, errors, opts, time.monotonic() - started)
    return 0 if systems and not errors else 1


def report(systems: dict, errors: dict, opts, seconds: float) -> None:
    labels = {"flportal": f"flportal (PostgreSQL, Redis, Celery, {PORTAL_PROCESSES} uvicorn processes)",
              "flower_legacy": "Flower 1.41 legacy (start_server/start_client)",
              "flower_superlink": "Flower 1.41 SuperLink/SuperNode (flwr run)"}
    ours = systems.get("flportal")
    rows = []
    for name, res in systems.items():
        o = res["overhead_ms"]
        rows.append({"system": labels[name], "rounds (stats over 2..N)": len(res["rounds"]),
                     "median overhead ms": o["median"], "p95 overhead ms": o["p95"],
                     "median, eval not subtracted ms": res["overhead_no_eval_sub_ms"]["median"],
                     "median round wall ms": res["wall_ms"]["median"],
                     "median slowest fit ms": res["fit_compute_ms"]["median"],
                     "median slowest eval ms": res["eval_ms"]["median"],
                     "round 1 overhead ms": res["round1_overhead_ms"],
                     "flportal / this (median)": (ours["overhead_ms"]["median"] / o["median"]) if ours else None})
    columns = ["system", "rounds (stats over 2..N)", "median overhead ms", "p95 overhead ms",
               "median, eval not subtracted ms", "median round wall ms", "median slowest fit ms",
               "median slowest eval ms", "round 1 overhead ms", "flportal / this (median)"]
    md = [f"{opts.nodes} sites on loopback, logistic regression on digits, 1 local epoch, federated evaluation "
          "every round. Overhead of a full round = (train round + its evaluation) wall time − slowest site's fit "
          "compute − slowest site's evaluation (see bench/round_overhead.py for how each is measured).", "",
          table(rows, columns), ""]
    verdicts = {}
    if ours:
        median = ours["overhead_ms"]["median"]
        verdicts["absolute"] = median <= TARGET_MS
        md.append(f"- Target median overhead ≤ {TARGET_MS:g} ms: {median:.1f} ms → "
                  f"**{'met' if verdicts['absolute'] else 'MISSED'}**")
        for name, word in (("flower_legacy", "legacy path"), ("flower_superlink", "SuperLink path")):
            if name in systems:
                ratio = median / systems[name]["overhead_ms"]["median"]
                ours[f"ratio_to_{name}"] = ratio
                if name == "flower_legacy":
                    verdicts["ratio_legacy"] = ratio <= TARGET_RATIO
                    md.append(f"- Target ≤ {TARGET_RATIO}× Flower's {word}: {ratio:.3f}× → "
                              f"**{'met' if verdicts['ratio_legacy'] else 'MISSED'}**")
                else:
                    md.append(f"- Ratio to Flower's {word} (supported): {ratio:.4f}× "
                              f"({systems[name]['overhead_ms']['median'] / 1000:.1f} s per round there)")
        parts = breakdown(ours)
        md += ["", "Where a flportal full round's time goes (median over rounds 2..N, slowest site):", "",
               table(parts, ["part", "median ms", "max ms"])]
        if ours.get("cpu_s_per_round"):
            md += ["", "CPU per full round, rounds 2..N (this machine has "
                   f"{os.cpu_count()} cores; PostgreSQL and Redis: the machine's servers, all of their work):", "",
                   table([{"process": k, "CPU ms per round": 1000 * v} for k, v in ours["cpu_s_per_round"].items()],
                         ["process", "CPU ms per round"])]
    for name, res in systems.items():
        if res.get("stopped_early"):
            only_first = len(res["rounds"]) < 2
            md.append(f"- {labels[name]}: stopped early, {res['stopped_early']}"
                      + ("; its figures are round 1's (with its start-up)" if only_first else ""))
    for name, error in errors.items():
        md.append(f"- {labels[name]}: **could not be measured**: {error}")
    md.append(f"\n({seconds:.0f} s for the whole benchmark; SuperLink path over {opts.superlink_rounds} rounds.)")
    summary_md = "\n".join(md)
    print("\n" + summary_md)
    write_result("round_overhead", {"nodes": opts.nodes, "rounds": opts.rounds,
                                    "superlink_rounds": opts.superlink_rounds, "systems": systems,
                                    "errors": errors, "verdicts": verdicts, "seconds": seconds,
                                    "summary_md": summary_md})


if __name__ == "__main__":
    sys.exit(main())
