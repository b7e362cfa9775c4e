"""The plan of a sweep: models x seq_lens x attentions, repeated in interleaved order, and its
deterministic shards.

Repeats are interleaved (A B C A B C) so slow drift of the machine (clocks, thermals) does not
favour one attention. A run_id keeps the run's index in the full plan, so shards (--shard I/N,
select_shard: for a Slurm job array, Ray or Kubernetes) join back by run_id.
"""
from __future__ import annotations

from config import Config
from harness.errors import UserError


def plan(cfg: Config) -> list[dict]:
    """The runs in order. Several seeds or MQAR pair counts add `seed` / `n_pairs` to each run and
    `_s{seed}` / `_p{pairs}` to its id (a plan without them keeps the ids it always had). Seeds are
    the innermost loop, so with S seeds `--shard k/S` is seed k-1 of every configuration: a
    complete comparison on its own, which the other shards add seeds to."""
    seeds = cfg.seed_list()
    pairs = cfg.recall_pairs if cfg.task == "recall" else [None]
    runs = []
    for repeat in range(cfg.repeats):
        for m in cfg.models:
            for t in cfg.seq_lens:
                for p in pairs:
                    for a in cfg.attention_list():
                        for seed in seeds:
                            runs.append(dict(model=m, attention=a, seq_len=t, batch_size=cfg.batch_size_for(t),
                                             repeat=repeat, seed=seed, n_pairs=p, status="pending", reason=""))
    for i, r in enumerate(runs):
        extra = (f"_p{r['n_pairs']}" if r["n_pairs"] else "") + (f"_s{r['seed']}" if cfg.seeds else "")
        r["run_id"] = f"{i:03d}_{r['model']}_{r['attention']}_T{r['seq_len']}{extra}_r{r['repeat']}"
    return runs


def run_tags(run: dict) -> str:
    """What tells a run apart from its siblings in a progress line: " pairs=8 seed=1 repeat=0"."""
    tags = [f"pairs={run['n_pairs']}" if run.get("n_pairs") else "",
            f"seed={run['seed']}" if run.get("seed") is not None else "", f"repeat={run.get('repeat', 0)}"]
    return "".join(f" {t}" for t in tags if t)


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard: expected I/N such as 2/3, got {text!r}") from None
    if not 1 <= i <= n:
        raise UserError(f"--shard {text}: I must be from 1 to N (shards are numbered 1..N)")
    return i, n


def shard_label(shard) -> str | None:
    return f"{shard[0]}/{shard[1]}" if shard else None


def select_shard(runs: list[dict], shard) -> list[dict]:
    """Shard I/N of the full plan: the runs dealt to shards 1..N in plan order like cards, each
    sequence length starting S shards further on (S seeds a configuration): shards cover the plan
    exactly once; with N = S, shard k is seed k-1 of every configuration; and where N divides the
    number of mechanisms, a mechanism's lengths still spread over the shards (plain dealing would
    give each shard whole mechanisms, and one shard all of the slowest one's compiles)."""
    if not shard:
        return runs
    lengths = list(dict.fromkeys(r["seq_len"] for r in runs))
    seeds = len({r.get("seed") for r in runs})
    return [r for i, r in enumerate(runs)
            if (i + seeds * lengths.index(r["seq_len"])) % shard[1] == shard[0] - 1]
