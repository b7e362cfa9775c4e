"""Where lsh's time goes: torch.profiler over its forward and backward, per implementation.

It prints, for each implementation, the forward and fwd+bwd times (CUDA events) and the ops
that took the most device time (CPU time on a CPU), and writes a Chrome trace per implementation,
so one device command says what to fix. Earlier profiles are kept under results/reference/h200/
(kernels_131k_all/profile_lsh.txt, kernels_lsh_flex/profile_lsh.txt).

    python benchmarks/profile_lsh.py --out results/profile_lsh                 # GPU: both impls
    python benchmarks/profile_lsh.py --device cpu --tokens 2048 --T 512 --impls matmul --out /tmp/p
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.attention_kernels import median_time  # noqa: E402
from attentions import lsh  # noqa: E402
from attentions.common import StubAttention  # noqa: E402


def add_size_args(ap):
    """--device, --T, --tokens and --repeats: the size of an lsh measurement (flex_mask_loads.py too)."""
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=131072, help="B * T")
    ap.add_argument("--repeats", type=int, default=5)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(ap)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--impls", default="matmul,flex")
    ap.add_argument("--rows", type=int, default=20, help="ops listed per implementation")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the call, as the harness compiles the model (default: on CUDA)")
    ap.add_argument("--out", default="results/profile_lsh")
    args = ap.parse_args(argv)
    args.compile = args.device.startswith("cuda") if args.compile is None else args.compile
    for impl in args.impls.split(","):
        if impl not in lsh.IMPLS:
            ap.error(f"--impls: {impl!r} is not one of {', '.join(lsh.IMPLS)}")
    return args


def profile_impl(impl, args, device) -> list[str]:
    """Times and the top ops of one implementation, as lines; writes its Chrome trace."""
    if impl == "flex" and not lsh.uses_flex(device, {"impl": "flex"}):
        return [f"impl=flex: skipped, it runs on CUDA only (here {device}: the matmul path would run)"]
    B, H, T, D = max(1, args.tokens // args.T), args.heads, args.T, args.head_dim
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    module = StubAttention({**lsh.PARAMS, "impl": impl}, num_heads=H, head_dim=D)

    def call():
        return lsh.forward(module, q, k, v, None, scaling=D ** -0.5)[0]
    with torch.no_grad():
        call()  # eager first, as train.py: the rotations are built outside a graph
    if args.compile:
        torch._dynamo.reset()
        call = torch.compile(call)
    grad = torch.randn_like(call())

    def fwd_bwd():
        torch.autograd.grad(call(), (q, k, v), grad)
    for _ in range(3):
        fwd_bwd()
    fwd, both = (1e3 * median_time(f, device, args.repeats) for f in (call, fwd_bwd))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            fwd_bwd()
        if device.type == "cuda":
            torch.cuda.synchronize()
    trace = os.path.join(args.out, f"lsh_{impl}_T{T}.json")
    prof.export_chrome_trace(trace)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=70)
    return [f"impl={impl}: B={B} H={H} T={T} D={D} {dtype}, compiled={args.compile}: "
            f"fwd {fwd:.2f} ms, fwd+bwd {both:.2f} ms (median of {args.repeats}); trace {trace}",
            f"top ops by {key} over 2 fwd+bwd:", table]


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    lines = []
    for impl in args.impls.split(","):
        new = profile_impl(impl, args, device)
        print("\n".join(new), flush=True)
        lines += new
    with open(os.path.join(args.out, "profile_lsh.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
