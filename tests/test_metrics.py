"""Each metric against a known answer (CPU, fast): sleep, busy loop, a known allocation, a known
file write and read, a fake NVML with known power and energy, the FLOP formula against torch's
FlopCounterMode, the PaLM formula against a hand count, the peak table."""
import math
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from metrics.flops import palm_flops_per_token, palm_n_params, train_step_flops
from metrics.meter import Meter
from metrics.peak import peak_info, peak_tflops
from metrics.system import model_size_mb

GPU_COLS = ["gpu_memory_mb", "gpu_memory_reserved_mb", "gpu_memory_nvml_mb", "gpu_power_w",
            "gpu_util_percent", "energy_j"]
ROW_KEYS = {"cpu_percent", "memory_gb", "disk_read_mb", "disk_write_mb", "gpu_memory_mb",
            "gpu_memory_reserved_mb", "gpu_memory_nvml_mb", "gpu_power_w", "gpu_util_percent",
            "energy_j", "samples_in_window", "sample_fallback", "energy_flag", "window_s"}


@pytest.fixture
def cpu_meter():
    meter = Meter(torch.device("cpu"), interval_s=0.02).start()
    yield meter
    meter.stop()


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# -- time and CPU ---------------------------------------------------------------------------
def test_sleep_reads_its_duration_and_no_cpu(cpu_meter):
    with cpu_meter.step() as row:
        time.sleep(0.2)
    assert set(row) == ROW_KEYS
    assert row["window_s"] == pytest.approx(0.2, rel=0.1)
    # The process's own threads count (the sampler polls every 20 ms): 13.6% was seen on an H200
    # host busy compiling in other processes; a busy loop reads ~100%.
    assert row["cpu_percent"] < 25


def test_busy_loop_reads_the_cpu_it_burned(cpu_meter):
    # One busy thread uses one core while it is scheduled: 100 % on an idle machine. On a shared
    # machine it is descheduled part of the time, so the known answer is the CPU time this
    # thread itself burned (CLOCK_THREAD_CPUTIME_ID) over the wall time, plus a little for the
    # sampler thread.
    with cpu_meter.step() as row:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        busy(0.2)
        expected = 100 * (time.thread_time() - cpu0) / (time.perf_counter() - wall0)
    assert expected - 5 < row["cpu_percent"] < expected + 10
    if os.getloadavg()[0] < 0.5 * os.cpu_count():  # an idle machine: a full core
        assert row["cpu_percent"] > 85


# -- memory ---------------------------------------------------------------------------------
def test_known_allocation_shows_in_rss(cpu_meter):
    with cpu_meter.step() as before:
        pass
    with cpu_meter.step() as after:
        block = np.ones(25_000_000, dtype=np.float64)  # 200 MB, every page written
    assert after["memory_gb"] - before["memory_gb"] == pytest.approx(0.2, rel=0.1)
    del block


# -- disk -----------------------------------------------------------------------------------
def _write_fsync(path: Path, n_bytes: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(n_bytes))
        f.flush()
        os.fsync(f.fileno())
        if hasattr(os, "posix_fadvise"):  # drop it from the page cache so a re-read hits the disk
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _accounts_writes(folder: Path) -> bool:
    """Does this filesystem charge written bytes to this process (tmpfs and some overlays don't)?"""
    import psutil

    try:
        before = psutil.Process().io_counters().write_bytes
    except Exception:
        return False
    probe = folder / "probe.bin"
    _write_fsync(probe, 2_000_000)
    after = psutil.Process().io_counters().write_bytes
    probe.unlink()
    return after - before >= 1_900_000


def test_known_file_write_and_read(tmp_path):
    folders = [tmp_path, Path(__file__).resolve().parent]
    folder = next((f for f in folders if _accounts_writes(f)), None)
    # Fallback: no folder is accounted per process, so use the system-wide disk counters, which
    # can only add other processes' bytes: assert a lower bound there.
    meter = Meter("cpu", interval_s=0.05, force_system_disk=folder is None).start()
    path = (folder or folders[-1]) / "metrics_test_20mb.bin"
    try:
        with meter.step() as wrote:
            _write_fsync(path, 20_000_000)
        with meter.step() as read:
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
    finally:
        meter.stop()
        path.unlink(missing_ok=True)
    if folder is None:
        assert meter.info()["disk_counter_source"] == "system-wide (fallback)"
        assert wrote["disk_write_mb"] >= 18
        return
    assert meter.info()["disk_counter_source"] == "process io_counters"
    assert wrote["disk_write_mb"] == pytest.approx(20, rel=0.1)
    if hasattr(os, "posix_fadvise"):  # the cache was dropped: the read went to the device
        assert read["disk_read_mb"] == pytest.approx(20, rel=0.1)


# -- GPU: no NVML here, and a fake NVML with known answers ----------------------------------
def test_no_gpu_means_nan_with_reasons(cpu_meter):
    with cpu_meter.step() as row:
        time.sleep(0.01)
    for col in GPU_COLS:
        assert math.isnan(row[col]), col
        assert "cpu" in cpu_meter.info()["nan_reasons"][col]
    assert row["energy_flag"] == "nan"


def test_nvml_missing_library_is_nan_not_crash():
    meter = Meter("cpu", interval_s=0.02, nvml_index=0, idle_s=0.05).start()
    with meter.step() as row:
        time.sleep(0.05)
    meter.stop()
    info = meter.info()
    if info["nvml_available"]:
        pytest.skip("a real NVIDIA driver is present")
    for col in ["gpu_power_w", "gpu_util_percent", "gpu_memory_nvml_mb", "energy_j"]:
        assert math.isnan(row[col])
        assert "NVML" in info["nan_reasons"][col]
    assert math.isnan(meter.energy_counter_j()) and math.isnan(info["idle_power_w"])


def fake_pynvml(watts=250.0, util=73, used_bytes=1_234_500_000, energy_supported=True):
    """A pynvml stand-in: constant power, an energy counter rising at exactly `watts`."""
    nv = types.ModuleType("pynvml")
    t_base = time.perf_counter()

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def energy(handle):
        if not energy_supported:
            raise NVMLError_NotSupported("Not Supported")
        return int((time.perf_counter() - t_base) * watts * 1000)  # mJ

    nv.NVMLError, nv.NVMLError_NotSupported = NVMLError, NVMLError_NotSupported
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetHandleByIndex = lambda i: f"handle{i}"
    nv.nvmlDeviceGetIndex = lambda h: 0
    nv.nvmlDeviceGetName = lambda h: "Fake H200"
    nv.nvmlSystemGetDriverVersion = lambda: "999.1"
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlDeviceGetPowerUsage = lambda h: int(watts * 1000)
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=util, memory=10)
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=used_bytes)
    nv.nvmlDeviceGetTotalEnergyConsumption = energy
    return nv


def test_fake_nvml_known_power_and_energy(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    meter = Meter("cpu", interval_s=0.02, nvml_index=0, idle_s=0.1).start()
    with meter.step() as row:
        time.sleep(0.3)
    meter.stop()
    assert row["gpu_power_w"] == 250.0
    assert row["gpu_util_percent"] == 73.0
    assert row["gpu_memory_nvml_mb"] == pytest.approx(1234.5)
    assert row["energy_j"] == pytest.approx(250.0 * row["window_s"], rel=0.02)  # a preemption between reads
    assert row["energy_flag"] == "ok" and not row["sample_fallback"]
    assert row["samples_in_window"] >= 10
    info = meter.info()
    assert info["nvml_available"] and info["gpu_name"] == "Fake H200"
    assert info["idle_power_w"] == 250.0 and info["power_limit_w"] == 700.0
    assert meter.samples()[0]["gpu_power_w"] == 250.0


def _orphan_with_a_child() -> psutil.Process:
    """A process that is not this one's descendant (its parent exits at once), with a child of
    its own: a sibling run of the sweep and its compile worker, as the measured run sees them."""
    code = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(30)\"]); time.sleep(30)'], "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    sibling = psutil.Process(int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout))
    deadline = time.time() + 10
    while time.time() < deadline and not sibling.children():
        time.sleep(0.05)
    return sibling


def test_other_gpu_processes_leave_out_this_runs_and_its_siblings_processes(monkeypatch):
    """A compile worker of this run or of a paused sibling holds a CUDA context of its own: not
    another user's work. A process outside both families is reported."""
    own_worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # this run's child
    sibling = _orphan_with_a_child()
    try:
        sibling_worker = sibling.children()[0].pid
        foreign = 1  # init: never a descendant of this test or of the sibling
        pids = [own_worker.pid, sibling.pid, sibling_worker, foreign]
        nv = fake_pynvml()
        nv.nvmlDeviceGetComputeRunningProcesses = lambda h: [types.SimpleNamespace(pid=p, usedGpuMemory=549_000_000)
                                                             for p in pids]
        nv.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
        monkeypatch.setitem(sys.modules, "pynvml", nv)
        meter = Meter("cpu", interval_s=0.02, nvml_index=0, idle_s=0, siblings=[sibling.pid]).start()
        meter.stop()
        assert [p["pid"] for p in meter.info()["other_gpu_processes"]] == [foreign]
        unnamed = Meter("cpu", interval_s=0.02, nvml_index=0, idle_s=0).start()
        unnamed.stop()  # without the sibling named, it and its worker are other processes
        assert sorted(p["pid"] for p in unnamed.info()["other_gpu_processes"]) == sorted(
            [sibling.pid, sibling_worker, foreign])
    finally:
        for p in sibling.children() + [sibling]:
            p.kill()
        own_worker.kill()


def test_unsupported_energy_is_nan_with_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy_supported=False))
    meter = Meter("cpu", interval_s=0.02, nvml_index=0, idle_s=0).start()
    with meter.step() as row:
        time.sleep(0.12)
    meter.stop()
    assert math.isnan(row["energy_j"]) and row["energy_flag"] == "nan"
    assert "Not Supported" in meter.info()["nan_reasons"]["energy_j"]
    assert row["gpu_power_w"] == 250.0


def test_short_step_uses_nearest_sample(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    meter = Meter("cpu", interval_s=0.5, nvml_index=0, idle_s=0).start()
    time.sleep(0.05)  # the first sample was taken at start; the next is 0.5 s away
    with meter.step() as row:
        busy(0.005)
    meter.stop()
    assert row["sample_fallback"] is True and row["samples_in_window"] == 0
    assert row["gpu_power_w"] == 250.0 and row["gpu_util_percent"] == 73.0
    assert row["energy_flag"] == "short_window"


def test_visible_device_maps_to_the_right_nvml_gpu(monkeypatch):
    from metrics.nvml import NvmlReader, torch_device_target

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    props = types.SimpleNamespace(uuid="1234-abcd")  # no pci_bus_id attribute: older torch
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    target = torch_device_target(torch.device("cuda:1"))
    assert target["uuid"] == "GPU-1234-abcd" and target["index"] == 5
    nv = fake_pynvml()
    nv.nvmlDeviceGetHandleByUUID = lambda uuid: f"by-{uuid}"
    assert NvmlReader(target, module=nv).handle == "by-GPU-1234-abcd"
    del nv.nvmlDeviceGetHandleByUUID  # no UUID lookup: fall back to the CUDA_VISIBLE_DEVICES entry
    assert NvmlReader(target, module=nv).handle == "handle5"


def test_a_failing_metric_gives_nan_not_a_crash(cpu_meter, monkeypatch):
    def broken(*args):
        raise OSError("counter vanished")

    monkeypatch.setattr(cpu_meter, "_row", broken)
    with cpu_meter.step() as row:
        pass
    assert set(row) == ROW_KEYS and math.isnan(row["cpu_percent"]) and row["energy_flag"] == "nan"
    assert "counter vanished" in cpu_meter.info()["nan_reasons"]["row"]


def test_cuda_device_without_cuda_does_not_crash():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    meter = Meter(torch.device("cuda"), interval_s=0.02, idle_s=0).start()
    with meter.step() as row:
        pass
    meter.stop()
    assert all(math.isnan(row[c]) for c in GPU_COLS)


# -- FLOPs ----------------------------------------------------------------------------------
def test_flop_formula_matches_flop_counter_on_eager():
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import GPT2Config, GPT2LMHeadModel

    from attentions import get

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    model.config._attn_implementation = "eager"
    B, T, H, D = 3, 48, 4, 16
    ids = torch.randint(0, 1000, (B, T))
    counter = FlopCounterMode(display=False)
    with counter:
        model(ids, labels=ids).loss.backward()
    attn = get("baseline").flops(B, H, T, D, {})
    ours = train_step_flops(config, B, T, attn)
    # Both count only matmuls; backward = 2 x forward holds exactly because wte (and so the
    # first block's input) is trained, and the embedding's backward is a scatter, not a matmul.
    assert ours["total"] == pytest.approx(counter.get_total_flops(), rel=0.03)
    assert ours["forward"] == ours["matmul_forward"] + ours["attention_forward"]


def test_gqa_shrinks_only_the_kv_projection():
    from transformers import GPT2Config

    config = GPT2Config()
    full = train_step_flops(config, 1, 1024, 0.0)
    gqa = train_step_flops(config, 1, 1024, 0.0, kv_heads=4)
    E, D, L, T = 768, 64, 12, 1024
    assert full["forward"] - gqa["forward"] == 2 * T * E * 2 * (E - 4 * D) * L


def test_fvcore_agrees_with_the_analytic_forward_on_baseline_and_says_why_elsewhere():
    """fvcore (a requirement) counts multiply-adds: doubled, it equals our forward count on
    baseline (eager matmuls); on sdpa it cannot trace the kernel call and says so, never a number."""
    import attentions
    from harness.run import model as models
    from metrics.flops import fvcore_forward_flops
    ids = torch.randint(0, 1000, (2, 64))
    for name, traced in (("baseline", True), ("sdpa", False)):
        m, params = models.build("tiny", name, 64)
        c = m.config
        H, D = c.n_head, c.n_embd // c.n_head
        analytic = train_step_flops(c, 2, 64, attentions.get(name).flops(2, H, 64, D, params))["forward"]
        count, why = fvcore_forward_flops(m, ids)
        if traced:
            assert count == pytest.approx(analytic, rel=0.01) and why == ""  # norms add well under 1%
        else:
            assert math.isnan(count) and "could not trace" in why


def test_palm_formula_on_gpt2_small():
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())
    # By hand: wte 50257*768 = 38,597,376; per block 7,087,872 (ln 2*1536, c_attn 768*2304+2304,
    # c_proj 768*768+768, c_fc 768*3072+3072, mlp c_proj 3072*768+768); 12 blocks; ln_f 1536.
    n = 38_597_376 + 12 * 7_087_872 + 1_536
    assert palm_n_params(model) == n == 123_653_376
    # 6N = 741,920,256; 12*L*H*Q*T = 12*12*12*64*1024 = 113,246,208
    assert palm_flops_per_token(n, 12, 12, 64, 1024) == 855_166_464
    assert model_size_mb(model) == pytest.approx((n + 1024 * 768) * 4 / 1e6)  # fp32, no buffers


# -- peak table -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("Tesla T4", 65.0),
    ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.05), ("NVIDIA A10", 125.0),
    ("Tesla V100-SXM2-16GB", 125.0), ("NVIDIA GeForce RTX 4090", 165.2),
    ("NVIDIA GeForce RTX 3090", 71.0),
])
def test_peak_table(name, tflops):
    assert peak_tflops(name) == tflops


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Mystery GPU 9000", None])
def test_peak_unknown_is_nan_with_reason(name):
    value, why = peak_info(name) if name else peak_info(torch.device("cpu"))
    assert math.isnan(value) and why


def test_peak_depends_on_dtype():
    assert peak_tflops("NVIDIA H200", torch.bfloat16) == 989.0
    assert peak_tflops("Tesla T4", torch.float16) == 65.0
    value, why = peak_info("Tesla T4", torch.bfloat16)  # Turing has no BF16 tensor cores
    assert math.isnan(value) and "BF16" in why
    assert math.isnan(peak_tflops("NVIDIA H200", torch.float32))
    assert math.isnan(peak_tflops(torch.device("cpu"), torch.bfloat16))


def test_energy_counter_staircase_gives_even_per_step_energy():
    """NVML's counter moves every 100 ms, sampled every 50 ms: per-step energies of 65 ms steps at
    a constant 100 W must come out near 6.5 J each, not alternating high and low (the H200 gave
    25 to 76 J for 46 J steps when raw readings were interpolated)."""
    from metrics.meter import _counter_at, counter_updates
    power, period = 100.0, 0.1
    reads = [(0.003 + 0.05 * i + 0.004 * (i % 3), None) for i in range(200)]
    points = [(t, power * period * math.floor(t / period)) for t, _ in reads]  # counter value at read time
    counter = counter_updates(points)
    steps = [(0.5 + 0.065 * i, 0.5 + 0.065 * (i + 1)) for i in range(120)]
    energies = [_counter_at(counter, b) - _counter_at(counter, a) for a, b in steps]
    assert all(4.5 < e < 8.5 for e in energies), sorted(energies)[:3] + sorted(energies)[-3:]
    assert statistics.median(energies) == pytest.approx(6.5, rel=0.05)
    raw = ([p[0] for p in points], [p[1] for p in points])  # what the old interpolation saw
    raw_e = [_counter_at(raw, b) - _counter_at(raw, a) for a, b in steps]
    assert max(raw_e) - min(raw_e) > 2 * (max(energies) - min(energies))
    total = _counter_at(counter, steps[-1][1]) - _counter_at(counter, steps[0][0])
    assert sum(energies) == pytest.approx(total)  # consecutive deltas still add up
