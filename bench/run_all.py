"""`make bench`: run every benchmark in turn, then write bench/RESULTS.md from their
JSON results (bench/out/*.json). A benchmark that fails is reported, not hidden."""
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, machine, versions

BENCHMARKS = ["round_overhead", "aggregation", "transfer", "live_latency", "job_start", "scale", "queries"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        script = ROOT / "bench" / f"{name}.py"
        if not script.exists():
            failed.append(f"{name}: not written yet")
            continue
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        if subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode != 0:
            failed.append(f"{name}: exited non-zero")
        print(f"({name}: {time.monotonic() - started:.0f} s)")
    write_report(failed)
    print("\n" + "\n".join(failed) if failed else "\nall benchmarks ran")
    return 1 if failed else 0


def write_report(failed: list[str]) -> None:
    parts = ["# Benchmark results", "", "Written by `make bench` (bench/run_all.py) from bench/out/*.json.", "",
             f"Machine: {json.dumps(machine())}", f"Versions: {json.dumps(versions())}", ""]
    for name in BENCHMARKS:
        path = OUT / f"{name}.json"
        if path.exists():
            result = json.loads(path.read_text())
            parts += [f"## {name}", "", result.get("summary_md", "(no summary)"), ""]
    if failed:
        parts += ["## Not run or failed", ""] + [f"- {line}" for line in failed]
    (ROOT / "bench" / "RESULTS.md").write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    sys.exit(main())
