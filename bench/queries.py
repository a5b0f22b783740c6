"""Pages and list endpoints with a big database: 10,000 jobs, and one job of 100 train
and 100 evaluate rounds on 10 nodes with all their metrics, updates and events.

The data is bulk-created with the ORM in one `manage.py shell` run (set-up, not
measured); then every page and list endpoint is requested through HTTP as a user would
(pages with a session cookie from /login/, the REST API with an API token), one request
at a time (up to --requests, at least 5, about 6 s per endpoint, after a warm-up), and
the latency per endpoint is reported (p50, p95, max) with the answer's size. On the
production stack (PostgreSQL) and the embedded default (SQLite).

    .venv/bin/python bench/queries.py [--jobs 10000] [--requests 15] [--modes production embedded]

The query count of each of these is constant in the number of jobs, rounds and nodes:
tests/jobs/test_query_counts.py.
"""
import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from simnodes import BenchStack, Profiler, async_client, session_cookie  # noqa: E402

ROUNDS, NODES = 100, 10
FIT_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "compute_s", "num_examples")
EVAL_METRICS = ("loss", "accuracy", "num_examples")

SETUP = """
import json, random
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from jobs.models import Job, JobEvent, JobNode, MetricPoint, ModelVersion, Round, Update
from nodes.models import Node
from nodes.services import node_register

JOBS, ROUNDS, NODES = {jobs}, {rounds}, {nodes}
FIT, EVAL = {fit!r}, {eval!r}
rng = random.Random(0)
owner = get_user_model().objects.get(username={username!r})
now = timezone.now()
spec = dict(model="logreg", model_params={{"in_features": 30, "num_classes": 2}}, dataset="breast_cancer",
            optimizer_params={{"lr": 0.1}}, rounds=ROUNDS, clients_required=NODES)
nodes = [node_register(name=f"site-{{k:02d}}", agent_url="http://127.0.0.1:9").node for k in range(NODES)]
Node.objects.update(status="online", last_heartbeat_at=now, version="bench",
                    datasets=[{{"name": "breast_cancer", "format": "builtin", "n_examples": 569, "n_features": 30,
                               "num_classes": 2}}], resources={{"cpus": 2}})
with transaction.atomic():
    statuses = ["succeeded"] * 6 + ["failed", "cancelled", "running", "draft"]
    jobs = Job.objects.bulk_create([Job(owner=owner, name=f"job {{i}}", status=statuses[i % 10], current_round=3,
                                        **spec) for i in range(JOBS - 1)], batch_size=2000)
    JobNode.objects.bulk_create([JobNode(job=j, node=nodes[i % NODES], dataset="breast_cancer")
                                 for i, j in enumerate(jobs)], batch_size=2000)
    finals = ModelVersion.objects.bulk_create([ModelVersion(job=j, round=3, path=f"jobs/{{j.pk}}/m3", sha256="0" * 64,
                                                            bytes=376) for j in jobs if j.status == "succeeded"],
                                              batch_size=2000)
    for version in finals:
        version.job.final_model = version
    Job.objects.bulk_update([v.job for v in finals], ["final_model"], batch_size=2000)
    JobEvent.objects.bulk_create([JobEvent(job=j, kind="created", message=f"created by {{owner}}", actor=owner)
                                  for j in jobs], batch_size=2000)

    big = Job.objects.create(owner=owner, name="big", status="succeeded", current_round=ROUNDS, **spec)
    JobNode.objects.bulk_create([JobNode(job=big, node=n, dataset="breast_cancer", status="finished") for n in nodes])
    versions = ModelVersion.objects.bulk_create([ModelVersion(job=big, round=r, path=f"jobs/{{big.pk}}/m{{r}}",
                                                              sha256="0" * 64, bytes=376) for r in range(ROUNDS + 1)])
    rounds = []
    for r in range(1, ROUNDS + 1):
        for kind in ("train", "evaluate"):
            rounds.append(Round(job=big, number=r, kind=kind, status="closed", target_updates=NODES,
                                model_version=versions[r - 1 if kind == "train" else r],
                                result_version=versions[r] if kind == "train" else None,
                                deadline=now + timedelta(seconds=300), closed_at=now))
    rounds = Round.objects.bulk_create(rounds)
    Round.selected.through.objects.bulk_create([Round.selected.through(round_id=rnd.pk, node_id=n.pk)
                                                for rnd in rounds for n in nodes])
    Update.objects.bulk_create([Update(round=rnd, node=n, num_examples=45, path="" if rnd.kind == "evaluate" else
                                       f"jobs/{{big.pk}}/u{{rnd.pk}}-{{n.pk}}", sha256="0" * 64, bytes=376)
                                for rnd in rounds for n in nodes], batch_size=2000)
    points, events = [], []
    for rnd in rounds:
        phase, names = ("fit", FIT) if rnd.kind == "train" else ("eval", EVAL)
        for n in [*nodes, None]:
            points += [MetricPoint(job=big, round=rnd.number, node=n, phase=phase, name=name, value=rng.random())
                       for name in names]
        events.append(JobEvent(job=big, kind="round_open", message=f"round {{rnd.number}} ({{rnd.kind}}) open",
                               data={{"round": rnd.number, "kind": rnd.kind}}))
        events += [JobEvent(job=big, kind="update_accepted", node=n, message=f"{{rnd.kind}} result from {{n.name}}",
                            data={{"round": rnd.number, "kind": rnd.kind, "num_examples": 45}}) for n in nodes]
        events.append(JobEvent(job=big, kind="log", node=nodes[0], message="epoch 1/1 loss 0.31\\n" * 5))
        events += [JobEvent(job=big, kind="round_status", message=f"round {{rnd.number}} {{s}}",
                            data={{"round": rnd.number, "kind": rnd.kind, "status": s}}) for s in ("aggregating", "closed")]
    MetricPoint.objects.bulk_create(points, batch_size=5000)
    JobEvent.objects.bulk_create(events, batch_size=5000)
print("BIG " + json.dumps({{"job": big.pk, "jobs": Job.objects.count(), "rounds": len(rounds),
                           "metrics": MetricPoint.objects.filter(job=big).count(),
                           "events": JobEvent.objects.filter(job=big).count()}}))
"""


def endpoints(big: int) -> list[tuple[str, str]]:
    """(what, url); pages are fetched with the session cookie, the API with the token."""
    return [("page", "/"), ("page", f"/jobs/{big}/"), ("page", "/nodes/"),
            ("api", "/api/v1/jobs/"), ("api", "/api/v1/jobs/?offset=9950"), ("api", "/api/v1/jobs/?status=running"),
            ("api", "/api/v1/nodes/"), ("api", f"/api/v1/jobs/{big}/rounds/"), ("api", f"/api/v1/jobs/{big}/metrics/"),
            ("api", f"/api/v1/jobs/{big}/metrics/?name=val_accuracy&node=aggregate"),
            ("api", f"/api/v1/jobs/{big}/events/"), ("api", f"/api/v1/jobs/{big}/models/")]


async def measure(bench: BenchStack, jobs: int, requests: int, profile: str | None) -> tuple[list[dict], dict]:
    stack = bench.stack
    with common.timer() as took:
        out = await asyncio.to_thread(stack.manage, "shell", "-c", SETUP.format(
            jobs=jobs, rounds=ROUNDS, nodes=NODES, fit=FIT_METRICS, eval=EVAL_METRICS, username=bench.username))
    data = json.loads(next(line for line in out.splitlines() if line.startswith("BIG "))[4:])
    print(f"set-up: {data} in {took():.1f} s", flush=True)
    await asyncio.to_thread(bench.start)
    cookie = await session_cookie(stack.url, bench.username, bench.password)
    rows = []
    profiler = Profiler(profile)
    profiler.start(f"queries-{bench.mode}-portal", stack.portal.pid)
    try:
        async with async_client(stack.url, 4) as client:
            for what, url in endpoints(data["job"]):
                headers = ({"Authorization": f"Token {stack.token}"} if what == "api"
                           else {"Cookie": f"sessionid={cookie}"})
                rows.append(await _time(client, bench.mode, url, headers, requests))
                print(common.table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    finally:
        profiler.stop()
    return rows, data


async def _time(client, mode: str, url: str, headers: dict, requests: int, budget_s: float = 6.0) -> dict:
    times, size, status = [], 0, None
    await client.get(url, headers=headers, timeout=120)  # warm-up: first-use imports, caches
    started = time.monotonic()
    while len(times) < requests and (time.monotonic() - started < budget_s or len(times) < 5):
        t0 = time.perf_counter()
        answer = await client.get(url, headers=headers, timeout=120)
        times.append((time.perf_counter() - t0) * 1000)
        size, status = len(answer.content), answer.status_code
    s = common.summary(times)
    return {"mode": mode, "url": url, "status": status, "n": s["n"], "p50_ms": s["median"], "p95_ms": s["p95"],
            "max_ms": s["max"], "kib": round(size / 1024, 1), "loadavg": round(os.getloadavg()[0], 1)}


COLUMNS = ["mode", "url", "status", "n", "p50_ms", "p95_ms", "max_ms", "kib", "loadavg"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--modes", nargs="+", default=["production", "embedded"], choices=["production", "embedded"])
    parser.add_argument("--profile", metavar="DIR", help="py-spy the portal into DIR")
    opts = parser.parse_args()
    rows, data = [], {}
    for mode in opts.modes:
        print(f"--- {mode} ---", flush=True)
        with BenchStack(mode, "queries", redis_db=14) as bench:
            mode_rows, data = asyncio.run(measure(bench, opts.jobs, opts.requests, opts.profile))
            rows += mode_rows
    md = common.table(rows, COLUMNS)
    bad = [r for r in rows if r["status"] != 200]
    slowest = sorted(rows, key=lambda r: -(r["p95_ms"] or 0))[:3]
    lines = [f"- every answer 200: **{'yes' if not bad else 'NO: ' + ', '.join(r['url'] for r in bad)}**",
             "- slowest p95: " + "; ".join(f"{r['mode']} {r['url']} {r['p95_ms']:.0f} ms ({r['kib']} KiB)"
                                           for r in slowest)]
    print("\n" + md + "\n\n" + "\n".join(lines))
    common.write_result("queries", {
        "data": data, "requests": opts.requests, "rows": rows,
        "summary_md": md + f"\n\n{data.get('jobs')} jobs owned by the user; the big job: {data.get('rounds')} rounds "
                           f"(100 train + 100 evaluate) on {NODES} nodes, {data.get('metrics')} metric points, "
                           f"{data.get('events')} events. Sequential requests (up to --requests, at least 5, about 6 s per endpoint) after a warm-up; pages with a session "
                           "cookie, the API with a token.\n\n" + "\n".join(lines)})
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
