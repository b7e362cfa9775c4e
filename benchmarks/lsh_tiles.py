"""Which FlexAttention tile sizes suit lsh's paged layout: lsh's fwd+bwd under each set of
kernel_options, beside baseline's, in one process (ratios of the same run).

Inductor's default tiles on an H100/H200 (bf16, head dim 64) are forward 128 x 64 and backward
64 x 128 / 128 x 64 with 8 warps; lsh's pages hold one bucket each, so many of its score tiles are
mostly masked, and other tiles may suit it better (lsh_flex.tiles is what lsh uses). Each config
is checked against the first: the same output within bf16 rounding.

    python benchmarks/lsh_tiles.py --seq-lens 1024,2048,4096 --out results/lsh_tiles
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import attentions  # noqa: E402
from attentions import lsh  # noqa: E402
from attentions.flex_kernel import compiled_flex  # noqa: E402
from benchmarks.attention_kernels import attention_call, median_time  # noqa: E402

CONFIGS = {  # name: kernel_options (fwd_ / bwd_ prefixes: one kernel only); "lsh": lsh's own choice
    "lsh": None,                                   # (attentions/lsh_flex.py tiles), "inductor": inductor's
    "inductor": {},
    "fwd64x64": {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3},
    "bwd64": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
              "bwd_num_warps": 4, "bwd_num_stages": 3},
    "bwd32x128": {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 32,
                  "bwd_num_warps": 4, "bwd_num_stages": 3},
    "bwd_w4": {"bwd_num_warps": 4},
    "both64": {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3,
               "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
               "bwd_num_warps": 4, "bwd_num_stages": 3},
}


FIELDS = ["T", "config", "status", "lsh_ms", "baseline_ms", "lsh_over_baseline", "max_diff_vs_first"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-lens", default="2048")
    ap.add_argument("--tokens", type=int, default=131072, help="B * T")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default="results/lsh_tiles")
    args = ap.parse_args(argv)
    bad = [c for c in args.configs.split(",") if c not in CONFIGS]
    if bad:
        ap.error(f"--configs: {', '.join(bad)} unknown; choose from {', '.join(CONFIGS)}")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU: lsh's flex path runs on CUDA only")
    return args


def timed(call, inputs, repeats, device):
    """(fwd+bwd ms, output) of a compiled call, after warm-up."""
    with torch.no_grad():
        call()  # eager first, as train.py does
    torch._dynamo.reset()
    fn = torch.compile(call)
    out = fn()
    grad = torch.randn_like(out)

    def fwd_bwd():
        torch.autograd.grad(fn(), inputs, grad)
    for _ in range(3):
        fwd_bwd()
    return 1e3 * median_time(fwd_bwd, device, repeats), out.detach()


def lsh_call(options, B, H, T, D, device):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    # the rotations as a graph input, as in the model (built inside the graph, a torch.Generator breaks it)
    rot = lsh.rotations(0, 0, H, D, lsh.n_buckets(T, lsh.PARAMS), lsh.PARAMS["n_hashes"], str(device), q.dtype)

    def flex(*a, kernel_options=None, **kw):  # options None: lsh's own
        return compiled_flex()(*a, **kw, kernel_options=kernel_options if options is None else dict(options) or None)
    return (lambda: lsh.attention(q, k, v, None, lsh.PARAMS, D ** -0.5, rot, flex=True, flex_fn=flex)), (q, k, v)


def rows_at(T, args, device) -> list[dict]:
    B, H, D = max(1, args.tokens // T), args.heads, args.head_dim
    call, inputs = attention_call(attentions.get("baseline"), {}, B, H, T, D, torch.bfloat16, device)
    base_ms, _ = timed(call, inputs, args.repeats, device)
    rows, ref = [], None
    for name in args.configs.split(","):
        try:
            ms, out = timed(*lsh_call(CONFIGS[name], B, H, T, D, device), args.repeats, device)
        except Exception as e:  # noqa: BLE001 - a config inductor refuses is a row, not the end
            rows.append(dict(T=T, config=name, status=f"{type(e).__name__}: {str(e)[:120]}"))
            continue
        ref = out if ref is None else ref
        diff = (out.float() - ref.float()).abs().max().item()
        rows.append(dict(T=T, config=name, status="ok", lsh_ms=round(ms, 3), baseline_ms=round(base_ms, 3),
                         lsh_over_baseline=round(ms / base_ms, 3), max_diff_vs_first=diff))
        print(f"T {T} {name:10s} lsh {ms:7.2f} ms  baseline {base_ms:7.2f} ms  lsh/baseline {ms / base_ms:.3f}"
              f"  max|out - first| {diff:.3g}", flush=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda")
    os.makedirs(args.out, exist_ok=True)
    rows = [r for T in map(int, args.seq_lens.split(",")) for r in rows_at(T, args, device)]
    with open(os.path.join(args.out, "lsh_tiles.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)  # a config inductor refused has T, config, status only
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
