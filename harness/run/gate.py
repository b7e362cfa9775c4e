"""The run's side of "compile side by side, measure alone" (harness/sweep/overlap.py).

A gated run compiles first, beside other runs doing the same, then waits for its turn on the GPU:

    gate.ready(info)        # compiled and reset to its initial state: written to STEM.ready
    paused = gate.wait()    # until the sweep writes STEM.go; returns the pids it paused meanwhile
    ...measured steps...
    gate.measured()         # STEM.measured: the sweep may resume the others

One process at a time runs GPU work in a warm-up or in measured steps: it holds .runs/gpu.lock
(an flock), which the sweep takes for each measured run and a warming run takes at the end of
each of its compiles; a warming run gives it back when a compile starts with no step's
activations alive (the backward graph is compiled with the forward, so a step runs unbroken).
So compiles overlap, while the training steps' memory peaks never coincide. Before it writes
STEM.go the sweep also pauses (SIGSTOP) every other run's process group, but for runs inside a
compile (STEM.compiling, kept by the callbacks below), which go on on the CPU and wait for the
lock when the compile ends: no other run launches GPU work beside the measured steps, and the
paused keep their memory.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path

from harness.store import write_json


def files(stem: Path) -> tuple[Path, Path, Path, Path]:
    """(ready, go, measured, compiling) of a gated run whose .runs/ files start with stem."""
    stem = Path(stem)
    return tuple(stem.with_name(f"{stem.name}.{what}") for what in ("ready", "go", "measured", "compiling"))


def lock_path(runs_dir: Path) -> Path:
    return Path(runs_dir) / "gpu.lock"


class GpuLock:
    """An flock on .runs/gpu.lock, taken and given back by the same process, possibly many times."""

    def __init__(self, path: Path):
        self.file, self.held = open(path, "a"), False

    def take(self, block: bool = True) -> bool:
        if not self.held:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            except BlockingIOError:
                return False
            self.held = True
        return True

    def give(self) -> None:
        if self.held:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.held = False


class Gate:
    def __init__(self, stem: Path | str, poll_s: float = 0.01):
        self.ready_path, self.go_path, self.measured_path, self.compiling_path = files(Path(stem))
        self.lock = GpuLock(lock_path(Path(stem).parent))
        self.poll_s, self.base_bytes, self.warming = poll_s, 0, False

    @contextlib.contextmanager
    def warming_up(self):
        """The warm-up: the lock held whenever this process is not compiling; never beyond it."""
        import torch
        from torch._functorch import config as functorch_config
        try:
            from torch._dynamo.callback import callback_handler
        except ImportError:  # an older torch: compiles hold the lock too
            callback_handler = None
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.base_bytes = torch.cuda.memory_allocated() if cuda else 0
        self.warming = True
        start, end = (lambda args: self.compile_started(cuda)), (lambda args: self.compile_ended())
        if callback_handler is not None:
            callback_handler.register_start_callback(start)
            callback_handler.register_end_callback(end)
        flag = "force_non_lazy_backward_lowering"  # the backward compiles with the forward
        lazy = getattr(functorch_config, flag, None)
        if lazy is not None:
            setattr(functorch_config, flag, True)
        self.lock.take()
        try:
            yield
        finally:
            self.warming = False
            if lazy is not None:
                setattr(functorch_config, flag, lazy)
            if callback_handler is not None:
                callback_handler.remove_start_callback(start)
                callback_handler.remove_end_callback(end)
            self.compiling_path.unlink(missing_ok=True)
            self.lock.give()

    def compile_started(self, cuda: bool) -> None:
        import torch
        if not self.warming:
            return
        idle = not cuda or torch.cuda.memory_allocated() <= self.base_bytes + (1 << 30)
        if idle:  # no step in flight (a graph break mid-step keeps the lock)
            free_cached(cuda)  # what the last step reserved goes back before another may step
            self.compiling_path.touch()
            self.lock.give()

    def compile_ended(self) -> None:
        if self.warming and self.compiling_path.exists():
            self.compiling_path.unlink()
            self.lock.take()

    def ready(self, info: dict) -> None:
        write_json(self.ready_path, info)

    def wait(self) -> dict:
        """Block until the sweep says go: {"paused": pids it paused, "compiling": pids left compiling}."""
        while not self.go_path.exists():
            time.sleep(self.poll_s)
        return json.loads(self.go_path.read_text())

    def measured(self) -> None:
        """The timed part is over: the memory its steps reserved goes back to the device (the peak
        statistics stay), then the sweep may resume the others while this run writes its results."""
        import torch
        free_cached(torch.cuda.is_available() and torch.cuda.is_initialized())
        write_json(self.measured_path, {"t": time.time()})


def free_cached(cuda: bool) -> None:
    """Give the caching allocator's unused blocks back to the device: a paused or compiling
    process otherwise keeps its last step's peak reserved, and the next run's step runs out of
    memory beside it though no two steps run at once."""
    if cuda:
        import torch
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def say_go(stem: Path, paused: list[int], compiling: list[int]) -> None:
    """The sweep's side: this run may measure now; `paused` are the processes it stopped,
    `compiling` those left compiling (on the CPU)."""
    write_json(files(stem)[1], {"paused": sorted(paused), "compiling": sorted(compiling)})


def clear(stem: Path) -> None:
    for path in files(stem):
        path.unlink(missing_ok=True)
