"""Shared by the benchmarks: the machine's description, statistics, tables, results.

Every benchmark prints a table and writes bench/out/<name>.json with its figures and
the ratio to a baseline measured in the same run; bench/run_all.py turns them into
bench/RESULTS.md. Absolute times on shared machines are noise; ratios are the figures.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
BENCH_PYTHON = ROOT / "bench" / ".venv" / "bin" / "python"  # Flower's environment
sys.path.insert(0, str(ROOT))


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ram = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) * 1024
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(ram / 2**30, 1), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def versions() -> dict:
    import django
    import torch

    flower = subprocess.run([str(BENCH_PYTHON), "-c", "import flwr; print(flwr.__version__)"],
                            capture_output=True, text=True).stdout.strip() if BENCH_PYTHON.exists() else None
    return {"torch": torch.__version__, "django": django.__version__, "flwr": flower}


def summary(values: list[float]) -> dict:
    """median, p95, min, max, n of a sample (seconds or any unit)."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else None
    return {"median": statistics.median(ordered) if ordered else None, "p95": p95,
            "min": ordered[0] if ordered else None, "max": ordered[-1] if ordered else None, "n": len(ordered)}


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of `rows` (dicts) in `columns` order; floats to 4 significant digits."""
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, result: dict) -> Path:
    """bench/out/<name>.json with the machine and versions added."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"name": name, "machine": machine(), "versions": versions(), **result}, indent=2))
    return path


def finish(name: str, result: dict, started: float) -> int:
    """Print a benchmark's summary, write bench/out/<name>.json, say how long it took."""
    result["seconds"] = time.monotonic() - started
    print("\n" + result["summary_md"])
    write_result(name, result)
    print(f"\n({result['seconds']:.0f} s)")
    return 0


def print_problems(failed_requests: list[str], server_errors: list[str]) -> None:
    """What a benchmark's requests hit: failed requests by kind, exceptions in the logs."""
    if failed_requests:
        print("failed requests:\n  " + "\n  ".join(failed_requests))
    if server_errors:
        print("exceptions in the portal's and worker's logs:\n  " + "\n  ".join(server_errors))


@contextmanager
def timer():
    """`with timer() as t: ...; t()` gives the elapsed seconds."""
    started = time.perf_counter()
    yield lambda: time.perf_counter() - started
