"""FedAvg over N updates of P float32 parameters, read from safetensors files on disk as the
portal's worker does (`jobs.services.rounds._aggregate_and_write`: load the global state,
then for each update load it, add it, drop it), in its two ways of summing float32 tensors
(fl/strategies/fedavg.py's ``sums`` strategy parameter, passed as the worker passes a
job's ``strategy_params``: ``get_strategy(name)(global_state, params)``): float32 sums, the
default ("ours", ``{}``), and float64 sums ("ours64", ``{"sums": "float64"}``). The targets
are judged on the default. Against, in the same run:

- the memory-bandwidth floor: a raw PyTorch in-place weighted sum (``acc.add_(t, alpha=w)``
  then ``acc.div_(total)``) of the same tensors already in memory, with a float32
  accumulator (the floor the targets name) and with a float64 one (ours64's precision,
  summed the plain way: zeros, then each update cast through an L2-sized buffer and
  added);
- Flower 1.41's ``flwr.server.strategy.aggregate.aggregate`` on lists of numpy arrays
  loaded from the same files (``safetensors.numpy.load_file``, same pread reader), run
  under bench/.venv/bin/python.

The default's (float32 sums') error is measured against the exact mean (float64) and the
bound that fedavg.py proves, gamma(N + 3). FedMedian and Krum (which keep every update) are reported
from the same files.

Every case runs in a fresh subprocess, single-threaded (numpy's element-wise ops are;
torch gets one intra-op thread). Times are CPU seconds of that process (user + system,
page faults included), the fastest of a few passes: on a shared machine they leave out
the time other processes held the cores, which wall times (also kept) do not. Each pass
starts cold: ``malloc_trim`` hands the previous pass's free memory back first.

Peak memory is the process's VmHWM (reset through /proc/self/clear_refs after imports and
warm-up) minus its VmRSS at that moment, so it counts everything the case allocates:
updates, accumulators, temporaries, the result, and (one column) the global state.
Units: "models" = P * 4 bytes (one float32 model).

Runs in about 1.5 to 2 minutes on an idle two-core machine (writing 2 GB of update files
is part of it); longer on a busy one.

    .venv/bin/python bench/aggregation.py [--sizes 1M,10M] [--ns 5,20,50] [--full]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

SIZES = {"1M": 1_000_000, "10M": 10_000_000}
SCRIPT = Path(__file__).resolve()
REPEATS = {"1M": 5, "10M": 3}  # timings: the fastest of this many passes (a shared machine only adds delays)
#: The two ways FedAvg can sum float32 tensors (the ``sums`` strategy parameter of
#: fl/strategies/fedavg.py), as strategy_params: the default first.
VARIANT_PARAMS = {"ours": {}, "ours64": {"sums": "float64"}}


# --------------------------------------------------------------------------- the files

def layout(params: int) -> list[tuple[str, tuple[int, ...]]]:
    """An MLP-like state dict of exactly ``params`` float32 values: three weight
    matrices (about 50 %, 35 %, 15 %) with their biases."""
    width = 1000
    rows1, rows2 = params // 2 // width, params * 35 // 100 // width
    used = rows1 * width + rows1 + rows2 * width + rows2
    rest = params - used - 10
    return [("fc1.weight", (rows1, width)), ("fc1.bias", (rows1,)), ("fc2.weight", (rows2, width)),
            ("fc2.bias", (rows2,)), ("fc3.weight", (rest,)), ("fc3.bias", (10,))]


def write_files(directory: Path, params: int, count: int) -> dict:
    """global.safetensors and update-XX.safetensors (random normal float32, one seed each);
    returns {"global": path, "updates": [paths], "num_examples": [ints]}."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    shapes = layout(params)

    def state(seed):
        gen = torch.Generator().manual_seed(seed)
        return {name: torch.randn(shape, generator=gen) for name, shape in shapes}

    save_file(state(0), str(directory / "global.safetensors"))
    paths = []
    for k in range(count):
        path = directory / f"update-{k:02d}.safetensors"
        save_file(state(k + 1), str(path))
        paths.append(str(path))
    gen = torch.Generator().manual_seed(1234)
    num_examples = torch.randint(100, 1000, (count,), generator=gen).tolist()
    return {"global": str(directory / "global.safetensors"), "updates": paths, "num_examples": num_examples}


# --------------------------------------------------------------------------- memory probes

def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> int:
    """Reset VmHWM to the current RSS; returns that RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak() -> int:
    return _status("VmHWM")


# --------------------------------------------------------------------------- workers (subprocesses)

def clock() -> float:
    """CPU seconds of this process (user + system: page faults included). Every case is
    single-threaded, so on an idle machine this is its wall time; on a shared one it
    leaves out the time other processes held the cores. Wall times are kept too."""
    return time.process_time()


def worker_stream(spec: dict) -> dict:
    """The portal's path (``_aggregate_and_write``): load the global state, then load, add
    and drop each update, then ``result()``. The first pass gives the memory figures;
    the timings are the fastest of the passes (the files are in the page cache)."""
    from fl.serialization import load_state_dict, load_state_dict_header
    from fl.strategies import get_strategy

    # as the worker does: only the header of the global model when the strategy needs no more
    load_global = load_state_dict if get_strategy(spec["strategy"]).uses_global_values else load_state_dict_header
    _threads()
    _warm_up(spec["strategy"], spec["strategy_params"])
    paths, counts = spec["updates"][:spec["n"]], spec["num_examples"][:spec["n"]]
    passes = []
    for repeat in range(spec.get("repeats", 3)):
        release_free_memory()
        base = reset_peak()
        started, wall_started = clock(), time.perf_counter()
        global_state = load_global(spec["global"])
        load_s = clock() - started
        holding_global = _status("VmRSS")
        strategy = get_strategy(spec["strategy"])(global_state, spec["strategy_params"])
        add_s = 0.0
        for path, count in zip(paths, counts):
            t0 = clock()
            update = load_state_dict(path)
            t1 = clock()
            strategy.add(update, count)
            del update
            add_s += clock() - t1
            load_s += t1 - t0
        t0 = clock()
        result = strategy.result()
        result_s = clock() - t0
        total_s, wall_s = clock() - started, time.perf_counter() - wall_started
        if repeat == 0:
            memory = {"peak_bytes": peak() - base, "peak_over_global_bytes": peak() - holding_global}
            if spec.get("save"):
                from safetensors.torch import save_file
                save_file({k: v.contiguous() for k, v in result.items()}, spec["save"])
        passes.append({"load_s": load_s, "agg_s": add_s + result_s, "result_s": result_s, "total_s": total_s,
                       "total_wall_s": wall_s})
        del result, strategy, global_state
    best = min(passes, key=lambda p: p["total_s"])
    return {**best, **memory, "passes": len(passes)}


def release_free_memory() -> None:
    """Hand the allocator's free memory back to the system (glibc ``malloc_trim``), so that
    every pass starts cold, as the first one did: its allocations fault fresh pages in
    instead of reusing the previous pass's."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _threads() -> None:
    """One intra-op thread: numpy's element-wise ops (Flower) use one, and on a shared
    two-core machine a second OpenMP thread turns every descheduling into a stall."""
    import torch

    torch.set_num_threads(1)


def _warm_up(strategy_name: str, params: dict) -> None:
    """Run every kernel the case uses once on tiny tensors, so lazy initialisation is
    neither timed nor counted as the case's memory."""
    import torch

    from fl.strategies import get_strategy

    small = {"w": torch.zeros(64, 8), "b": torch.zeros(8)}
    strategy = get_strategy(strategy_name)(small, params)
    for k in range(5):
        strategy.add({"w": torch.randn(64, 8), "b": torch.randn(8)}, 10 + k)
    strategy.result()


def worker_memory(spec: dict) -> dict:
    """Data already in memory: the raw floors and the portal's FedAvg (float32 sums, the
    default; and float64 sums) on the same tensors, run a few times each, interleaved; the
    fastest of each. Also the default's error against the exact mean (float64), and the
    float64 sums' difference from the float64 floor."""

    from fl.serialization import load_state_dict

    _threads()
    global_state = load_state_dict(spec["global"])
    updates = [load_state_dict(p) for p in spec["updates"][:spec["n"]]]
    counts = spec["num_examples"][:spec["n"]]
    cases = {"floor_f32": _floor_f32, "floor_f64": _floor_f64,
             **{key: (lambda *a, params=params: _ours(params, *a)) for key, params in VARIANT_PARAMS.items()}}
    times, last = {name: [] for name in cases}, {}
    for _ in range(spec.get("repeats", 3)):  # the fastest run counts: the first one warms up
        for name, fn in cases.items():
            last.pop(name, None)
            t0 = clock()
            out = fn(global_state, updates, counts)
            times[name].append(clock() - t0)
            last[name] = out
            del out
    reference, check = last["floor_f64"], last["ours64"]
    max_err = max(float((check[n].double() - reference[n].double()).abs().max()) for n in reference)
    return {**{f"{name}_s": min(values) for name, values in times.items()},
            "ours64_vs_floor64_max_abs_diff": max_err,
            "ours_error_over_magnitude": _relative_error(last["ours"], updates, counts)}


def _floor_f32(global_state, updates, counts):
    """The naive float32 in-place weighted sum: what the hardware allows."""
    import torch

    acc = {name: torch.zeros(t.shape, dtype=torch.float32) for name, t in global_state.items()}
    for update, count in zip(updates, counts):
        for name, tensor in update.items():
            acc[name].add_(tensor, alpha=count)
    for tensor in acc.values():
        tensor.div_(float(sum(counts)))
    return acc


def _floor_f64(global_state, updates, counts):
    """The same in float64 sums: each float32 slice cast into an L2-sized buffer, then
    added (a plain ``acc64.add_(t32)`` first copies all of ``t32`` to float64, and is slower)."""
    import torch

    size, total = 1 << 18, float(sum(counts))
    buffer = torch.empty(size, dtype=torch.float64)
    acc = {name: torch.zeros(t.numel(), dtype=torch.float64) for name, t in global_state.items()}
    for update, count in zip(updates, counts):
        for name, tensor in update.items():
            flat, out = tensor.reshape(-1), acc[name]
            for start in range(0, flat.numel(), size):
                part = buffer[:min(size, flat.numel() - start)]
                part.copy_(flat[start:start + size])
                out[start:start + size].add_(part, alpha=count)
    return {name: (t / total).to(torch.float32).reshape(global_state[name].shape) for name, t in acc.items()}


def _ours(params, global_state, updates, counts):
    """The portal's FedAvg over the same tensors, with the sums ``params`` ask for."""
    from fl.strategies import get_strategy

    strategy = get_strategy("fedavg")(global_state, params)
    for update, count in zip(updates, counts):
        strategy.add(update, count)
    return strategy.result()


def _relative_error(result, updates, counts) -> float:
    """max over elements of |result - exact mean| / (sum_k w_k |t_k| / W), the exact mean
    and magnitude computed in float64 (whose own error, ~N * 2**-53, is far below float32's):
    the quantity fedavg.py bounds by gamma(N + 3), u = 2**-24, for float32 sums (the default)."""
    import torch

    total, worst = float(sum(counts)), 0.0
    for name, out in result.items():
        mean = torch.zeros(out.shape, dtype=torch.float64)
        magnitude = torch.zeros(out.shape, dtype=torch.float64)
        for update, count in zip(updates, counts):
            value = update[name].double()
            mean.add_(value, alpha=count)
            magnitude.add_(value.abs_(), alpha=count)
        error = (out.double() - mean / total).abs_().div_(magnitude.div_(total).clamp_(min=1e-300))
        worst = max(worst, float(error.max()))
    return worst


def worker_flower(spec: dict) -> dict:
    """Flower's aggregate() on numpy arrays from the same files (runs in bench/.venv).
    Memory from the first pass; timings the fastest of the passes."""
    import numpy as np
    from flwr.server.strategy.aggregate import aggregate
    from safetensors.numpy import load_file

    paths, counts = spec["updates"][:spec["n"]], spec["num_examples"][:spec["n"]]
    aggregate([([np.ones(8, np.float32)], 3), ([np.zeros(8, np.float32)], 5)])  # warm-up
    names = [name for name, _ in spec["layout"]]
    passes = []
    for repeat in range(spec.get("repeats", 3)):
        release_free_memory()
        base = reset_peak()
        started, wall_started = clock(), time.perf_counter()
        results = []
        for path, count in zip(paths, counts):
            arrays = load_file(path, backend="pread")
            results.append(([arrays[name] for name in names], count))
            del arrays
        load_s = clock() - started
        loaded_rss, load_peak = _status("VmRSS"), peak()
        reset_peak()
        t0 = clock()
        averaged = aggregate(results)
        agg_s = clock() - t0
        total_s, wall_s = clock() - started, time.perf_counter() - wall_started
        if repeat == 0:
            memory = {"peak_bytes": max(load_peak, peak()) - base, "agg_extra_bytes": peak() - loaded_rss}
            if spec.get("save"):
                from safetensors.numpy import save_file
                save_file(dict(zip(names, averaged)), spec["save"])
        passes.append({"load_s": load_s, "agg_s": agg_s, "total_s": total_s, "total_wall_s": wall_s})
        del results, averaged
    return {**min(passes, key=lambda p: p["total_s"]), **memory, "passes": len(passes)}


WORKERS = {"stream": worker_stream, "memory": worker_memory, "flower": worker_flower}


def run_worker(kind: str, spec: dict, python: str = sys.executable, timeout: float = 600) -> dict:
    env = {**os.environ, "PYTHONPATH": str(common.ROOT), "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([python, str(SCRIPT), "--worker", kind], input=json.dumps(spec), env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=common.ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the run

# FedMedian and Krum keep every update and stack them in float64; Krum's distances cost
# O(N^2 P). Where they run without --full (the rest would take minutes):
ROBUST = {"fedmedian": ({}, {"1M": [5, 20, 50], "10M": [5, 20]}),
          "krum": ({"f": 1, "m": 1}, {"1M": [5, 20], "10M": [5]})}


def run(sizes: list[str], ns: list[int], full: bool) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="flportal-bench-agg-"))
    rows, robust_rows, checks = [], [], []
    try:
        for size in sizes:
            params = SIZES[size]
            model_bytes = params * 4
            t0 = time.perf_counter()
            files = write_files(workdir / size, params, max(ns))
            print(f"[{size}] wrote {max(ns) + 1} files of {model_bytes / 1e6:.0f} MB in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            base_spec = {**files, "layout": layout(params), "strategy": "fedavg", "strategy_params": {},
                         "repeats": REPEATS[size]}
            for n in ns:
                rows.append(_fedavg_row(workdir, {**base_spec, "n": n}, size, save=n == min(ns), checks=checks))
            for strategy, (params, where) in ROBUST.items():
                for n in (ns if full else [x for x in ns if x in where.get(size, [])]):
                    res = run_worker("stream", {**base_spec, "n": n, "strategy": strategy, "strategy_params": params,
                                                "repeats": 1})
                    robust_rows.append({"strategy": strategy, "P": size, "N": n, "total_s": res["total_s"],
                                        "load_s": res["load_s"], "agg_s": res["agg_s"],
                                        "peak_models": res["peak_over_global_bytes"] / model_bytes})
                    print(f"[{size} N={n}] {strategy} {res['total_s']:.2f} s, "
                          f"{robust_rows[-1]['peak_models']:.1f} models", flush=True)
            shutil.rmtree(workdir / size)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"rows": rows, "robust": robust_rows, "checks": checks}


def _fedavg_row(workdir: Path, spec: dict, size: str, save: bool, checks: list) -> dict:
    """One (P, N) case: the portal's path with float32 sums (the default) and with float64
    sums, Flower, and the in-memory floors; on one case per size (``save``) the results of
    ours and Flower's are compared and the difference appended to ``checks``."""
    model_bytes, n = SIZES[size] * 4, spec["n"]
    ours, ours64 = (run_worker("stream", {**spec, "strategy_params": {**spec["strategy_params"], **params},
                                          "save": str(workdir / f"{key}.st") if save else ""})
                    for key, params in VARIANT_PARAMS.items())
    flower = run_worker("flower", {**spec, "save": str(workdir / "flwr.st") if save else ""},
                        python=str(common.BENCH_PYTHON))
    mem = run_worker("memory", spec)
    if save:
        checks.append(_compare(workdir, size, n))
    row = {"P": size, "N": n}
    for key, res in (("ours", ours), ("ours64", ours64), ("flower", flower)):
        row.update({f"{key}_total_s": res["total_s"], f"{key}_load_s": res["load_s"], f"{key}_agg_s": res["agg_s"]})
    for key, res in (("ours", ours), ("ours64", ours64)):
        row.update({f"{key}_in_memory_s": mem[f"{key}_s"],
                    f"{key}_peak_models": res["peak_over_global_bytes"] / model_bytes,
                    f"{key}_peak_incl_global_models": res["peak_bytes"] / model_bytes})
    row.update({
        "floor_f32_s": mem["floor_f32_s"], "floor_f64_s": mem["floor_f64_s"],
        "flower_peak_models": flower["peak_bytes"] / model_bytes,
        "flower_agg_peak_models": flower["agg_extra_bytes"] / model_bytes,
        "ours_rel_error": mem["ours_error_over_magnitude"], "ours_error_bound": gamma(n + 3),
        "ours64_max_abs_diff_vs_f64_floor": mem["ours64_vs_floor64_max_abs_diff"],
    })
    for key in VARIANT_PARAMS:
        row[f"{key}_vs_floor_f32"] = row[f"{key}_in_memory_s"] / row["floor_f32_s"]
        row[f"{key}_vs_floor_f64"] = row[f"{key}_in_memory_s"] / row["floor_f64_s"]
        row[f"flower_over_{key}_total"] = row["flower_total_s"] / row[f"{key}_total_s"]
    print(f"[{size} N={n}] ours {row['ours_total_s']:.3f} s ({row['ours_peak_models']:.2f} models), "
          f"float64 sums {row['ours64_total_s']:.3f} s ({row['ours64_peak_models']:.2f} models), "
          f"flower {row['flower_total_s']:.3f} s ({row['flower_peak_models']:.2f} models); in memory "
          f"{row['ours_in_memory_s']:.3f} / {row['ours64_in_memory_s']:.3f} s vs floor f32 {row['floor_f32_s']:.3f} s"
          f" / f64 {row['floor_f64_s']:.3f} s", flush=True)
    return row


def gamma(n: int) -> float:
    """Higham's gamma(n) = n u / (1 - n u) for float32 (u = 2**-24): fedavg.py's bound on
    the float32 sums' error over the weighted mean magnitude, N updates -> gamma(N + 3)."""
    u = 2.0 ** -24
    return n * u / (1 - n * u)


def _compare(workdir: Path, size: str, n: int) -> dict:
    from safetensors.torch import load_file

    paths = {key: workdir / f"{key}.st" for key in ("ours", "ours64", "flwr")}
    loaded = {key: load_file(str(path)) for key, path in paths.items()}
    for path in paths.values():
        path.unlink()

    def diff(a, b):
        return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)

    return {"P": size, "N": n, "max_abs_diff_ours_vs_flower": diff(loaded["ours"], loaded["flwr"]),
            "max_abs_diff_ours64_vs_flower": diff(loaded["ours64"], loaded["flwr"])}


# --------------------------------------------------------------------------- report

TARGET_FLOOR, TARGET_FLOWER, TARGET_MEMORY = 1.5, 2.0, 3.0


def ok(flag: bool) -> str:
    return "met" if flag else "MISSED"


def verdicts(rows: list[dict]) -> list[str]:
    """One line per target, judged on the default (float32 sums), saying met or MISSED
    with the numbers; then the default's precision and what the float64 sums cost."""
    floor = max(r["ours_vs_floor_f32"] for r in rows)
    flower = min(r["flower_over_ours_total"] for r in rows)
    short = [f"P={r['P']} N={r['N']}: {r['flower_over_ours_total']:.2f}×" for r in rows
             if r["flower_over_ours_total"] < TARGET_FLOWER]
    errors = [r["ours_rel_error"] / r["ours_error_bound"] for r in rows]
    worst = max(rows, key=lambda r: r["ours_rel_error"])
    return [
        f"- Data in memory ≤ {TARGET_FLOOR}× the raw float32 floor: worst {floor:.2f}× ({ok(floor <= TARGET_FLOOR)}).",
        f"- Total (load + aggregate) ≥ {TARGET_FLOWER}× faster than Flower: least {flower:.2f}× "
        f"({ok(flower >= TARGET_FLOWER)}{'; short: ' + '; '.join(short) if short else ''}).",
        _memory_verdict(rows),
        f"- Precision of the default (float32 sums): max error {worst['ours_rel_error']:.2g} of the weighted mean "
        f"magnitude (P={worst['P']} N={worst['N']}); at most {max(errors):.3f} of the proven bound "
        f"γ(N + 3) = (N + 3)·2⁻²⁴ / (1 − (N + 3)·2⁻²⁴) ({'within' if max(errors) <= 1 else 'OVER'} it at every N).",
        f"- `{{\"sums\": \"float64\"}}` (opt-in, not held to the targets): worst "
        f"{max(r['ours64_vs_floor_f32'] for r in rows):.2f}× the float32 floor "
        f"({max(r['ours64_vs_floor_f64'] for r in rows):.2f}× the float64 floor), least "
        f"{min(r['flower_over_ours64_total'] for r in rows):.2f}× faster than Flower, up to "
        f"{max(r['ours64_peak_models'] for r in rows):.2f} models of extra memory; max |ours64 − float64 floor| = "
        f"{max(r['ours64_max_abs_diff_vs_f64_floor'] for r in rows):.2g}.",
    ]


def _memory_verdict(rows: list[dict]) -> str:
    worst = max(r["ours_peak_models"] for r in rows)
    with_global = max(r["ours_peak_incl_global_models"] for r in rows)
    over = [f"P={r['P']} N={r['N']}: {(r['ours_peak_models'] - TARGET_MEMORY) * SIZES[r['P']] * 4 / 2**20:.1f} "
            f"MiB over" for r in rows if r["ours_peak_models"] > TARGET_MEMORY]
    return (f"- Peak extra memory ≤ {TARGET_MEMORY:g} models at any N: worst {worst:.2f} models above "
            f"the global state the server holds ({ok(worst <= TARGET_MEMORY)}{'; ' + '; '.join(over) if over else ''}"
            f"); {with_global:.2f} counting the global state as loaded by the round. Flower's grows with N: up to "
            f"{max(r['flower_peak_models'] for r in rows):.1f} models.")


def summary_md(result: dict) -> str:
    rows = result["rows"]
    speed = common.table(rows, ["P", "N", "ours_total_s", "ours_load_s", "ours_agg_s", "ours64_total_s",
                                "ours64_load_s", "ours64_agg_s", "flower_total_s", "flower_load_s", "flower_agg_s",
                                "flower_over_ours_total", "flower_over_ours64_total"])
    memory = common.table(rows, ["P", "N", "ours_peak_models", "ours_peak_incl_global_models", "ours64_peak_models",
                                 "ours64_peak_incl_global_models", "flower_peak_models"])
    floor = common.table(rows, ["P", "N", "ours_in_memory_s", "ours64_in_memory_s", "floor_f32_s", "floor_f64_s",
                                "ours_vs_floor_f32", "ours64_vs_floor_f32", "ours64_vs_floor_f64",
                                "ours_rel_error", "ours_error_bound", "ours64_max_abs_diff_vs_f64_floor"])
    robust = common.table(result["robust"], ["strategy", "P", "N", "total_s", "load_s", "agg_s", "peak_models"])
    checks = "; ".join(f"P={c['P']} N={c['N']}: max |ours − Flower| = {c['max_abs_diff_ours_vs_flower']:.2g} "
                       f"(float64 sums: {c['max_abs_diff_ours64_vs_flower']:.2g})" for c in result["checks"])
    return "\n".join([
        "FedAvg from safetensors files, the portal's path (load the global state, then load, add, drop "
        "each update; `result()`), vs Flower 1.41 `aggregate()` on numpy arrays loaded from the same files. "
        "`ours`: the portal's default, float32 sums (`strategy_params` `{}`); `ours64`: float64 sums "
        "(`{\"sums\": \"float64\"}`, a job's opt-in), both passed as the worker passes a job's params. "
        f"CPU seconds of the single-threaded case (user + system), fastest of {REPEATS['1M']} (P = 1M) or "
        f"{REPEATS['10M']} (10M) passes, each "
        "starting cold (`malloc_trim` between passes, so its allocations fault fresh pages in as a first "
        "round would); the JSON also has wall times. One intra-op thread for both.", "", speed, "",
        "Memory in models (P × 4 bytes): peak RSS (VmHWM) above the RSS once the global state is loaded "
        "(`*_peak_models`; the server holds the global model in either system) or after imports "
        "(`*_peak_incl_global_models`); Flower's above its RSS after imports (its N loaded updates included).",
        "", memory, "",
        "Data already in memory: the portal's FedAvg vs a raw in-place weighted sum of the same tensors "
        "(`acc.add_(t, alpha=w)`; in float32, and in float64 through an L2-sized cast buffer, ours64's "
        "precision), CPU seconds, fastest of as many runs. `ours_rel_error`: the default's largest error over "
        "the weighted mean magnitude (Σ w·|t| / Σ w, exact mean in float64), against its bound "
        "`ours_error_bound` = γ(N + 3); `ours64_max_abs_diff_vs_f64_floor`: the float64 sums against the "
        "float64 floor.", "", floor, "",
        "Strategies that keep every update (same files, same load-add path, one pass; memory above the "
        "global state):", "", robust, "",
        f"Results agree: {checks}.", "",
        "Targets, judged on the default (float32 sums):", "", *verdicts(rows),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1M,10M")
    parser.add_argument("--ns", default="5,20,50")
    parser.add_argument("--full", action="store_true", help="FedMedian and Krum at every N and P")
    opts = parser.parse_args()
    if opts.worker:
        print(json.dumps(WORKERS[opts.worker](json.loads(sys.stdin.read()))))
        return 0
    if not common.BENCH_PYTHON.exists():
        print("bench/.venv is missing: make bench/.venv/.installed", file=sys.stderr)
        return 1
    started = time.monotonic()
    result = run(opts.sizes.split(","), [int(x) for x in opts.ns.split(",")], opts.full)
    result["summary_md"] = summary_md(result)
    return common.finish("aggregation", result, started)


if __name__ == "__main__":
    sys.exit(main())
