"""main.py's sweep when torchrun starts it: rank 0 plans, tokenizes and keeps the ledger; every
rank trains each run in-process (launchers.Torchrun). The per-rank hooks are harness/run/ddp.py.

A failure that differs between ranks (OOM, an error) cannot be recorded without the others
hanging in a collective: that rank exits and torchrun stops the job; finished runs are saved and
`torchrun ... main.py --resume DIR` continues. --timeout is not enforced here (no child per run).
"""
from __future__ import annotations

from pathlib import Path

from config import Config
from harness.errors import UserError
from harness.run import ddp
from harness.sweep.launchers import Torchrun
from harness.sweep.ledger import Sweep
from harness.sweep.plan import plan, select_shard, shard_label


def rank0_setup(cfg, resume, shard, prepare_data):
    """What the serial parent does before running: returns (sweep, payload for every rank)."""
    try:
        sweep = Sweep.resume(resume) if resume else None
        cfg = sweep.cfg if sweep else cfg
        todo = sweep.pending() if sweep else select_shard(plan(cfg), shard)
        bad = sorted({r["batch_size"] for r in todo if r["batch_size"] % ddp.world()})
        if bad:
            raise UserError(f"batch_size is the global batch, split across the {ddp.world()} torchrun "
                            f"processes: {bad[0]} is not a multiple of {ddp.world()}")
        if not todo and not resume:
            print(f"shard {shard_label(shard)} holds no run of this plan: nothing to do")
            return None, dict(runs=None)
        batches = prepare_data(cfg, todo)
        sweep = sweep or Sweep.create(cfg, shard=shard)
    except UserError as e:
        return None, dict(error=str(e))
    import torch.distributed as dist
    sweep.manifest["distributed"] = dict(world_size=ddp.world(), backend=str(dist.get_backend()),
                                         batch="batch_size is the global batch, split evenly across ranks")
    if cfg.timeout_s:
        print(f"note: --timeout {cfg.timeout_s} is not enforced under torchrun (no child per run)")
    return sweep, dict(config=cfg.to_dict(), runs=sweep.pending(), batches=batches)


def ddp_sweep(cfg, resume, shard, prepare_data) -> Path | None:
    """Every rank calls this; rank 0 returns the results folder, the others None."""
    ddp.init()
    sweep, payload = rank0_setup(cfg, resume, shard, prepare_data) if ddp.rank() == 0 else (None, None)
    payload = ddp.broadcast(payload)
    if "error" in payload or payload["runs"] is None:
        ddp.teardown()
        if "error" in payload:
            raise UserError(payload["error"])
        return None
    launcher = Torchrun(Config.from_dict(payload["config"]), payload["batches"])
    if sweep is not None:
        print(f"attention-bench: torchrun x{ddp.world()}, {len(sweep.runs)} runs -> {sweep.folder}", flush=True)
        sweep.run_all(launcher)
    else:
        for run in payload["runs"]:
            launcher.run_rank(run)
    ddp.teardown()
    return sweep.folder if sweep is not None else None
