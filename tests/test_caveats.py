"""Each reason a number should not be read at face value fires on its own case and no other."""
from metrics.caveats import caveats

CLEAN = dict(gpu_util_percent=95.0, train_time_s=0.100, train_time_s_lo=0.098, train_time_s_hi=0.103,
             n_measured=30, gpu_power_w=500.0, energy_j=100.0)
GPU_RUN = dict(kernel="flex_attention (torch.compile, triton, block mask)", device="cuda:0", other_gpu_processes=[])


def test_a_clean_gpu_run_has_no_caveat():
    assert caveats(CLEAN, GPU_RUN, ["ok"] * 30) == []


def test_each_caveat_on_its_own():
    cases = {
        "launch-bound": (dict(CLEAN, gpu_util_percent=22.0), GPU_RUN, ["ok"]),
        "noisy": (dict(CLEAN, train_time_s_hi=0.125), GPU_RUN, ["ok"]),
        "fallback kernel": (CLEAN, dict(GPU_RUN, kernel="chunked pytorch (pre-Ampere path)"), ["ok"]),
        "too few measured steps": (dict(CLEAN, n_measured=3), GPU_RUN, ["ok"]),
        "energy: steps shorter": (CLEAN, GPU_RUN, ["short_window"] * 3 + ["ok"]),
        "energy: no energy counter": (dict(CLEAN, energy_j=float("nan")), GPU_RUN, ["nan"]),
        "other process on the GPU: pid 4242": (CLEAN, dict(GPU_RUN, other_gpu_processes=[{"pid": 4242}]), ["ok"]),
        "recall 0.125 is at or below 1 / n_pairs = 0.125": (dict(CLEAN, recall_accuracy=0.125, n_pairs=8), GPU_RUN, ["ok"]),
    }
    for expected, (row, run, flags) in cases.items():
        got = caveats(row, run, flags)
        assert len(got) == 1 and got[0].startswith(expected), (expected, got)


def test_recall_above_the_no_recall_plateau_needs_no_caveat():
    import numpy as np
    assert caveats(dict(CLEAN, recall_accuracy=0.4, n_pairs=np.int64(8)), GPU_RUN, ["ok"] * 30) == []
    assert caveats(dict(CLEAN, recall_accuracy=np.float64(0.1), n_pairs=np.int64(8)), GPU_RUN, ["ok"] * 30)


def test_recall_within_noise_of_the_plateau_is_no_recall():
    """0.27 over 512 held-out queries at 4 pairs is 1 standard error above 0.25 (a CPU run that
    never left the plateau): no recall learnt; the same over 20,000 queries is recall."""
    row = dict(CLEAN, recall_accuracy=0.27, n_pairs=4)
    (got,) = caveats(row, dict(GPU_RUN, eval_labelled=512), ["ok"] * 30)
    assert got.startswith("recall 0.270 is within 2 standard errors (+0.038 over 512 held-out queries) of "
                          "1 / n_pairs = 0.250") and got.endswith("no recall learnt")
    assert caveats(row, dict(GPU_RUN, eval_labelled=20_000), ["ok"] * 30) == []
    assert caveats(row, GPU_RUN, ["ok"] * 30) == []  # the count unknown (an older manifest): 1 / n_pairs only


def test_a_cpu_run_is_a_fallback_whatever_its_kernel():
    assert caveats(CLEAN, dict(GPU_RUN, kernel="eager", device="cpu"))[0].startswith("fallback kernel: eager on cpu")
