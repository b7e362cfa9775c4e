"""Each attention mechanism alone: time, achieved TFLOP/s and peak memory against sequence length.

For T = 256, 512, ... --max-seq: q, k, v (B, 12, T, 64) in bf16, causal, B = max(1, tokens // T)
so every size processes the same number of tokens (--tokens, default 32768 on CUDA: B = 2 at
T = 16384). gqa gets kv_heads K/V heads (its K/V bytes are reported). Forward time is the forward
of a training step (inputs require grad); fwd+bwd adds torch.autograd.grad. Times are medians of
--repeats after --warmup calls (which absorb torch.compile), with CUDA events on a GPU. With
--compile (the default on CUDA) each mechanism's call is compiled, as the harness compiles the
model: pure-PyTorch mechanisms (linear, lsh) get their elementwise work fused.
TFLOP/s use spec.flops (forward, computed pairs only); fwd+bwd counts 3x forward (backward = 2x
forward, no credit for recomputation). Peak memory = torch.cuda.max_memory_allocated after
reset, inputs included. An out-of-memory is recorded as "oom" and the sweep goes on.

    python benchmarks/attention_kernels.py --out results/kernels            # H200
    python benchmarks/attention_kernels.py --device cpu --max-seq 512 --dtype fp32 --out /tmp/k
    python benchmarks/attention_kernels.py --mechanisms flash,flex --seq-lens 1024,2048 --tokens 131072
    python benchmarks/attention_kernels.py --mechanisms lsh,baseline --params lsh.impl=flex --tokens 131072
"""
from __future__ import annotations

import argparse
import csv
import gc
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import attentions  # noqa: E402
from attentions.common import StubAttention  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COLUMNS = ["mechanism", "kernel", "T", "B", "H", "D", "dtype", "status", "fwd_ms", "fwd_bwd_ms",
           "fwd_tflops", "fwd_bwd_tflops", "peak_mb", "kv_mb", "warmup_s", "compiled", "params"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--min-seq", type=int, default=256)
    ap.add_argument("--max-seq", type=int, default=16384)
    ap.add_argument("--seq-lens", default=None, help="exact sizes, e.g. 1024,2048 (instead of --min/--max-seq)")
    ap.add_argument("--tokens", type=int, default=None, help="B * T per size (default 32768 cuda, 1024 cpu)")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mechanisms", default=",".join(attentions.ORDER))
    ap.add_argument("--params", default="",
                    help="registry parameters other than the defaults, NAME.KEY=VALUE[,...], e.g. lsh.impl=flex")
    ap.add_argument("--out", default="results/attention_kernels")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile each mechanism's call, as the harness compiles the model "
                         "(default: on for CUDA, off on CPU)")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.tokens = args.tokens or (32768 if cuda else 1024)
    args.compile = cuda if args.compile is None else args.compile
    try:
        args.overrides = parse_params(args.params)
    except ValueError as e:
        ap.error(f"--params: {e}")
    unused = set(args.overrides) - {n.strip() for n in args.mechanisms.split(",")}
    if unused:
        ap.error(f"--params: {', '.join(sorted(unused))} not in --mechanisms")
    return args


def typed(kind, value: str):
    """value as the registry default's type: int, float, bool (true/false, 1/0) or str; an integer
    where the default is a word (window=auto takes window=512)."""
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(value)
        return value.lower() in ("true", "1")
    if kind is str and value.isdigit():
        return int(value)
    return kind(value) if kind in (int, float) else value


def parse_params(text: str) -> dict:
    """"lsh.impl=flex,sliding_window.window=512" -> {"lsh": {"impl": "flex"}, "sliding_window":
    {"window": 512}}: each value takes the type of the registry's default."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name_key, eq, value = item.partition("=")
        name, dot, key = name_key.partition(".")
        if not (eq and dot and key):
            raise ValueError(f"{item!r} is not NAME.KEY=VALUE")
        if name not in attentions.names():
            raise ValueError(f"{name!r} is not an attention; choose from {', '.join(attentions.names())}")
        spec = attentions.get(name)
        if key not in spec.params:
            raise ValueError(f"{name} has no parameter {key!r}; it has {', '.join(spec.params) or 'none'}")
        kind = type(spec.params[key])
        try:
            out.setdefault(name, {})[key] = typed(kind, value)
        except ValueError:
            raise ValueError(f"{item!r}: {key} takes {kind.__name__} values") from None
    return out


def attention_call(spec, params, B, H, T, D, dtype, device):
    """A zero-argument function running the mechanism once, and its inputs (for the backward)."""
    kv_heads = int(params.get("kv_heads", H))
    make = lambda h: torch.randn(B, h, T, D, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
    q, k, v = make(H), make(kv_heads), make(kv_heads)  # (B, H, T, D), (B, Hkv, T, D)
    module = StubAttention(params, layer_idx=0, num_heads=H, head_dim=D)
    if spec.forward is None:  # baseline: transformers' eager function with GPT-2's additive mask
        from transformers.models.gpt2.modeling_gpt2 import eager_attention_forward
        mask = torch.full((T, T), torch.finfo(dtype).min, device=device, dtype=dtype).triu(1)[None, None]
        return (lambda: eager_attention_forward(module, q, k, v, mask, scaling=D ** -0.5)[0]), (q, k, v)
    return (lambda: spec.forward(module, q, k, v, None, scaling=D ** -0.5)[0]), (q, k, v)


def median_time(fn, device, repeats):
    """Median seconds of fn() over repeats (CUDA events on a GPU, so launch overhead is included)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def base_row(name, T, args):
    """What every row of mechanism `name` at length T says, measured or not."""
    return {"mechanism": name, "T": T, "B": max(1, args.tokens // T), "H": args.heads, "D": args.head_dim,
            "dtype": args.dtype, "params": " ".join(f"{k}={v}" for k, v in args.overrides.get(name, {}).items())}


def measure(name, T, args, device, dtype):
    """One row: times, TFLOP/s and peak memory of mechanism `name` at length T."""
    spec = attentions.get(name)
    row = base_row(name, T, args)
    params, B, H, D = {**spec.params, **args.overrides.get(name, {})}, row["B"], row["H"], row["D"]
    row["kernel"] = spec.kernel(device, params, dtype=dtype, shape=(B, H, T, D))
    row["kv_mb"] = 2 * B * int(params.get("kv_heads", H)) * T * D * dtype.itemsize / 1e6
    reason = spec.unavailable_reason(device)
    if reason:
        return {**row, "status": f"unavailable: {reason}"}
    if spec.compiles or args.compile:
        torch._dynamo.reset()  # a fresh compile per (mechanism, T): no recompile limit reached
    call, inputs = attention_call(spec, params, B, H, T, D, dtype, device)
    if args.compile:
        # One eager call first, as train.py does: it builds the mechanism's BlockMask / dense mask
        # into its cache outside the graph. Traced instead, create_block_mask at T = 16384 kept
        # the H200 compiling for minutes (an earlier H200 run of flex at T = 16384 timed out).
        with torch.no_grad():
            call()
        call = torch.compile(call)
    row["compiled"] = bool(args.compile)
    t0 = time.perf_counter()  # warm-up includes torch.compile (flex) and the backend probes
    grad_out = torch.randn_like(call())

    def fwd_bwd():
        torch.autograd.grad(call(), inputs, grad_out)

    for _ in range(args.warmup):
        fwd_bwd()
    sync(device)
    row["warmup_s"] = time.perf_counter() - t0
    row["fwd_ms"] = 1e3 * median_time(call, device, args.repeats)
    row["fwd_bwd_ms"] = 1e3 * median_time(fwd_bwd, device, args.repeats)
    flops = spec.flops(B, H, T, D, params)
    row["fwd_tflops"] = flops / (row["fwd_ms"] / 1e3) / 1e12
    row["fwd_bwd_tflops"] = 3 * flops / (row["fwd_bwd_ms"] / 1e3) / 1e12
    row["peak_mb"] = peak_memory_mb(fwd_bwd, device)
    return {**row, "status": "ok"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(fn, device):
    if device.type != "cuda":
        return float("nan")  # not measured on CPU
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 1e6


def measure_or_oom(name, T, args, device, dtype):
    try:
        return measure(name, T, args, device, dtype)
    except torch.cuda.OutOfMemoryError:
        return {**base_row(name, T, args), "status": "oom"}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def fmt(x, spec="{:.3g}"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return spec.format(x) if isinstance(x, float) else str(x)


def print_row(row):
    status = row["status"] if row["status"] != "ok" else ""
    print(f"{row['mechanism']:>14} T={row['T']:>6} B={row['B']:>3}  fwd {fmt(row.get('fwd_ms')):>8} ms  "
          f"fwd+bwd {fmt(row.get('fwd_bwd_ms')):>8} ms  {fmt(row.get('fwd_bwd_tflops')):>6} TFLOP/s  "
          f"peak {fmt(row.get('peak_mb')):>7} MB  {status[:60]}", flush=True)


def ratios(rows):
    """Lines comparing fwd+bwd times: a / b < 1 means a is faster."""
    t = {(r["mechanism"], r["T"]): r.get("fwd_bwd_ms") for r in rows if r["status"] == "ok"}
    status = {(r["mechanism"], r["T"]): r["status"] for r in rows}
    Ts = sorted({r["T"] for r in rows})
    top = Ts[-1] if Ts else 0

    def line(a, b, T):
        if t.get((a, T)) and t.get((b, T)):
            return f"  {a} / {b} at T={T}: {t[(a, T)] / t[(b, T)]:.2f}"
        why = "; ".join(f"{m}: {status[(m, T)][:40]}" for m in (a, b) if status.get((m, T), "ok") != "ok")
        return f"  {a} / {b} at T={T}: n/a ({why or 'not measured'})"
    out = [line("flex", "flash", T) for T in Ts if T >= 1024]
    out += [line("sliding_window", "flex", top), line("linear", "flash", top)]
    out += [line("lsh", "baseline", T) for T in Ts if T >= 2048]
    return out


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: fmt(row.get(c), "{:.6g}") for c in COLUMNS})


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(r["mechanism"] for r in rows):
        ok = [r for r in rows if r["mechanism"] == name and r["status"] == "ok"]
        for ax, key in zip(axes, ["fwd_bwd_ms", "peak_mb"]):
            points = [(r["T"], r[key]) for r in ok if r[key] > 0]  # NaN (CPU memory) drops out
            if points:
                ax.plot(*zip(*points), "o-", label=name)
    for ax, ylabel in zip(axes, ["fwd+bwd time (ms)", "peak memory (MB)"]):
        ax.set(xlabel="sequence length T", ylabel=ylabel)
        if ax.lines:
            ax.set(xscale="log", yscale="log")
        else:
            ax.text(0.5, 0.5, "not measured on this device", ha="center", transform=ax.transAxes)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("attention alone, B*T constant, causal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    names = [n.strip() for n in args.mechanisms.split(",") if n.strip()]
    for n in names:
        attentions.get(n)  # unknown names fail before anything runs
    Ts = [int(t) for t in args.seq_lens.split(",")] if args.seq_lens else \
        [2 ** i for i in range(int(math.log2(args.min_seq)), int(math.log2(args.max_seq)) + 1)]
    os.makedirs(args.out, exist_ok=True)
    started, rows = time.perf_counter(), []
    for name in names:
        for T in Ts:
            rows.append(measure_or_oom(name, T, args, device, dtype))
            print_row(rows[-1])
            write_csv(rows, os.path.join(args.out, "attention_kernels.csv"))  # a cut-off run keeps its rows
    plot(rows, os.path.join(args.out, "attention_kernels.png"))
    print("\nfwd+bwd time ratios (< 1: the first is faster):")
    print("\n".join(ratios(rows)))
    kernels = {r["mechanism"]: r["kernel"] for r in rows if r.get("kernel")}  # an OOM row names none
    print("\nkernels: " + "; ".join(f"{name}={kernels.get(name, 'n/a (no size ran)')}" for name in names))
    print(f"wrote {args.out}/attention_kernels.csv and .png in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
