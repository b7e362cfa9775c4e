"""The reports (harness/report/) on fabricated results folders (tests/fake_results.py): folder listing,
loading and its errors, the summary table, every plot file, bar heights read back from the
figure, OOM marks, ratios of a comparison against hand-computed ones, report.md's links, and
the friendly first visit of show().
"""
import math
import json
from pathlib import Path
import shutil

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from fake_results import make_results
from harness import store
from harness.errors import UserError
from harness.report import plots
from harness.report.compare import compare
from harness.report.markdown import make_plots, write_report
from harness.report.notebook import latest_unfinished
from harness.report.results import latest, list_results, load
from harness.report.show import show
from harness.report.tables import flop_check, interval_table, not_measured, read_with_care, summary_table
from metrics.catalog import METRICS, label

ATTS = ("baseline", "sdpa", "linear")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    make_results(root, stamp="20250101-120000")     # 2 models x 3 attentions, gpt2-medium baseline OOM
    make_results(root, stamp="20250102-120000", preset="sweep", models=("gpt2",), attentions=ATTS,
                 seq_lens=(256, 512, 1024), oom=(("gpt2", "baseline", 1024),), repeats=2, seed=1)
    make_results(root, stamp="20250103-120000", device="cpu", preset="smoke", models=("tiny",),
                 attentions=("baseline", "sdpa"), seq_lens=(128,), oom=())
    (root / "notes").mkdir()                         # not a result: no manifest.json
    return root


@pytest.fixture(scope="module")
def drawn(root):
    """{folder name: (PNG paths, figures)}: the 2-model folder saved to PNG (once: drawing is slow),
    the others' figures only built."""
    out = {}
    for f in list_results(root):
        if f.name.endswith("fixture"):
            out[f.name] = make_plots(f, return_figures=True)
        else:
            r = load(f)
            out[f.name] = (None, plots.all_figures(r.summary, r.batches, r.context))
    return out


def folder(root, stamp):
    return next(f for f in list_results(root) if f.name.startswith(stamp))


def test_list_results_newest_first_and_latest(root):
    names = [f.name for f in list_results(root)]
    assert names == ["20250103-120000_cpu_smoke", "20250102-120000_cuda_sweep", "20250101-120000_cuda_fixture"]
    assert latest(root).name == names[0]
    assert latest(root, 2).name == names[1]
    assert latest(root, 3).name == names[2]


@pytest.mark.parametrize("n", [4, 0, -1])
def test_latest_n_out_of_range(root, n):
    with pytest.raises(UserError, match="holds 3 result"):
        latest(root, n)


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        latest(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no results"):
        latest(tmp_path)


def test_load(root):
    r = load(folder(root, "20250101"))
    assert r.manifest["preset"] == "fixture"
    assert len(r.summary) == 6 and set(r.summary.status) == {"ok", "oom"}
    assert len(r.batches) == 5 * 6                   # 5 ok runs x 6 steps; the OOM run has no rows
    assert r.samples is not None and "gpu_power_w" in r.samples
    assert r.summary.seq_len.dtype.kind == "i"


def test_load_errors_name_the_file(root, tmp_path):
    with pytest.raises(UserError, match="gone"):
        load(tmp_path / "gone")
    bad = shutil.copytree(folder(root, "20250101"), tmp_path / "bad")
    (bad / "batches.csv").unlink()
    with pytest.raises(UserError, match="batches.csv"):       # a summary without its batches
        load(bad)
    (bad / "batches.csv").write_text("")
    (bad / "summary.csv").write_text("run_id,model\n1,2,3,4\n")
    with pytest.raises(UserError, match="summary.csv"):
        load(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest.json"):
        load(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(UserError, match="manifest.json"):
        load(bad)


def test_sweep_stopped_before_its_first_run_ended(root, tmp_path, capsys):
    """Only manifest.json: the plan is shown as pending runs, with how to resume; nothing is drawn."""
    f = tmp_path / "20250109-120000_cuda_fixture"
    f.mkdir()
    m = json.loads((folder(root, "20250101") / "manifest.json").read_text())
    m["finished"] = None
    for run in m["runs"]:
        run["status"] = "pending"
    (f / "manifest.json").write_text(json.dumps(m))
    r = load(f)
    assert len(r.summary) == 6 and set(summary_table(r).status) == {"pending"}
    assert make_plots(f) == []
    show(1, tmp_path)
    out = capsys.readouterr().out
    assert "6 pending" in out and "--resume" in out


def test_summary_table(root):
    r = load(folder(root, "20250101"))
    t = summary_table(r)
    assert len(t) == 6
    assert {"model", "attention", "kernel", "seq_len", "status", label("train_time_s"), label("gpu_power_w")} <= set(t)
    assert label("mfu") not in t                     # measured by no run: left out, listed by not_measured
    oom = t[(t.model == "gpt2-medium") & (t.attention == "baseline")]
    assert oom.status.item() == "oom" and np.isnan(oom[label("train_time_s")].item())
    s = r.summary.set_index(["model", "attention"])
    for row in t[t.status == "ok"].itertuples(index=False):
        want = s.loc[(row.model, row.attention), "train_time_s"]
        assert row[list(t.columns).index(label("train_time_s"))] == pytest.approx(want, rel=1e-3)
    assert list(t.attention[:3]) == list(ATTS)       # registry order, models in plan order


def test_summary_table_lists_unfinished_runs(root, tmp_path):
    f = shutil.copytree(folder(root, "20250101"), tmp_path / "r")
    m = json.loads((f / "manifest.json").read_text())
    m["runs"].append(dict(run_id="x", model="gpt2", attention="gqa", seq_len=512, batch_size=2, repeat=0,
                          status="pending", reason=""))
    (f / "manifest.json").write_text(json.dumps(m))
    t = summary_table(load(f))
    assert t[t.attention == "gqa"].status.item() == "pending"


def expected_stems(r):
    s = r.summary
    cols = [m.column for m in METRICS if plots.measured(s, m.column)]
    stems = {"overview", "loss_curves"} | {f"bar_{c}" for c in cols if c not in plots.NO_BARS}
    stems |= {f"batches_{c}" for c in plots.LINES if c in cols}
    if s.seq_len.nunique() > 1:
        stems |= {f"scaling_{c}" for c in plots.SCALING if c in cols}
    return stems


def test_every_plot_file_exists(root, drawn):
    f = folder(root, "20250101")
    paths, figs = drawn[f.name]
    assert {p.stem for p in paths} == set(figs) == expected_stems(load(f))
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in paths)
    assert sorted(p.name for p in (f / "plots").glob("*.png")) == sorted(p.name for p in paths)
    sweep = folder(root, "20250102")
    assert set(drawn[sweep.name][1]) == expected_stems(load(sweep))
    assert {"scaling_train_time_s", "scaling_gpu_memory_mb", "scaling_joules_per_token"} <= set(drawn[sweep.name][1])


def test_not_measured_metrics_get_no_figure(root, drawn):
    cpu = load(folder(root, "20250103"))
    stems = set(drawn[cpu.folder.name][1])
    assert "bar_gpu_power_w" not in stems and "batches_gpu_power_w" not in stems
    assert "bar_train_time_s" in stems
    missing = not_measured(cpu)
    assert "NVML" in missing["gpu_power_w"] and "NVML" in missing["joules_per_token"]


def bars(fig):
    """{gid: (height, facecolor)} of every bar of a figure; gid = "model|seq_len|attention"."""
    return {p.get_gid(): (p.get_height(), p.get_facecolor()) for ax in fig.axes for p in ax.patches
            if p.get_gid()}


def test_bar_heights_equal_summary_medians(root, drawn):
    r = load(folder(root, "20250101"))
    fig = drawn[r.folder.name][1]["bar_train_time_s"]
    got = bars(fig)
    ok = r.summary[r.summary.status == "ok"]
    assert set(got) == {f"{x.model}|{x.seq_len}|{x.attention}" for x in ok.itertuples()}
    for x in ok.itertuples():
        height, face = got[f"{x.model}|{x.seq_len}|{x.attention}"]
        assert height == pytest.approx(x.train_time_s, rel=1e-12)
        assert face == to_rgba(plots.COLORS[x.attention])        # one fixed colour per attention
    texts = [t.get_text().strip() for ax in fig.axes for t in ax.texts]
    assert "OOM" in texts                                          # the failed run is marked, not a 0 bar


def test_bar_heights_with_repeats_are_median_of_repeats(root, drawn):
    r = load(folder(root, "20250102"))
    got = bars(drawn[r.folder.name][1]["bar_loss"])
    for (m, t, a), g in r.summary[r.summary.status == "ok"].groupby(["model", "seq_len", "attention"]):
        assert got[f"{m}|{t}|{a}"][0] == pytest.approx(g.loss.median(), rel=1e-12)


def test_scaling_plot_marks_oom(root, drawn):
    fig = drawn["20250102-120000_cuda_sweep"][1]["scaling_train_time_s"]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    xs = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(xs) == 1 and xs[0].get_xdata()[0] == 1024
    assert to_rgba(xs[0].get_color()) == to_rgba(plots.COLORS["baseline"])


def test_compare_ratios_equal_hand_computed(root, tmp_path, capsys):
    a = folder(root, "20250101")
    b = make_results(tmp_path, stamp="20250105-120000", seed=7)   # same plan, other noise
    table = compare([a, b], out=tmp_path / "cmp", show=True)
    sa = pd.read_csv(a / "summary.csv").set_index(["model", "attention"])
    sb = pd.read_csv(b / "summary.csv").set_index(["model", "attention"])
    ok = table[table.status == "ok"]
    assert len(ok) == 5 and set(table.status) == {"ok", "oom/oom"}
    assert list(table.model) == ["gpt2"] * 3 + ["gpt2-medium"] * 3 and list(table.attention[:3]) == list(ATTS)
    for row in ok.to_dict("records"):
        for col in ("train_time_s", "gpu_memory_mb", "loss"):
            want = sb.loc[(row["model"], row["attention"]), col] / sa.loc[(row["model"], row["attention"]), col]
            assert row[f"{col} B/A"] == pytest.approx(want, rel=1e-3)
    assert (tmp_path / "cmp" / "ratio_B_over_A.png").is_file()
    assert "A = fixture" in capsys.readouterr().out


def test_compare_needs_something_in_common(root):
    with pytest.raises(UserError, match="nothing to compare"):
        compare([folder(root, "20250101"), folder(root, "20250103")], show=False)


def test_compare_latest_two_or_say_why(root, tmp_path, capsys):
    assert compare(None, tmp_path) is None
    assert "needs two results" in capsys.readouterr().out


def test_write_report_links_every_plot(root, drawn, tmp_path):
    f = folder(root, "20250101")
    md = write_report(f).read_text()
    for p in drawn[f.name][0]:
        assert f"](plots/{p.name})" in md
    assert label("train_time_s") in md and "CUDA out of memory" in md and "mfu" in md



def test_write_report_regenerates_from_the_csvs(root, tmp_path):
    g = shutil.copytree(folder(root, "20250103"), tmp_path / "r")    # the small CPU one: no plots yet
    md = write_report(g).read_text()
    stems = {p.stem for p in (g / "plots").glob("*.png")}
    assert stems == expected_stems(load(g))
    assert md.count("](plots/") == len(stems) and "not measured" in md.lower()


def test_show_first_visit_is_friendly(tmp_path, capsys):
    show(1, tmp_path / "results")
    show(1, tmp_path)
    out = capsys.readouterr().out
    assert out.count("no results yet: run cell 4") == 2


def test_show_prints_without_redrawing(root, drawn, capsys):
    f = latest(root, 3)
    before = {p: p.stat().st_mtime_ns for p in (f / "plots").glob("*.png")}
    assert before
    show(3, root)
    out = capsys.readouterr().out
    assert f.name in out and label("train_time_s") in out and "not measured here: mfu" in out
    assert "no result: gpt2-medium baseline seq_len 512: oom: CUDA out of memory" in out
    assert {p: p.stat().st_mtime_ns for p in (f / "plots").glob("*.png")} == before


# ---- the committed H200 reference results -----------------------------------------------------

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"


def test_every_committed_reference_result_shows_and_compares(tmp_path, capsys):
    """Each folder under results/reference/ (read from the tree) loads, shows and has a summary
    row per planned run; two folders of one preset, model and seq_len compare, their ratios
    hand-checked."""
    folders = sorted(f for sub in REFERENCE.iterdir() if sub.is_dir() for f in list_results(sub))
    assert folders, f"no reference results under {REFERENCE}"
    by_preset = {}
    for f in folders:
        r = load(f)
        table = summary_table(r)
        assert len(table) == len(r.manifest["runs"]) and set(table.status) <= set(store.FINAL) | {"pending", "interrupted"}  # a sweep stopped by its time limit
        show(f, all_plots=False)
        assert f.name in capsys.readouterr().out
        if (table.status == "ok").any():
            shape = tuple(sorted(set(zip(table.model, table.seq_len))))
            by_preset.setdefault((r.manifest["preset"], shape), []).append(f)
    pairs = [fs[:2] for fs in by_preset.values() if len(fs) >= 2]
    assert pairs, "no two reference results of one preset and model to compare"
    a, b = pairs[0]
    ratios = compare([a, b], out=tmp_path / "cmp", show=False)
    sa, sb = (load(f).summary.set_index(["model", "seq_len", "attention"]) for f in (a, b))
    row = ratios.iloc[0]
    key = (row["model"], row["seq_len"], row["attention"])
    want = sb.loc[key, "train_time_s"] / sa.loc[key, "train_time_s"]
    assert row["train_time_s B/A"] == pytest.approx(want, rel=1e-3)  # compare rounds to 4 digits


def test_latest_unfinished_finds_a_sweep_cut_off(tmp_path):
    assert latest_unfinished(tmp_path / "none") is None
    root = tmp_path / "r"
    make_results(root, stamp="20250101-120000")
    make_results(root, stamp="20250102-120000", preset="smoke", models=("tiny",), attentions=("sdpa",),
                 seq_lens=(128,), oom=())
    cut = next(f for f in list_results(root) if f.name.startswith("20250101"))
    m = json.loads((cut / "manifest.json").read_text())
    (cut / "manifest.json").write_text(json.dumps(dict(m, finished=None)))
    assert latest_unfinished(root) == str(cut)


def test_summary_energy_is_the_run_total_and_joules_per_token_a_ratio_of_sums():
    rows = [dict(run_id="r", phase=ph, energy_j=e, tokens=t, train_time_s=0.1, window_s=w)
            for ph, e, t, w in [("warmup", 99.0, 100, 9.0), ("measure", 10.0, 100, 0.1),
                                ("measure", 30.0, 100, 0.1), ("measure", 20.0, 200, 0.2)]]
    run = dict(run_id="r", model="tiny", attention="sdpa", seq_len=8, status="ok")
    s = store.summarize(pd.DataFrame(rows), [run]).iloc[0]
    assert s["energy_j"] == s["energy_j_lo"] == s["energy_j_hi"] == 60.0  # warm-up excluded
    assert s["joules_per_token"] == pytest.approx(60.0 / 400)  # not the median of 0.1, 0.3, 0.1
    assert s["gpu_power_counter_w"] == pytest.approx(60.0 / 0.4)  # energy over the time it was spent in
    rows[2]["energy_j"] = float("nan")
    s = store.summarize(pd.DataFrame(rows), [run]).iloc[0]
    assert math.isnan(s["energy_j"]) and math.isnan(s["joules_per_token"])  # never a partial total


def test_show_says_what_it_draws_and_that_a_folder_has_no_report(tmp_path, capsys):
    make_results(tmp_path / "r")
    (folder,) = list_results(tmp_path / "r")
    shutil.rmtree(folder / "plots", ignore_errors=True)
    (folder / "report.md").unlink(missing_ok=True)
    show(folder)
    out = capsys.readouterr().out
    assert "no plots in" in out and "drawing them from the CSVs" in out
    assert "no report.md" in out and not (folder / "report.md").exists()


def test_show_redraw_draws_the_figures_a_kept_folder_left_out(tmp_path, capsys):
    """A reference folder keeps only its main figures; show --redraw draws every one again from the
    CSVs, the same set a sweep's report draws."""
    make_results(tmp_path / "r")
    (folder,) = list_results(tmp_path / "r")
    make_plots(folder)
    for p in (folder / "plots").glob("*.png"):
        if p.stem.startswith(("bar_", "batches_")):
            p.unlink()
    kept = {p.stem for p in (folder / "plots").glob("*.png")}
    assert "overview" in kept and not any(s.startswith("bar_") for s in kept)
    show(folder, all_plots=True, redraw=True)
    out = capsys.readouterr().out
    stems = {p.stem for p in (folder / "plots").glob("*.png")}
    assert "redrawing the plots" in out and stems == expected_stems(load(folder)) and stems > kept


def test_the_committed_reference_folders_keep_their_overview():
    """show draws the plots of a folder that has none, so a reference folder without its overview
    would be written into by every show of it (and by the test above of them all)."""
    folders = sorted(f for sub in REFERENCE.iterdir() if sub.is_dir() for f in list_results(sub))
    lacking = [str(f.relative_to(REFERENCE)) for f in folders if not (f / "plots" / "overview.png").is_file()]
    assert not lacking, lacking


def test_an_all_zero_metric_is_drawn_from_zero_and_says_so():
    from matplotlib.figure import Figure
    ax = Figure().subplots()
    table = pd.DataFrame(dict(model=["gpt2"] * 2, seq_len=[512] * 2, attention=["sdpa", "flex"], status=["ok"] * 2,
                              value=[0.0, 0.0], lo=[0.0, 0.0], hi=[0.0, 0.0], repeats=[[], []]))
    plots.bar_panel(ax, table)
    assert ax.get_ylim() == (0.0, 1.0) and any("0 in every run" in t.get_text() for t in ax.texts)


def _seeded(caveats_by_run: dict, flops: dict | None = None):
    """A Result-like object: ok runs of gpt2 at T = 1024 with the given caveats (run_id -> text)."""
    from types import SimpleNamespace
    rows = [{"run_id": rid, "model": "gpt2", "attention": rid.split("_")[0], "seq_len": 1024, "status": "ok",
             "caveats": why} for rid, why in caveats_by_run.items()]
    runs = [{"run_id": r["run_id"], "model": "gpt2", "attention": r["attention"], "seq_len": 1024,
             "flops_forward": 4.0e12, **(flops or {})} for r in rows]
    return SimpleNamespace(summary=pd.DataFrame(rows), batches=pd.DataFrame(), manifest={"runs": runs})


def test_read_with_care_names_a_caveat_once_for_the_seeds_that_share_it():
    coarse = "energy: steps shorter than the counter's 100 ms update; per-step energy is coarse, the run total exact"
    r = _seeded({"lsh_s0": "fallback", "lsh_s1": "fallback", "lsh_s2": "fallback", "sdpa_s0": coarse, "sdpa_s1": ""})
    assert read_with_care(r) == ["gpt2 lsh seq_len 1024 (3 runs): fallback", f"gpt2 sdpa seq_len 1024: {coarse}"]
    every = _seeded({"lsh_s0": coarse, "lsh_s1": coarse, "sdpa_s0": coarse})
    assert read_with_care(every) == [f"all 3 runs: {coarse}"]     # the '; ' inside one caveat stays whole


def test_flop_check_has_one_row_per_configuration_not_per_seed():
    r = _seeded({"baseline_s0": "", "baseline_s1": "", "baseline_s2": ""}, {"flops_fvcore_forward": 4.0e12})
    t = flop_check(r)
    assert len(t) == 1 and t["fvcore / analytic"].iloc[0] == 1.0


def test_the_all_metrics_table_names_each_seeds_column():
    s = pd.DataFrame({"attention": ["sdpa", "sdpa", "lsh"], "seed": [0, 1, 0], "repeat": [0, 0, 0],
                      "status": ["ok"] * 3, "loss": [3.0, 3.5, 4.0]})
    assert list(interval_table(s).columns) == ["metric (median [95% interval])", "sdpa s0", "sdpa s1", "lsh s0"]
    assert list(interval_table(s.drop(columns="seed").iloc[:1]).columns)[1:] == ["sdpa"]
