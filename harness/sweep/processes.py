"""Each run in a fresh process, without paying the imports every time.

A run's process used to start as `python train.py ...`, spending about 8 s of a 2-core machine
importing torch and transformers before doing anything (most of the smoke preset's time, and
about a minute of a nine-run sweep on a GPU host). Now a fork server (multiprocessing's
"forkserver": a clean process started once per sweep) imports them once and forks one child per
run. The child is still a fresh process: the server never initialises CUDA, builds no model and
allocates nothing, so allocator state, compile caches and peak-memory counters start empty in
every run, exactly as before. AB_LAUNCH=exec falls back to one `python train.py` per run.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

from attentions.registry import ORDER as ATTENTION_FILES  # every mechanism file

ROOT = Path(__file__).resolve().parent
PRELOAD = ["torch", "transformers", "transformers.models.gpt2.modeling_gpt2", "train",
           *(f"attentions.{name}" for name in ATTENTION_FILES)]
_CONTEXT = None


def die_with_parent() -> None:
    """Linux PR_SET_PDEATHSIG: a child must not outlive the process that waits for it."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        # A process that initialised CUDA cannot fork children that use it. The preload below
        # makes no CUDA call (tests/test_sweep.py checks), and torch's availability checks then
        # ask NVML, not the driver, should anything call them.
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        _CONTEXT = multiprocessing.get_context("forkserver")
        # Imported once in the server; nothing here touches CUDA.
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def _child(spec: str, out: str, env: dict, log_path: str | None) -> None:
    """The run's process: the sweep's environment, its own output file if asked, then train.main."""
    die_with_parent()
    os.environ.clear()
    os.environ.update(env)  # CUDA_VISIBLE_DEVICES is read when CUDA starts, which is after this
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    if env.get("HF_HUB_OFFLINE") == "1":
        from data import _set_offline_env  # the hub libraries were imported before this env
        _set_offline_env()
    import train
    sys.exit(train.main(spec, out))


class Child:
    """The part of subprocess.Popen the sweep uses, for a forked child."""

    def __init__(self, process):
        self.process = process
        self.pid = process.pid

    def poll(self):
        return self.process.exitcode

    @property
    def returncode(self):
        return self.process.exitcode

    def wait(self, timeout=None):
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("train.py", timeout)
        return self.process.exitcode

    def send_signal(self, sig) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def launch(spec: Path, out: Path, env: dict, log_path: Path | None = None):
    """Start one run's process; returns a Popen-like handle."""
    if os.environ.get("AB_LAUNCH") == "exec":
        cmd = [sys.executable, str(ROOT / "train.py"), str(spec), str(out)]
        if log_path is None:
            return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)
        with open(log_path, "w") as log:  # the child holds its own copy of the descriptor
            return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent, stdout=log,
                                    stderr=subprocess.STDOUT)
    sys.stdout.flush()
    process = _context().Process(target=_child, args=(str(spec), str(out), dict(env),
                                                      str(log_path) if log_path else None))
    process.start()
    return Child(process)
