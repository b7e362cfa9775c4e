"""Launchers: the ways a sweep's runs are run, behind one interface the ledger calls.

    launcher.run(sweep, todo, done)   # run every pending run; sweep.begin / sweep.end record each

  OneAtATime   each run a fresh process (the fork server's child), measured one after another:
               the default. On a GPU, compiled runs compile side by side first, each in the
               process that then measures it alone, the others paused (harness/sweep/overlap.py).
  GpuPool      --gpus: independent runs side by side, one fresh process per GPU, each pinned with
               CUDA_VISIBLE_DEVICES=<gpu> (cuda:0 inside; metrics/nvml.py finds its board by UUID).
               Runs share the host's CPUs, PCIe and power budget.
  Torchrun     under torchrun: every rank trains each run in-process, in lockstep; rank 0's
               ledger records the combined result (harness/sweep/torchrun.py sets it up).

As in optimum-benchmark's launchers, the ledger does not know which one runs: the statuses,
timeouts, interruption and resume are the same for all. Only the parent process writes results.
"""
from __future__ import annotations

import contextlib
import sys
import time

from harness.errors import UserError
from harness.run import ddp
from harness.sweep import memory_plan, overlap, plan, precompile, processes


class OneAtATime:
    """Each pending run in a fresh process, one at a time. progress "bar": one bar over the runs
    (the notebook's run cell), each run's own step lines in .runs/<run_id>.log."""
    name = "one at a time"

    def __init__(self, progress: str = "lines"):
        self.progress = progress

    def run(self, sweep, todo: list[dict], done: int) -> None:
        n = precompile.workers(sweep.cfg, sum(precompile.compiles(sweep.cfg, r) for r in todo),
                               sweep.manifest.get("environment", {}).get("gpu_count") or 0)
        if n:
            with self.bar(sweep, len(todo), done) as bar:
                memory = memory_plan.device_memory(sweep.cfg)[0]
                record = overlap.Overlap(sweep, n, bar=bar, memory_bytes=memory).run(todo, done)
            sweep.manifest.setdefault("overlap", []).append(record)
            sweep.save()
            return
        with self.bar(sweep, len(todo), done) as bar:
            for i, run in enumerate(todo, 1):
                t0 = sweep.begin(run, f"[{done + i}/{len(sweep.runs)}]")
                sweep.end(run, self.result(sweep, run), t0)
                if bar is not None:
                    bar.update(1)

    def result(self, sweep, run: dict) -> dict:
        """Run in a fresh process; its exit, timeout or death becomes a status."""
        log_path = processes.run_files(sweep.folder, run)[2] if self.progress == "bar" else None
        t_launch = time.perf_counter()
        proc = processes.start(sweep.folder, sweep.cfg, run, log_path=log_path)
        try:
            while (res := processes.poll(sweep.folder, run, proc, t_launch, sweep.cfg.timeout_s)) is None:
                time.sleep(0.05)
        except KeyboardInterrupt:
            processes.stop(proc)
            raise
        return res

    @contextlib.contextmanager
    def bar(self, sweep, todo: int, done: int):
        """One progress bar over the runs, redrawn in place (also in a notebook, which streams
        main.py's output); the ledger's lines are written above it."""
        if self.progress != "bar":
            yield None
            return
        from tqdm import tqdm
        bar = tqdm(total=done + todo, initial=done, unit="run", file=sys.stdout, dynamic_ncols=True,
                   desc=sweep.cfg.preset)
        log = sweep.log
        sweep.log = lambda *a, **k: bar.write(" ".join(map(str, a)), file=sys.stdout)
        try:
            yield bar
        finally:
            sweep.log = log
            bar.close()


def parse_gpus(text: str, device: str) -> list[int]:
    """--gpus all|0,1,...: GPU indices as torch counts them (nvidia-smi's under PCI_BUS_ID order)."""
    import torch
    if ddp.launched():
        raise UserError("--gpus is for independent runs side by side; under torchrun each process "
                        "already has its GPU (LOCAL_RANK): drop --gpus")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UserError(f"--gpus {text}: no CUDA GPUs on this machine (torch {torch.__version__} sees none); "
                        "run without --gpus")
    if device not in ("auto", "cuda"):
        raise UserError(f"--gpus pins each run to one GPU (cuda:0 inside the run): the device must be "
                        f"auto or cuda, not {device!r}")
    try:
        gpus = list(range(count)) if text == "all" else [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        gpus = []
    if not gpus or len(set(gpus)) != len(gpus) or not all(0 <= g < count for g in gpus):
        raise UserError(f"--gpus {text}: give 'all' or distinct GPU indices from 0 to {count - 1}")
    return gpus


class GpuPool:
    """Independent runs side by side, one per GPU, each landed by this (the only writing) process
    as it finishes. start(sweep, run, gpu) -> a Popen-like handle (poll, wait, kill, send_signal);
    tests pass their own."""
    name = "gpu pool"

    def __init__(self, gpus: list[int], start=None, poll_s: float = 0.1):
        self.gpus, self.poll_s = list(gpus), poll_s
        self.start = start or (lambda sweep, run, gpu: processes.start(
            sweep.folder, sweep.cfg, run, processes.pin_env(gpu), log_path=processes.run_files(sweep.folder, run)[2]))

    def run(self, sweep, todo: list[dict], done: int) -> None:
        warmed = precompile.run_phase(sweep, todo, self.gpus)
        if warmed:
            sweep.manifest.setdefault("precompile", []).append(warmed)
            sweep.save()
        queue, free, active, n = list(todo), list(self.gpus), {}, done
        try:
            while queue or active:
                while queue and free:
                    gpu, run = free.pop(0), queue.pop(0)
                    n += 1
                    run.update(gpu=gpu, cuda_visible_devices=processes.pin_env(gpu)["CUDA_VISIBLE_DEVICES"])
                    t_launch = time.perf_counter()
                    t0 = sweep.begin(run, f"[{n}/{len(sweep.runs)} gpu {gpu}]")
                    active[gpu] = (run, self.start(sweep, run, gpu), t_launch, t0)
                for gpu in list(active):
                    run, proc, t_launch, t0 = active[gpu]
                    res = processes.poll(sweep.folder, run, proc, t_launch, sweep.cfg.timeout_s)
                    if res is not None:
                        del active[gpu]
                        # the pool finishes runs out of order: the line says which one ended
                        sweep.end(run, res, t0, label=f"[gpu {gpu}] {run['model']} {run['attention']} "
                                                      f"seq_len={run['seq_len']}{plan.run_tags(run)}")
                        free.append(gpu)
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            stop_all([proc for _, proc, _, _ in active.values()])
            raise


def stop_all(procs) -> None:
    """Ctrl-C: SIGINT every child at once, then wait for each (or kill it)."""
    import signal
    import subprocess
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Torchrun(OneAtATime):
    """Under torchrun: each run in-process on every rank; rank 0's ledger records the combined
    result. Ranks other than 0 call run_rank for each run instead (they keep no ledger)."""
    name = "torchrun"

    def __init__(self, cfg, batches: dict):
        super().__init__("lines")
        self.cfg, self.batches = cfg, batches

    def run(self, sweep, todo: list[dict], done: int) -> None:  # no precompile: ranks compile in place
        for i, run in enumerate(todo, 1):
            t0 = sweep.begin(run, f"[{done + i}/{len(sweep.runs)}]")
            sweep.end(run, self.result(sweep, run), t0)

    def result(self, sweep, run: dict) -> dict:
        return self.run_rank(run)

    def run_rank(self, run: dict) -> dict | None:
        """Train in-process, gather to rank 0, combine there (None on the other ranks)."""
        from harness.run.worker import run_local
        parts = ddp.gather(run_local(self.cfg, run, self.batches))
        return ddp.combine(parts) if parts is not None else None
