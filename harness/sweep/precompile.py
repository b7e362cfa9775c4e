"""The precompile phase of the --gpus pool, and how many runs compile side by side.

One GPU compiles and measures in the same process (harness/sweep/overlap.py); the pool, whose
runs go to whichever GPU is free, warms the caches first instead, as follows.

A compiled run spends most of its wall time in torch.compile (on the H200, gpt2's training graph
took about 35 s and its no-grad graph 13 s, flex runs over a minute, against 3 s of steps), and
compiling is work for the host's CPUs that the serial sweep does on one core while the GPU waits.
torch.compile keeps what it compiled in on-disk caches (AOTAutograd and Inductor graphs, Triton
kernels), keyed on the code, the shapes and the settings. So before the measured runs, up to
`workers` processes (train.warm) each build one run's model exactly as the measured run will, take
one training step and one no-grad forward, and exit. The measured runs, still one at a time and
in fresh processes, then load their graphs from the caches. Nothing measured runs side by side.

Each measured run records its own cache hits and misses (compile_cache in the manifest), and the
manifest's `precompile` entry says how long the phase took and how each warm process ended. A
warm process that fails (out of memory beside the others, say) costs nothing but its time: its
measured run compiles as it always did, and its own failure, if real, is recorded there.
"""
from __future__ import annotations

import os
import time

import attentions
from config import Config
from harness.sweep import processes


def workers(cfg: Config, n_runs: int, gpu_count: int) -> int:
    """How many runs compile side by side: the config's number, or auto = CPU cores // 2 (at most
    8) when the runs are on a GPU (compiling is CPU work: a Python thread plus Inductor's compile
    workers, which the runs share out), 0 on a CPU (the runs themselves need the cores) and when
    no run compiles anything."""
    n = cfg.precompile
    if n == "auto":
        on_gpu = cfg.device != "cpu" and gpu_count > 0
        n = min(8, (os.cpu_count() or 1) // 2) if on_gpu else 0
    return max(0, min(int(n), n_runs))


def compiles(cfg: Config, run: dict) -> bool:
    """Whether the run compiles anything: the whole model, or its attention's own kernel (flex)."""
    return cfg.compile or attentions.get(run["attention"]).compiles


def run_phase(sweep, todo: list[dict], gpus: list[int] | None = None, poll_s: float = 0.2) -> dict | None:
    """Warm the caches for the pending runs that compile; returns the manifest's record of it.
    gpus (the --gpus pool): warm processes are pinned to those GPUs in turn, spreading their
    memory; the caches are the host's, so a graph warmed on one GPU serves the same model on all."""
    # Flex-based runs compile longest: they go first, so the phase does not end on one of them;
    # baseline (eager attention, the most memory) last, so it meets the fewest others on the GPU.
    # One warm run per graph: seeds (and repeats) of a configuration compile the same graphs.
    first = {tuple(r.get(k) for k in ("model", "attention", "seq_len", "batch_size")): r
             for r in reversed(todo) if compiles(sweep.cfg, r)}
    runs = sorted(reversed(list(first.values())),
                  key=lambda r: (not attentions.get(r["attention"]).compiles, r["attention"] == "baseline"))
    n = workers(sweep.cfg, len(runs), sweep.manifest.get("environment", {}).get("gpu_count") or 0)
    if not n:
        return None
    log = sweep.log
    log(f"precompile: {len(runs)} runs, {n} at a time (filling torch.compile's caches; "
        "each process's output is in .runs/<run_id>.warm.log)", flush=True)
    t_start = time.perf_counter()
    record = warm_all(sweep, runs, n, gpus, poll_s)
    wall = time.perf_counter() - t_start
    log(f"precompile: done in {wall:.0f} s; the runs now start from warm caches", flush=True)
    return dict(workers=n, runs=len(runs), wall_s=round(wall, 2), results=record)


def warm_all(sweep, runs: list[dict], n: int, gpus: list[int] | None, poll_s: float) -> dict:
    """Up to n warm processes at a time over `runs`; {run_id: how its warm process ended}."""
    queue, active, record, started = list(runs), {}, {}, 0
    try:
        while queue or active:
            while queue and len(active) < n:
                run = queue.pop(0)
                pin = processes.pin_env(gpus[started % len(gpus)]) if gpus else None
                started += 1
                log_path = processes.run_files(sweep.folder, run, warm=True)[2]
                active[run["run_id"]] = (run, time.perf_counter(), processes.start(
                    sweep.folder, sweep.cfg, run, pin, log_path=log_path, warm=True))
            time.sleep(poll_s)
            for rid, (run, t0, proc) in list(active.items()):
                res = processes.poll(sweep.folder, run, proc, t0, sweep.cfg.timeout_s, warm=True)
                if res is not None:
                    del active[rid]
                    record[rid] = dict(status=res["status"], reason=res.get("reason", "")[:200],
                                       wall_s=round(time.perf_counter() - t0, 2),
                                       compile_cache=(res.get("info") or {}).get("compile_cache"))
                    sweep.log(f"  warm {len(record)}/{len(runs)} {run['attention']} seq_len={run['seq_len']}: "
                              f"{res['status']} in {record[rid]['wall_s']:.0f} s", flush=True)
    except KeyboardInterrupt:
        for _, _, proc in active.values():
            processes.stop(proc, kill=True)
        raise
    return record
