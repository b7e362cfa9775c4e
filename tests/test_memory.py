"""Memory before a run: the estimate's terms, batch auto, and a run far past the device refused."""
import json

import pytest

import config
import main
from harness.sweep import memory_plan
from metrics.memory import PROCESS_BYTES, estimate_bytes, floor_bytes, gpt2_params, largest_batch, resident_bytes


def test_gpt2_parameter_count_is_the_checkpoints():
    assert gpt2_params(12, 768, 50257, 1024) == 124_439_808  # GPT-2 small, tied LM head


def test_only_materialising_mechanisms_pay_for_the_scores():
    args = dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, positions=8192, B=4)
    grow = {a: estimate_bytes(T=8192, attention=a, **args) - estimate_bytes(T=4096, attention=a, **args)
            for a in ("baseline", "sdpa")}
    scores_8k = 12 * 4 * 12 * 8192 ** 2 * 6  # layers x B x heads x T^2 x 6 bytes
    assert grow["baseline"] - grow["sdpa"] == pytest.approx(scores_8k * (1 - 1 / 4))


def test_largest_batch_is_the_largest_that_fits_under_the_token_cap():
    assert largest_batch(lambda B: B <= 37, T=512) == 37
    assert largest_batch(lambda B: True, T=512, cap_tokens=65536) == 128
    assert largest_batch(lambda B: False, T=512) == 1  # one row is the least a run can take


def test_batch_auto_fills_the_gpu_for_the_hungriest_mechanism(monkeypatch):
    monkeypatch.setattr(memory_plan, "device_memory", lambda cfg: (24e9, "GPU 0 (NVIDIA L4), NVML"))
    cfg = config.get_preset("fast_test")
    resolved, record = memory_plan.resolve_batch(cfg)
    B = resolved.batch_size

    def peak(b, a=None):  # the hungriest mechanism of the plan, or one
        names = [a] if a else resolved.attention_list()
        return max(memory_plan.estimate(resolved, dict(model="gpt2", seq_len=512, batch_size=b, attention=n), True)
                   for n in names)

    assert isinstance(B, int) and record["batch_size"] == B and record["memory_from"].startswith("GPU")
    assert peak(B) <= 0.8 * 24e9 < peak(B + 1) and peak(B + 1, "sdpa") < peak(B + 1)
    monkeypatch.setattr(memory_plan, "device_memory", lambda cfg: (24e9, "host RAM (psutil)"))
    assert memory_plan.resolve_batch(cfg)[0].batch_size == memory_plan.CPU_BATCH  # the CPU keeps small batches


def test_a_run_far_past_the_memory_is_oom_at_once_with_its_estimate(tmp_path, capsys):
    code = main.main(["--preset", "smoke", "--attention", "sdpa", "--seq-len", "100000", "--out", str(tmp_path)])
    (folder,) = [f for f in tmp_path.iterdir() if (f / "manifest.json").exists()]
    (run,) = json.loads((folder / "manifest.json").read_text())["runs"]
    assert code == 1 and run["status"] == "oom" and run["reason"].startswith("not started: its estimated peak")
    assert run["memory_estimate_gb"] > 48 and run["wall_s"] < 1


def test_the_estimate_matches_the_h200_run_it_was_fitted_to():
    """gpt2, T = 512, batch 128, bf16 (results/reference/h200/2026-12-01): measured peaks 92.4 GB
    (sdpa), 121.4 (baseline), 117.8 (linear), 133.4 (lsh); the estimate within 5%."""
    args = dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, positions=1024, B=128, T=512)
    for attention, measured_gb in (("sdpa", 92.4), ("baseline", 121.4), ("linear", 117.8), ("lsh", 133.4)):
        assert estimate_bytes(attention=attention, **args) / 1e9 == pytest.approx(measured_gb, rel=0.05), attention


def test_gpt2_on_a_cpu_is_warned_about_with_the_expected_time(capsys, monkeypatch):
    import torch
    from harness.sweep.runner import warn_cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    warn_cpu(config.get_preset("fast_test"))
    out = capsys.readouterr().out
    assert "no GPU here; gpt2 on the CPU takes about 4 min per run" in out and "(9 runs here)" in out
    warn_cpu(config.get_preset("smoke"))  # the tiny model: nothing to say
    assert capsys.readouterr().out == ""


def test_what_a_run_keeps_between_steps_is_its_weights_optimizer_and_context():
    args = dict(n_layer=12, n_embd=768, vocab=50257, positions=1024)
    assert resident_bytes(**args) == 16 * 124_439_808 + PROCESS_BYTES
    peak = estimate_bytes(n_head=12, B=1, T=1024, attention="sdpa", **args)
    assert resident_bytes(**args) < peak < resident_bytes(**args) + 8e9  # a small batch adds a few GB


# Peaks that eager attention (baseline) reached on the H200 (gpt2, bf16, compiled, 16,384 tokens a
# step: results/reference/h200/20261202-173933_h200_scaling), GB allocated, by (T, batch).
BASELINE_H200_GB = {(512, 32): 17.76, (1024, 16): 24.81, (2048, 8): 38.92, (4096, 4): 67.12, (8192, 2): 123.64}


def test_the_floor_is_below_every_measured_peak_and_refuses_what_cannot_fit(monkeypatch):
    """The floor bounds a step from below, so it never exceeds what a run measured; baseline at
    T = 16384 (batch 1) must hold more than the H200's 150.8 GB, which the estimate (257 GB, under
    2x) did not refuse: it compiled, then ran out of memory."""
    args = dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, attention="baseline")
    for (T, B), measured in BASELINE_H200_GB.items():
        assert floor_bytes(positions=max(T, 1024), B=B, T=T, **args) / 1e9 <= measured, (T, B)
    assert floor_bytes(positions=16384, B=1, T=16384, **args) > 150.8e9
    assert floor_bytes(positions=16384, B=1, T=16384, **dict(args, attention="sdpa")) == 16 * gpt2_params(
        12, 768, 50257, 16384)  # no stored scores: weights, gradients and moments only
    monkeypatch.setattr(memory_plan, "device_memory", lambda cfg: (150.8e9, "GPU 0 (NVIDIA H200), NVML"))
    cfg = config.get_preset("scaling")
    runs = [dict(run_id=f"{a}{T}", model="gpt2", attention=a, seq_len=T, batch_size=16384 // T)
            for a in ("baseline", "sdpa") for T in (8192, 16384)]
    checked = memory_plan.check(cfg, runs, log=lambda *a: None)
    assert checked["baseline16384"][0] < 2 * 150.8e9  # the estimate alone would have started it
    assert checked["baseline16384"][1].startswith("not started: it must hold at least 234.")
    assert [checked[k][1] for k in ("baseline8192", "sdpa8192", "sdpa16384")] == [None] * 3
