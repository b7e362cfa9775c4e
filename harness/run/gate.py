"""The run's side of "compile side by side, measure alone" (harness/sweep/overlap.py).

A gated run compiles first, beside other runs doing the same, then waits for its turn on the GPU:

    gate.ready(info)        # compiled and reset to its initial state: written to STEM.ready
    paused = gate.wait()    # until the sweep writes STEM.go; returns the pids it paused meanwhile
    ...measured steps...
    gate.measured()         # STEM.measured: the sweep may resume the others

Before it writes STEM.go the sweep writes .runs/measuring and pauses (SIGSTOP) every other run's
process group, except runs inside a torch.compile (STEM.compiling, kept by the callbacks below):
compiling is CPU work, so those go on, and when their compile ends they wait while .runs/measuring
exists before they run anything on the GPU. (The child removes STEM.compiling before it looks for
.runs/measuring, the sweep writes .runs/measuring before it looks for STEM.compiling: whichever
comes second sees the other.) After STEM.measured the sweep removes .runs/measuring and resumes
the paused ones. So no other run launches GPU work beside the measured steps; the paused keep
their memory. A warm-up that runs out of memory beside the others tries again holding
.runs/warm.lock, which only such retries take.
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


def measuring_flag(runs_dir: Path) -> Path:
    return Path(runs_dir) / "measuring"


class Gate:
    def __init__(self, stem: Path | str, poll_s: float = 0.01):
        self.ready_path, self.go_path, self.measured_path, self.compiling_path = files(Path(stem))
        self.flag, self.lock_path = measuring_flag(Path(stem).parent), Path(stem).parent / "warm.lock"
        self.poll_s, self.has_go = poll_s, False

    def watch_compiles(self) -> None:
        """Mark this process as compiling while torch.compile compiles (Dynamo frames, lazy
        backward graphs); at each compile's end, wait out another run's measurement."""
        try:
            from torch._dynamo.callback import callback_handler
        except ImportError:  # an older torch: never marked, so always paused
            return
        callback_handler.register_start_callback(lambda args: self.compiling_path.touch())
        callback_handler.register_end_callback(lambda args: self.compile_ended())

    def compile_ended(self) -> None:
        self.compiling_path.unlink(missing_ok=True)
        while not self.has_go and self.flag.exists():
            time.sleep(self.poll_s)

    @contextlib.contextmanager
    def warm_lock(self):
        with open(self.lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def ready(self, info: dict) -> None:
        write_json(self.ready_path, info)

    def wait(self) -> dict:
        """Block until the sweep says go: {"paused": pids it paused, "compiling": pids left compiling}."""
        while not self.go_path.exists():
            time.sleep(self.poll_s)
        self.has_go = True
        return json.loads(self.go_path.read_text())

    def measured(self) -> None:
        write_json(self.measured_path, {"t": time.time()})


def say_go(stem: Path, paused: list[int], compiling: list[int]) -> None:
    """The sweep's side: this run may measure now; `paused` are the processes it stopped,
    `compiling` those left compiling (on the CPU)."""
    write_json(files(stem)[1], {"paused": sorted(paused), "compiling": sorted(compiling)})


def clear(stem: Path) -> None:
    for path in files(stem):
        path.unlink(missing_ok=True)
