"""Pages and list endpoints with a big database: 10,000 jobs, and one job of 100 train
and 100 evaluate rounds on 10 nodes with all their metrics, updates and events.

The data is bulk-created with the ORM in one `manage.py shell` run (set-up, not
measured); then every page and list endpoint is requested through HTTP as a user would
(pages with a session cookie from /login/, the REST API with an API token), one request
at a time (up to --requests, at least 5, about 6 s per endpoint, after a warm-up), and
the latency per endpoint is reported (p50, p95, max) with the answer's size; paginated
endpoints on their first page, a late page and their largest page (`limit` = the
maximum), and what reading every page costs. On the production stack (PostgreSQL) and
the embedded default (SQLite).

Query counts: each request is made once more in a `manage.py shell` with Django's test
client against the same database, counting its queries, next to the same request for a
small world (a job of 2 rounds; a user with 3 jobs): equal counts mean the count does not
grow with the data. tests/jobs/test_query_counts.py asserts the same in the test suite;
it is run here too and its result reported.

    .venv/bin/python bench/queries.py [--jobs 10000] [--requests 15] [--modes production embedded]
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from simnodes import BenchStack, Profiler, async_client, session_cookie

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
                                        **spec) for i in range(JOBS - 2)], batch_size=2000)
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
    # a running job has a round in flight (else the watchdog fails it, mid-measurement)
    running = [j for j in jobs if j.status == "running"]
    starts = ModelVersion.objects.bulk_create([ModelVersion(job=j, round=2, path=f"jobs/{{j.pk}}/m2", sha256="0" * 64,
                                                            bytes=376) for j in running], batch_size=2000)
    Round.objects.bulk_create([Round(job=v.job, number=3, status="open", target_updates=1, model_version=v,
                                     deadline=now + timedelta(days=1)) for v in starts], batch_size=2000)


def make_job(owner, name, rounds):
    # a finished job of `rounds` train + evaluate rounds on every node, with all their
    # metrics (per node and aggregate), updates and events
    job = Job.objects.create(owner=owner, name=name, status="succeeded", current_round=rounds,
                             **dict(spec, rounds=rounds))
    JobNode.objects.bulk_create([JobNode(job=job, node=n, dataset="breast_cancer", status="finished") for n in nodes])
    versions = ModelVersion.objects.bulk_create([ModelVersion(job=job, round=r, path=f"jobs/{{job.pk}}/m{{r}}",
                                                              sha256="0" * 64, bytes=376) for r in range(rounds + 1)])
    Job.objects.filter(pk=job.pk).update(final_model=versions[-1])
    rows = []
    for r in range(1, rounds + 1):
        for kind in ("train", "evaluate"):
            rows.append(Round(job=job, number=r, kind=kind, status="closed", target_updates=NODES,
                              model_version=versions[r - 1 if kind == "train" else r],
                              result_version=versions[r] if kind == "train" else None,
                              deadline=now + timedelta(seconds=300), closed_at=now))
    rows = Round.objects.bulk_create(rows)
    Round.selected.through.objects.bulk_create([Round.selected.through(round_id=rnd.pk, node_id=n.pk)
                                                for rnd in rows for n in nodes])
    Update.objects.bulk_create([Update(round=rnd, node=n, num_examples=45, path="" if rnd.kind == "evaluate" else
                                       f"jobs/{{job.pk}}/u{{rnd.pk}}-{{n.pk}}", sha256="0" * 64, bytes=376)
                                for rnd in rows for n in nodes], batch_size=2000)
    points, events = [], []
    for rnd in rows:
        phase, names = ("fit", FIT) if rnd.kind == "train" else ("eval", EVAL)
        for n in [*nodes, None]:
            points += [MetricPoint(job=job, round=rnd.number, node=n, phase=phase, name=name, value=rng.random())
                       for name in names]
        events.append(JobEvent(job=job, kind="round_open", message=f"round {{rnd.number}} ({{rnd.kind}}) open",
                               data={{"round": rnd.number, "kind": rnd.kind}}))
        events += [JobEvent(job=job, kind="update_accepted", node=n, message=f"{{rnd.kind}} result from {{n.name}}",
                            data={{"round": rnd.number, "kind": rnd.kind, "num_examples": 45}}) for n in nodes]
        events.append(JobEvent(job=job, kind="log", node=nodes[0], message="epoch 1/1 loss 0.31\\n" * 5))
        events += [JobEvent(job=job, kind="round_status", message=f"round {{rnd.number}} {{s}}",
                            data={{"round": rnd.number, "kind": rnd.kind, "status": s}}) for s in ("aggregating", "closed")]
    MetricPoint.objects.bulk_create(points, batch_size=5000)
    JobEvent.objects.bulk_create(events, batch_size=5000)
    return job


with transaction.atomic():
    small = make_job(owner, "small", 2)
    big = make_job(owner, "big", ROUNDS)
    few = get_user_model().objects.create_user(username="few")
    few_jobs = Job.objects.bulk_create([Job(owner=few, name=f"few {{s}}", status=s, current_round=3, **spec)
                                        for s in ("succeeded", "running", "failed")])
    start = ModelVersion.objects.create(job=few_jobs[1], round=2, path="m2", sha256="0" * 64, bytes=376)
    Round.objects.create(job=few_jobs[1], number=3, status="open", target_updates=1, model_version=start,
                         deadline=now + timedelta(days=1))
print("BIG " + json.dumps({{"job": big.pk, "small_job": small.pk, "jobs": Job.objects.filter(owner=owner).count(),
                           "running": Job.objects.filter(status="running").count(),
                           "rounds": big.rounds_set.count(), "metrics": MetricPoint.objects.filter(job=big).count(),
                           "events": JobEvent.objects.filter(job=big).count()}}))
"""


COUNT = """
import json
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from core.auth import api_token_create


def cost(what, username, url):
    user = get_user_model().objects.get(username=username)
    client, headers = Client(HTTP_HOST="127.0.0.1"), {{}}
    if what == "page":
        client.force_login(user)
    else:
        headers["HTTP_AUTHORIZATION"] = "Token " + api_token_create(user=user, name="query count")
    with CaptureQueriesContext(connection) as captured:
        answer = client.get(url, **headers)
    assert answer.status_code == 200, (url, answer.status_code, answer.content[:200])
    return len(captured)


from jobs.models import Job

print("COUNTS " + json.dumps([[cost(*request) if request else None for request in pair] for pair in {pairs!r}]))
print("RUNNING " + str(Job.objects.filter(status="running").count()))
"""


def endpoints(data: dict, user: str) -> list[tuple[str, str, tuple | None]]:
    """(what, url, twin): pages are fetched with the session cookie, the API with the
    token; `twin` is the same request in the small world, (user, url), for the query
    count (None where there is no smaller world here: the node lists)."""
    big, small, last = data["job"], data["small_job"], data["jobs"] - 50
    per_job = [("page", "/jobs/{}/"), ("api", "/api/v1/jobs/{}/"),
               ("api", "/api/v1/jobs/{}/rounds/"), ("api", "/api/v1/jobs/{}/rounds/?offset=%d"),
               ("api", "/api/v1/jobs/{}/rounds/?limit=" + str(MAX_LIMIT["rounds"])),
               ("api", "/api/v1/jobs/{}/metrics/"), ("api", "/api/v1/jobs/{}/metrics/?offset=%d"),
               ("api", "/api/v1/jobs/{}/metrics/?limit=" + str(MAX_LIMIT["metrics"])),
               ("api", "/api/v1/jobs/{}/metrics/?name=val_accuracy&node=aggregate"),
               ("api", "/api/v1/jobs/{}/events/"), ("api", "/api/v1/jobs/{}/models/"),
               ("api", "/api/v1/jobs/{}/cross-site/")]
    late = {"rounds": (150, 2), "metrics": (9000, 150)}  # a page past the first, in each world

    def fill(url: str, job: int, world: int) -> str:
        kind = next((k for k in late if f"/{k}/?offset" in url), None)
        return url.format(job) % late[kind][world] if kind else url.format(job)

    rows = [("page", "/", ("few", "/")), ("page", "/nodes/", None),
            ("api", "/api/v1/jobs/", ("few", "/api/v1/jobs/")),
            ("api", f"/api/v1/jobs/?offset={last}", ("few", "/api/v1/jobs/?offset=1")),
            ("api", "/api/v1/jobs/?status=running", ("few", "/api/v1/jobs/?status=running")),
            ("api", f"/api/v1/jobs/?limit={MAX_LIMIT['jobs']}", ("few", f"/api/v1/jobs/?limit={MAX_LIMIT['jobs']}")),
            ("api", "/api/v1/nodes/", None)]
    return rows + [(what, fill(url, big, 0), (user, fill(url, small, 1))) for what, url in per_job]


# the largest page each paginated endpoint gives (jobs/apis.py: Page, RoundPage, MetricPage)
MAX_LIMIT = {"jobs": 200, "rounds": 100, "metrics": 1000}
# readers that want everything follow `next`: what that costs, at the default and the largest page
ALL_PAGES = ["/api/v1/jobs/{}/rounds/", "/api/v1/jobs/{}/rounds/?limit=" + str(MAX_LIMIT["rounds"]),
             "/api/v1/jobs/{}/metrics/?limit=" + str(MAX_LIMIT["metrics"])]


async def measure(bench: BenchStack, jobs: int, requests: int, profile: str | None) -> tuple[list[dict], dict]:
    stack = bench.stack
    with common.timer() as took:
        out = await asyncio.to_thread(stack.manage, "shell", "-c", SETUP.format(
            jobs=jobs, rounds=ROUNDS, nodes=NODES, fit=FIT_METRICS, eval=EVAL_METRICS, username=bench.username))
    data = json.loads(next(line for line in out.splitlines() if line.startswith("BIG "))[4:])
    print(f"set-up: {data} in {took():.1f} s", flush=True)
    await asyncio.to_thread(bench.start)
    cookie = await session_cookie(stack.url, bench.username, bench.password)
    rows, requests_made = [], endpoints(data, bench.username)
    profiler = Profiler(profile)
    profiler.start(f"queries-{bench.mode}-portal", stack.portal.pid)
    try:
        async with async_client(stack.url, 4) as client:
            for what, url, _ in requests_made:
                headers = ({"Authorization": f"Token {stack.token}"} if what == "api"
                           else {"Cookie": f"sessionid={cookie}"})
                rows.append(await _time(client, bench.mode, url, headers, requests))
                print(common.table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
            for url in ALL_PAGES:
                rows.append(await _time_all_pages(client, bench.mode, url.format(data["job"]),
                                                  {"Authorization": f"Token {stack.token}"}))
                print(common.table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    finally:
        profiler.stop()
    data["running_after"] = _add_query_counts(bench, rows, requests_made)
    return rows, data


def _add_query_counts(bench: BenchStack, rows: list[dict], requests_made: list) -> int:
    """Each row's query count, and its small world twin's, from one `manage.py shell`;
    returns how many jobs are running now (the world must not have changed)."""
    pairs = [((what, bench.username, url), (what, *twin) if twin else None) for what, url, twin in requests_made]
    out = bench.stack.manage("shell", "-c", COUNT.format(pairs=pairs))
    counts = json.loads(next(line for line in out.splitlines() if line.startswith("COUNTS "))[7:])
    for row, (big, small) in zip(rows, counts):
        row["queries"], row["small_world_queries"] = big, small
    return int(next(line for line in out.splitlines() if line.startswith("RUNNING "))[8:])


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


async def _time_all_pages(client, mode: str, url: str, headers: dict, repeats: int = 5) -> dict:
    """Every page of `url`, following `next` one request at a time, `repeats` times."""
    times, pages, size, status = [], 0, 0, 200
    for _ in range(repeats):
        t0, pages, size, next_url = time.perf_counter(), 0, 0, url
        while next_url:
            answer = await client.get(next_url, headers=headers, timeout=120)
            if answer.status_code != 200:
                status, next_url = answer.status_code, None
                break
            pages, size, next_url = pages + 1, size + len(answer.content), answer.json()["next"]
        times.append((time.perf_counter() - t0) * 1000)
    s = common.summary(times)
    return {"mode": mode, "url": f"{url} (all {pages} pages)", "status": status, "n": s["n"], "p50_ms": s["median"],
            "p95_ms": s["p95"], "max_ms": s["max"], "kib": round(size / 1024, 1), "loadavg": round(os.getloadavg()[0], 1)}


def query_count_test() -> tuple[bool, str]:
    """Run tests/jobs/test_query_counts.py (the suite's own assertion that the counts
    are constant); (passed, its last line)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run([sys.executable, "-m", "pytest", "tests/jobs/test_query_counts.py", "-q",
                             "-p", "no:cacheprovider"], cwd=common.ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return result.returncode == 0, (lines[-1] if lines else result.stderr[-300:]).strip("= ")


COLUMNS = ["mode", "url", "status", "n", "p50_ms", "p95_ms", "max_ms", "kib", "queries", "small_world_queries",
           "loadavg"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--modes", nargs="+", default=["production", "embedded"], choices=["production", "embedded"])
    parser.add_argument("--profile", metavar="DIR", help="py-spy the portal into DIR")
    opts = parser.parse_args()
    rows, data, unchanged = [], {}, {}
    for mode in opts.modes:
        print(f"--- {mode} ---", flush=True)
        with BenchStack(mode, "queries", redis_db=14) as bench:
            mode_rows, data = asyncio.run(measure(bench, opts.jobs, opts.requests, opts.profile))
            rows += mode_rows
            unchanged[mode] = (data["running"], data["running_after"])
    held, test_line = query_count_test()
    md = common.table(rows, COLUMNS)
    lines = summary_lines(rows, held, test_line)
    lines.insert(1, "- the data did not change while measured (running jobs before → after: " + ", ".join(
        f"{mode} {a} → {b}" for mode, (a, b) in unchanged.items()) + f"): **{'yes' if all(a == b for a, b in unchanged.values()) else 'NO'}**")
    print("\n" + md + "\n\n" + "\n".join(lines))
    common.write_result("queries", {
        "data": data, "requests": opts.requests, "rows": rows, "query_count_test": {"passed": held, "result": test_line},
        "summary_md": md + f"\n\n{data.get('jobs')} jobs owned by the user; the big job: {data.get('rounds')} rounds "
                           f"({ROUNDS} train + {ROUNDS} evaluate) on {NODES} nodes, {data.get('metrics')} metric points, "
                           f"{data.get('events')} events. Sequential requests (up to --requests, at least 5, about 6 s "
                           "per endpoint) after a warm-up; pages with a session cookie, the API with a token; "
                           "paginated endpoints at the default page (50), a late page and the largest (`limit` = "
                           "the maximum), and every page read by following `next`. `queries`: the request's "
                           "query count here; `small_world_queries`: the same request for a job of 2 rounds, or "
                           "a user with 3 jobs.\n\n" + "\n".join(lines)})
    return 0 if held and not any(r["status"] != 200 for r in rows) else 1


def summary_lines(rows: list[dict], held: bool, test_line: str) -> list[str]:
    bad = [r for r in rows if r["status"] != 200]
    grew = [f"{r['mode']} {r['url']} ({r['small_world_queries']} → {r['queries']})" for r in rows
            if r.get("small_world_queries") is not None and r["small_world_queries"] != r["queries"]]
    slowest = sorted(rows, key=lambda r: -(r["p95_ms"] or 0))[:3]
    return [f"- every answer 200: **{'yes' if not bad else 'NO: ' + ', '.join(r['url'] for r in bad)}**",
            f"- query count the same as in the small world, for every endpoint that has one: "
            f"**{'yes' if not grew else 'NO: ' + '; '.join(grew)}**",
            f"- the constant-query-count test (tests/jobs/test_query_counts.py) holds: "
            f"**{'yes' if held else 'NO'}** ({test_line})",
            "- slowest p95: " + "; ".join(f"{r['mode']} {r['url']} {r['p95_ms']:.0f} ms ({r['kib']} KiB)"
                                          for r in slowest)]


if __name__ == "__main__":
    sys.exit(main())
