"""Presets for attention-bench: plain Python on one base, validated in one place.

A Colab user edits the PRESET line; `python main.py --preset P` and the other flags override it.
The original project's knobs map onto fields here (README, "Config reference"):
  number_first_serveral_batch -> batches_per_epoch    batch_size_number -> batch_size
  max_epoch -> epochs    model_name -> models    only_use_single_attention -> attentions=SINGLE
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from harness.errors import UserError, unknown

PRESET = "fast_test"  # <- the line to edit: smoke, fast_test, full_test, scaling, quality, recall, t4, ...

MODELS = ["gpt2", "gpt2-medium", "gpt2-large", "tiny", "mqar"]  # tiny: 2 layers, for tests and smoke;
                                                                # mqar: the recall probe's 2 x 128 model
TASKS = ["lm", "recall"]
# A learning rate suited to each size (GPT-3's table, Brown et al. 2020: 125M 6e-4, 350M 3e-4, 760M 2.5e-4).
LR_BY_MODEL = {"gpt2": 6e-4, "gpt2-medium": 3e-4, "gpt2-large": 2.5e-4, "tiny": 1e-3, "mqar": 1e-3}
ALL = "all"
SINGLE = ["baseline", "flash"]   # the original's only_use_single_attention=True
PRETRAINED_MAX_POSITIONS = 1024  # GPT-2 checkpoints have 1024 learned positions
RECALL_VOCAB = 8192               # the MQAR probe's vocabulary by default, as in Zoology (Arora et al. 2023)


@dataclass
class Config:
    preset: str = "base"
    # Which runs: the plan is models x seq_lens x attentions x repeats.
    models: list[str] = field(default_factory=lambda: ["gpt2"])  # the original's default, model_name_list[2]
    attentions: list[str] | str = ALL        # "all" = all nine; SINGLE = baseline + flash
    seq_lens: list[int] = field(default_factory=lambda: [512])   # fits every GPT-2 size on a 16 GB T4
    batch_size: int | str = 2                # the original's batch_size_number; "auto": the largest that
                                             # fits this GPU (2 on a CPU), recorded in the manifest
    tokens_per_batch: int | None = None      # if set, batch_size = tokens_per_batch // seq_len (scaling)
    batches_per_epoch: int = 2               # the original's number_first_serveral_batch (2 for a test)
    epochs: int = 2                          # the original's max_epoch
    warmup_steps: int = 1                    # first steps, not measured: allocator, autotune, compile
    repeats: int = 1                         # interleaved repeats of the whole plan (A B C A B C)
    # Model and numerics.
    init: str = "random"                     # the original trains from random init; "pretrained" loads the hub
    dtype: str = "auto"                      # auto: bf16 where supported, fp16+scaler on T4, fp32 on CPU
    device: str = "auto"                     # auto: cuda if present, else cpu
    compile: bool = False                    # torch.compile the model (GPU presets turn it on)
    precompile: int | str = "auto"           # runs that compile side by side, each then measured alone
                                             # (the others paused); 0 = off, auto = CPU cores // 2
                                             # (max 8) on a GPU, else 0
    lr: float | str = 3e-4                   # AdamW; a common GPT-2 small fine-tuning rate; auto: LR_BY_MODEL
    lr_schedule: str = "constant"            # or cosine: linear warm-up over lr_warmup of the steps, then
    lr_warmup: float = 0.0                   # a cosine down to lr / 10 at the last step
    seed: int = 0                            # same data order and init for every attention
    seeds: list[int] | None = None           # several inits: a run per seed (the data order stays `seed`)
    attention_params: dict = field(default_factory=dict)  # e.g. {"sliding_window": {"window": 128}}
    # Data.
    offline: bool = False                    # True: bundled sample + bundled tokenizer, no hub calls
    dataset: str = "allenai/tulu-v2-sft-mixture"   # hub id, or a local .jsonl / folder path
    packing: str = "pack"                    # pack: full seq_len rows; pad: one example per row (original)
    # Quality: a held-out split never trained on, equal budgets, the recall probe.
    eval_tokens: int = 16384                 # held-out tokens per evaluation (0: none), in batches of the run's shape
    eval_every: int = 0                      # also evaluate before the first step and every N steps (0: at the end)
    token_budget: int | None = None          # every run trains on this many tokens (needs tokens_per_batch)
    task: str = "lm"                         # lm: Tulu chat; recall: MQAR (Arora et al. 2023), generated here
    recall_pairs: list[int] = field(default_factory=lambda: [16])  # key-value pairs per MQAR row; a run each
    recall_vocab: int = RECALL_VOCAB         # MQAR tokens: keys [1, V/2), values [V/2, V), 0 the filler
    # Measurement.
    sample_interval_s: float = 0.05          # background sampler period (NVML, psutil)
    measure_inference: bool = True           # time a no-grad forward of each batch
    # Sweep behaviour.
    out: str = "results"                     # results root; the notebook points it at Drive
    timeout_s: float | None = None           # per run; None = no limit

    @property
    def n_batches(self) -> int:
        """Batches per epoch: the token budget's, or batches_per_epoch."""
        if self.token_budget and self.tokens_per_batch:
            return -(-self.token_budget // self.tokens_per_batch)
        return self.batches_per_epoch

    @property
    def steps(self) -> int:
        return self.n_batches * self.epochs

    def lr_for(self, model: str) -> float:
        return LR_BY_MODEL.get(model, BASE.lr) if self.lr == "auto" else self.lr

    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    @property
    def measured_steps(self) -> int:
        return self.steps - self.warmup_steps

    def attention_list(self) -> list[str]:
        from attentions import names
        return names() if self.attentions == ALL else list(self.attentions)

    def batch_size_for(self, seq_len: int) -> int:
        return max(1, self.tokens_per_batch // seq_len) if self.tokens_per_batch else self.batch_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """A Config from a manifest; fields that no longer exist (an older manifest) are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


BASE = Config()

PRESETS: dict[str, Config] = {
    # Offline, CPU, tiny model: the whole harness end to end in well under 2 minutes on 2 cores.
    "smoke": dataclasses.replace(BASE, preset="smoke", models=["tiny"], seq_lens=[128], batch_size=2,
                                 batches_per_epoch=2, epochs=2, warmup_steps=1, offline=True,
                                 device="cpu", sample_interval_s=0.02, eval_tokens=1024),
    # "Test all things but quickly": gpt2, all attentions, a few batches.
    "fast_test": dataclasses.replace(BASE, preset="fast_test", batches_per_epoch=3, epochs=2,
                                     warmup_steps=2, batch_size="auto"),
    # The real measurement: enough warm-up and measured steps for a stable median and interval.
    "full_test": dataclasses.replace(BASE, preset="full_test", seq_lens=[1024], batch_size="auto",
                                     batches_per_epoch=20, epochs=2, warmup_steps=5, compile=True),
    # Where efficient attention overtakes exact: constant tokens per batch, growing context; compiled
    # (the eager model's ~100 ms a step would narrow every ratio), runs compiling side by side.
    "scaling": dataclasses.replace(BASE, preset="scaling", seq_lens=[512, 1024, 2048, 4096, 8192, 16384],
                                   tokens_per_batch=16384, batches_per_epoch=16, epochs=1, warmup_steps=3,
                                   compile=True),
    # What each mechanism gives up: the same token budget for every run, a warm-up + cosine schedule,
    # 3 seeds, the held-out split evaluated along the way (eval loss at equal tokens, time and joules).
    "quality": dataclasses.replace(BASE, preset="quality", seq_lens=[1024], tokens_per_batch=16384,
                                   token_budget=16384 * 150, epochs=1, warmup_steps=5, lr="auto",
                                   lr_schedule="cosine", lr_warmup=0.1, seeds=[0, 1, 2], eval_every=25,
                                   eval_tokens=32768, compile=True, measure_inference=False),
    # Multi-query associative recall (Arora et al. 2023), generated here: where windowed, sparse, hashed
    # and linear attention stop finding the key. Fresh rows every step (repeated batches get
    # memorised). The budget is the one where exact attention learnt recall in every seed on a GPU
    # (results/reference/h100/2026-12-07_mqar_table): 64 tokens, 128 rows a step, 3000 steps.
    "recall": dataclasses.replace(BASE, preset="recall", task="recall", models=["mqar"], seq_lens=[32, 64],
                                  recall_pairs=[4], recall_vocab=64, tokens_per_batch=None, batch_size=128,
                                  batches_per_epoch=3000, epochs=1, warmup_steps=5, lr=1e-3,
                                  lr_schedule="cosine", lr_warmup=0.1, seeds=[0, 1, 2], eval_every=250,
                                  eval_tokens=65536, measure_inference=False, offline=True,
                                  attention_params={"gqa": {"kv_heads": 2}}),  # the probe has 4 heads
}
# The quality preset sized for a 16 GB T4's 30 minutes, eager: Colab gives a T4 two CPU cores, where
# compiling nine models one after the other would cost minutes each, more than a compiled step saves
# over 60 steps (on a T4 the flex family and lsh run their PyTorch paths anyway, no Triton kernel).
PRESETS["quality_t4"] = dataclasses.replace(
    PRESETS["quality"], preset="quality_t4", seq_lens=[512], tokens_per_batch=8192, token_budget=8192 * 60,
    eval_every=20, eval_tokens=16384, compile=False)


# One preset per GPU tier, for the notebook's PRESET = "gpu" (gpu_preset picks it): gpt2, batch auto
# (the largest that fits that GPU), more measured steps and a compiled model as the GPU grows.
PRESETS |= {
    "t4": dataclasses.replace(PRESETS["fast_test"], preset="t4", batches_per_epoch=4),       # 15 GB, fp16
    "l4": dataclasses.replace(PRESETS["fast_test"], preset="l4", batches_per_epoch=6),       # 24 GB
    "a100": dataclasses.replace(PRESETS["full_test"], preset="a100", batches_per_epoch=10),  # 40/80 GB
    "h100": dataclasses.replace(PRESETS["full_test"], preset="h100"),                         # 80 GB and up
}


def gpu_preset(gpu_name: str | None, memory_gb: float | None = None) -> str:
    """The tier preset for a GPU, by its name (T4, L4, A100, H100/H200) or else its memory; smoke without one."""
    if not gpu_name:
        return "smoke"
    name = gpu_name.upper()
    for tier, marks in (("t4", ("T4",)), ("l4", ("L4",)), ("a100", ("A100",)), ("h100", ("H100", "H200", "B200"))):
        if any(m in name for m in marks) and not (tier == "l4" and "L40" in name):
            return tier
    memory = memory_gb or 0
    return "t4" if memory < 20 else "l4" if memory < 32 else "a100" if memory < 90 else "h100"


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise unknown("preset", name, PRESETS)
    return dataclasses.replace(PRESETS[name])


def is_local_dataset(dataset: str) -> bool:
    """A path (a file or folder here) rather than a hub id such as allenai/tulu-v2-sft-mixture."""
    import os
    p = os.path.expanduser(dataset)
    return os.path.exists(p) or os.path.isabs(p) or p.startswith(".") or p.endswith((".json", ".jsonl", ".parquet"))


def _on_cpu(device: str) -> bool:
    if device == "cpu":
        return True
    import torch
    return device == "auto" and not torch.cuda.is_available()


def _positive_int(name: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise UserError(f"{name} must be a positive integer, got {v!r}")


def _check_plan(cfg: Config) -> None:
    """Models, attentions, lengths, step counts: what the plan of runs is made of."""
    from attentions import names
    for m in cfg.models:
        if m not in MODELS:
            raise unknown("model", m, MODELS)
    if cfg.attentions != ALL:
        if not cfg.attentions or any(not a for a in cfg.attentions):
            raise UserError(f"attentions: an empty name in {cfg.attentions!r}; give names, 'all' or 'single'")
        for a in cfg.attentions:
            if a not in names():
                raise unknown("attention", a, names())
        twice = sorted({a for a in cfg.attentions if cfg.attentions.count(a) > 1})
        if twice:
            raise UserError(f"attentions: {', '.join(twice)} named twice; use repeats to run a mechanism again")
    for name in ("batch_size", "batches_per_epoch", "epochs", "repeats"):
        if not (name == "batch_size" and cfg.batch_size == "auto"):
            _positive_int(name, getattr(cfg, name))
    if not cfg.seq_lens or any(not isinstance(t, int) or t < 2 for t in cfg.seq_lens):
        raise UserError(f"seq_lens must be integers >= 2, got {cfg.seq_lens!r}")
    if cfg.tokens_per_batch is not None and cfg.tokens_per_batch < max(cfg.seq_lens):
        raise UserError(f"tokens_per_batch ({cfg.tokens_per_batch}) must be >= the longest seq_len "
                        f"({max(cfg.seq_lens)})")
    if not isinstance(cfg.warmup_steps, int) or cfg.warmup_steps < 0:
        raise UserError(f"warmup_steps must be an integer >= 0, got {cfg.warmup_steps!r}")
    if cfg.warmup_steps >= cfg.steps:
        raise UserError(f"warmup_steps ({cfg.warmup_steps}) must be < total steps "
                        f"(batches per epoch x epochs = {cfg.steps}), or nothing is measured")


def _check_sources(cfg: Config) -> None:
    """Weights and data: what the hub must give, and what offline cannot."""
    if cfg.init not in ("random", "pretrained"):
        raise unknown("init", cfg.init, ["random", "pretrained"])
    if cfg.init == "pretrained" and cfg.offline:
        raise UserError("init 'pretrained' loads GPT-2's weights from the Hugging Face hub, which --offline "
                        "forbids; use init='random' offline, or drop --offline")
    if cfg.init == "pretrained" and max(cfg.seq_lens) > PRETRAINED_MAX_POSITIONS:
        raise UserError(f"seq_len {max(cfg.seq_lens)} is beyond the {PRETRAINED_MAX_POSITIONS} positions "
                        "of the pretrained GPT-2 weights; use init='random' (positions are extended)")
    if cfg.init == "pretrained" and "tiny" in cfg.models:
        raise UserError("models: 'tiny' has no pretrained weights; use init='random'")
    if cfg.offline and not is_local_dataset(cfg.dataset) and cfg.dataset != BASE.dataset:
        raise UserError(f"dataset '{cfg.dataset}' is a hub id, and --offline trains on the bundled sample of "
                        f"{BASE.dataset} only; drop --offline, or give a local .jsonl file or folder")


def _check_device(cfg: Config) -> None:
    for name, valid in (("dtype", ["auto", "bf16", "fp16", "fp32"]), ("packing", ["pack", "pad"])):
        if getattr(cfg, name) not in valid:
            raise unknown(name, getattr(cfg, name), valid)
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise unknown("device", cfg.device, ["auto", "cpu", "cuda", "cuda:N"])
    if cfg.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise UserError(f"device {cfg.device}: torch {torch.__version__} sees no CUDA GPU on this machine; "
                            "use --device auto or cpu")
    if cfg.dtype in ("bf16", "fp16") and _on_cpu(cfg.device):
        raise UserError(f"dtype {cfg.dtype} is for GPUs; this run is on the CPU: use dtype auto or fp32")


def _check_quality(cfg: Config) -> None:
    """Evaluation, budgets, schedules, seeds and the recall task."""
    for name, valid in (("task", TASKS), ("lr_schedule", ["constant", "cosine"])):
        if getattr(cfg, name) not in valid:
            raise unknown(name, getattr(cfg, name), valid)
    for name in ("eval_tokens", "eval_every"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 0:
            raise UserError(f"{name} must be an integer >= 0, got {getattr(cfg, name)!r}")
    if cfg.token_budget is not None:
        _positive_int("token_budget", cfg.token_budget)
        if not cfg.tokens_per_batch or cfg.epochs != 1:
            raise UserError("token_budget needs tokens_per_batch (the same tokens per step at every seq_len) "
                            "and epochs = 1: set --tokens-per-batch, or drop the budget")
    if cfg.seeds is not None and (not cfg.seeds or len(set(cfg.seeds)) < len(cfg.seeds)
                                  or not all(isinstance(x, int) for x in cfg.seeds)):
        raise UserError(f"seeds must be distinct integers, got {cfg.seeds!r}")
    if not (cfg.lr == "auto" or (isinstance(cfg.lr, (int, float)) and cfg.lr > 0)):
        raise UserError(f"lr must be > 0 or 'auto' (by model size), got {cfg.lr!r}")
    if not 0 <= cfg.lr_warmup < 1:
        raise UserError(f"lr_warmup is a fraction of the steps in [0, 1), got {cfg.lr_warmup!r}")
    if (cfg.task == "recall") != (cfg.models == ["mqar"]):
        raise UserError("the recall task trains the mqar model, and only it: --task recall --model mqar")
    if cfg.task == "recall":
        for T in cfg.seq_lens:
            for n in cfg.recall_pairs:
                if not isinstance(n, int) or n < 1 or 4 * n > T:
                    raise UserError(f"recall_pairs {n!r} at seq_len {T}: need 1 <= pairs <= seq_len / 4 "
                                    "(the pairs, then as many queries)")
        need = 2 * max(cfg.recall_pairs) + 2  # distinct keys in [1, V/2) and values in [V/2, V) for each row
        if isinstance(cfg.recall_vocab, bool) or not isinstance(cfg.recall_vocab, int) or cfg.recall_vocab < need:
            raise UserError(f"recall_vocab must be an integer >= {need} (2 x {max(cfg.recall_pairs)} pairs + 2), "
                            f"got {cfg.recall_vocab!r}")


def validate(cfg: Config) -> Config:
    """Every check of user input in one place; raises UserError naming the field."""
    _check_plan(cfg)
    _check_quality(cfg)
    _check_sources(cfg)
    _check_device(cfg)
    if not (0 < cfg.sample_interval_s <= 10):
        raise UserError(f"sample_interval_s must be in (0, 10] seconds, got {cfg.sample_interval_s!r}")
    if cfg.precompile != "auto" and (not isinstance(cfg.precompile, int) or isinstance(cfg.precompile, bool)
                                     or cfg.precompile < 0):
        raise UserError(f"precompile must be 'auto' or an integer >= 0 (processes), got {cfg.precompile!r}")
    if cfg.timeout_s is not None and not cfg.timeout_s > 0:
        raise UserError(f"timeout_s must be > 0 seconds or None, got {cfg.timeout_s!r}")
    return cfg
