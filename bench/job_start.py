"""Job start latency: from the client's `POST /api/v1/jobs/<id>/start/` to the moment
every selected trainer has its first `train` task, on the production stack (PostgreSQL,
Redis, separate Celery worker and beat, uvicorn, one agent per site), 10 sites.

    .venv/bin/python bench/job_start.py [--nodes 10] [--trials 3]

Each trial creates a draft job (1 round) through the REST API, starts it, and reads
when each trainer logged `round 1: train with model version 0` (trainer run logs, this
machine's clock, millisecond resolution). The components, per trainer, slowest shown:

- api: POST start until its answer (draft → queued, job_start queued on commit);
- server start: POST until the `round_open` event of round 1 (Celery picks up
  job_start: online check, round-0 model stored, running, round 1 opened);
- agent call: round 1 opened until the agent logged that it started the run
  (agent_start_run_task through Celery, the portal → agent HTTP call, then either
  the hand-over of the job to the agent's warm spare trainer or a cold spawn);
- trainer boot: that agent line until the trainer's first line for the job (cold: the
  interpreter and the trainer's own imports; warm: the spare reading its assignment);
- first poll: that line until the first task is in hand.

(Warm, trainer boot is a millisecond or two and may read slightly negative: the agent
logs its line just after the hand-over, and the two processes' log stamps race.)

Warm trainers (agent/spare.py) are measured first. Before each trial the
benchmark waits until every agent is idle (no run left) and, warm, until every agent
reports its spare `ready` in /health: a spare is rebuilt only when its site is idle,
so each trial measures a start on an idle system with the spares in place, which is
the case the feature is for (a site that starts a job while it runs another one gets
a cold trainer). The spares' RSS is read from /proc then. The baseline, in the same
run on the same stack: the agents restarted with warm trainers off
(`FLPORTAL_WARM_TRAINERS=0`: every trainer imports PyTorch after the start), the
same trials; `--no-baseline` skips it. Prints tables and writes bench/out/job_start.json.
"""
import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx
from common import summary, table, write_result
from round_overhead import release
from stacklogs import first, free_redis_db, iso_time, read_lines, sweep, trainer_logs

from flportal.localstack import LocalStack, production_env

REDIS_DBS = [11, 10, 15, 8, 7, 6, 5]  # free_redis_db() takes the first that nobody uses (bench/scale.py: 13, queries: 14,
# live_latency: 12, tests/e2e: 9)
TARGET_S = 2.0
COMPONENTS = ["api", "server_start", "agent_call", "trainer_boot", "first_poll"]


def spec(nodes: int) -> dict:
    return {"model": "logreg", "dataset": "digits", "strategy": "fedavg", "optimizer": "sgd",
            "optimizer_params": {"lr": 0.1}, "batch_size": 32, "local_epochs": 1, "rounds": 1,
            "clients_required": nodes, "round_timeout_s": 120, "seed": 0}


def agent_health(agent) -> dict:
    answer = httpx.get(f"http://127.0.0.1:{agent.port}/health", timeout=10,
                       headers={"Authorization": f"Bearer {agent.agent_key}"})
    answer.raise_for_status()
    return answer.json()


def rss_mib(pid: int) -> dict:
    """VmRSS and RssAnon (the part no other process shares) of ``pid``, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "RssAnon")}


def wait_agents_idle(stack: LocalStack, warm: bool, timeout: float = 600) -> list[dict]:
    """Wait until no agent has a running run and, ``warm``, every agent's spare is
    ready; return the spares' RSS (empty when cold)."""
    end = time.monotonic() + timeout
    while True:
        try:
            healths = [agent_health(agent) for agent in stack.agents]
        except httpx.TransportError:  # an agent that was just restarted and does not listen yet
            healths = None
        idle = healths is not None and all(run["state"] == "exited" for h in healths for run in h["runs"])
        if idle and (not warm or all(h["spare"]["state"] == "ready" for h in healths)):
            return [rss_mib(h["spare"]["pid"]) for h in healths] if warm else []
        if time.monotonic() > end:
            raise TimeoutError(f"agents not idle{' with a ready spare' if warm else ''} after {timeout:g} s: "
                               f"{[(h['node'], h['spare']['state']) for h in healths or []]}")
        time.sleep(0.5)


def restart_agents(stack: LocalStack, *, warm: bool) -> None:
    """SIGTERM every agent (it stops its runs and spare), start it again with warm
    trainers on or off, wait until the portal sees every node online."""
    for agent in stack.agents:
        agent.process.terminate()
    for agent in stack.agents:
        agent.process.wait(30)
    stack.full_env["FLPORTAL_WARM_TRAINERS"] = "1" if warm else "0"
    for agent in stack.agents:
        stack.start_agent(agent)
    stack.wait_nodes_online([a.name for a in stack.agents], timeout=120)


def trial(stack: LocalStack, workdir: Path, nodes: int, number: int, mode: str) -> dict:
    names = [a.name for a in stack.agents]
    with stack.api() as api:
        answer = api.post("/api/v1/jobs/", json={"name": f"job start {mode} {number}", "nodes": names,
                                                 "spec": spec(nodes)})
        answer.raise_for_status()
        job_id = answer.json()["id"]
        clicked = time.time()
        api.post(f"/api/v1/jobs/{job_id}/start/").raise_for_status()
        answered = time.time()
    end = time.monotonic() + 60
    while True:
        logs = trainer_logs(workdir, job_id)
        tasks = {site: first(lines, r"^round 1: train with model version 0") for site, lines in logs.items()}
        if len(tasks) == nodes and None not in tasks.values():
            break
        if time.monotonic() > end:
            raise TimeoutError(f"trial {number}: trainers with a task after 60 s: {sorted(s for s, t in tasks.items() if t)}")
        stack.check_alive()
        time.sleep(0.2)
    job = stack.wait_job(job_id, timeout=120)  # let the trainers exit before the next trial
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job['status_reason']}")
    logs = trainer_logs(workdir, job_id)  # complete now that the trainers have exited
    with stack.api() as api:
        events = api.get(f"/api/v1/jobs/{job_id}/events/").json()
    opened = next(iso_time(e["created_at"]) for e in events if e["kind"] == "round_open")
    per_site, warm_runs = [], 0
    for site in names:
        agent_lines = read_lines(workdir / f"{site}.log")
        agent = first(agent_lines, rf"^run {job_id}-\w+: started trainer pid")
        warm_runs += any(re.match(rf"run {job_id}-\w+: started trainer pid .*\(warm spare\)$", m)
                         for _, m in agent_lines)
        boot = logs[site][0][0]
        got = tasks[site]
        ready = first(logs[site], r"^site ready")  # PyTorch imported and data loaded (after the task here)
        per_site.append({"site": site, "latency_s": got - clicked, "api": answered - clicked,
                         "site_ready_s": ready - clicked if ready else None,
                         "server_start": opened - clicked, "agent_call": agent - opened,
                         "trainer_boot": boot - agent, "first_poll": got - boot})
    slowest = max(per_site, key=lambda r: r["latency_s"])
    print(f"{mode} trial {number}: all {nodes} trainers had a task {slowest['latency_s']:.2f} s after start "
          f"(slowest {slowest['site']}; {warm_runs} of {nodes} runs were warm spares)", flush=True)
    return {"job_id": job_id, "latency_s": slowest["latency_s"], "warm_runs": warm_runs,
            "first_trainer_s": min(r["latency_s"] for r in per_site),
            "all_sites_ready_s": max((r["site_ready_s"] for r in per_site if r["site_ready_s"]), default=None),
            "sites": per_site}


def measure(stack: LocalStack, workdir: Path, opts, *, warm: bool) -> tuple[list[dict], list[dict]]:
    """``opts.trials`` trials, each on idle agents (with ready spares when ``warm``);
    returns (trials, the spares' RSS seen before each trial)."""
    mode, trials, rss = ("warm" if warm else "cold"), [], []
    for number in range(1, opts.trials + 1):
        rss += wait_agents_idle(stack, warm)
        trials.append(trial(stack, workdir, opts.nodes, number, mode))
    return trials, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="skip the cold-start baseline")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="flportal-bench-jobstart-"))
    database = f"flbench_jobstart_{os.getpid()}"
    stack, env, error, started = None, {}, None, time.monotonic()
    results = {"warm": ([], []), "cold": ([], [])}
    try:
        env = production_env(database, redis_db=free_redis_db(REDIS_DBS))
        stack = LocalStack(workdir=workdir, env={**env, "FLPORTAL_DATA_DIR": str(workdir / "portal"),
                                                 "FLPORTAL_WARM_TRAINERS": "1"})
        stack.setup(username="bench")
        stack.make_data(dataset="digits", nodes=opts.nodes)
        stack.register_nodes(opts.nodes)
        stack.start(celery=True)
        results["warm"] = measure(stack, workdir, opts, warm=True)
        if not opts.no_baseline:
            restart_agents(stack, warm=False)
            results["cold"] = measure(stack, workdir, opts, warm=False)
    except Exception as exc:
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if stack is not None:
            stack.stop()
        sweep("FLPORTAL_DATA_DIR", str(workdir / "portal"))
        release(database, env)
        if opts.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(results, error, opts, time.monotonic() - started)
    return 0 if results["warm"][0] and error is None else 1


def trial_table(trials: list[dict]) -> str:
    rows = []
    for t in trials:
        slowest = max(t["sites"], key=lambda r: r["latency_s"])
        rows.append({"trial": len(rows) + 1, "all trainers have a task s": t["latency_s"],
                     "first trainer s": t["first_trainer_s"], "warm runs": t["warm_runs"],
                     "all sites ready to compute s": t["all_sites_ready_s"],
                     **{f"{c} s": slowest[c] for c in COMPONENTS}})
    columns = (["trial", "all trainers have a task s", "first trainer s", "warm runs"]
               + [f"{c} s" for c in COMPONENTS] + ["all sites ready to compute s"])
    return table(rows, columns)


def component_stats(trials: list[dict]) -> dict:
    return {c: {"median_over_sites_s": statistics.median(r[c] for t in trials for r in t["sites"]),
                "max_s": max(r[c] for t in trials for r in t["sites"])} for c in COMPONENTS}


def rss_stats(rss: list[dict]) -> dict | None:
    if not rss:
        return None
    return {name: {"median": statistics.median(r[name] for r in rss), "max": max(r[name] for r in rss)}
            for name in ("VmRSS", "RssAnon")}


def report(results: dict, error: str | None, opts, seconds: float) -> None:
    (warm, rss), (cold, _) = results["warm"], results["cold"]
    stats = summary([t["latency_s"] for t in warm]) if warm else None
    cold_stats = summary([t["latency_s"] for t in cold]) if cold else None
    md = [f"POST start → every one of {opts.nodes} trainers has its first `train` task (production stack, "
          f"all {opts.nodes} sites on this machine), with warm trainers (each agent's spare trainer, PyTorch "
          "loaded, takes the run) and, as the baseline, cold trainers (spawned at the start). Each trial starts "
          "on idle agents, warm ones with their spare ready. Components of the slowest trainer:", ""]
    components = {}
    for mode, trials in (("warm", warm), ("cold (baseline)", cold)):
        if not trials:
            continue
        components[mode.split()[0]] = component_stats(trials)
        md += [f"**{mode}**", "", trial_table(trials), ""]
    if components:
        md += ["Each component, median (max) over all trainers of all trials:", "",
               table([{"component": c, **{f"{mode} s": f"{v[c]['median_over_sites_s']:.3f} ({v[c]['max_s']:.3f})"
                                          for mode, v in components.items()}} for c in COMPONENTS],
                     ["component"] + [f"{mode} s" for mode in components]),
               "", "`all sites ready to compute`: when the last trainer logged `site ready` (PyTorch and data "
               "loaded; a cold trainer polls its first task while PyTorch imports in a thread). Not part of the "
               "target.", ""]
    spare = rss_stats(rss)
    if spare:
        md.append(f"- Memory of a warm trainer: one idle spare per agent, RSS median {spare['VmRSS']['median']:.0f} MiB "
                  f"(max {spare['VmRSS']['max']:.0f}), of which {spare['RssAnon']['median']:.0f} MiB private "
                  "(RssAnon; the rest is PyTorch's shared libraries).")
    if stats:
        md.append(f"- Target ≤ {TARGET_S:g} s (warm): median {stats['median']:.2f} s, worst {stats['max']:.2f} s → "
                  f"**{'met' if stats['median'] <= TARGET_S else 'MISSED'}**")
    if stats and cold_stats:
        md.append(f"- Cold baseline: median {cold_stats['median']:.2f} s, worst {cold_stats['max']:.2f} s; "
                  f"cold / warm = {cold_stats['median'] / stats['median']:.1f}×")
    if error:
        md.append(f"- **failed**: {error}")
    md.append(f"\n({seconds:.0f} s for the whole benchmark.)")
    summary_md = "\n".join(md)
    print("\n" + summary_md)
    write_result("job_start", {"nodes": opts.nodes, "trials": warm, "latency_s": stats,
                               "components": components.get("warm", {}), "spare_rss_mib": spare,
                               "cold": {"trials": cold, "latency_s": cold_stats, "components": components.get("cold")},
                               "target_s": TARGET_S, "met": bool(stats and stats["median"] <= TARGET_S),
                               "error": error, "seconds": seconds, "summary_md": summary_md})


if __name__ == "__main__":
    sys.exit(main())
