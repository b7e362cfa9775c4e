"""Sweeps that survive: faults injected into runs, a SIGKILLed sweep resumed, interleaved repeats."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import config
from conftest import ROOT
from harness import store
from harness.sweep import precompile, processes
from harness.sweep.plan import plan


def _main(args, env_extra=None, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _folder(out):
    (folder,) = [p for p in out.iterdir() if (p / "manifest.json").exists()]
    return folder


def test_interleaved_repeats_order():
    cfg = config.get_preset("smoke")
    cfg.attentions, cfg.repeats = ["baseline", "sdpa", "linear"], 2
    order = [r["attention"] for r in plan(cfg)]
    assert order == ["baseline", "sdpa", "linear", "baseline", "sdpa", "linear"]
    ids = [r["run_id"] for r in plan(cfg)]
    assert len(set(ids)) == len(ids)


SHORT = ["--preset", "smoke", "--seq-len", "32", "--steps", "2", "--epochs", "1", "--warmup", "1"]


def test_faults_get_their_status_and_others_finish(tmp_path):
    out = tmp_path / "r"
    p = _main(SHORT + ["--attention", "baseline,sdpa,linear,lsh", "--out", str(out)],
              {"AB_FAULT": "sdpa=raise,linear=nan,lsh=oom"})
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log  # one run ok
    folder = _folder(out)
    summary = store.read_csv(folder / "summary.csv").set_index("attention")
    assert summary.loc["baseline", "status"] == "ok"
    assert summary.loc["sdpa", "status"] == "error" and "injected fault" in summary.loc["sdpa", "reason"]
    assert summary.loc["linear", "status"] == "nan"
    assert summary.loc["lsh", "status"] == "oom"
    batches = pd.read_csv(folder / "batches.csv")
    assert set(batches["attention"]) == {"baseline"}  # failed runs leave no half-written rows
    assert len(batches) == 2
    manifest = json.loads((folder / "manifest.json").read_text())  # strict JSON: no bare NaN
    json.loads((folder / "manifest.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    err = [r for r in manifest["runs"] if r["attention"] == "sdpa"][0]
    assert "RuntimeError" in err["traceback"]


def test_a_sweep_with_no_run_ok_exits_1(tmp_path, monkeypatch, capsys):
    import main
    monkeypatch.setenv("AB_FAULT", "sdpa=raise")
    assert main.main(SHORT + ["--attention", "sdpa", "--out", str(tmp_path / "r")]) == 1
    assert "no run finished ok (1 run): exit code 1" in capsys.readouterr().err


def _wait_until_running(out, attention, deadline_s=240):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            runs = json.loads((_folder(out) / "manifest.json").read_text())["runs"]
        except (ValueError, StopIteration, FileNotFoundError):
            continue
        if any(r["attention"] == attention and r["status"] == "running" for r in runs):
            return
    pytest.fail(f"{attention} never started")


@pytest.mark.parametrize("how,code", [("SIGTERM", 143), ("Ctrl-C", 130)])
def test_interrupted_sweep_ends_cleanly_then_resumes(how, code, tmp_path):
    """SIGTERM (a Slurm time limit) to main.py, or Ctrl-C to the whole process group: one message,
    no child traceback, the run in flight `interrupted`, the report of what finished, the resume
    command, exit 143 / 130; the resume then lands every run once."""
    out = tmp_path / "r"
    p = _main(SHORT + ["--attention", "baseline,sdpa", "--out", str(out)],
              {"AB_FAULT": "sdpa=sleep", "AB_FAULT_SLEEP_S": "3"}, start_new_session=True)
    _wait_until_running(out, "sdpa")
    time.sleep(1)
    if how == "SIGTERM":
        p.send_signal(signal.SIGTERM)
    else:
        os.killpg(p.pid, signal.SIGINT)
    log, _ = p.communicate(timeout=120)
    folder = _folder(out)
    assert p.returncode == code, log
    assert "Traceback" not in log and f"resume with: python main.py --resume {folder}" in log
    runs = json.loads((folder / "manifest.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["ok", "interrupted"]
    assert (folder / "report.md").is_file() and list(store.read_csv(folder / "summary.csv")["status"]) == ["ok"]
    if how == "Ctrl-C":
        return
    r = _main(["--resume", str(folder)])
    log, _ = r.communicate(timeout=300)
    assert r.returncode == 0, log
    assert "1 of 2 runs already done" in log
    summary = store.read_csv(folder / "summary.csv")
    assert sorted(summary["attention"]) == ["baseline", "sdpa"] and (summary["status"] == "ok").all()
    batches = pd.read_csv(folder / "batches.csv")
    assert batches.groupby("run_id").size().tolist() == [2, 2]


def test_the_timeout_counts_from_the_launch():
    """A run whose process has been alive longer than the timeout, counted from before its launch
    (the fork server's start included), is stopped at the next poll."""
    class Alive:
        killed = False

        def poll(self):
            return None

        def kill(self):
            self.killed = True

        def wait(self, timeout=None):
            return -9

    proc = Alive()
    run = {"run_id": "r"}
    assert processes.poll("/nowhere", run, proc, time.perf_counter(), 2.0) is None
    res = processes.poll("/nowhere", run, proc, time.perf_counter() - 2.5, 2.0)
    assert res["status"] == "timeout" and "of its launch" in res["reason"] and proc.killed


def test_out_of_memory_is_oom_on_the_cpu_too():
    from harness.run.worker import status_of
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 15728640000 bytes. Error code 12 (Cannot allocate memory)")
    assert status_of(cpu)["status"] == "oom" and status_of(__import__("torch").OutOfMemoryError("x"))["status"] == "oom"
    assert status_of(RuntimeError("shape mismatch"))["status"] == "error"


def test_fork_server_preload_never_touches_cuda():
    """Children are forked from a server that imported torch and transformers: had that server
    started CUDA, no child could use the GPU. Record every torch.cuda entry point while importing."""
    code = """
import importlib, torch, torch.cuda as tc
calls = []
for name in ("is_available", "device_count", "_lazy_init", "init", "get_device_capability",
             "get_device_name", "is_bf16_supported", "current_device", "synchronize"):
    f = getattr(tc, name)
    setattr(tc, name, (lambda f, name: lambda *a, **k: (calls.append(name), f(*a, **k))[1])(f, name))
from harness.sweep import processes
for m in processes.PRELOAD:
    importlib.import_module(m)
import attentions
assert sorted(attentions.REGISTRY) == sorted(processes.ATTENTION_FILES), attentions.REGISTRY
print("CUDA calls:", calls)
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "CUDA calls: []" in p.stdout


def _overlapped_sweep(tmp_path, attentions, device, backend="inductor"):
    """A compiled smoke sweep, two runs compiling side by side; returns its manifest."""
    out = tmp_path / "r"
    p = _main(SHORT + ["--attention", attentions, "--compile", "--precompile", "2", "--no-inference",
                       "--device", device, "--out", str(out)],
              {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "AB_COMPILE_BACKEND": backend})
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log
    folder = _folder(out)
    report = (folder / "report.md").read_text()
    assert "## Where the time went" in report and "compiled side by side" in report
    return json.loads((folder / "manifest.json").read_text())


def _assert_compiled_then_measured_alone(manifest, n):
    (phase,) = manifest["overlap"]
    assert phase["workers"] == 2 and len(phase["results"]) == n
    for run in manifest["runs"]:
        assert run["status"] == "ok", run
        ph = run["phases"]
        assert ph["warm_s"] > 0 and run["compile_time_s"] == ph["warm_s"]  # compiled in its own process ...
        assert ph["graphs_compiled_measuring"] == 0                      # ... before, not during, its steps
        if run["compile_backend"] == "inductor":  # aot_eager keeps no AOTAutograd cache
            assert run["compile_cache"]["aot_miss"] + run["compile_cache"]["aot_hit"] > 0
        assert run["overlap"]["measured_s"] > 0


def test_compiled_runs_compile_side_by_side_then_measure_alone(tmp_path):
    """--precompile 2: both runs compile at once, each in the process that measures it; each
    measured phase compiles nothing, and the manifest says how each run's time was spent. The
    overlap is the same whatever the backend: aot_eager compiles in a quarter of inductor's time."""
    manifest = _overlapped_sweep(tmp_path, "sdpa,baseline", "cpu", backend="aot_eager")
    assert [(r["status"], r.get("compile_backend")) for r in manifest["runs"]] == [("ok", "aot_eager")] * 2
    _assert_compiled_then_measured_alone(manifest, 2)
    paused = [r["phases"]["paused_runs"] for r in manifest["runs"]]
    assert max(paused) == 1  # the first measured run had the other paused beside it


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (run on the H200)")
def test_overlap_on_a_gpu_with_flex(tmp_path):
    """The same on a GPU, through the fork server, with flex (its own compiled kernel inside the
    compiled model)."""
    _assert_compiled_then_measured_alone(_overlapped_sweep(tmp_path, "sdpa,flex", "cuda"), 2)


def test_precompile_auto_is_off_on_cpu_and_a_quarter_of_the_cores_on_a_gpu(monkeypatch):
    cfg = config.get_preset("smoke")
    assert precompile.workers(cfg, 9, gpu_count=0) == 0  # auto: CPU runs need the cores themselves
    cfg.device, cfg.compile = "auto", True
    for cores, expected in ((2, 1), (16, 8), (64, 8)):  # cores // 2, at most 8
        monkeypatch.setattr(precompile.os, "cpu_count", lambda: cores)
        assert precompile.workers(cfg, 9, gpu_count=1) == expected
    cfg.precompile = 3
    assert precompile.workers(cfg, 2, gpu_count=0) == 2  # never more processes than runs
    cfg.compile = False  # only flex-based runs compile their own kernel then
    assert precompile.compiles(cfg, dict(attention="flex")) and not precompile.compiles(cfg, dict(attention="sdpa"))


def test_precompile_pins_warm_processes_to_the_pool_gpus_in_turn(tmp_path, monkeypatch):
    """With --gpus the warm processes go round the pool's GPUs (their memory spread), at most
    `precompile` at a time, and every run that compiles is warmed once."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # GPUs 3 and 5 index the host's
    launched = []

    def start(folder, cfg, run, env_extra=None, log_path=None, warm=False):
        assert warm
        launched.append((run["run_id"], env_extra["CUDA_VISIBLE_DEVICES"]))
        return run["run_id"]

    monkeypatch.setattr(processes, "start", start)
    monkeypatch.setattr(processes, "poll", lambda folder, run, proc, t0, timeout, warm=False:
                        {"status": "ok", "info": {"compile_cache": {"aot_miss": 1}}})

    class FakeSweep:
        cfg = config.get_preset("smoke")
        folder = tmp_path
        manifest = {"environment": {"gpu_count": 2}}
        log = staticmethod(lambda *a, **k: None)

    sweep_ = FakeSweep()
    sweep_.cfg.compile, sweep_.cfg.precompile = True, 2
    runs = [dict(run_id=f"r{i}", attention=a, seq_len=64) for i, a in enumerate(["sdpa", "flex", "linear"])]
    record = precompile.run_phase(sweep_, runs, gpus=[3, 5], poll_s=0.0)
    assert record["workers"] == 2 and set(record["results"]) == {"r0", "r1", "r2"}
    assert [gpu for _, gpu in launched] == ["3", "5", "3"]
    assert launched[0][0] == "r1"  # flex compiles longest: warmed first
