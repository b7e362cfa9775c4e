"""Does a mechanism survive torch.compile inside the model? Train a preset's run compiled, step by
step, then check its compiled no-grad forward against the same model run eagerly.

The model, data, dtype and compile call are the harness's own (harness/run/train.py prepare), so a
failure here is the failure a sweep would hit; each step's loss is printed as it lands, and a
failure prints its whole traceback, with the step it happened at. `--layers` shrinks the model (the
same width) to compile faster; set CUDA_LAUNCH_BLOCKING=1 to make a kernel fault surface at the
kernel that caused it rather than at a later one.

    CUDA_LAUNCH_BLOCKING=1 python benchmarks/compiled_check.py --attention lsh --batch-size 32
    python benchmarks/compiled_check.py --attention lsh --layers 2 --steps 4 --params impl=matmul
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.attention_kernels import parse_params  # noqa: E402
from config import PRESETS  # noqa: E402
from harness.run import step as steps  # noqa: E402
from harness.run import train  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="full_test")
    ap.add_argument("--attention", default="lsh")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--layers", type=int, default=0, help="n_layer of the model (0: the model's own)")
    ap.add_argument("--params", default="", help="the mechanism's parameters, e.g. impl=matmul,dedup=false")
    return ap.parse_args(argv)


def config_of(args):
    params = parse_params(",".join(f"{args.attention}.{item}" for item in args.params.split(",") if item))
    cfg = dataclasses.replace(PRESETS[args.preset], models=[args.model], attentions=[args.attention],
                              seq_lens=[args.seq_len], batch_size=args.batch_size, tokens_per_batch=None,
                              token_budget=None, batches_per_epoch=args.steps, epochs=1, offline=True,
                              compile=True, precompile=0, attention_params=params, eval_tokens=0)
    run = dict(model=args.model, attention=args.attention, seq_len=args.seq_len, batch_size=args.batch_size,
               repeat=0, seed=cfg.seed, run_id="compiled_check", n_layer=args.layers or None)
    return cfg, run


def train_steps(s, device, n) -> None:
    timer = steps.StepTimer(device)
    for i, batch in enumerate(s.batches[:n]):
        t0 = time.perf_counter()
        loss, _ = steps.train_step(s.step_model, batch, s.opt, s.scaler, s.dtype, timer, "check", i)
        torch.cuda.synchronize(device) if device.type == "cuda" else None
        print(f"step {i + 1}/{n}: loss {loss.item():.4f}  {time.perf_counter() - t0:.2f} s", flush=True)


def nograd_check(s, device) -> float:
    """max |compiled - eager| of the no-grad logits on the first batch (fp32 of the autocast dtype)."""
    batch = s.batches[0]
    with torch.no_grad(), torch.autocast(device.type, dtype=s.dtype, enabled=s.dtype != torch.float32):
        compiled = s.step_model(input_ids=batch["input_ids"]).logits.float()
        eager = s.model(input_ids=batch["input_ids"]).logits.float()
    return (compiled - eager).abs().max().item()


def main(argv=None) -> int:
    args = parse_args(argv)
    torch._logging.set_logs(recompiles=True)  # a recompile mid-run is part of the answer
    cfg, run = config_of(args)
    print(f"{args.attention} {args.params or '(defaults)'}: {args.model} layers {args.layers or 'all'}, "
          f"T {args.seq_len}, batch {args.batch_size}, {args.steps} steps, compiled", flush=True)
    phase = "prepare"
    try:
        device, s = train.seeded_prepare(cfg, run)
        phase = "train"
        train_steps(s, device, args.steps)
        phase = "no-grad forward"
        print(f"no-grad forward: max |compiled - eager| logits = {nograd_check(s, device):.3g}", flush=True)
    except Exception:  # noqa: BLE001 - the point is to print it whole
        print(f"FAILED in {phase}:\n{traceback.format_exc()}", flush=True)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
