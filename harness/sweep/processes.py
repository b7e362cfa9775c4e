"""A run's process: its files in .runs/, its start, its end, its result.

Each run is a fresh process, without paying the imports every time: a fork server
(multiprocessing's "forkserver", a clean process started once per sweep) imports torch and
transformers once (about 8 s on a 2-core machine) and forks one child per run. The child is
still a fresh process: the server never initialises CUDA, builds no model and allocates
nothing, so allocator state, compile caches and peak-memory counters start empty in every run.
AB_LAUNCH=exec starts `python -m harness.run.worker SPEC RESULT` instead.

The child writes RESULT atomically; a child that dies without one becomes an error status
saying how it died, and one that outlives its deadline (counted from before its launch) is
killed and becomes a timeout.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from attentions.order import ORDER as ATTENTION_FILES  # every mechanism file
from harness.run.batches import data_key
from harness.store import nan_for_null, write_json

ROOT = Path(__file__).resolve().parents[2]
PRELOAD = ["torch", "transformers", "transformers.models.gpt2.modeling_gpt2", "harness.run.worker",
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


def _child(spec: str, out: str, env: dict, log_path: str | None, own_group: bool = False) -> None:
    """The run's process: the sweep's environment, its own output file if asked, then the worker.
    own_group: a process group of its own (with its compile workers), which the sweep can pause."""
    die_with_parent()
    if own_group:
        os.setpgrp()
    # Ctrl-C reaches the whole process group; the sweep stops its child itself, so a child just
    # exits (no traceback): the parent says what happened once.
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    os.environ.clear()
    os.environ.update(env)  # CUDA_VISIBLE_DEVICES is read when CUDA starts, which is after this
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    if env.get("HF_HUB_OFFLINE") == "1":
        from harness.run.tokenizer import set_offline_env  # the hub libraries were imported before this env
        set_offline_env()
    from harness.run import worker
    sys.exit(worker.main(spec, out))


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
            raise subprocess.TimeoutExpired("harness.run.worker", timeout)
        return self.process.exitcode

    def send_signal(self, sig) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def launch(spec: Path, out: Path, env: dict, log_path: Path | None = None, own_group: bool = False):
    """Start one run's process; returns a Popen-like handle."""
    if os.environ.get("AB_LAUNCH") == "exec":
        cmd = [sys.executable, "-m", "harness.run.worker", str(spec), str(out)]
        pre = (lambda: (die_with_parent(), os.setpgrp())) if own_group else die_with_parent
        if log_path is None:
            return subprocess.Popen(cmd, env=env, cwd=ROOT, preexec_fn=pre)
        with open(log_path, "w") as log:  # the child holds its own copy of the descriptor
            return subprocess.Popen(cmd, env=env, cwd=ROOT, preexec_fn=pre, stdout=log,
                                    stderr=subprocess.STDOUT)
    sys.stdout.flush()
    process = _context().Process(target=_child, args=(str(spec), str(out), dict(env),
                                                      str(log_path) if log_path else None, own_group))
    process.start()
    return Child(process)


# -- one run's process, from its files to its result ---------------------------------------------


def run_stem(folder: Path, run: dict) -> Path:
    """Where a run's files in .runs/ start (the gate's files too: harness/run/gate.py)."""
    return Path(folder) / ".runs" / run["run_id"]


def compile_threads_env(workers: int) -> dict:
    """Inductor's compile workers per run when `workers` runs compile side by side: the cores
    shared out (each run would otherwise start one per core), unless the user set it."""
    if "TORCHINDUCTOR_COMPILE_THREADS" in os.environ:
        return {}
    return {"TORCHINDUCTOR_COMPILE_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, workers)))}


def run_files(folder: Path, run: dict, warm: bool = False) -> tuple[Path, Path, Path]:
    """(spec, result, log) of a run's process in .runs/; a precompile process has its own."""
    stem = run_stem(folder, run)
    stem = stem.with_name(stem.name + (".warm" if warm else ""))
    return (stem.with_name(stem.name + ".spec.json"), stem.with_name(stem.name + ".result.json"),
            stem.with_name(stem.name + ".log"))


def start(folder: Path, cfg, run: dict, env_extra: dict | None = None, log_path: Path | None = None,
          warm: bool = False, gate: bool = False):
    """Start one run's process; env_extra pins a GPU (the pool), log_path takes its output
    (side-by-side runs would interleave on the terminal), warm makes it a precompile process,
    gate a run that compiles, then waits for its turn (harness/run/gate.py) in its own group."""
    (Path(folder) / ".runs").mkdir(exist_ok=True)
    spec, out, _ = run_files(folder, run, warm)
    out.unlink(missing_ok=True)
    data = Path(folder) / ".runs" / f"data_{data_key(run)}.pt"
    stem = str(run_stem(folder, run)) if gate else None  # the gate's files (harness/run/gate.py)
    write_json(spec, dict(config=cfg.to_dict(), run=run, warm=warm, gate=stem,
                          data=str(data) if data.exists() else None))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    if cfg.offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return launch(spec, out, env, log_path, own_group=gate)


def collect(folder: Path, run: dict, rc: int, warm: bool = False) -> dict:
    """The result a finished child wrote, or an error status saying how it died."""
    spec, out, log = run_files(folder, run, warm)
    if out.exists():
        res = json.loads(out.read_text())
        for key in ("rows", "samples", "evals"):
            res[key] = nan_for_null(res.get(key) or [])
        out.unlink()
        spec.unlink(missing_ok=True)
        return res
    why = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
    where = f"; its output is in {log}" if log.exists() else ""
    return dict(status="error", reason=f"run process died without a result ({why}){where}")


def stop(proc, kill: bool = False) -> None:
    """Ctrl-C or SIGTERM: SIGINT first so the child can exit cleanly, then SIGKILL; timeout: SIGKILL."""
    if not kill:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()


def poll(folder: Path, run: dict, proc, t_launch: float, timeout_s: float | None,
         warm: bool = False) -> dict | None:
    """A finished child's result, a timeout status once timeout_s have passed since t_launch
    (time.perf_counter() before the launch: a fork server's start counts too), or None while it runs."""
    rc = proc.poll()
    if rc is not None:
        return collect(folder, run, rc, warm=warm)
    if timeout_s is not None and time.perf_counter() - t_launch > timeout_s:
        stop(proc, kill=True)
        return dict(status="timeout", reason=f"no result within {timeout_s:g} s of its launch")
    return None


def pause(proc, on: bool) -> None:
    """SIGSTOP (on) or SIGCONT a gated run's process group: the run and its compile workers. A
    process already gone is left alone."""
    sig = signal.SIGSTOP if on else signal.SIGCONT
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):  # not (yet) a group of its own: the process alone
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def pin_env(gpu: int) -> dict:
    """The child's environment for GPU `gpu`: one visible device. An index into the parent's own
    CUDA_VISIBLE_DEVICES if it has one; PCI bus order (nvidia-smi's) unless the user chose one."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return {"CUDA_VISIBLE_DEVICES": visible[gpu] if visible else str(gpu),
            "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")}
