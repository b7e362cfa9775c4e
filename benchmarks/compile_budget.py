"""How long a compiled sweep takes from cold caches, against a time target.

    python benchmarks/compile_budget.py run --group full_test --target-min 4 --out DIR -- --preset full_test
    python benchmarks/compile_budget.py run --group scaling --target-min 20 --out DIR -- --preset scaling --shard 1/3
    python benchmarks/compile_budget.py run --group scaling --target-min 20 --out DIR --shared-cache -- ... --shard 2/3
    python benchmarks/compile_budget.py summary DIR

`run` empties a private torch.compile cache (Inductor, AOTAutograd and Triton, under
DIR/caches/<group>), runs main.py with the arguments after `--` (its results under DIR/results,
its output in DIR/<group>_<n>.log), and adds a line to DIR/budget.jsonl: the wall time of the
whole command, runs ok of planned, the results folder, commit and date. A sweep too long for one
call runs as shards: each from its own cold cache (which only adds work: nothing compiled for one
shard serves the next), or, with --shared-cache, from the cache the group's earlier pieces left,
emptied only before its first piece: the whole sweep from cold caches, as one command would run
it where no time limit splits it. `summary` adds the pieces of each group and sets their sum
beside the target: a wall/target ratio under 1 meets it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def results_folder(log: Path) -> str | None:
    """The folder main.py names on its 'results:' line."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("results:")]
    return lines[-1].split(":", 1)[1].strip() if lines else None


def runs_ok(folder: str | None) -> tuple[int, int]:
    try:
        runs = json.loads((Path(folder) / "manifest.json").read_text())["runs"]
    except (TypeError, OSError, ValueError, KeyError):
        return 0, 0
    return sum(r.get("status") == "ok" for r in runs), len(runs)


def run(args) -> int:
    out = Path(args.out).resolve()
    cache = out / "caches" / args.group
    lines = out / "budget.jsonl"
    n = sum(1 for ln in lines.read_text().splitlines() if json.loads(ln)["group"] == args.group) \
        if lines.exists() else 0
    shared = args.shared_cache and n > 0  # a later piece: the sweep's cache so far, cold at its first
    if not shared:
        shutil.rmtree(cache, ignore_errors=True)  # cold: nothing compiled before this command
    cache.mkdir(parents=True, exist_ok=True)
    log = out / f"{args.group}_{n + 1}.log"
    cmd = [sys.executable, "main.py", *args.main_args, "--out", str(out / "results")]
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    folder = results_folder(log)
    ok, planned = runs_ok(folder)
    entry = dict(group=args.group, target_min=args.target_min, wall_s=round(wall, 1), rc=rc, runs_ok=ok,
                 runs=planned, folder=folder and os.path.relpath(folder, out), log=log.name,
                 cache="shared with the group's earlier pieces" if shared else "cold",
                 command=" ".join(["python", "main.py", *args.main_args]), commit=commit(),
                 date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    with open(lines, "a") as f:
        f.write(json.dumps(entry) + "\n")
    source = "the group's cache so far" if shared else "cold caches"
    print(f"{args.group}: rc {rc}, {ok}/{planned} runs ok, {wall / 60:.2f} min from {source} "
          f"(target {args.target_min:g} min)")
    return rc


def summary(args) -> int:
    """One line per group: its pieces, runs, summed wall time, the target and the ratio."""
    entries = [json.loads(ln) for ln in (Path(args.out) / "budget.jsonl").read_text().splitlines() if ln.strip()]
    print("| sweep | commands | caches | runs ok / planned | wall (min) | target (min) | wall / target | met |")
    print("|---|---|---|---|---|---|---|---|")
    for group in dict.fromkeys(e["group"] for e in entries):
        es = [e for e in entries if e["group"] == group]
        wall = sum(e["wall_s"] for e in es) / 60
        target = es[0]["target_min"]
        ok, planned = sum(e["runs_ok"] for e in es), sum(e["runs"] for e in es)
        failed = [e["log"] for e in es if e["rc"] not in (0,)]
        met = "yes" if wall <= target and not failed else "no" + (f" (exit code in {', '.join(failed)})" if failed else "")
        caches = "one, cold at the first" if any(e.get("cache", "cold") != "cold" for e in es) else "each cold"
        print(f"| {group} | {len(es)} | {caches} | {ok} / {planned} | {wall:.2f} | {target:g} | {wall / target:.2f} "
              f"| {met} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="one command from cold caches")
    r.add_argument("--group", required=True, help="the sweep this command is (a piece of)")
    r.add_argument("--target-min", type=float, required=True, help="the group's time target (min)")
    r.add_argument("--out", required=True)
    r.add_argument("--shared-cache", action="store_true",
                   help="a later piece of the group keeps the cache its earlier pieces left (cold at the first)")
    r.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then main.py's arguments")
    s = sub.add_parser("summary", help="each group's summed wall time against its target")
    s.add_argument("out")
    args = p.parse_args(argv)
    if args.what == "run":
        args.main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
        return run(args)
    return summary(args)


if __name__ == "__main__":
    sys.exit(main())
