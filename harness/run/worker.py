"""The process of one run: `python -m harness.run.worker SPEC.json RESULT.json`.

The sweep starts one per run (harness/sweep/processes.py forks it from a server that imported
torch once), so allocator state, compile caches, peak-memory counters and NVML baselines never
leak from one attention into the next. The result file is written atomically with a status:
ok, oom, nan, unavailable or error (+ traceback tail). Under torchrun the same run happens
in-process on every rank (run_local).
"""
from __future__ import annotations

import json
import sys
import traceback

import torch

from config import Config
from harness.run import ddp, train
from harness.run.batches import data_key
from harness.run.gate import Gate
from harness.store import write_json


def is_oom(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the CPU allocator's RuntimeError ("can't allocate memory")."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "DefaultCPUAllocator" in str(e)))


def status_of(e: BaseException) -> dict:
    """A failed run's {status, reason[, traceback]}."""
    if isinstance(e, train.Unavailable):
        return dict(status="unavailable", reason=str(e))
    if is_oom(e):
        return dict(status="oom", reason=str(e).splitlines()[0][:300])
    if isinstance(e, train.NonFiniteLoss):
        return dict(status="nan", reason=str(e))
    tb = traceback.format_exc().strip().splitlines()
    return dict(status="error", reason=f"{type(e).__name__}: {e}"[:500], traceback="\n".join(tb[-12:]))


def main(spec_path: str, out_path: str) -> int:
    """Run one configuration, write {status, reason, ...} atomically to out_path."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    spec = json.load(open(spec_path))
    cfg, run = Config.from_dict(spec["config"]), dict(spec["run"], data=spec.get("data"))
    result = {"status": "error", "reason": "", "rows": [], "info": {}, "samples": []}
    try:
        if spec.get("warm"):
            result.update(train.warm(cfg, run), status="ok")
        else:
            gate = Gate(spec["gate"]) if spec.get("gate") else None  # the stem of its gate's files
            result.update(train.run(cfg, run, gate=gate), status="ok")
    except Exception as e:  # any failure is a result too; the sweep goes on
        result.update(status_of(e))
    write_json(out_path, result)
    return 0


def run_local(cfg: Config, run: dict, batches: dict) -> dict:
    """One run in this torchrun rank's process. Failures every rank meets alike become a status;
    any other exception ends the rank (the others would wait in a collective) and torchrun stops
    the job."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    spec = dict(run, data=batches[data_key(run)])
    try:
        res = train.run(cfg, spec, log=print if ddp.rank() == 0 else (lambda *a, **k: None))
        return dict(res, status="ok", reason="")
    except (train.Unavailable, train.NonFiniteLoss) as e:  # the loss is global: every rank stops alike
        return status_of(e)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
