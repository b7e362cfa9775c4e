"""The payoff report (harness/report/payoff.py, payoff_plots.py) on summaries built by hand: exact
crossover seq_lens and their words, the memory frontier, Student-t intervals against a hand computation,
losses paired by seed, interpolation at an equal budget, the report.md tables, and what the figures drew.
"""
import math

import numpy as np
import pandas as pd
import pytest
from pytest import approx

from harness.report.payoff import at_equal, crossover, memory_frontier, quality_cost, \
    seed_interval, speed_ratios, t975
from harness.report.payoff_md import payoff_section, quality_lines, synthetic_note
from harness.report.tables import fmt
from harness.report.payoff_plots import pareto_figure, pareto_front, payoff_figures, speedup_figure

T_2_DF = 4.302653              # Student t, 97.5% quantile, 2 degrees of freedom (3 seeds), from a table
# tokens/s (median, lo, hi) per seq_len; sdpa at 2048 has a second repeat below; baseline OOMs at 4096.
SPEED = {"sdpa": {512: (1000, 950, 1050), 1024: (800, 760, 840), 2048: (500, 480, 520), 4096: (250, 240, 260)},
         "linear": {512: (700, 680, 720), 1024: (790, 700, 880), 2048: (600, 580, 620), 4096: (450, 430, 470)},
         "flash": {512: (1500, 1450, 1550), 1024: (1200, 1150, 1250), 2048: (750, 720, 780), 4096: (375, 360, 390)},
         "lsh": {512: (500, 480, 520), 1024: (450, 430, 470), 2048: (400, 380, 420), 4096: (260, 230, 290)},
         "gqa": {512: (1200, 1150, 1250), 1024: (900, 870, 930), 2048: (400, 390, 410), 4096: (200, 190, 210)},
         "sliding_window": {512: (1100, 1060, 1140), 1024: (900, 850, 950), 2048: (700, 680, 720)},
         "baseline": {512: (900, 880, 920), 1024: (600, 580, 620), 2048: (300, 290, 310)}}
LOSS = {("sdpa", 512): [3.0, 3.2, 3.4], ("linear", 512): [3.1, 3.32, 3.51],      # per seed 0, 1, 2
        ("sdpa", 1024): [2.9, 3.0, 3.1], ("linear", 1024): [3.0, 3.1, 3.3]}
TPS = {("sdpa", 512): 1000, ("linear", 512): 700, ("sdpa", 1024): 800, ("linear", 1024): 790}
JPT = {("sdpa", 512): 0.010, ("linear", 512): 0.009, ("sdpa", 1024): 0.012, ("linear", 1024): 0.013}


def run(attention, seq_len, tps=(math.nan,) * 3, status="ok", model="gpt2", batch_size=2, **kw) -> dict:
    """One summary.csv row; `tps` = tokens_per_s (median, lo, hi)."""
    return dict(model=model, attention=attention, kernel="", seq_len=seq_len, batch_size=batch_size, repeat=0,
                status=status, reason="", tokens_per_s=tps[0], tokens_per_s_lo=tps[1], tokens_per_s_hi=tps[2],
                gpu_memory_mb=math.nan, joules_per_token_run=math.nan, memory_estimate_gb=math.nan) | kw


def speed_summary() -> pd.DataFrame:
    """A sweep 512..4096 from an old folder (no seed, no eval columns)."""
    rows = [run(a, T, v, gpu_memory_mb=T * (10 if a == "baseline" else 2)) for a, by_T in SPEED.items()
            for T, v in by_T.items()]
    rows += [run("sdpa", 2048, (520, 490, 560), repeat=1), run("baseline", 4096, status="oom", reason="CUDA OOM"),
             run("sliding_window", 4096, status="oom")]
    return pd.DataFrame(rows)


def quality_summary(**drop) -> pd.DataFrame:
    """sdpa and linear at 512 and 1024, 3 seeds each, rows shuffled (pairing must go by seed, not order)."""
    rows = [run(a, T, (TPS[a, T] + 10 * (s - 1),) * 3, model="gpt2-medium", seed=s, eval_loss=LOSS[a, T][s],
                joules_per_token_run=JPT[a, T], recall_accuracy=[0.5, 0.6, 0.7][s] + (a == "sdpa") * 0.2)
            for (a, T) in LOSS for s in range(3)]
    return pd.DataFrame(rows).sample(frac=1, random_state=0).drop(columns=list(drop)).reset_index(drop=True)


def evals_frame() -> pd.DataFrame:
    """Evaluations of 2 seeds of sdpa and linear at T=512: linear stops first, at 2500 tokens / 25 s."""
    curves = {("sdpa", 0): ([1000, 2000, 3000], [5.0, 4.0, 3.5]), ("sdpa", 1): ([1000, 2000, 3000], [5.2, 4.2, 3.7]),
              ("linear", 0): ([1000, 2000, 2500], [5.5, 4.5, 4.0]), ("linear", 1): ([1000, 2000, 2600], [5.6, 4.6, 4.2])}
    rows = [dict(run_id=f"{a}-{s}", model="gpt2-medium", attention=a, seq_len=512, seed=s, step=i, tokens_seen=x,
                 train_s_cum=x / 100, energy_j_cum=math.nan, eval_loss=y, eval_ppl=math.exp(y))
            for (a, s), (xs, ys) in curves.items() for i, (x, y) in enumerate(zip(xs, ys))]
    return pd.DataFrame(rows[::-1])                     # newest first: interpolation must sort


def half(values) -> float:
    return T_2_DF * np.std(values, ddof=1) / math.sqrt(len(values))


def test_seed_interval_is_a_student_t_interval():
    mean, lo, hi, n = seed_interval([3.0, 3.2, 3.4, math.nan, None])
    assert (mean, n) == (approx(3.2), 3)
    assert (lo, hi) == (approx(3.2 - T_2_DF * 0.2 / math.sqrt(3)), approx(3.2 + T_2_DF * 0.2 / math.sqrt(3)))
    assert tuple(seed_interval([2.5])) == (2.5, 2.5, 2.5, 1)       # one seed: no interval, n says so
    assert seed_interval([math.nan]).n == 0 and math.isnan(seed_interval([]).mean)
    assert (t975(1), t975(30), t975(40), t975(100)) == (approx(12.7062, abs=1e-4), approx(2.042272, abs=1e-6),
                                                        approx(2.021075, abs=1e-5), approx(1.983972, abs=1e-5))


def test_crossover_against_sdpa():
    c = crossover(speed_summary(), "sdpa").set_index("attention")
    assert c.loc["linear", "crossover_T"] == 2048 and c.loc["linear", "crossover_note"] == "faster from T=2048"
    assert (c.loc["linear", "ratio_T"], c.loc["linear", "speed_ratio"]) == (4096, approx(1.8))
    assert (c.loc["linear", "speed_ratio_lo"], c.loc["linear", "speed_ratio_hi"]) == (approx(430 / 260),
                                                                                      approx(470 / 240))
    assert c.loc["flash", "crossover_T"] == 512 and c.loc["flash", "crossover_note"] == "faster at every T measured"
    assert math.isnan(c.loc["lsh", "crossover_T"])
    assert c.loc["lsh", "crossover_note"] == "within noise at T=4096: medians cross, intervals overlap"
    assert c.loc["gqa", "crossover_note"] == "faster only at T=512, 1024, slower at T=4096"
    assert c.loc["baseline", "crossover_note"] == "never faster up to T=2048; baseline failed at T=4096 (oom)"
    assert math.isnan(c.loc["sliding_window", "crossover_T"])
    assert c.loc["sliding_window", "crossover_note"] == ("faster at T=2048, but it fails at a longer T; "
                                                         "sliding_window failed at T=4096 (oom)")
    assert list(c.index) == ["baseline", "flash", "sliding_window", "linear", "lsh", "gqa"]    # registry order
    assert set(c.against) == {"sdpa"}
    both = pd.concat([speed_summary(), quality_summary()], ignore_index=True)
    c = crossover(both, "baseline")         # gpt2-medium has no baseline: no row says so for each mechanism
    assert set(c.model) == {"gpt2"} and list(c.attention[:2]) == ["sdpa", "flash"]


def test_crossover_against_baseline_counts_its_oom_as_won():
    c = crossover(speed_summary(), "baseline").set_index("attention")
    assert c.loc["sdpa", "crossover_T"] == 512
    assert c.loc["sdpa", "crossover_note"] == "faster at every T measured; baseline failed at T=4096 (oom)"
    assert (c.loc["sdpa", "ratio_T"], c.loc["sdpa", "speed_ratio"]) == (2048, approx(510 / 300))
    assert c.loc["linear", "crossover_note"] == "faster from T=1024; baseline failed at T=4096 (oom)"


def test_repeats_take_the_median_of_medians_and_the_widest_interval():
    r = speed_ratios(speed_summary(), "sdpa").set_index(["attention", "seq_len"])
    assert r.loc[("linear", 2048), ["ratio", "ratio_lo", "ratio_hi"]].tolist() == approx(
        [600 / 510, 580 / 560, 620 / 480])
    assert r.loc[("linear", 1024), "state"] == "overlap" and r.loc[("baseline", 4096), "state"] == "failed"
    # A run that failed against a reference that never ran at that T is not a comparison.
    s = pd.DataFrame([run("sdpa", 512, (1, 1, 1)), run("linear", 512, (2, 2, 2)), run("linear", 1024, (2, 2, 2))])
    assert crossover(s).crossover_note.iloc[0] == "faster at every T measured"


def test_memory_frontier():
    f = memory_frontier(speed_summary()).set_index("attention")
    assert f.loc["baseline", ["largest_ok_T", "smallest_oom_T", "gpu_memory_mb"]].tolist() == [2048, 4096, 20480]
    assert f.loc["baseline", "note"] == "runs at T=2048, out of memory from T=4096: the limit lies between"
    assert f.loc["linear", "largest_ok_T"] == 4096 and math.isnan(f.loc["linear", "smallest_oom_T"])
    assert f.loc["linear", "note"] == "no oom up to T=4096, the frontier is beyond the sweep"
    s = pd.DataFrame([run("baseline", 512, batch_size=8), run("baseline", 1024, status="oom", batch_size=8),
                      run("baseline", 2048, status="oom", batch_size=8), run("lsh", 512, status="oom"),
                      run("gqa", 512), run("gqa", 1024, status="error")])
    f = memory_frontier(s).set_index(["attention", "batch_size"])
    assert f.loc[("baseline", "8"), ["largest_ok_T", "smallest_oom_T"]].tolist() == [512, 1024]
    assert f.loc[("lsh", "2"), "note"] == "out of memory at every T tried (from T=512)"
    assert f.loc[("gqa", "2"), "note"] == "no oom up to T=512, the frontier is beyond the sweep; error at T=1024"


def test_memory_frontier_of_a_sweep_at_fixed_tokens_a_step_is_one_row_per_mechanism():
    """The scaling preset's batch is 16384 // T: the frontier holds the tokens a step fixed."""
    s = pd.DataFrame([run("baseline", T, batch_size=16384 // T, status="oom" if T == 16384 else "ok")
                      for T in (4096, 8192, 16384)] + [run("sdpa", T, batch_size=16384 // T) for T in (4096, 8192)])
    f = memory_frontier(s).set_index("attention")
    assert len(f) == 2 and f.loc["baseline", "batch_size"] == "16384 tokens"
    assert f.loc["baseline", ["largest_ok_T", "smallest_oom_T"]].tolist() == [8192, 16384]


def test_quality_cost_pairs_seeds():
    q = quality_cost(quality_summary()).set_index(["seq_len", "attention"])
    lin = q.loc[(512, "linear")]
    assert (lin.n_seeds, lin.eval_loss, lin.n_pairs) == (3, approx(3.31), 3)
    assert lin.eval_loss_hi - lin.eval_loss == approx(half([3.1, 3.32, 3.51]))
    assert (lin.delta, lin.delta_hi - lin.delta) == (approx(0.11), approx(half([0.1, 0.12, 0.11])))
    # Paired by seed the cost is clear (interval above 0), though the two loss intervals overlap.
    assert lin.delta_lo > 0 and lin.eval_loss_lo < q.loc[(512, "sdpa"), "eval_loss_hi"]
    assert (lin.recall_accuracy, q.loc[(512, "sdpa"), "recall_accuracy"]) == (approx(0.6), approx(0.8))
    assert q.loc[(512, "sdpa"), "recall_hi"] == 1          # 0.8 + 0.248 clipped: an accuracy stays in 0..1
    assert list(q.index) == [(512, "sdpa"), (512, "linear"), (1024, "sdpa"), (1024, "linear")]   # shuffled in
    assert q.loc[(512, "sdpa"), "note"] == "the reference" and math.isnan(q.loc[(512, "sdpa"), "delta"])
    s = quality_summary()
    s = s[~((s.attention == "linear") & (s.seed == 2))].copy()
    s.loc[(s.attention == "linear") & (s.seed == 1), "seed"] = 7          # no sdpa seed 7
    lin = quality_cost(s).set_index(["seq_len", "attention"]).loc[(512, "linear")]
    assert (lin.n_seeds, lin.n_pairs, lin.delta, lin.note) == (2, 1, approx(0.1), "")
    one = quality_cost(quality_summary().query("seed == 0")).set_index(["seq_len", "attention"])
    assert one.loc[(1024, "linear"), "note"] == "1 seed: no interval" and one.loc[(1024, "linear"), "n_seeds"] == 1
    old = quality_cost(speed_summary()).set_index(["seq_len", "attention"])
    assert math.isnan(old.loc[(512, "linear"), "eval_loss"]) and "no eval_loss column" in old.loc[(512, "linear"), "note"]


def test_at_equal_interpolates_each_run_at_the_common_budget():
    t = at_equal(evals_frame(), "tokens_seen").set_index("attention")
    assert set(t.budget) == {2500} and set(t.unit) == {"tokens"}
    assert t.loc["sdpa", "eval_loss"] == approx((3.75 + 3.95) / 2)
    lin = [4.0, 4.6 - 0.4 * 500 / 600]
    assert t.loc["linear", "eval_loss"] == approx(np.mean(lin)) and t.loc["linear", "n_seeds"] == 2
    assert t.loc["linear", "hi"] - t.loc["linear", "eval_loss"] == approx(12.706205 * np.std(lin, ddof=1) / math.sqrt(2))
    assert at_equal(evals_frame(), "train_s_cum").budget.iloc[0] == 25
    energy = at_equal(evals_frame(), "energy_j_cum")
    assert energy.empty and "energy counter" in energy.attrs["reason"]
    assert at_equal(None, "tokens_seen").empty and "no evaluations" in at_equal(None, "tokens_seen").attrs["reason"]
    late = evals_frame().query("not (run_id == 'sdpa-0' and tokens_seen < 3000)")   # first evaluation after 2500
    assert at_equal(late, "tokens_seen").set_index("attention").loc["sdpa", "n_seeds"] == 1


def table_after(lines: list[str], heading: str) -> list[str]:
    """The markdown table rows under a heading."""
    return next(x for x in lines[lines.index(heading) + 1:] if x.startswith("|")).split("\n")


def test_payoff_section_tables():
    s = pd.concat([speed_summary(), quality_summary()], ignore_index=True)
    lines = payoff_section(s, evals_frame())
    assert lines[0] == "## Payoff"
    sdpa = table_after(lines, "### When it pays off: speed against sdpa")
    assert sdpa[0] == ("| model | attention | faster from T (tokens) | longest T both ran (tokens) | "
                       "tokens/s over sdpa's (x) [95% range] | verdict |")
    assert "| gpt2 | linear | 2048 | 4096 | 1.800 [1.654, 1.958] | faster from T=2048 |" in sdpa
    assert "| gpt2 | sdpa | 512 | 2048 | 1.700 [1.548, 1.931] | faster at every T measured; baseline failed at " \
           "T=4096 (oom) |" in table_after(lines, "### When it pays off: speed against baseline")
    frontier = table_after(lines, "### Memory frontier")
    assert "peak GPU memory there (MB)" in frontier[0]
    assert "| gpt2 | baseline | 2 | 2048 | 4096 | 20,480 | runs at T=2048, out of memory from T=4096: the limit " \
           "lies between |" in frontier
    quality = table_after(lines, "### Quality cost at equal tokens")
    assert "eval loss (nats/token) [95% t interval]" in quality[0] and "recall accuracy (0-1)" in quality[0]
    d = half([0.1, 0.12, 0.11])
    assert any(r.startswith("| gpt2-medium | 512 | linear | 3 | 3.310 [") and f"| 0.1100 [{fmt(0.11 - d)}, "
               f"{fmt(0.11 + d)}] |" in r for r in quality)
    assert "- 3 seeds: the interval is wide (Student t, 2 degrees of freedom)." in lines
    assert any("bundled synthetic sample is none" in x for x in lines)
    time = table_after(lines, "### Eval loss at equal training time")
    assert "common budget (s)" in time[0] and any("| gpt2-medium | 512 | sdpa | 25.00 | 2 | 3.850 [" in r for r in time)
    energy = lines.index("### Eval loss at equal energy")
    assert lines[energy + 2].startswith("not available: no evaluation has both eval_loss and energy_j_cum")
    bundled = payoff_section(quality_summary(), data_source="bundled sample (assets/sample.jsonl)")
    assert "- These runs trained on the bundled synthetic sample: its loss is no quality signal." in bundled


def test_payoff_section_is_empty_when_nothing_applies():
    one_T = speed_summary().query("seq_len == 512")
    assert payoff_section(one_T, None) == [] and payoff_section(one_T, pd.DataFrame()) == []
    assert payoff_section(speed_summary(), None)[0] == "## Payoff"         # a sweep: speed and frontier


def points(fig) -> dict:
    return {ln.get_gid(): (ln.get_xdata()[0], ln.get_ydata()[0]) for ax in fig.axes for ln in ax.lines
            if ln.get_gid() and "|" in ln.get_gid()}


def test_pareto_figure_draws_one_point_per_config_and_the_front():
    fig = pareto_figure(quality_summary())
    ax = fig.axes[0]
    assert "tokens/s" in ax.get_xlabel() and "nats/token" in ax.get_ylabel()
    p = points(fig)
    assert set(p) == {"sdpa|512", "sdpa|1024", "linear|512", "linear|1024"}
    assert p["linear|1024"] == (approx(790), approx(3.4 / 3 + 2))
    front = next(ln for ln in ax.lines if ln.get_gid() == "pareto_front")
    assert list(front.get_xdata()) == [800, 1000] and list(front.get_ydata()) == approx([3.0, 3.2])
    assert front.get_drawstyle() == "steps-pre"
    joules = pareto_figure(quality_summary(), "joules_per_token_run")
    front = next(ln for ln in joules.axes[0].lines if ln.get_gid() == "pareto_front")
    assert "J/token" in joules.axes[0].get_xlabel() and list(front.get_xdata()) == approx([0.009, 0.010, 0.012])
    assert pareto_figure(speed_summary()) is None and pareto_figure(quality_summary(eval_loss=1)) is None
    assert list(pareto_front([1, 2, 3], [1, 0.5, 2])) == [False, True, True]


def test_the_pareto_figures_carry_the_bundled_samples_caveat():
    note = synthetic_note("bundled sample (assets/tulu_sample.jsonl)")
    figs = payoff_figures(quality_summary(), note)
    assert all(note in figs[k]._supxlabel.get_text() for k in ("pareto_tokens_per_s", "pareto_joules"))
    assert "no quality signal" not in pareto_figure(quality_summary())._supxlabel.get_text()
    assert synthetic_note("allenai/tulu-v2-sft-mixture") is None


def test_speedup_figure_marks_crossovers():
    fig = speedup_figure(speed_summary())
    ax = fig.axes[0]
    lines = {ln.get_gid(): ln for ln in ax.lines}
    assert list(lines["ratio|linear"].get_ydata()) == approx([0.7, 790 / 800, 600 / 510, 1.8])
    assert list(lines["crossover|linear"].get_xdata()) == [2048] and list(lines["crossover|flash"].get_xdata()) == [512]
    assert "crossover|lsh" not in lines and "crossover|gqa" not in lines
    assert list(lines["parity"].get_ydata()) == [1, 1] and ax.xaxis.get_transform().base == 2
    assert ax.get_xlabel() == "seq_len (tokens)" and "sdpa" in ax.get_ylabel()
    assert speedup_figure(speed_summary().query("seq_len == 512")) is None


@pytest.mark.parametrize("summary, stems", [
    (quality_summary(), {"pareto_tokens_per_s", "pareto_joules", "speedup_vs_sdpa"}),
    (quality_summary(joules_per_token_run=1), {"pareto_tokens_per_s", "speedup_vs_sdpa"}),
    (speed_summary(), {"speedup_vs_sdpa"})])
def test_payoff_figures_only_those_that_apply(summary, stems):
    assert set(payoff_figures(summary)) == stems


def test_a_recall_sweep_gets_a_pareto_figure_per_pair_count():
    rows = [dict(model="mqar", attention=a, seq_len=T, n_pairs=p, seed=0, status="ok", tokens_per_s=1e6 * (i + 1),
                 tokens_per_s_lo=1e6 * (i + 1), tokens_per_s_hi=1e6 * (i + 1), eval_loss=8.0 - i - p / 100,
                 batch_size=32, repeat=0)
            for i, a in enumerate(["sdpa", "linear"]) for T in (256, 1024) for p in (8, 32)]
    figs = payoff_figures(pd.DataFrame(rows))
    assert {"pareto_tokens_per_s_p8", "pareto_tokens_per_s_p32"} <= set(figs)
    assert "pareto_tokens_per_s" not in figs
    one = payoff_figures(pd.DataFrame([r for r in rows if r["n_pairs"] == 8]))
    assert "pareto_tokens_per_s" in one and "pareto_tokens_per_s_p8" not in one


def test_the_quality_table_counts_the_seeds_that_learnt_recall():
    rows = [dict(model="mqar", attention=a, seq_len=64, seed=s, status="ok", eval_loss=0.1, recall_accuracy=r,
                 n_pairs=4, eval_labelled=4096, repeat=0, batch_size=128)
            for a, recalls in (("sdpa", (1.0, 0.99, 1.0)), ("lsh", (0.85, 0.252, 0.30)))
            for s, r in enumerate(recalls)]
    q = quality_cost(pd.DataFrame(rows)).set_index("attention")
    assert q.loc["sdpa", "n_learnt"] == 3
    assert q.loc["lsh", "n_learnt"] == 2                       # 0.252 is within 2 SE (0.014) of 1 / 4
    assert "| 2 of 3 |" in "\n".join(quality_lines(pd.DataFrame(rows)))
    old = pd.DataFrame(rows).drop(columns=["n_pairs", "eval_labelled"])   # a folder from before the columns
    assert math.isnan(quality_cost(old).set_index("attention").loc["lsh", "n_learnt"])
