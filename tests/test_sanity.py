"""benchmarks/sanity.py, the physical-sense check run on results before they are committed."""

import pandas as pd

from fake_results import make_results

from benchmarks import sanity


def _verdicts(folder):
    return {name: ok for name, ok, _ in sanity.check(folder, gpu_memory_mb=80_000)}


def test_sanity_passes_sensible_numbers_and_catches_each_kind_of_nonsense(tmp_path):
    folder = make_results(tmp_path, models=("gpt2",), oom=())
    path = folder / "batches.csv"
    b = pd.read_csv(path)
    b["window_s"], b["gpu_power_w"] = 2.0, 400.0  # long steps at 400 W ...
    b["energy_j"] = b["gpu_power_w"] * b["window_s"]  # ... and a counter that agrees
    b["mfu"], b["gpu_memory_mb"], b["gpu_memory_nvml_mb"] = 0.4, 20_000.0, 21_000.0
    b.to_csv(path, index=False)
    assert all(_verdicts(folder).values()), sanity.check(folder, 80_000)

    bad = b.copy()
    bad["energy_j"] *= 1.3  # the counter and the power readings disagree by 23%
    bad.to_csv(path, index=False)
    assert not _verdicts(folder)["energy counter vs power integral"]

    bad = b.copy()
    bad.loc[bad.phase == "measure", "gpu_power_w"] = 760.0  # over the 700 W limit, beyond NVML's 5%
    bad.to_csv(path, index=False)
    assert not _verdicts(folder)["power under the board limit"]

    bad = b.copy()
    bad.loc[bad.index[-1], "mfu"], bad.loc[bad.index[-1], "gpu_memory_nvml_mb"] = 1.2, 90_000.0
    bad.to_csv(path, index=False)
    v = _verdicts(folder)
    assert not v["MFU under 1"] and not v["memory under the card's size"]

    b["window_s"] = 0.05  # short runs: NVML's lagging power is listed, not judged
    b["energy_j"] = b["gpu_power_w"] * b["window_s"] * 1.3
    b.to_csv(path, index=False)
    v = _verdicts(folder)
    assert "energy counter vs power integral" not in v and all(v.values())
