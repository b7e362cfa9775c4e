"""attention-bench: what does each attention mechanism cost to train GPT-2, and what does it give up?

  python main.py [--preset P] [--model M|all] [--attention a,b|all|single] [--seq-len N[,N...]] ...
  python main.py --resume DIR          continue an interrupted sweep
  python main.py show [N|DIR]          print result N (1 = latest) from its files
  python main.py compare A B [...]     compare result folders side by side
  python main.py merge DIR... [--out ROOT]   join the shard folders of one sweep
  torchrun --nproc_per_node N main.py ...    data-parallel (DDP) training

Each subcommand has its own --help. Exit codes: 0 at least one run ok (or the command did what it
was asked), 1 a sweep in which no run was ok, 2 bad input (one line naming it; nothing written),
130 stopped by Ctrl-C, 143 stopped by SIGTERM (both save what finished and print how to resume).
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys

import config as configs
from harness.errors import Interrupted, Terminated, UserError

EPILOG = __doc__.split("\n\n", 1)[1]


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"expected integers separated by commas, got {text!r}") from None


def _or_auto(convert, what: str):
    """An argparse type: "auto", or the text converted (int, float), else an error naming `what`."""
    def parse(text: str):
        if text == "auto":
            return text
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or 'auto', got {text!r}") from None
    return parse


_batch = _or_auto(int, "a number of sequences")
_lr = _or_auto(float, "a learning rate")


def _precompile(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--precompile: expected a number of processes or 'auto', got {text!r}") from None


def _names(text: str) -> list[str] | str:
    if text == "all":
        return configs.ALL
    if text == "single":
        return list(configs.SINGLE)
    return [x.strip() for x in text.split(",")]  # empty names are kept: validate() names them


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description=__doc__.split("\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", help=f"one of {', '.join(configs.PRESETS)} (default: config.PRESET = {configs.PRESET!r})")
    a("--model", help="gpt2, gpt2-medium, gpt2-large, tiny, a comma list, or all")
    a("--attention", help="comma list of attention names, 'all', or 'single' (baseline + flash)")
    a("--batch-size", type=_batch, help="sequences per batch (the original's batch_size_number), or auto: "
      "the largest that fits the GPU for every mechanism of the plan (2 on a CPU)")
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
    a("--inference", action=argparse.BooleanOptionalAction, default=None,
      help="time a no-grad forward of each batch after training (inference_time_s; default on)")
    a("--precompile", metavar="N|auto", help="compile N runs side by side, each then measured alone "
      "while the others are paused; 0 = off (one run at a time); auto = CPU cores // 2 on a GPU")
    a("--timeout", type=float, help="seconds per run, counted from its launch, before it is stopped "
      "(status timeout)")
    quality_args(a)
    a("--out", help="results root folder (default results/)")
    a("--resume", metavar="DIR", help="continue the sweep in results folder DIR (its own config)")
    a("--progress", choices=["lines", "bar"], default="lines",
      help="lines: a line per run and its steps; bar: one progress bar (each run's lines in .runs/)")
    a("--gpus", help="run independent runs side by side, one per GPU: 'all' or indices such as 0,1")
    a("--shard", metavar="I/N", help="run only shard I of N of the plan (run index %% N == I-1); "
      "join the shard folders with 'main.py merge'")
    return p


def quality_args(a) -> None:
    """The flags of budgets, seeds and held-out evaluation."""
    a("--seeds", help="comma list of model-init seeds: a run per seed (quality: 0,1,2)")
    a("--tokens-per-batch", type=int, help="batch size = this // seq_len at every seq_len (scaling, quality)")
    a("--token-budget", type=int, help="tokens every run trains on (with the preset's tokens per batch)")
    a("--eval-every", type=int, help="evaluate the held-out split before the first step and every N steps "
      "(0: at the end only)")
    a("--eval-tokens", type=int, help="held-out tokens per evaluation (0: no evaluation)")
    a("--recall-pairs", help="recall preset: key-value pairs per MQAR row, a comma list")
    a("--recall-vocab", type=int, help="recall task: the MQAR vocabulary (keys, values and the filler; "
      "8192 by default, 64 in the recall preset)")
    a("--lr", type=_lr, help="AdamW learning rate, or auto (by model size)")


def config_from_args(args) -> configs.Config:
    cfg = configs.get_preset(args.preset or configs.PRESET)
    over = {}
    if args.model:
        over["models"] = list(configs.MODELS[:3]) if args.model == "all" else _names(args.model)
    if args.attention is not None:
        over["attentions"] = _names(args.attention)
    if args.seq_len:
        over["seq_lens"] = _ints(args.seq_len)
    for field, text in (("seeds", args.seeds), ("recall_pairs", args.recall_pairs)):
        if text:
            over[field] = _ints(text)
    if args.batch_size is not None:
        over["tokens_per_batch"] = None  # an explicit batch size wins over the scaling preset's rule
    if args.tokens_per_batch is not None:
        over["tokens_per_batch"] = args.tokens_per_batch
    for field, value in (("batch_size", args.batch_size), ("batches_per_epoch", args.steps), ("epochs", args.epochs),
                         ("warmup_steps", args.warmup), ("repeats", args.repeats), ("offline", args.offline),
                         ("dataset", args.dataset), ("init", args.init), ("device", args.device),
                         ("dtype", args.dtype), ("compile", args.compile), ("timeout_s", args.timeout),
                         ("measure_inference", args.inference), ("token_budget", args.token_budget),
                         ("eval_every", args.eval_every), ("eval_tokens", args.eval_tokens), ("lr", args.lr),
                         ("recall_vocab", args.recall_vocab),
                         ("precompile", _precompile(args.precompile)), ("out", args.out)):
        if value is not None:
            over[field] = value
    return configs.validate(dataclasses.replace(cfg, **over))


def sweep(argv: list[str]) -> int:
    """The default command: run (or resume) a sweep, then its report. Exit 1 if no run was ok."""
    import json

    from harness.report.markdown import finish
    from harness.sweep.plan import parse_shard
    from harness.sweep.runner import run_sweep
    args = parser().parse_args(argv)
    cfg = None if args.resume else config_from_args(args)
    shard = parse_shard(args.shard) if args.shard else None
    folder = run_sweep(cfg, args.resume, shard=shard, gpus=args.gpus, progress=args.progress)
    if folder is None:
        return 0
    finish(folder)
    runs = json.loads((folder / "manifest.json").read_text())["runs"]
    if not any(r["status"] == "ok" for r in runs):
        print(f"no run finished ok ({len(runs)} run{'s' if len(runs) != 1 else ''}): exit code 1", file=sys.stderr)
        return 1
    return 0


def show(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="main.py show", description="print a result from its files (the "
                                "plots are drawn from its CSVs if it has none)")
    p.add_argument("which", nargs="?", default="1", help="N (1 = the latest result) or a results folder")
    p.add_argument("--root", default="results", help="where to look for result N (default results/)")
    p.add_argument("--all-plots", action="store_true", help="list every plot, not just the overview")
    p.add_argument("--redraw", action="store_true", help="draw every plot again from the CSVs (the reference "
                   "results keep only their main figures)")
    args = p.parse_args(argv)
    from harness.report.show import show as show_result
    show_result(int(args.which) if args.which.isdigit() else args.which, root=args.root, all_plots=args.all_plots,
                redraw=args.redraw)
    return 0


def compare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="main.py compare", description="each later folder's medians as "
                                "ratios to the first's, per (model, seq_len, attention); writes ratios.csv "
                                "and a figure per pair")
    p.add_argument("folders", nargs="+", help="two or more results folders; the first is A")
    p.add_argument("--out", help="where to write the comparison (default: beside the last folder)")
    args = p.parse_args(argv)
    if len(args.folders) < 2:
        raise UserError("compare needs two or more result folders")
    from harness.report.compare import compare as compare_folders
    compare_folders(args.folders, out=args.out)
    return 0


def merge(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="main.py merge", description="join the shard folders of one sweep "
                                "(--shard I/N) into one results folder, then write its report")
    p.add_argument("folders", nargs="+", help="results folders of the shards of one sweep")
    p.add_argument("--out", help="results root for the merged folder (default: next to the first shard)")
    args = p.parse_args(argv)
    from harness.report.markdown import finish
    from harness.sweep.merge import merge as merge_folders
    finish(merge_folders(args.folders, args.out))
    return 0


COMMANDS = {"show": show, "compare": compare, "merge": merge}


def interrupted(e: Interrupted) -> int:
    """One clean message, the report of what finished, the resume command."""
    from harness.report.markdown import finish
    print(f"\n{'stopped by SIGTERM' if e.code == 143 else 'interrupted'}: finished runs are saved in {e.folder}",
          file=sys.stderr)
    try:
        finish(e.folder)
    except Exception as err:  # the report is a convenience here; what matters is saved
        print(f"(no report written: {type(err).__name__}: {err})", file=sys.stderr)
    print(f"resume with: python main.py --resume {e.folder}", file=sys.stderr)
    return e.code


def _terminate(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        return sweep(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        return interrupted(e)
    except KeyboardInterrupt as e:  # before the sweep started: nothing to save
        return 143 if isinstance(e, Terminated) else 130
    except BrokenPipeError:  # `main.py show | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
