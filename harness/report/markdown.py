"""report.md and plots/*.png of a results folder, computed from its files alone (so they can
be regenerated at any time), and the end-of-sweep summary main.py prints."""
from __future__ import annotations

from pathlib import Path

from harness.report import breakdown, plots
from harness.report.payoff_md import payoff_section, synthetic_note
from harness.report.payoff_plots import payoff_figures
from harness.run.data import describe
from harness.report.results import load
from harness.report.tables import (failures, flop_check, interval_table, md_table, not_measured, read_with_care,
                                   summary_table)
from harness.store import write_text
from metrics.catalog import label


def make_plots(folder, return_figures: bool = False):
    """Draw every figure into folder/plots/*.png (old PNGs there are replaced). Returns the paths,
    or (paths, {stem: Figure}) with return_figures, so tests can read what was drawn."""
    result = load(folder, batches_optional=True)  # a kept folder without batches.csv draws what it can
    out = result.folder / "plots"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    figs = plots.all_figures(result.summary, result.batches, result.context) | \
        payoff_figures(result.summary, synthetic_note(result.data_source))
    paths = []
    for stem, fig in figs.items():
        fig.savefig(out / f"{stem}.png", dpi=100)
        paths.append(out / f"{stem}.png")
    return (paths, figs) if return_figures else paths


def plot_rank(p: Path):
    """Overview first, then the payoff figures, loss, scaling, bars, per-batch lines."""
    order = ["overview", "pareto_", "speedup_", "loss_curves", "scaling_", "bar_", "batches_"]
    return next((i for i, k in enumerate(order) if p.stem.startswith(k)), len(order)), p.stem


def write_report(folder, plot_paths=None) -> Path:
    """folder/report.md: what ran where, the summary table, what was not measured and why, failed
    runs, all metrics with intervals per (model, seq_len), and every plot (relative links)."""
    r = load(folder)
    if plot_paths is None:          # the plots already drawn, else draw them (from the CSVs)
        plot_paths = sorted((r.folder / "plots").glob("*.png"), key=plot_rank) or make_plots(folder)
    env, m = r.manifest.get("environment", {}), r.manifest
    gpu = f"{env['gpu']} (driver {env.get('driver')}, CUDA {env.get('cuda')})" if env.get("gpu") else "none"
    md = [f"# attention-bench: {m.get('preset', '?')}, {r.folder.name}", "",
          f"- created {m.get('created')}, finished {m.get('finished') or 'not finished'}; git {m.get('git_commit')}"
          + (f" (code that ran: {breakdown.commits(m['code_commits'])})" if m.get("code_commits") else ""),
          f"- GPU {gpu}; "
          f"CPU {env.get('cpu')} x{env.get('cpu_count')}; torch {env.get('torch')}, "
          f"transformers {env.get('transformers')}", "", "## Summary (medians over measured batches)", "",
          md_table(summary_table(r)), ""]
    if m.get("data"):
        md[3:3] = [f"- {describe(m['data'])}"]
    md += payoff_section(r.summary, r.evals, r.data_source) + [""]
    md += ["## Read with care", ""] + ([f"- {x}" for x in read_with_care(r)] or ["nothing to flag"]) + [""]
    md += ["## Not measured on this machine", ""] + ([f"- {label(c)}: {why}" for c, why in not_measured(r).items()]
                                                     or ["everything was measured"])
    md += ["", "## Runs without a result", ""] + ([f"- {x}" for x in failures(r)] or ["none"])
    md += flop_section(r)
    table = breakdown.timing_table(r.manifest)
    if len(table):
        md += ["", "## Where the time went", "", breakdown.sweep_time(m) or "(a resumed sweep: see each run's wall time)",
               "", md_table(table)]
    for (model, T), g in r.summary.groupby(["model", "seq_len"], sort=False):
        if (g.status == "ok").any():
            md += ["", f"## {model}, seq_len {T}: all metrics", "", md_table(interval_table(g))]
    md += ["", "## Plots", ""] + [f"![{p.stem}](plots/{Path(p).name})\n" for p in plot_paths]
    path = r.folder / "report.md"
    write_text(path, "\n".join(md) + "\n")  # atomic: a reader never sees half a report
    return path


def finish(folder) -> None:
    """Plots, report.md and the summary table at the end of a sweep (also after an interruption)."""
    make_plots(folder)
    path = write_report(folder)
    r = load(folder)
    print(summary_table(r).to_string(index=False, na_rep="-"))
    for line in read_with_care(r):
        print(f"read with care: {line}")
    print(f"\nresults: {folder}\nreport:  {path}")


def flop_section(r) -> list[str]:
    """The FLOP count cross-checked by fvcore, where the runs recorded it."""
    table = flop_check(r)
    if not len(table):
        return []
    return ["", "## FLOP count, cross-checked by fvcore", "",
            "fvcore counts the products it has handlers for (matmul, addmm, linear, einsum, norms) and skips "
            "scaled_dot_product_attention, flex_attention and custom kernels: for those mechanisms it misses the "
            "attention core, and a model it cannot trace has no count. On baseline the two must agree.", "",
            md_table(table)]
