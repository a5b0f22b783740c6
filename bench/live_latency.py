"""Live latency: a trainer posts a metric → every browser watching the job receives it.

What is measured, per event: the time from just before a node's POST (through the FL
API, with its node token) to the moment each watcher — a websocket client on
`/ws/jobs/<id>/`, logged in as the job's owner through /login/ (session cookie) — has
received the `metrics` event for that node, round and phase. 1 and 50 watchers, on the
production stack (PostgreSQL, Redis channel layer, a separate Celery worker process) and
on the embedded default (SQLite, in-process worker and channel layer).

The metric paths: `POST /api/v1/fl/rounds/<id>/evaluation` (a JSON body of metrics: the
metric path proper) and `POST /api/v1/fl/rounds/<id>/update` (weights, with the train
metrics in `X-Metrics`). Both store MetricPoints and broadcast one `metrics` event;
`POST /jobs/<id>/logs` stores a `log` JobEvent instead, not a metric, so it is not used.
Events are posted one at a time (each waits until every watcher has it), by simulated
nodes that answer their tasks in the real round protocol (bench/simnodes.py); a fake
agent accepts the portal's start-run calls. The job's other events (update accepted,
round closed, aggregate metrics) flow as usual and are part of the load.

    .venv/bin/python bench/live_latency.py [--nodes 10] [--rounds 3] [--modes production embedded]

Targets (issue "Benchmarks"): p50 ≤ 20 ms and p95 ≤ 100 ms at 50 watchers.
"""
import argparse
import asyncio
import functools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import websockets
from simnodes import (
    BenchStack,
    FakeAgents,
    Profiler,
    SimNode,
    Stats,
    async_client,
    perturbed_updates,
    register_nodes,
    session_cookie,
    tree_cpu_seconds,
)

TARGET_P50_MS, TARGET_P95_MS = 20.0, 100.0
WATCHERS = (1, 50)
EVENT_TIMEOUT_S = 5.0
IDLE_S = 12.0  # watchers idle this long before the posts begin: do they stay connected?


class Watcher:
    """One browser tab on the job page: records when each node's metrics event arrives
    in `arrivals[(node, round, phase)]`, a slot the poster opened before its POST."""

    def __init__(self, ws, arrivals: dict):
        self.ws, self.arrivals = ws, arrivals

    async def listen(self) -> None:
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                event = json.loads(raw)
                if event.get("kind") == "metrics" and event.get("node"):
                    slot = self.arrivals.get((event["node"], event["round"], event["phase"]))
                    if slot is not None:
                        slot["times"].append(now)
                        if len(slot["times"]) == slot["expected"]:
                            slot["done"].set()
        except websockets.ConnectionClosed:
            pass


async def connect_watchers(base: str, job_id: int, cookie: str, count: int, idle_s: float) -> tuple[list, int]:
    """`count` websockets on the job, logged in by the session cookie; with `idle_s`,
    left quiet that long first: those that closed meanwhile are counted and replaced."""
    url = base.replace("http://", "ws://") + f"/ws/jobs/{job_id}/"
    headers = {"Cookie": f"sessionid={cookie}", "Origin": base}

    async def connect():
        return await websockets.connect(url, additional_headers=headers, max_queue=None)

    sockets = [await connect() for _ in range(count)]
    if not idle_s:
        return sockets, 0
    await asyncio.sleep(idle_s)
    alive = [ws for ws in sockets if ws.state is websockets.State.OPEN]
    return alive + [await connect() for _ in range(count - len(alive))], count - len(alive)


class Timings:
    """Per path ("update" or "evaluation"): every (event, watcher) latency, the slowest
    watcher per event, the POST's own round trip; events some watcher never got."""

    def __init__(self):
        self.samples, self.slowest, self.posts = ({"update": [], "evaluation": []} for _ in range(3))
        self.lost = 0


async def post_one(sim: SimNode, job_id: int, watchers: int, arrivals: dict, timings: Timings) -> None:
    """Pull the node's task, post its result (a metric), wait until every watcher has
    the `metrics` event, and record the times from just before the POST."""
    task = (await sim.request("GET", f"/api/v1/fl/jobs/{job_id}/task?wait=20", timeout=35)).json()
    assert task["action"] in ("train", "evaluate"), task
    phase, path = ("fit", "update") if task["action"] == "train" else ("eval", "evaluation")
    metrics = {"train_loss": 0.5, "compute_s": 0.0} if phase == "fit" else {"loss": 0.4, "accuracy": 0.8}
    post = sim.post_evaluation
    if phase == "fit":  # a round that evaluates first takes the evaluation with the update
        evaluation = (50, {"loss": 0.4, "accuracy": 0.8}) if task.get("evaluate_first") else None
        post = functools.partial(sim.post_update, evaluation=evaluation)
    key = (sim.name, task["round"], phase)
    slot = arrivals[key] = {"times": [], "expected": watchers, "done": asyncio.Event()}
    t0 = time.perf_counter()
    answer = await post(task["round_id"], task["round"], metrics)
    if answer is None:  # counted as failed; not measured; retried as a trainer would
        arrivals.pop(key)
        await _retry(post, task, metrics)
        return
    timings.posts[path].append((time.perf_counter() - t0) * 1000)
    try:
        await asyncio.wait_for(slot["done"].wait(), EVENT_TIMEOUT_S)
    except TimeoutError:
        pass
    timings.lost += watchers - len(slot["times"])
    latencies = [(t - t0) * 1000 for t in slot["times"]]
    timings.samples[path] += latencies
    if latencies:
        timings.slowest[path].append(max(latencies))


async def run_job(stack, sims: list[SimNode], cookie: str, watchers: int, rounds: int, idle_s: float = 0) -> dict:
    """A job on every simulated node, watched by `watchers` websockets; each node posts
    each round's result in turn."""
    headers = {"Authorization": f"Token {stack.token}"}
    spec = {"model": "logreg", "dataset": "breast_cancer", "rounds": rounds, "evaluate_every": 1,
            "clients_required": len(sims), "round_timeout_s": 120, "seed": 0}
    async with async_client(stack.url, 20) as client:
        job = (await client.post("/api/v1/jobs/", headers=headers, json={
            "name": f"latency-{watchers}", "nodes": [s.name for s in sims], "spec": spec})).json()
        sockets, dropped = await connect_watchers(stack.url, job["id"], cookie, watchers, idle_s)
        arrivals, timings = {}, Timings()
        listeners = [asyncio.create_task(Watcher(ws, arrivals).listen()) for ws in sockets]
        try:
            started = await client.post(f"/api/v1/jobs/{job['id']}/start/", headers=headers)
            assert started.status_code == 200, started.text
            for _ in range(rounds + 1):  # the train rounds (each evaluating the last model first), the last evaluation
                for sim in sims:
                    await post_one(sim, job["id"], watchers, arrivals, timings)
            final = await _wait_status(client, headers, job["id"])
        finally:
            for ws in sockets:
                await ws.close()
            await asyncio.gather(*listeners, return_exceptions=True)
    return {"job": job["id"], "status": final, "samples": timings.samples, "slowest": timings.slowest,
            "posts": timings.posts, "lost": timings.lost,
            "idle_dropped": f"{dropped}/{watchers} in {idle_s:g} s" if idle_s else None}


async def _retry(post, task: dict, metrics: dict, attempts: int = 5) -> None:
    for attempt in range(attempts):
        await asyncio.sleep(0.5 * 2 ** attempt)
        if await post(task["round_id"], task["round"], metrics) is not None:
            return
    raise RuntimeError(f"round {task['round']}: {attempts} retries failed")


async def _wait_status(client, headers, job_id: int, timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = (await client.get(f"/api/v1/jobs/{job_id}/", headers=headers)).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job["status"]
        await asyncio.sleep(0.2)
    return "running"


async def measure(bench: BenchStack, nodes: int, rounds: int, profile: str | None = None) -> list[dict]:
    stack = bench.stack
    agents = FakeAgents()
    agent_base = await agents.start()
    names = [f"sim-{k:03d}" for k in range(1, nodes + 1)]
    tokens = await asyncio.to_thread(register_nodes, stack, names, agent_base)
    await asyncio.to_thread(bench.start)
    stats = Stats()
    rows = []
    sims = [SimNode(name, tokens[name], stack.url, stats) for name in names]
    beats = await asyncio.gather(*(s.heartbeat() for s in sims))
    interval = beats[0]["heartbeat_interval_s"]
    heartbeats = [asyncio.create_task(s.heartbeat_forever(interval)) for s in sims]
    try:
        cookie = await session_cookie(stack.url, bench.username, bench.password)
        model = await _initial_model(stack, sims[0])
        updates = perturbed_updates(model, 8)
        for sim in sims:
            sim.updates = updates
        for watchers in WATCHERS:
            profiler = Profiler(profile if watchers == max(WATCHERS) else None)
            profiler.start(f"latency-{bench.mode}-portal", stack.portal.pid)
            if bench.mode == "production":
                profiler.start(f"latency-{bench.mode}-worker", stack.processes[0].pid)
            cpu_before = tree_cpu_seconds(stack.portal.pid)
            try:
                result = await run_job(stack, sims, cookie, watchers, rounds,
                                       idle_s=IDLE_S if watchers == max(WATCHERS) else 0)
            finally:
                profiler.stop()
            events = sum(len(p) for p in result["posts"].values())
            result["portal_cpu_ms"] = 1000 * (tree_cpu_seconds(stack.portal.pid) - cpu_before) / max(events, 1)
            for path in ("update", "evaluation", "both"):
                rows.append(_row(bench.mode, watchers, path, result))
            print(common.table(rows[-3:], COLUMNS), flush=True)
    finally:
        for task in heartbeats:
            task.cancel()
        await asyncio.gather(*heartbeats, return_exceptions=True)
        await agents.stop()
    if stats.failed:
        rows[-1]["failures"] = stats.failures
    return rows


async def _initial_model(stack, sim: SimNode) -> bytes:
    """The job's round-0 weights, from a throwaway one-round job (to shape the updates)."""
    headers = {"Authorization": f"Token {stack.token}"}
    async with async_client(stack.url, 4) as client:
        job = (await client.post("/api/v1/jobs/", headers=headers, json={
            "name": "shape", "nodes": [sim.name], "start": True,
            "spec": {"model": "logreg", "dataset": "breast_cancer", "rounds": 1, "seed": 0}})).json()
        task = (await sim.request("GET", f"/api/v1/fl/jobs/{job['id']}/task?wait=20", timeout=35)).json()
        model = (await sim.request("GET", task["model_url"])).content
        await client.post(f"/api/v1/jobs/{job['id']}/cancel/", headers=headers, json={"reason": "shape only"})
    return model


COLUMNS = ["mode", "watchers", "path", "events", "samples", "p50_ms", "p95_ms", "max_ms", "slowest_watcher_p95_ms",
           "post_p50_ms", "lost", "idle_dropped", "portal_cpu_ms_per_event", "job", "loadavg"]


def _row(mode, watchers, path, result) -> dict:
    """Latency over every (event, watcher) pair; the slowest watcher per event; the POST's
    own round trip (the answer may come after the event: it is sent on commit)."""
    def pick(key):
        return result[key][path] if path != "both" else result[key]["update"] + result[key]["evaluation"]

    s, w, p = common.summary(pick("samples")), common.summary(pick("slowest")), common.summary(pick("posts"))
    return {"mode": mode, "watchers": watchers, "path": path, "events": p["n"], "samples": s["n"],
            "p50_ms": s["median"], "p95_ms": s["p95"], "max_ms": s["max"], "slowest_watcher_p95_ms": w["p95"],
            "post_p50_ms": p["median"], "lost": result["lost"] if path == "both" else None,
            "idle_dropped": result["idle_dropped"] if path == "both" else None, "job": result["status"],
            "portal_cpu_ms_per_event": round(result["portal_cpu_ms"], 1) if path == "both" else None,
            "loadavg": round(os.getloadavg()[0], 1)}


def verdicts(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        if row["watchers"] == max(WATCHERS) and row["path"] == "both":
            ok = (row["p50_ms"] is not None and row["p50_ms"] <= TARGET_P50_MS and row["p95_ms"] <= TARGET_P95_MS
                  and not row["lost"] and row["job"] == "succeeded")
            lines.append(f"- {row['mode']}, {row['watchers']} watchers: p50 {row['p50_ms']:.1f} ms "
                         f"(target ≤ {TARGET_P50_MS:g}), p95 {row['p95_ms']:.1f} ms (target ≤ {TARGET_P95_MS:g}), "
                         f"{row['lost']} lost: **{'met' if ok else 'MISSED'}**")
            idle = row["idle_dropped"]
            lines.append(f"- {row['mode']}: watchers dropped while the job was quiet: {idle}: "
                         f"**{'met' if idle.startswith('0/') else 'MISSED'}**")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["production", "embedded"], choices=["production", "embedded"])
    parser.add_argument("--profile", metavar="DIR", help="py-spy the portal (and worker) at 50 watchers into DIR")
    opts = parser.parse_args()
    rows, errors = [], []
    for mode in opts.modes:
        print(f"--- {mode} ---", flush=True)
        with BenchStack(mode, "latency", redis_db=12) as bench:
            rows += asyncio.run(measure(bench, opts.nodes, opts.rounds, opts.profile))
            errors += [f"{mode}: {e}" for e in bench.server_errors()]
    failures = [f for row in rows for f in row.pop("failures", [])]
    md = common.table(rows, COLUMNS)
    lines = verdicts(rows)
    print("\n" + md + "\n\n" + "\n".join(lines))
    common.print_problems(failures, errors)
    common.write_result("live_latency", {
        "nodes": opts.nodes, "rounds": opts.rounds, "rows": rows, "failed_requests": failures, "server_errors": errors,
        "targets": {"p50_ms": TARGET_P50_MS, "p95_ms": TARGET_P95_MS, "watchers": max(WATCHERS)},
        "summary_md": md + "\n\nTime from just before a node's POST (update or evaluation, FL API) to each "
                           "websocket watcher's receipt of the `metrics` event. "
                           f"{opts.nodes} simulated nodes, {opts.rounds} train rounds (evaluating the model they receive) + the last evaluation "
                           "per watcher count. post_p50_ms: the POST's own round trip (the event is sent on commit, "
                           "before the answer). portal_cpu_ms_per_event: the portal process's CPU time for the whole job (posts, "
                           "task polls, heartbeats, fan-out to the watchers, the idle wait) per measured event. idle_dropped: watchers whose websocket closed while the job was quiet "
                           f"for {IDLE_S:g} s. loadavg: the machine's 1-minute load average (2 cores).\n\n"
                           + "\n".join(lines)
                           + ("\n\nFailed requests:\n\n" + "\n".join(f"- {f}" for f in failures) if failures else "")
                           + ("\n\nExceptions in the portal's and worker's logs:\n\n" + "\n".join(f"- {e}" for e in errors)
                              if errors else "")})
    return 0 if all("**met**" in line for line in lines) and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
