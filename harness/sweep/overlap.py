"""Compile side by side, measure alone: how a compiled sweep runs on one GPU.

A compiled run spends most of its wall time in torch.compile, which is work for the host's CPUs
while the GPU waits. So up to `workers` runs start at once, each in its fresh process as always.
Each compiles every graph it will need (a training step of each batch shape, the no-grad forward
of inference and evaluation), puts its weights, random state and optimizer back to where they
started, frees the step's memory and says it is ready (harness/run/gate.py). One ready run at a
time gets the GPU: before it measures, every other run's process group is paused (SIGSTOP), but
for runs inside a compile, which go on compiling on the CPU; GPU work, in warm-ups and measured
steps alike, needs .runs/gpu.lock, which the sweep holds for the measured run, so no other run
puts work on the GPU beside the measured steps and no two steps' memory peaks coincide. The
others resume when its timed part ends.
A run compiles once, in the process that measures it; no graph is compiled twice.

Memory decides how many are alive at once: each run keeps its weights, optimizer and CUDA
context between steps (its manifest entry's memory_resident_gb), and only the one stepping adds
its step's activations (memory_estimate_gb less that), since a run empties its allocator's cache
before it gives the GPU up. A run starts only while the resident bytes of all alive runs, itself
included, plus the largest of their step peaks fit the device; one that does not fit beside
anything runs alone.

Runs that share their graphs (the seeds of one configuration) start one after the other, so the
later ones load what the first compiled. A run that runs out of memory while others shared the
GPU is not recorded as oom: it runs again, alone, at the end. Time spent paused does not count
against a run's timeout. The manifest's `overlap` entry says how long each run compiled, waited
and was paused.
"""
from __future__ import annotations

import time

import attentions
from harness.run import gate as gates
from harness.sweep import plan, processes

GRAPH_KEYS = ("model", "attention", "seq_len", "batch_size", "n_pairs")


def graph_key(run: dict) -> tuple:
    return tuple(run.get(k) for k in GRAPH_KEYS)


def order(todo: list[dict]) -> list[dict]:
    """Longest compiles first (flex-based, lsh the longest), so the sweep does not end waiting on
    one of them; baseline (eager attention, the most memory) last. Stable otherwise."""
    def rank(r):
        spec = attentions.get(r["attention"])
        return (r["attention"] != "lsh", not spec.compiles, r["attention"] == "baseline")
    return sorted(todo, key=rank)


class Slot:
    """One run's process in the overlap, and where it is: compiling, ready, measuring, done."""

    def __init__(self, run: dict, proc, t_launch: float, t0: float, alone: bool, stem, first_attempt=None):
        self.run, self.proc, self.t_launch, self.t0, self.alone = run, proc, t_launch, t0, alone
        self.stem, self.first_attempt = stem, first_attempt  # why its shared attempt failed, if it did
        self.state, self.shared, self.paused_s, self.t_paused = "compiling", False, 0.0, None
        self.t_ready = self.t_go = self.t_measured = None

    def pause(self, on: bool) -> None:
        if on and self.t_paused is None:
            processes.pause(self.proc, True)
            self.t_paused = time.perf_counter()
        elif not on and self.t_paused is not None:
            processes.pause(self.proc, False)
            self.paused_s += time.perf_counter() - self.t_paused
            self.t_paused = None

    def record(self) -> dict:
        def gap(a, b):
            return round(b - a, 2) if a is not None and b is not None else None
        out = dict(compile_s=gap(self.t_launch, self.t_ready), waited_s=gap(self.t_ready, self.t_go),
                   measured_s=gap(self.t_go, self.t_measured), paused_s=round(self.paused_s, 2),
                   shared=self.shared, alone=self.alone)
        return dict(out, first_attempt=self.first_attempt) if self.first_attempt else out

    def gate(self, which: int) -> bool:
        """Whether the run's gate file exists: 0 ready, 2 measured, 3 compiling (gate.files)."""
        return gates.files(self.stem)[which].exists()


def memory_gb(run: dict) -> tuple[float, float]:
    """(resident between steps, step peak beyond that) in GB, from the run's manifest entry; 0
    where it has no estimate."""
    resident = run.get("memory_resident_gb") or 0.0
    return resident, max(0.0, (run.get("memory_estimate_gb") or 0.0) - resident)


class Overlap:
    """The scheduler. start(run, alone) -> a Popen-like handle; tests pass their own."""

    def __init__(self, sweep, workers: int, start=None, poll_s: float = 0.05, bar=None,
                 memory_bytes: float | None = None):
        self.sweep, self.workers, self.poll_s, self.bar = sweep, workers, poll_s, bar
        self.memory_gb = memory_bytes / 1e9 if memory_bytes else None  # None: no memory limit
        self.start = start or (lambda run, alone: processes.start(
            sweep.folder, sweep.cfg, run, processes.compile_threads_env(workers), gate=True,
            log_path=processes.run_files(sweep.folder, run)[2]))
        self.lock = gates.GpuLock(gates.lock_path(sweep.folder / ".runs"))
        self.active: dict[str, Slot] = {}
        self.retry: list[tuple[dict, str]] = []  # (run, why its shared attempt failed)
        self.record: dict[str, dict] = {}
        self.n = 0

    def run(self, todo: list[dict], done: int) -> dict:
        self.n = done
        queue, t_start = order(todo), time.perf_counter()
        try:
            while queue or self.active or self.retry:
                self.admit(queue)
                self.poll()
                self.hand_over()
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            for slot in self.active.values():
                slot.pause(False)
                processes.stop(slot.proc, kill=True)
            raise
        finally:
            self.resume_all()
        return dict(workers=self.workers, runs=len(todo), wall_s=round(time.perf_counter() - t_start, 2),
                    results=self.record)

    def admit(self, queue: list[dict]) -> None:
        """Start runs while fewer than `workers` are alive; a run whose graphs a live run is still
        compiling waits for them, and so does one whose memory does not fit beside theirs; nothing
        starts while a run measures. Runs to retry alone start when nothing else is alive."""
        if any(s.alone or s.state == "measuring" for s in self.active.values()):
            return  # a process starting now would bring up CUDA and load weights beside the measured steps
        while queue and len(self.active) < self.workers:
            compiling = {graph_key(s.run) for s in self.active.values() if s.state == "compiling"}
            run = next((r for r in queue if graph_key(r) not in compiling and self.fits(r)), None)
            if run is None:
                return
            queue.remove(run)
            self.launch(run, alone=False)
        if not queue and not self.active and self.retry:
            self.launch(*self.retry.pop(0), alone=True)

    def fits(self, run: dict) -> bool:
        """Whether the alive runs and this one, all resident, plus the largest step peak among
        them fit the device's memory. Anything fits on an empty device."""
        if self.memory_gb is None or not self.active:
            return True
        alive = [memory_gb(s.run) for s in self.active.values()] + [memory_gb(run)]
        return sum(r for r, _ in alive) + max(p for _, p in alive) <= self.memory_gb

    def launch(self, run: dict, first_attempt: str | None = None, alone: bool = False) -> None:
        self.n += 1
        stem = processes.run_stem(self.sweep.folder, run)
        gates.clear(stem)
        t_launch = time.perf_counter()
        again = " (again, alone on the GPU)" if alone else ""
        t0 = self.sweep.begin(run, f"[{self.n}/{len(self.sweep.runs)}]{again}")
        self.active[run["run_id"]] = Slot(run, self.start(run, alone), t_launch, t0, alone, stem, first_attempt)

    def poll(self) -> None:
        for rid, slot in list(self.active.items()):
            if len(self.active) > 1:
                slot.shared = True
            if slot.t_paused is not None:
                continue
            res = processes.poll(self.sweep.folder, slot.run, slot.proc, slot.t_launch + slot.paused_s,
                                 self.sweep.cfg.timeout_s)
            if res is not None:
                self.finish(slot, res)
            elif slot.state == "compiling" and slot.gate(0):
                slot.state, slot.t_ready = "ready", time.perf_counter()

    def finish(self, slot: Slot, res: dict) -> None:
        del self.active[slot.run["run_id"]]
        if slot.state == "measuring":
            slot.t_measured = slot.t_measured or time.perf_counter()
            self.resume_all()
        gates.clear(slot.stem)
        self.record[slot.run["run_id"]] = slot.run["overlap"] = slot.record()
        if res["status"] == "oom" and slot.shared and not slot.alone:
            self.sweep.log(f"  {slot.run['attention']} seq_len={slot.run['seq_len']}{plan.run_tags(slot.run)}: "
                           "out of memory beside other runs; it runs again alone at the end", flush=True)
            self.retry.append((slot.run, (res.get("reason") or "")[:300]))
            return
        self.sweep.end(slot.run, res, slot.t0, label=f"{slot.run['model']} {slot.run['attention']} "
                                                     f"seq_len={slot.run['seq_len']}{plan.run_tags(slot.run)}")
        if self.bar is not None:
            self.bar.update(1)

    def hand_over(self) -> None:
        """The GPU to the earliest ready run once the last measured one has exited. When its timed
        part ends (STEM.measured) the others resume compiling; while it finishes (fvcore's trace,
        its result file) nothing new is measured."""
        for slot in self.active.values():
            if slot.state == "measuring" and slot.gate(2):
                slot.state, slot.t_measured = "finishing", time.perf_counter()
                self.resume_all()
        if any(s.state in ("measuring", "finishing") for s in self.active.values()):
            return
        ready = sorted((s for s in self.active.values() if s.state == "ready"), key=lambda s: s.t_ready)
        if not ready:
            return
        slot = ready[0]
        if not self.lock.take(block=False):  # a warm-up's step is on the GPU: next time round
            return
        others = [s for s in self.active.values() if s is not slot]
        compiling = [s for s in others if s.gate(3)]
        for other in others:
            if other not in compiling:
                other.pause(True)
        gates.say_go(slot.stem, [s.proc.pid for s in others if s not in compiling],
                     [s.proc.pid for s in compiling])
        slot.state, slot.t_go = "measuring", time.perf_counter()

    def resume_all(self) -> None:
        for slot in self.active.values():
            slot.pause(False)
        self.lock.give()
