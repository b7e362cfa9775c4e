"""attention-bench command line: config -> plan of runs -> each run in a fresh process -> results.

  python main.py [--preset P] [--model M|all] [--attention a,b|all|single] [--batch-size N]
                 [--seq-len N[,N...]] [--steps N] [--epochs N] [--offline] [--out DIR] ...
  python main.py --resume DIR          continue an interrupted sweep
  python main.py show [N]              print result N (1 = latest) without recomputing
  python main.py compare A B [...]     compare result folders side by side
  python main.py ... --gpus all|0,1    independent runs side by side, one per GPU (scaleout.py)
  python main.py ... --shard I/N       run 1/N of the plan (a job array's task); then:
  python main.py merge DIR... [--out ROOT]   join shard folders into one results folder
  torchrun --nproc_per_node N main.py ...    data-parallel (DDP) training (distributed.py)

Bad input exits with code 2 and one line naming the problem, before anything is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import config as configs
from harness.errors import UserError


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"expected integers separated by commas, got {text!r}") from None


def _precompile(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--precompile: expected a number of processes or 'auto', got {text!r}") from None


def _names(text: str, all_names) -> list[str] | str:
    if text == "all":
        return configs.ALL
    if text == "single":
        return list(configs.SINGLE)
    return [x.strip() for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", help=f"one of {', '.join(configs.PRESETS)} (default: config.PRESET = {configs.PRESET!r})")
    a("--model", help="gpt2, gpt2-medium, gpt2-large, tiny, a comma list, or all")
    a("--attention", help="comma list of attention names, 'all', or 'single' (baseline + flash)")
    a("--batch-size", type=int, help="sequences per batch (the original's batch_size_number)")
    a("--seq-len", help="tokens per sequence; a comma list sweeps several")
    a("--steps", type=int, help="batches per epoch (the original's number_first_serveral_batch)")
    a("--epochs", type=int, help="epochs over those batches (the original's max_epoch)")
    a("--warmup", type=int, help="first steps not measured")
    a("--repeats", type=int, help="repeat the whole plan N times, interleaved (A B C A B C)")
    a("--offline", action="store_true", default=None, help="bundled sample + bundled tokenizer, no hub")
    a("--dataset", help="hub dataset id or a local .jsonl file / folder in the Tulu format")
    a("--init", choices=["random", "pretrained"], help="random init (default) or the hub's weights")
    a("--device", help="auto, cpu, cuda or cuda:N")
    a("--dtype", help="auto, bf16, fp16 or fp32")
    a("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    a("--precompile", metavar="N|auto", help="compile the runs N at a time before measuring them one by "
      "one (fills torch.compile's caches); 0 = off; auto = CPU cores // 4 on a GPU")
    a("--timeout", type=float, help="seconds per run before it is stopped (status timeout)")
    a("--out", help="results root folder (default results/)")
    a("--resume", metavar="DIR", help="continue the sweep in results folder DIR")
    a("--progress", choices=["lines", "bar"], default="lines",
      help="lines: a line per run and its steps; bar: one progress bar (each run's lines in .runs/)")
    a("--gpus", help="run independent runs side by side, one per GPU: 'all' or indices such as 0,1")
    a("--shard", metavar="I/N", help="run only shard I of N of the plan (run index %% N == I-1); "
      "join the shard folders with 'main.py merge'")
    return p


def config_from_args(args) -> configs.Config:
    cfg = configs.get_preset(args.preset or configs.PRESET)
    over = {}
    if args.model:
        over["models"] = list(configs.MODELS[:3]) if args.model == "all" else _names(args.model, configs.MODELS)
    if args.attention:
        over["attentions"] = _names(args.attention, None)
    if args.seq_len:
        over["seq_lens"] = _ints(args.seq_len)
    for field, value in (("batch_size", args.batch_size), ("batches_per_epoch", args.steps),
                         ("epochs", args.epochs), ("warmup_steps", args.warmup), ("repeats", args.repeats),
                         ("offline", args.offline), ("dataset", args.dataset), ("init", args.init), ("device", args.device),
                         ("dtype", args.dtype), ("compile", args.compile), ("timeout_s", args.timeout),
                         ("precompile", _precompile(args.precompile)),
                         ("out", args.out)):
        if value is not None:
            over[field] = value
    if args.batch_size is not None:
        over["tokens_per_batch"] = None  # an explicit batch size wins over the scaling preset's rule
    return configs.validate(dataclasses.replace(cfg, **over))


def prepare_data(cfg: configs.Config, runs: list[dict]) -> dict:
    """Tokenize once in the parent, before anything is written: a bad dataset fails here."""
    import data
    tok = data.get_tokenizer(cfg.offline)
    out = {}
    for key in sorted({(r["seq_len"], r["batch_size"]) for r in runs}):
        out[key] = data.make_batches(cfg, tok, key[0], key[1], cfg.batches_per_epoch)
    return out


def finish(folder) -> None:
    """Plots, report.md and the summary table at the end of a sweep (also after Ctrl-C)."""
    import report
    report.make_plots(folder)
    path = report.write_report(folder)
    print(report.summary_table(report.load(folder)).to_string(index=False))
    print(f"\nresults: {folder}\nreport:  {path}")


def merge(argv: list[str]) -> int:
    """main.py merge DIR... [--out ROOT]: shard folders -> one results folder, then its report."""
    import scaleout
    p = argparse.ArgumentParser(prog="main.py merge", description="join shard folders into one")
    p.add_argument("folders", nargs="+", help="results folders of the shards of one sweep")
    p.add_argument("--out", help="results root for the merged folder (default: next to the first shard)")
    args = p.parse_args(argv)
    finish(scaleout.merge(args.folders, args.out))
    return 0


def command(name: str, argv: list[str]) -> int:
    import report
    if name == "merge":
        return merge(argv)
    if name == "show":
        which = (int(argv[0]) if argv[0].isdigit() else argv[0]) if argv else 1  # N or a folder
        report.show(which, root=argv[1] if len(argv) > 1 else "results")
    elif name == "compare":
        if len(argv) < 2:
            raise UserError("compare needs two or more result folders")
        report.compare(argv)
    return 0


def run_sweep(cfg: configs.Config | None, resume: str | None = None, shard=None, gpus: str | None = None,
              progress: str = "lines"):
    import distributed
    import scaleout
    from sweep import Sweep, plan
    if resume and shard:
        raise UserError("--shard is fixed when a sweep is created; --resume DIR continues that shard")
    if distributed.launched():  # torchrun: every rank trains, rank 0 writes
        if gpus:
            scaleout.parse_gpus(gpus, "cuda")  # the error that says why not
        return distributed.ddp_sweep(cfg, resume, shard, prepare_data, finish)
    if resume:
        sweep = Sweep.resume(resume)
        cfg = sweep.cfg
        gpu_list = scaleout.parse_gpus(gpus, cfg.device) if gpus else None
        batches = prepare_data(cfg, sweep.pending())
    else:
        gpu_list = scaleout.parse_gpus(gpus, cfg.device) if gpus else None
        runs = scaleout.select_shard(plan(cfg), shard)
        if not runs:
            print(f"shard {scaleout.shard_label(shard)} holds no run of this {len(plan(cfg))}-run plan: "
                  "nothing to do")
            return None
        batches = prepare_data(cfg, runs)
        sweep = Sweep.create(cfg, shard=shard)
    sweep.save_data(batches)
    sweep.progress = progress
    if gpu_list:
        sweep.manifest["gpus"] = gpu_list
    print(f"attention-bench: preset {cfg.preset}, {len(sweep.runs)} runs -> {sweep.folder}", flush=True)
    sweep.run_all(gpus=gpu_list)
    finish(sweep.folder)
    return sweep


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in ("show", "compare", "merge"):
            return command(argv[0], argv[1:])
        args = parser().parse_args(argv)
        cfg = None if args.resume else config_from_args(args)
        from scaleout import parse_shard
        shard = parse_shard(args.shard) if args.shard else None
        run_sweep(cfg, args.resume, shard=shard, gpus=args.gpus, progress=args.progress)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
