"""Read the folders benchmarks/scaleout.sh wrote into OUT; write OUT/scaleout.json and scaleout.md.

    python benchmarks/scaleout_summary.py OUT    (scaleout.sh runs it last; rerun it after
                                                 finishing a cut-off scale-out by hand)
"""
import json, sys
from pathlib import Path
import pandas as pd

out = Path(sys.argv[1])
wall = pd.read_csv(out / "wall_s.csv").set_index("name")["wall_s"]
folder = lambda name: next(p for p in (out / name).iterdir() if (p / "manifest.json").exists())
summary = lambda name: pd.read_csv(folder(name) / "summary.csv")
tps = lambda name: float(summary(name)["tokens_per_s"].iloc[0])

s1 = summary("sweep_1gpu")
two = "sweep_2gpu" in wall  # ONE_GPU=1 ran only the 1-GPU half
ddp_names = [n for n in ("ddp_1gpu_b8", "ddp_1gpu_b16", "ddp_2gpu_b16") if n in wall]
res = dict(sweep=dict(wall_1gpu_s=wall["sweep_1gpu"], per_run_1gpu=s1[["attention", "status", "tokens_per_s"]]
                      .to_dict("records")),
           ddp=dict(tokens_per_s={n: tps(n) for n in ddp_names}, wall_s={n: wall[n] for n in ddp_names}))
md = ["# Scale-out", ""]
if two:
    s2 = summary("sweep_2gpu")
    per_run = s1[["attention", "status", "tokens_per_s"]].merge(
        s2[[c for c in ("attention", "status", "tokens_per_s", "gpu") if c in s2]], on="attention",
        suffixes=("_1gpu", "_2gpu"))
    per_run["ratio_2gpu_over_1gpu"] = per_run["tokens_per_s_2gpu"] / per_run["tokens_per_s_1gpu"]
    b1, b2 = (pd.read_csv(folder(n) / "batches.csv") for n in ("ddp_1gpu_b16", "ddp_2gpu_b16"))
    loss1, loss2 = b1[b1["rank"] == 0]["loss"].to_numpy(), b2[b2["rank"] == 0]["loss"].to_numpy()
    d2 = json.loads((folder("ddp_2gpu_b16") / "manifest.json").read_text())["runs"][0]
    res["sweep"].update(wall_2gpu_s=wall["sweep_2gpu"], speedup=wall["sweep_1gpu"] / wall["sweep_2gpu"],
                        per_run=per_run.to_dict("records"))
    res["ddp"].update(weak_scaling_efficiency=tps("ddp_2gpu_b16") / (2 * tps("ddp_1gpu_b8")),
                      strong_scaling_efficiency=tps("ddp_2gpu_b16") / (2 * tps("ddp_1gpu_b16")),
                      loss_max_abs_diff_1gpu_vs_2gpu=float(abs(loss1 - loss2).max()),
                      gpu_memory_mb_by_rank_2gpu=d2.get("gpu_memory_mb_by_rank"), nvml_by_rank_2gpu=d2.get("nvml_by_rank"))
    d = res["ddp"]
    md += [f"Sweep of {len(s1)} runs: 1 GPU {wall['sweep_1gpu']:.1f} s, 2 GPUs "
           f"{wall['sweep_2gpu']:.1f} s, speed-up {res['sweep']['speedup']:.2f}x", "",
           per_run.to_string(index=False), "",
           f"DDP gpt2-medium, seq 1024: tokens/s {', '.join(f'{k} {v:,.0f}' for k, v in d['tokens_per_s'].items())}",
           f"weak scaling efficiency {d['weak_scaling_efficiency']:.3f}, strong {d['strong_scaling_efficiency']:.3f}; "
           f"loss 1 vs 2 GPUs max |diff| {d['loss_max_abs_diff_1gpu_vs_2gpu']:.2e}; "
           f"peak memory per rank {d['gpu_memory_mb_by_rank_2gpu']} MB"]
else:
    md += ["One GPU only (ONE_GPU=1): each scale-out path run on 1 GPU; no 2-GPU number.", "",
           f"Sweep of {len(s1)} runs through the --gpus pool on GPU 0: {wall['sweep_1gpu']:.1f} s", "",
           s1[["attention", "status", "tokens_per_s"]].to_string(index=False), "",
           "torchrun DDP, 1 process: tokens/s " + ", ".join(f"{k} {v:,.0f}" for k, v in res["ddp"]["tokens_per_s"].items())]
(out / "scaleout.json").write_text(json.dumps(res, indent=2, default=float))
(out / "scaleout.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
