"""What does measuring cost? GPT-2 training steps with every metric on vs with none.

One process, one model, one batch: blocks of --block steps alternate between "on" (the Meter's
sampler thread running and Meter.step() around every step) and "off" (no thread, no meter),
with the order flipped every pair so drift (clocks, temperature) cancels. Each pair gives a
ratio median(on step) / median(off step); overhead = median of the ratios - 1. Target <= 2 %.

In the same run, the NVML energy counter over the "on" blocks is compared with the trapezoid
integral of the sampled power over the same blocks. NVML's power reading is a ~1 s trailing
average on Ampere-and-newer boards, so expect a few % at block edges, less with longer blocks.

  python benchmarks/metrics_overhead.py --out results/metrics_overhead_h200.json   # H200: < 3 min
  python benchmarks/metrics_overhead.py --tiny --steps 40                           # CPU check
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from metrics.meter import Meter  # noqa: E402

TARGET_PCT = 2.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200, help="measured steps per arm (on, off)")
    p.add_argument("--block", type=int, default=10, help="steps per block")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--interval-s", type=float, default=0.05)
    p.add_argument("--tiny", action="store_true", help="2-layer 64-wide model, seq 64, batch 2")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="JSON path; a .csv of pairs goes beside it")
    args = p.parse_args(argv)
    if args.tiny:
        args.seq_len, args.batch_size = 64, 2
    if args.steps < 2 * args.block or args.block < 1:
        p.error("--steps must be at least two blocks (--block >= 1)")
    return args


def build(args, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if args.tiny:
        config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=args.seq_len,
                            bos_token_id=0, eos_token_id=0)
    else:
        config = GPT2Config()  # gpt2: 12 layers, 768 wide, 12 heads, vocab 50257
    model = GPT2LMHeadModel(config).to(device)
    model.config._attn_implementation = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), device=device)
    cuda = device.type == "cuda"

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
    return train_step


def run_block(train_step, n: int, meter: Meter | None) -> list[float]:
    """Step times in s; with a meter, each step inside meter.step() and timed around it."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        if meter is None:
            train_step()
        else:
            with meter.step():
                train_step()
        times.append(time.perf_counter() - t)
    return times


def power_integral_j(samples: list[dict], t_a: float, t_b: float) -> float:
    """Trapezoid integral of gpu_power_w over [t_a, t_b] (t_s clock), edges held at the
    nearest sample's value. NaN if no power samples."""
    pts = [(s["t_s"], s["gpu_power_w"]) for s in samples if s["gpu_power_w"] == s["gpu_power_w"]]
    inside = [p for p in pts if t_a <= p[0] <= t_b]
    if not pts:
        return float("nan")
    if not inside:  # block shorter than the interval: the nearest sample, held
        nearest = min(pts, key=lambda p: abs(p[0] - 0.5 * (t_a + t_b)))
        return nearest[1] * (t_b - t_a)
    inside = [(t_a, inside[0][1])] + inside + [(t_b, inside[-1][1])]
    return sum(0.5 * (p0[1] + p1[1]) * (p1[0] - p0[0]) for p0, p1 in zip(inside, inside[1:]))


def measure(args, train_step, meter):
    pairs, counter_j, integral_j, blocks_on = [], 0.0, 0.0, []
    for k in range(args.steps // args.block):
        order = ("off", "on") if k % 2 == 0 else ("on", "off")
        med = {}
        for arm in order:
            if arm == "off":
                med["off"] = statistics.median(run_block(train_step, args.block, None))
                continue
            meter.start()  # resumes the sampler thread
            t_a, e_a = time.perf_counter() - meter.t_start, meter.energy_counter_j()
            med["on"] = statistics.median(run_block(train_step, args.block, meter))
            t_b, e_b = time.perf_counter() - meter.t_start, meter.energy_counter_j()
            meter.stop()
            blocks_on.append((t_a, t_b))
            counter_j += e_b - e_a
        pairs.append({"pair": k, "order": "-".join(order), "median_off_s": med["off"],
                      "median_on_s": med["on"], "ratio": med["on"] / med["off"]})
    samples = meter.samples()
    integral_j = sum(power_integral_j(samples, a, b) for a, b in blocks_on)
    return pairs, counter_j, integral_j


def summarise(args, device, pairs, counter_j, integral_j, meter) -> dict:
    ratios = sorted(p["ratio"] for p in pairs)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    overhead = 100 * (statistics.median(ratios) - 1)
    diff = 100 * (integral_j - counter_j) / counter_j if counter_j == counter_j and counter_j else float("nan")
    info = meter.info()
    return {
        "device": str(device), "gpu_name": info.get("gpu_name"), "torch": torch.__version__,
        "model": "tiny" if args.tiny else "gpt2", "batch_size": args.batch_size,
        "seq_len": args.seq_len, "steps_per_arm": len(pairs) * args.block, "block": args.block,
        "pairs": len(pairs), "interval_s": args.interval_s,
        "median_step_off_s": statistics.median(p["median_off_s"] for p in pairs),
        "median_step_on_s": statistics.median(p["median_on_s"] for p in pairs),
        "overhead_pct": overhead, "overhead_pct_q25": 100 * (q[0] - 1), "overhead_pct_q75": 100 * (q[2] - 1),
        "target_pct": TARGET_PCT, "within_target": overhead <= TARGET_PCT,
        "energy_counter_on_j": counter_j, "power_integral_on_j": integral_j,
        "energy_integral_minus_counter_pct": diff, "idle_power_w": info["idle_power_w"],
        "meter": info,
    }


def write(out: Path, summary: dict, pairs: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(pairs[0]))
        w.writeheader()
        w.writerows(pairs)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    meter = Meter(device, interval_s=args.interval_s)
    meter.start()  # idle power: before any GPU work (the power reading trails by ~1 s)
    meter.stop()
    train_step = build(args, device)
    run_block(train_step, args.warmup, None)  # allocator, cuBLAS heuristics, autocast caches
    pairs, counter_j, integral_j = measure(args, train_step, meter)
    summary = summarise(args, device, pairs, counter_j, integral_j, meter)
    summary["wall_s"] = time.perf_counter() - t0
    for key in ("device", "gpu_name", "model", "batch_size", "seq_len", "pairs", "median_step_off_s",
                "median_step_on_s", "overhead_pct", "overhead_pct_q25", "overhead_pct_q75",
                "within_target", "energy_counter_on_j", "power_integral_on_j",
                "energy_integral_minus_counter_pct", "idle_power_w", "wall_s"):
        print(f"{key:36s} {summary[key]}")
    if args.out:
        write(args.out, summary, pairs)
        print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
