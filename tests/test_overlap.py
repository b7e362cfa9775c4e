"""Compile side by side, measure alone (harness/sweep/overlap.py, harness/run/gate.py)."""
import contextlib
import dataclasses
import json
import signal
import time

import pytest

import config
from harness.run import gate as gates
from harness.run import train
from harness.run.batches import run_data
from harness.run.tokenizer import get_tokenizer
from harness.sweep import overlap, plan as plans, processes


def quiet(*args, **kwargs):
    pass


class Immediate(gates.Gate):
    """A gate the test opens at once, recording what the run said."""

    def __init__(self):
        self.said = None

    def ready(self, info):
        self.said = info

    def wait(self):
        return {"paused": [4242], "compiling": []}

    @contextlib.contextmanager
    def warming_up(self):
        yield

    def measured(self):
        self.said["measured"] = True


def test_a_warmed_run_trains_exactly_what_an_unwarmed_run_trains():
    """The warm-up takes real training steps (one per batch shape); restoring the weights, the
    random state and a fresh optimizer must leave the measured steps bit-identical to a run that
    never warmed: same losses, same evaluations."""
    cfg = dataclasses.replace(config.get_preset("smoke"), seq_lens=[64], batches_per_epoch=3, epochs=1,
                              eval_every=2, eval_tokens=256, lr=3e-3)
    run = plans.plan(cfg)[0]
    made = run_data(cfg, get_tokenizer(True), run)
    plain = train.run(cfg, dict(run, data=made), log=quiet)
    gate = Immediate()
    gated = train.run(cfg, dict(run, data=made), log=quiet, gate=gate)
    assert [r["loss"] for r in gated["rows"]] == [r["loss"] for r in plain["rows"]]
    assert [e["eval_loss"] for e in gated["evals"]] == [e["eval_loss"] for e in plain["evals"]]
    assert gate.said["warm_s"] > 0 and gate.said["measured"]
    phases = gated["info"]["phases"]
    assert phases["paused_runs"] == 1 and phases["graphs_compiled_measuring"] == 0
    assert "warm_s" not in plain["info"]["phases"]


class FakeProc:
    """A gated run's process, scripted: it is ready after `compile_s`, measures for `measure_s`
    once told to go, then exits with `status`. It checks that nobody else is unpaused meanwhile."""
    live = []

    def __init__(self, folder, run, compile_s, measure_s, status="ok", marks_compiling=False):
        self.stem, self.run, self.status = processes.run_stem(folder, run), run, status
        self.compile_s, self.measure_s = compile_s, measure_s
        self.t0, self.t_go, self.done, self.paused = time.perf_counter(), None, None, False
        self.pid = 1000 + len(FakeProc.live)
        self.overlapping, self.marks_compiling, self.waiting = [], marks_compiling, False
        FakeProc.live.append(self)

    def on_gpu(self):
        """Launching GPU work: running, not done, and not inside a compile."""
        return not (self.paused or self.waiting or self.done is not None or gates.files(self.stem)[3].exists())

    def step(self):
        now = time.perf_counter()
        ready, go, measured, compiling = gates.files(self.stem)
        if self.paused or self.done is not None:
            return
        if self.marks_compiling and not ready.exists() and not self.waiting:
            compiling.touch()  # as the compile callbacks do
        if not ready.exists() and now - self.t0 > self.compile_s:
            compiling.unlink(missing_ok=True)  # the compile's end: the GPU lock for the step
            self.lock = getattr(self, "lock", None) or gates.GpuLock(gates.lock_path(self.stem.parent))
            self.waiting = not self.lock.take(block=False)
            if self.waiting:
                return
            self.lock.give()  # the (instant) warm step done
            ready.write_text("{}")
        if go.exists() and self.t_go is None:
            self.t_go, self.said_go = now, json.loads(go.read_text())
        if self.t_go is not None and now - self.t_go > self.measure_s:
            measured.write_text("{}")
            self.done = 0
            out = processes.run_files(self.stem.parents[1], self.run)[1]
            out.write_text(json.dumps(dict(status=self.status, reason="fake", rows=[], info={})))
        if self.t_go is not None and self.done is None:
            self.overlapping += [p.run["run_id"] for p in FakeProc.live if p is not self and p.on_gpu()]

    def poll(self):
        self.step()
        return self.done

    def send_signal(self, sig):
        pass

    kill = send_signal

    def wait(self, timeout=None):
        return 0


class FakeSweep:
    def __init__(self, folder, runs):
        self.folder, self.runs, self.cfg = folder, runs, dataclasses.replace(config.get_preset("smoke"))
        (folder / ".runs").mkdir()
        self.ended, self.begun = [], []

    def log(self, *a, **k):
        pass

    def begin(self, run, tag):
        self.begun.append(run["run_id"])
        return time.perf_counter()

    def end(self, run, res, t0, label=None):
        self.ended.append((run["run_id"], res["status"]))


@pytest.fixture
def fake_pause(monkeypatch):
    def pause(proc, on):
        proc.paused = on
        if not on:
            proc.step()
    monkeypatch.setattr(processes, "pause", pause)
    FakeProc.live = []


def _runs(*attentions, seeds=(0,)):
    return [dict(run_id=f"{i}_{a}_s{s}", model="tiny", attention=a, seq_len=32, batch_size=2, seed=s)
            for i, (a, s) in enumerate((a, s) for a in attentions for s in seeds)]


@pytest.mark.parametrize("marks_compiling", [False, True])
def test_runs_compile_side_by_side_and_each_measures_with_the_others_paused(tmp_path, fake_pause, marks_compiling):
    """Nobody launches GPU work beside a measured run: others are paused, or, inside a compile,
    go on compiling and wait at its end."""
    runs = _runs("baseline", "sdpa", "lsh", "linear")
    sweep = FakeSweep(tmp_path, runs)
    times = {"lsh": 0.4, "sdpa": 0.1, "linear": 0.15, "baseline": 0.05}
    procs = {}

    def start(run, alone):
        procs[run["run_id"]] = FakeProc(tmp_path, run, times[run["attention"]], 0.05,
                                        marks_compiling=marks_compiling)
        return procs[run["run_id"]]

    overlap.order(runs)  # imports the mechanisms (a second) before the clock starts
    t0 = time.perf_counter()
    record = overlap.Overlap(sweep, workers=3, start=start, poll_s=0.005).run(runs, 0)
    wall = time.perf_counter() - t0
    assert sorted(sweep.ended) == sorted((r["run_id"], "ok") for r in runs)
    assert sweep.begun[0].endswith("lsh_s0")                 # the longest compile starts first
    assert all(not p.overlapping for p in procs.values())    # nobody ran beside a measured run
    assert wall < sum(times.values()) + 4 * 0.05             # compiles overlapped
    for rid, rec in record["results"].items():
        assert rec["compile_s"] is not None and rec["measured_s"] >= 0.05 and rec["shared"]
    assert not list((tmp_path / ".runs").glob("*.go"))      # the gate's files are cleared
    assert gates.GpuLock(gates.lock_path(tmp_path / ".runs")).take(block=False)  # given back
    lsh = procs[sweep.begun[0]]
    said = [p.said_go for p in procs.values() if p is not lsh and p.t_go < lsh.t_go]
    key = "compiling" if marks_compiling else "paused"
    assert all(lsh.pid in s[key] for s in said)              # lsh, still compiling, was left to compile


def test_seeds_of_one_configuration_compile_one_after_the_other(tmp_path, fake_pause):
    """Seeds share their graphs: the second starts once the first is ready, to load its caches."""
    runs = _runs("sdpa", seeds=(0, 1))
    sweep = FakeSweep(tmp_path, runs)
    procs = []

    def start(run, alone):
        procs.append(FakeProc(tmp_path, run, 0.1, 0.02))
        return procs[-1]

    overlap.Overlap(sweep, workers=4, start=start, poll_s=0.005).run(runs, 0)
    assert procs[1].t0 - procs[0].t0 >= 0.1


def test_out_of_memory_beside_others_is_retried_alone(tmp_path, fake_pause):
    runs = _runs("sdpa", "baseline")
    sweep = FakeSweep(tmp_path, runs)
    launches = []

    def start(run, alone):
        launches.append((run["attention"], alone))
        oom = run["attention"] == "baseline" and not alone
        return FakeProc(tmp_path, run, 0.02, 0.02, status="oom" if oom else "ok")

    record = overlap.Overlap(sweep, workers=2, start=start, poll_s=0.005).run(runs, 0)
    assert launches == [("sdpa", False), ("baseline", False), ("baseline", True)]
    assert sorted(sweep.ended) == sorted([("0_sdpa_s0", "ok"), ("1_baseline_s0", "ok")])
    assert record["results"]["1_baseline_s0"]["alone"]
    assert record["results"]["1_baseline_s0"]["first_attempt"] == "fake"  # why the shared attempt failed


def test_runs_start_only_while_their_memory_fits_beside_the_alive_ones(tmp_path, fake_pause):
    """10 GB resident each, 30 GB more while stepping, on 60 GB: three alive at most (3 x 10 + 30);
    a run whose step alone needs 70 GB starts only on an empty device."""
    runs = _runs("sdpa", "linear", "flex", "sliding_window", "gqa", "baseline")
    for r in runs:
        r.update(memory_resident_gb=10.0, memory_estimate_gb=80.0 if r["attention"] == "baseline" else 40.0)
    sweep, beside = FakeSweep(tmp_path, runs), {}

    def start(run, alone):
        beside[run["attention"]] = sum(p.done is None for p in FakeProc.live)
        return FakeProc(tmp_path, run, 0.05, 0.01)

    overlap.Overlap(sweep, workers=6, start=start, poll_s=0.005, memory_bytes=60e9).run(runs, 0)
    assert sorted(sweep.ended) == sorted((r["run_id"], "ok") for r in runs)
    assert max(beside.values()) == 2 and beside["baseline"] == 0
    assert overlap.memory_gb(runs[0]) == (10.0, 30.0) and overlap.memory_gb({}) == (0.0, 0.0)


def test_a_run_gives_its_cached_memory_back_before_others_step(tmp_path, monkeypatch):
    """A compile that gives the GPU up, and the end of the measured steps, empty the allocator's
    cache first: another process's step would otherwise meet this one's reserved peak."""
    import torch
    freed = []
    for name, fn in (("is_available", lambda: True), ("is_initialized", lambda: True),
                     ("synchronize", lambda: None), ("empty_cache", lambda: freed.append(True)),
                     ("memory_allocated", lambda: 0)):
        monkeypatch.setattr(torch.cuda, name, fn)
    gate = gates.Gate(tmp_path / "r")
    gate.warming = True
    gate.compile_started(cuda=True)
    assert freed == [True] and gate.compiling_path.exists()
    gate.measured()
    assert freed == [True, True] and gate.measured_path.exists()


def test_pause_stops_and_resumes_a_real_process_group():
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"],
                            start_new_session=True)
    try:
        processes.pause(proc, True)
        time.sleep(0.2)
        assert open(f"/proc/{proc.pid}/stat").read().split()[2] == "T"  # stopped
        processes.pause(proc, False)
        time.sleep(0.2)
        assert open(f"/proc/{proc.pid}/stat").read().split()[2] in "SR"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
