"""The attention benchmarks on CPU, tiny: every row is written, ratios are computed from them,
and the lsh profiler names its implementations' times and top ops (the GPU runs are the device's)."""
import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import attention_kernels, profile_lsh


def test_kernel_benchmark_writes_every_row_and_the_target_ratios(tmp_path, capsys):
    attention_kernels.main(["--device", "cpu", "--dtype", "fp32", "--seq-lens", "64,128", "--tokens", "256",
                            "--repeats", "1", "--warmup", "1", "--mechanisms", "baseline,lsh,flash",
                            "--out", str(tmp_path)])
    rows = pd.read_csv(tmp_path / "attention_kernels.csv")
    assert list(zip(rows.mechanism, rows["T"], rows.B)) == [
        ("baseline", 64, 4), ("baseline", 128, 2), ("lsh", 64, 4), ("lsh", 128, 2), ("flash", 64, 4), ("flash", 128, 2)]
    ok = rows[rows.status == "ok"]
    # both times recorded (not fwd+bwd >= fwd: one repeat of a 1 ms call on a busy CPU can invert them)
    assert set(ok.mechanism) == {"baseline", "lsh"} and (ok[["fwd_ms", "fwd_bwd_ms"]] > 0).all().all()
    assert rows[rows.mechanism == "flash"].status.str.startswith("unavailable: FlashAttention").all()
    assert (tmp_path / "attention_kernels.png").exists()
    assert "fwd+bwd time ratios" in capsys.readouterr().out


def test_target_ratios_divide_fwd_bwd_times_and_say_what_was_not_measured():
    rows = [dict(mechanism="lsh", T=2048, status="ok", fwd_bwd_ms=30.0),
            dict(mechanism="baseline", T=2048, status="ok", fwd_bwd_ms=10.0),
            dict(mechanism="lsh", T=4096, status="ok", fwd_bwd_ms=31.0),
            dict(mechanism="baseline", T=4096, status="oom")]
    lines = attention_kernels.ratios(rows)
    assert "  lsh / baseline at T=2048: 3.00" in lines
    assert "  lsh / baseline at T=4096: n/a (baseline: oom)" in lines
    assert "  flex / flash at T=2048: n/a (not measured)" in lines


def test_lsh_profiler_times_each_impl_and_lists_its_top_ops(tmp_path):
    profile_lsh.main(["--device", "cpu", "--T", "64", "--tokens", "128", "--repeats", "1", "--rows", "3",
                      "--out", str(tmp_path)])
    text = (tmp_path / "profile_lsh.txt").read_text()
    assert "impl=matmul: B=2 H=12 T=64" in text and "fwd+bwd" in text and "aten::" in text
    assert "impl=flex: skipped, it runs on CUDA only" in text
    assert (tmp_path / "lsh_matmul_T64.json").stat().st_size > 0


def test_flex_mask_loads_masks_and_layouts_agree_at_every_query():
    """lsh's flex mask_mod went from five int64/bool loads to two int32 ones (48x faster forward on
    the H200), then from the slot layout to compact rows: every query gets the same output from
    all three (eager flex on CPU)."""
    from benchmarks import flex_mask_loads
    lines = flex_mask_loads.main(["--device", "cpu", "--tokens", "512", "--T", "256", "--repeats", "1"])
    assert len(lines) == 7 and all("sparsity" in line for line in lines[1:5])
    assert lines[-2] == "max |five loads - two loads| over the queries: 0"
    assert lines[-1].startswith("max |compact rows - two loads| over the queries: ")
    assert float(lines[-1].rsplit(" ", 1)[1]) < 1e-5


def test_kernel_benchmark_takes_registry_parameters_and_refuses_bad_ones(tmp_path, capsys):
    attention_kernels.main(["--device", "cpu", "--dtype", "fp32", "--seq-lens", "64", "--tokens", "128",
                            "--repeats", "1", "--warmup", "1", "--mechanisms", "lsh,linear",
                            "--params", "lsh.bucket_size=16,lsh.impl=flex", "--out", str(tmp_path)])
    rows = pd.read_csv(tmp_path / "attention_kernels.csv", keep_default_na=False)
    assert list(rows.params) == ["bucket_size=16 impl=flex", ""] and set(rows.status) == {"ok"}
    assert rows.kernel[0] == "pytorch (sort + chunked matmuls)"  # impl=flex runs on CUDA only
    for bad, says in [("lsh.window=3", "lsh has no parameter 'window'"), ("lsh.bucket_size=big", "bucket_size takes int values"),
                      ("lsh", "is not NAME.KEY=VALUE"), ("nope.x=1", "'nope' is not an attention"),
                      ("linear.chunk_size=8", "linear not in --mechanisms"), ("lsh.dedup=no", "dedup takes bool values")]:
        with pytest.raises(SystemExit):
            attention_kernels.parse_args(["--mechanisms", "lsh", "--params", bad])
        assert says in capsys.readouterr().err
    # a bool parameter reads as one: the string "false" would be truthy
    assert attention_kernels.parse_params("lsh.dedup=false,lsh.n_hashes=4") == {"lsh": {"dedup": False, "n_hashes": 4}}
    assert attention_kernels.parse_params("sliding_window.window=8") == {"sliding_window": {"window": 8}}


def test_compile_budget_times_a_sweep_from_an_emptied_cache_and_sums_its_pieces(tmp_path, capsys):
    """Each `run` starts from an empty private cache and records the command's wall time and its
    runs; `summary` adds a group's pieces and compares the sum with the target."""
    from benchmarks import compile_budget
    stale = tmp_path / "caches" / "smoke" / "inductor" / "stale"
    stale.mkdir(parents=True)
    args = ["--preset", "smoke", "--seq-len", "32", "--steps", "1", "--epochs", "1", "--warmup", "0",
            "--attention", "sdpa", "--no-inference"]
    assert compile_budget.main(["run", "--group", "smoke", "--target-min", "0.001", "--out", str(tmp_path),
                                "--", *args]) == 0
    assert not stale.exists()  # emptied before the command
    (entry,) = [json.loads(x) for x in (tmp_path / "budget.jsonl").read_text().splitlines()]
    assert entry["runs_ok"] == entry["runs"] == 1 and entry["wall_s"] > 0 and entry["rc"] == 0
    assert (tmp_path / entry["folder"] / "manifest.json").exists()
    capsys.readouterr()
    (tmp_path / "budget.jsonl").write_text("".join(json.dumps(dict(entry, wall_s=w, group="s")) + "\n" for w in (30, 60)))
    compile_budget.summary(type("A", (), {"out": str(tmp_path)}))
    row = [x for x in capsys.readouterr().out.splitlines() if x.startswith("| s |")][0]
    assert row.split("|")[2:8] == [" 2 ", " each cold ", " 2 / 2 ", " 1.50 ", " 0.001 ", " 1500.00 "]
    assert row.endswith("| no |")


def test_compile_budget_pieces_of_one_sweep_can_share_its_cache(tmp_path, monkeypatch):
    """--shared-cache: the group's first piece starts cold, a later one keeps what the earlier left
    (the sweep as one command would run), and each entry says which it was."""
    from benchmarks import compile_budget
    seen = []

    def fake_run(cmd, cwd, env, stdout, stderr):
        cache = Path(env["TORCHINDUCTOR_CACHE_DIR"])
        seen.append(sorted(p.name for p in cache.iterdir()) if cache.exists() else [])
        cache.mkdir(parents=True, exist_ok=True)
        (cache / f"graph{len(seen)}").touch()  # what this piece compiled
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(compile_budget.subprocess, "run", fake_run)
    monkeypatch.setattr(compile_budget, "commit", lambda: "abc")
    stale = tmp_path / "caches" / "g" / "inductor" / "stale"
    stale.mkdir(parents=True)
    for _ in range(3):
        compile_budget.main(["run", "--group", "g", "--target-min", "1", "--out", str(tmp_path), "--shared-cache",
                             "--", "--preset", "smoke"])
    compile_budget.main(["run", "--group", "g", "--target-min", "1", "--out", str(tmp_path), "--", "--preset", "smoke"])
    assert seen == [[], ["graph1"], ["graph1", "graph2"], []]  # stale emptied first; the last one cold again
    caches = [json.loads(x)["cache"] for x in (tmp_path / "budget.jsonl").read_text().splitlines()]
    assert caches == ["cold", "shared with the group's earlier pieces", "shared with the group's earlier pieces", "cold"]
