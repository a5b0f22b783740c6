"""Scale: one job on 100, 300 and 1000 simulated nodes; the round overhead as N grows.

The production stack (PostgreSQL, Redis, a separate Celery worker and beat, the portal
under uvicorn). Every node is a real registered node (set-up: registered through
`nodes.services.node_register`, the service behind `manage.py node_register`, in one
`manage.py shell` run per 500), simulated in this one asyncio process
(bench/simnodes.py): it heartbeats through the FL API at the interval the portal gives,
and when the portal's Celery task asks its agent to start a run (a fake agent answering
201 for every node at its own agent URL) it runs the trainer protocol: long-polled task
(wait=20 s, as the real trainer), model download with checksum, a precomputed update
(the job's round-0 weights plus noise, valid safetensors) or an evaluation. No training:
the round's wall time is all overhead (portal, worker, database, network, simulator).

Figures per N: train round wall time (opened → closed, the portal's own timestamps;
round 1 separately: it includes the agent calls that start the trainers), the final
evaluate round, the whole job, requests and failed requests. Target: round overhead at
1000 nodes ≤ 12 × at 100 nodes, and no failed request.

    .venv/bin/python bench/scale.py [--sizes 100 300 1000] [--rounds 3] [--profile DIR]
"""
import argparse
import asyncio
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from simnodes import (
    BenchStack,
    FakeAgents,
    Profiler,
    SimNode,
    Stats,
    async_client,
    perturbed_updates,
    register_nodes,
    self_cpu_seconds,
    tree_cpu_seconds,
)

TARGET_RATIO = 12.0
# A fleet of 1000 sites heartbeating every 5 s (the default) would be 200 requests/s on
# its own; a 30 s heartbeat (offline after 120 s) is the setting for such a fleet.
ENV = {"FLPORTAL_HEARTBEAT_INTERVAL_S": "30", "FLPORTAL_NODE_OFFLINE_AFTER_S": "120"}
# Each size's job is cancelled (and reported "timed out") past this, so the whole
# benchmark stays under 5 minutes even when the portal cannot keep up.
JOB_TIMEOUT_S = {100: 60, 300: 90, 1000: 180}


class Fleet:
    def __init__(self, stack, tokens: dict, client, stats: Stats):
        self.stack, self.stats = stack, stats
        self.sims = {name: SimNode(name, token, stack.url, stats) for name, token in tokens.items()}
        self.beating: list[asyncio.Task] = []
        self.ignored: set[int] = set()  # jobs whose trainers the benchmark drives itself
        self.api = {"Authorization": f"Token {stack.token}"}

    def on_run(self, node: str, job_id: int) -> None:
        if job_id not in self.ignored:
            self.sims[node].start_trainer(job_id)

    async def bring_online(self, names: list[str]) -> float:
        """First heartbeats (50 at a time), then one every interval; returns the interval."""
        gate = asyncio.Semaphore(50)

        async def first(sim):
            async with gate:
                return await sim.heartbeat()

        answers = await asyncio.gather(*(first(self.sims[n]) for n in names))
        interval = next(a for a in answers if a)["heartbeat_interval_s"]
        self.beating += [asyncio.create_task(self.sims[n].heartbeat_forever(interval)) for n in names]
        return interval

    async def stop(self) -> None:
        tasks = self.beating + [s.trainer for s in self.sims.values() if s.trainer]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def cpu_snapshot(bench: BenchStack) -> dict:
    """CPU seconds so far of each part: portal, Celery worker (+ beat), PostgreSQL (the
    benchmark's own server, every backend), and this simulator of all the nodes."""
    stack = bench.stack
    return {"portal": tree_cpu_seconds(stack.portal.pid),
            "worker": sum(tree_cpu_seconds(p.pid) for p in stack.processes[:2]),
            "postgres": tree_cpu_seconds(bench.private.process.pid) if bench.private else 0.0,
            "simulator": self_cpu_seconds()}


async def run_size(fleet: Fleet, client, names: list[str], rounds: int, bench: BenchStack) -> dict:
    spec = {"model": "logreg", "dataset": "breast_cancer", "rounds": rounds, "evaluate_every": rounds,
            "clients_required": len(names), "min_clients": len(names), "round_timeout_s": 600, "seed": 0}
    requests_before, failures_before, stale_before = fleet.stats.requests, fleet.stats.failed, fleet.stats.stale
    cpu_before, load_before = cpu_snapshot(bench), os.getloadavg()[0]
    started = time.monotonic()
    answer = await client.post("/api/v1/jobs/", headers=fleet.api, timeout=120,
                               json={"name": f"scale-{len(names)}", "nodes": names, "spec": spec, "start": True})
    if answer.status_code != 201:
        raise RuntimeError(f"job create: {answer.status_code} {answer.text[:500]}")
    job_id = answer.json()["id"]
    status = await wait_job(client, fleet.api, job_id, JOB_TIMEOUT_S.get(len(names), 120))
    seconds = time.monotonic() - started
    cpu = {part: used - cpu_before[part] for part, used in cpu_snapshot(bench).items()}
    load = (load_before + os.getloadavg()[0]) / 2
    trainers = [s.trainer for s in fleet.sims.values() if s.trainer and not s.trainer.done()]
    _, late = await asyncio.wait(trainers, timeout=5) if trainers else (None, [])
    for task in late:  # a trainer still waiting for its `end` (a cancelled job's long poll)
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    listing = await _rounds(client, fleet.api, job_id)
    walls = [(r["kind"], r["number"], _seconds(r["opened_at"], r["closed_at"]), len(r["updates"])) for r in listing]
    train = [w for kind, number, w, _ in walls if kind == "train" and number > 1 and w is not None]
    accepted = sum(u for *_, u in walls)
    return {"nodes": len(names), "status": status, "job_s": seconds, "updates": accepted,
            "updates_per_s": accepted / seconds,
            "cpu_ms_per_update": {part: round(1000 * used / max(accepted, 1), 1) for part, used in cpu.items()},
            "cpu_ms_per_update_total": round(1000 * sum(cpu.values()) / max(accepted, 1), 1),
            "loadavg": round(load, 1),
            "rounds_closed": sum(w is not None for _, _, w, _ in walls),
            "round1_s": next((w for kind, number, w, _ in walls if kind == "train" and number == 1), None),
            "train_round_s": statistics.median(train) if train else None, "train_rounds": train,
            "eval_round_s": next((w for kind, _, w, _ in walls if kind == "evaluate"), None),
            "updates_per_round": sorted({u for *_, u in walls}),
            "requests": fleet.stats.requests - requests_before,
            "failed": fleet.stats.failed - failures_before, "stale_409": fleet.stats.stale - stale_before}


async def _rounds(client, headers, job_id: int, attempts: int = 10) -> list[dict]:
    """Every round of the job (following the pages), retrying a page that failed."""
    rounds, url = [], f"/api/v1/jobs/{job_id}/rounds/?limit=100"
    while url:
        for _ in range(attempts):
            answer = await client.get(url, headers=headers, timeout=120)
            if answer.status_code == 200:
                break
            await asyncio.sleep(2)
        else:
            raise RuntimeError(f"rounds of job {job_id}: {answer.status_code} {answer.text[:300]}")
        rounds += answer.json()["results"]
        url = answer.json()["next"]
    return rounds


def _seconds(opened: str, closed: str | None) -> float | None:
    if not closed:
        return None
    return (datetime.fromisoformat(closed) - datetime.fromisoformat(opened)).total_seconds()


async def wait_job(client, headers, job_id: int, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            job = (await client.get(f"/api/v1/jobs/{job_id}/", headers=headers, timeout=30)).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job["status"] + (f": {job['status_reason']}" if job["status"] == "failed" else "")
        except Exception:
            pass
        await asyncio.sleep(1.0)
    await client.post(f"/api/v1/jobs/{job_id}/cancel/", headers=headers, json={"reason": "benchmark timeout"},
                      timeout=60)
    return f"timed out ({timeout:g} s)"


async def measure(bench: BenchStack, sizes: list[int], rounds: int, profile: str | None) -> list[dict]:
    stack, stats = bench.stack, Stats()
    fleet: Fleet | None = None
    agents = FakeAgents(on_run=lambda node, job: fleet.on_run(node, job))
    agent_base = await agents.start()
    names = [f"sim-{k:04d}" for k in range(1, max(sizes) + 1)]
    with common.timer() as took:
        tokens = await asyncio.to_thread(register_nodes, stack, names, agent_base)
    print(f"registered {len(tokens)} nodes in {took():.1f} s (set-up)", flush=True)
    await asyncio.to_thread(bench.start)
    rows = []
    async with async_client(stack.url, max(sizes) + 200) as client:
        fleet = Fleet(stack, tokens, client, stats)
        try:
            updates = await _updates(fleet, client, names[0])
            for sim in fleet.sims.values():
                sim.updates = updates
            online = 0
            for size in sizes:
                await fleet.bring_online(names[online:size])
                online = size
                await _wait_online(client, fleet.api, size)
                profiler = Profiler(profile if size == max(sizes) else None)
                profiler.start(f"scale-{size}-portal", stack.portal.pid)
                profiler.start(f"scale-{size}-worker", stack.processes[0].pid)
                try:
                    row = await run_size(fleet, client, names[:size], rounds, bench)
                finally:
                    profiler.stop()
                rows.append(row)
                print(common.table([row], COLUMNS), flush=True)
                print("  failed so far: " + "; ".join(stats.failures[:5]), flush=True)
        finally:
            await fleet.stop()
            await agents.stop()
    base = rows[0]["train_round_s"]
    for row in rows:
        row["ratio_to_first"] = row["train_round_s"] / base if base and row["train_round_s"] else None
        row["ms_per_node"] = 1000 * row["train_round_s"] / row["nodes"] if row["train_round_s"] else None
    if stats.failed:
        rows[-1]["failure_samples"] = stats.failures[:20]
    return rows


async def _updates(fleet: Fleet, client, name: str) -> list[bytes]:
    """Precomputed updates: the job model's round-0 weights (from a one-node job that is
    then cancelled, its trainer not started) plus noise."""
    sim = fleet.sims[name]
    await fleet.bring_online([name])
    answer = await client.post("/api/v1/jobs/", headers=fleet.api, json={
        "name": "shape", "nodes": [name],
        "spec": {"model": "logreg", "dataset": "breast_cancer", "rounds": 1, "seed": 0}})
    job_id = answer.json()["id"]
    fleet.ignored.add(job_id)
    await client.post(f"/api/v1/jobs/{job_id}/start/", headers=fleet.api)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        task = (await sim.request("GET", f"/api/v1/fl/jobs/{job_id}/task?wait=5", timeout=20)).json()
        if task["action"] == "train":
            break
        if task["action"] == "end":
            raise RuntimeError(f"the shape job ended: {task}")
    else:
        raise RuntimeError(f"the shape job's round 1 did not open in 60 s: {task}")
    model = (await sim.request("GET", task["model_url"])).content
    await client.post(f"/api/v1/jobs/{job_id}/cancel/", headers=fleet.api, json={"reason": "shape only"})
    return perturbed_updates(model, 16)


async def _wait_online(client, headers, count: int, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        answer = await client.get("/api/v1/nodes/", headers=headers, timeout=60)
        if answer.status_code == 200 and sum(n["status"] == "online" for n in answer.json()) >= count:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{count} nodes did not come online")


COLUMNS = ["nodes", "status", "rounds_closed", "round1_s", "train_round_s", "eval_round_s", "job_s", "ratio_to_first",
           "updates_per_s", "cpu_ms_per_update_total", "requests", "failed", "stale_409", "loadavg"]


def verdicts(rows: list[dict]) -> list[str]:
    """The growth ratio of a train round after the first (the target's measure); when
    the larger job did not get that far within its time, a lower bound from round 1
    (which also starts the trainers), cut short by the time limit."""
    first, last = rows[0], rows[-1]
    target = TARGET_RATIO * last["nodes"] / first["nodes"] / 10  # 12 for 100 → 1000
    failed = sum(r["failed"] for r in rows)
    if first["train_round_s"] and last["train_round_s"]:
        ratio = last["train_round_s"] / first["train_round_s"]
        growth = (f"- train round overhead at {last['nodes']} nodes = {ratio:.2f} × at {first['nodes']} "
                  f"(target ≤ {target:g}): **{'met' if ratio <= target else 'MISSED'}**")
    elif first["round1_s"]:
        cut = not last["status"].startswith("succeeded")
        last_round1 = last["round1_s"] or last["job_s"]  # never closed: at least until the job was cancelled
        ratio = last_round1 / first["round1_s"]
        ok = ratio <= target and not cut
        growth = (f"- round 1 at {last['nodes']} nodes {'≥ ' if cut else ''}{last_round1:.0f} s = "
                  f"{'≥ ' if cut else ''}{ratio:.1f} × at {first['nodes']} ({first['round1_s']:.1f} s); "
                  f"{last['updates']} of {last['nodes']} updates in {last['job_s']:.0f} s "
                  f"(target ≤ {target:g}): **{'met' if ok else 'MISSED'}**")
    else:
        growth = "- round overhead ratio: not measured (no round closed): **MISSED**"
    ok_all = all(r["status"] == "succeeded" for r in rows)
    return [growth, f"- failed requests: {failed} (target 0): **{'met' if failed == 0 else 'MISSED'}**",
            f"- every job succeeded: **{'met' if ok_all else 'MISSED'}**"]


def cpu_table(rows: list[dict]) -> str:
    parts = list(rows[0]["cpu_ms_per_update"])
    return common.table([{"nodes": r["nodes"], **r["cpu_ms_per_update"], "total": r["cpu_ms_per_update_total"]}
                         for r in rows], ["nodes", *parts, "total"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", metavar="DIR", help="py-spy the portal and worker at the largest size into DIR")
    parser.add_argument("--max-connections", type=int, default=100,
                        help="of the benchmark's own PostgreSQL server (default: PostgreSQL's default, 100)")
    opts = parser.parse_args()
    with BenchStack("production", "scale", redis_db=13, env=ENV, private_pg=opts.max_connections) as bench:
        rows = asyncio.run(measure(bench, opts.sizes, opts.rounds, opts.profile))
        errors = bench.server_errors()
    samples = [s for row in rows for s in row.pop("failure_samples", [])]
    md = common.table(rows, COLUMNS) + "\n\nCPU milliseconds per accepted update, by process:\n\n" + cpu_table(rows)
    lines = verdicts(rows)
    print("\n" + md + "\n\n" + "\n".join(lines))
    common.print_problems(samples, errors)
    common.write_result("scale", {
        "rounds": opts.rounds, "env": ENV, "rows": rows, "max_connections": opts.max_connections, "failure_samples": samples,
        "server_errors": errors,
        "target": {"ratio": TARGET_RATIO, "between": [rows[0]["nodes"], rows[-1]["nodes"]]},
        "summary_md": md + f"\n\nProduction stack (its own PostgreSQL server, max_connections "
                           f"{opts.max_connections}); one job per size, {opts.rounds} train rounds and a final evaluate "
                           "round; simulated nodes (no training), so a round's wall time is overhead. "
                           "train_round_s: median of train rounds 2.., opened → closed. ratio_to_first: against the "
                           f"smallest size. Heartbeat every {ENV['FLPORTAL_HEARTBEAT_INTERVAL_S']} s; a job past its "
                           f"time limit ({', '.join(f'{n}: {t} s' for n, t in JOB_TIMEOUT_S.items())}) is cancelled. "
                           "loadavg: the machine's 1-minute load average during the job (2 cores).\n\n"
                           + "\n".join(lines)
                           + ("\n\nFailed requests by kind:\n\n" + "\n".join(f"- {k}" for k in samples) if samples else "")
                           + ("\n\nExceptions in the portal's and worker's logs:\n\n" + "\n".join(f"- {k}" for k in errors)
                              if errors else "")})
    return 0 if all("**met**" in line for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
