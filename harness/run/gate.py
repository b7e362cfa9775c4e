"""The run's side of "compile side by side, measure alone" (harness/sweep/overlap.py).

A gated run compiles first, beside other runs doing the same, then waits for its turn on the GPU:

    gate.ready(info)        # compiled and reset to its initial state: written to STEM.ready
    paused = gate.wait()    # until the sweep writes STEM.go; returns the pids it paused meanwhile
    ...measured steps...
    gate.measured()         # STEM.measured: the sweep may resume the others

The sweep pauses (SIGSTOP) every other run's process group before it writes STEM.go and resumes
them after STEM.measured, so nothing runs beside the measured steps: the paused processes keep
their GPU memory but launch no work. The files are written atomically; the sweep only reads them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from harness.store import write_json


def files(stem: Path) -> tuple[Path, Path, Path]:
    """(ready, go, measured) of a gated run whose .runs/ files start with stem."""
    stem = Path(stem)
    return tuple(stem.with_name(f"{stem.name}.{what}") for what in ("ready", "go", "measured"))


class Gate:
    def __init__(self, stem: Path | str, poll_s: float = 0.01):
        self.ready_path, self.go_path, self.measured_path = files(Path(stem))
        self.poll_s = poll_s

    def ready(self, info: dict) -> None:
        write_json(self.ready_path, info)

    def wait(self) -> list[int]:
        """Block until the sweep says go; the pids of the runs it paused for this one."""
        while not self.go_path.exists():
            time.sleep(self.poll_s)
        return list(json.loads(self.go_path.read_text()).get("paused", []))

    def measured(self) -> None:
        write_json(self.measured_path, {"t": time.time()})


def say_go(stem: Path, paused: list[int]) -> None:
    """The sweep's side: this run may measure now; `paused` are the processes it stopped."""
    write_json(files(stem)[1], {"paused": sorted(paused)})


def clear(stem: Path) -> None:
    for path in files(stem):
        path.unlink(missing_ok=True)
