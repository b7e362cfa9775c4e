"""Scale-out on the CPU: torchrun with 2 gloo ranks matches one process with the same global batch;
shards cover the plan once and merge back to the unsharded summary; the GPU pool, driven by a fake
launcher, spreads runs over 2 "GPUs" with the serial path's statuses, timeouts, Ctrl-C and resume."""
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import types

import pandas as pd
import pytest
import torch

import config
import main
from conftest import ROOT
from harness.errors import Interrupted
from harness.run import ddp, train
from harness.report import breakdown
from harness.store import global_steps
from harness.sweep import processes
from harness.sweep.launchers import GpuPool
from inprocess import InProcess
from harness.sweep.ledger import Sweep
from harness.sweep.plan import plan, select_shard
from harness.sweep.runner import prepare_data, run_sweep


def quiet(*a, **k):
    pass


def _folders(root):
    return [p for p in root.iterdir() if (p / "manifest.json").exists()] if root.exists() else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- torchrun / DDP -----------------------------------------------------------------------------

DDP_ARGS = ["--preset", "smoke", "--attention", "sdpa", "--batch-size", "4", "--seq-len", "64",
            "--steps", "3", "--epochs", "1", "--warmup", "1", "--no-compile", "--device", "cpu"]


def test_torchrun_two_ranks_match_one_process_and_write_one_folder(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "main.py", *DDP_ARGS, "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Meanwhile, the reference: the same global batch (4 rows) in this one process.
    cfg = main.config_from_args(main.parser().parse_args(DDP_ARGS + ["--out", str(tmp_path / "ref")]))
    ref = train.run(cfg, plan(cfg)[0], log=quiet)["rows"]
    log, _ = p.communicate(timeout=240)
    assert p.returncode == 0, log
    (folder,) = _folders(out)  # written once, by rank 0
    assert [x.name for x in out.iterdir()] == [folder.name]
    batches = pd.read_csv(folder / "batches.csv")
    assert sorted(batches["rank"].unique()) == [0, 1]
    for r, rows in batches.groupby("rank"):
        assert rows["tokens"].tolist() == [2 * 64] * 3  # each rank trains half of every batch
        assert rows["loss"].tolist() == pytest.approx([x["loss"] for x in ref], rel=1e-4)
    summary = pd.read_csv(folder / "summary.csv")
    assert summary.loc[0, "status"] == "ok" and summary.loc[0, "world_size"] == 2
    assert summary.loc[0, "tokens"] == 4 * 64  # the global batch
    run = json.loads((folder / "manifest.json").read_text())["runs"][0]
    assert run["world_size"] == 2 and len(run["gpu_memory_mb_by_rank"]) == 2


def test_padding_loss_weights_give_the_global_mean_and_gradient(monkeypatch):
    """Rows with different padding: the ranks' weighted losses and DDP's gradient average equal the
    whole batch's token mean (no process group needed: the two ranks are computed here in turn)."""
    from harness.run import model as models
    m, _ = models.build("tiny", "sdpa", 16)
    ids = torch.randint(0, 1000, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[0, 4:] = mask[1, 10:] = 0  # rank 0's rows are mostly padding, rank 1's are full
    batch = dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))

    def loss_and_grad(b):
        m.zero_grad()
        loss = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss = loss * b.get("loss_weight", 1.0)
        loss.backward()
        return loss.item(), m.transformer.wte.weight.grad.clone()

    full_loss, full_grad = loss_and_grad(batch)
    monkeypatch.setattr(ddp, "active", lambda: True)
    parts = []
    for r in (0, 1):
        for k, v in (("RANK", r), ("LOCAL_RANK", r), ("WORLD_SIZE", 2)):
            monkeypatch.setenv(k, str(v))
        (part,) = ddp.shard_batches([batch])
        assert part["input_ids"].shape[0] == 2 and "loss_weight" in part
        parts.append(loss_and_grad(part))
    assert sum(p[0] for p in parts) / 2 == pytest.approx(full_loss, rel=1e-5)   # what global_loss reports
    assert torch.allclose((parts[0][1] + parts[1][1]) / 2, full_grad, rtol=1e-4, atol=1e-7)  # what DDP averages


def test_global_steps_sum_resources_and_take_the_slowest_rank():
    nan = float("nan")
    rows = [dict(run_id="a", step=0, phase="measure", loss=2.0, tokens=100, flops=1e9, train_time_s=t,
                 energy_j=e, gpu_power_w=p, gpu_memory_mb=mem, gpu_util_percent=u, mfu=0.5, rank=r)
            for r, t, e, p, mem, u in ((0, 1.0, 10.0, 200.0, 900.0, 80.0), (1, 2.0, nan, 300.0, 1000.0, 90.0))]
    g = global_steps(pd.DataFrame(rows)).iloc[0]
    assert "rank" not in g.index and g["tokens"] == 200 and g["train_time_s"] == 2.0
    assert g["tokens_per_s"] == 100.0 and g["gpu_power_w"] == 500.0 and g["gpu_memory_mb"] == 1000.0
    assert g["gpu_util_percent"] == 85.0 and g["loss"] == 2.0
    assert g["mfu"] == pytest.approx((0.5 * 1 + 0.5 * 2) / (2 * 2.0))
    assert g["energy_j"] != g["energy_j"]  # one rank unmeasured: NaN, never a partial sum


# -- shards and merge ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_shards_cover_the_plan_exactly_once(n):
    cfg = config.get_preset("smoke")
    cfg.attentions, cfg.seq_lens, cfg.repeats = ["baseline", "sdpa", "linear"], [64, 128], 2
    full = [r["run_id"] for r in plan(cfg)]
    shards = [[r["run_id"] for r in select_shard(plan(cfg), (i, n))] for i in range(1, n + 1)]
    assert sorted(sum(shards, [])) == sorted(full)
    assert select_shard(plan(cfg), (1, 3)) == select_shard(plan(cfg), (1, 3))


@pytest.mark.parametrize("bad", ["0/3", "4/3", "x", "1/0", "1/2/3", "2/-3"])
def test_bad_shard_exit_2_nothing_written(bad, tmp_path, capsys):
    out = tmp_path / "r"
    assert main.main(["--preset", "smoke", "--shard", bad, "--out", str(out)]) == 2
    assert "--shard" in capsys.readouterr().err and not _folders(out)


SWEEP_ARGS = ["--preset", "smoke", "--attention", "baseline,sdpa,linear", "--seq-len", "64", "--steps", "2",
              "--epochs", "1", "--warmup", "1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """One unsharded sweep and shards 1/3, 2/3, 3/3 of the same plan (no plots: finish is a no-op)."""
    root = tmp_path_factory.mktemp("shards")
    made = {}
    for name, shard in (("full", None), ("s1", (1, 3)), ("s2", (2, 3)), ("s3", (3, 3))):
        cfg = main.config_from_args(main.parser().parse_args(SWEEP_ARGS + ["--out", str(root / name)]))
        made[name] = run_sweep(cfg, shard=shard, launcher=InProcess())
        assert _folders(root / name) == [made[name]]
    return made


def _merge(folders, out, monkeypatch):
    from harness.report import markdown
    seen = []
    monkeypatch.setattr(markdown, "finish", seen.append)  # the report is test_report.py's to test
    code = main.main(["merge", *map(str, folders), "--out", str(out)])
    return code, (seen[0] if seen else None)


def test_merge_rebuilds_the_unsharded_summary(shards, tmp_path, monkeypatch):
    m = json.loads((shards["s2"] / "manifest.json").read_text())
    assert m["shard"] == "2/3" and m["plan_size"] == 3
    assert [r["run_id"] for r in m["runs"]] == m["plan_run_ids"][1:2]
    code, folder = _merge([shards["s3"], shards["s1"], shards["s2"]], tmp_path / "m", monkeypatch)
    assert code == 0 and folder is not None
    keys = ["run_id", "model", "attention", "seq_len", "batch_size", "status", "n_measured", "loss", "flops"]
    want, got = (pd.read_csv(f / "summary.csv")[keys] for f in (shards["full"], folder))
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6)
    wb, gb = (pd.read_csv(f / "batches.csv") for f in (shards["full"], folder))
    assert gb["run_id"].tolist() == wb["run_id"].tolist()  # same rows, in plan order
    assert gb["loss"].tolist() == pytest.approx(wb["loss"].tolist(), rel=1e-6)
    merged = json.loads((folder / "manifest.json").read_text())
    assert merged["merge"]["missing"] == [] and merged["merge"]["duplicates"] == [] and merged["finished"]
    assert len(merged["merge"]["shard_times"]) == 3  # the merged folder's wall time is its shards'
    assert breakdown.sweep_time(merged).endswith("over 3 shards")


def test_merge_reports_duplicates_and_missing(shards, tmp_path, monkeypatch, capsys):
    again = tmp_path / "again"
    shutil.copytree(shards["s1"], again)
    code, folder = _merge([shards["s1"], again, shards["s2"]], tmp_path / "m", monkeypatch)
    assert code == 0
    report = json.loads((folder / "manifest.json").read_text())["merge"]
    s1_ids = [r["run_id"] for r in json.loads((shards["s1"] / "manifest.json").read_text())["runs"]]
    s3_ids = [r["run_id"] for r in json.loads((shards["s3"] / "manifest.json").read_text())["runs"]]
    assert [d["run_id"] for d in report["duplicates"]] == s1_ids and report["missing"] == s3_ids
    out = capsys.readouterr().out
    assert "duplicates" in out and "missing" in out and s3_ids[0] in out
    assert len(pd.read_csv(folder / "summary.csv")) == 2  # each run once


def test_merge_of_a_shard_kept_without_batches_keeps_its_numbers(shards, tmp_path, monkeypatch, capsys):
    """A shard kept small (no batches.csv) gives its summary rows as they are: the merged summary
    equals the unsharded one. With its summary.csv gone too, merge refuses and writes nothing."""
    kept = tmp_path / "kept"
    shutil.copytree(shards["s2"], kept)
    (kept / "batches.csv").unlink()
    code, folder = _merge([shards["s1"], kept, shards["s3"]], tmp_path / "m", monkeypatch)
    assert code == 0 and "has no batches.csv" in capsys.readouterr().out
    keys = ["run_id", "attention", "status", "n_measured", "loss", "flops"]
    want, got = (pd.read_csv(f / "summary.csv")[keys] for f in (shards["full"], folder))
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6)
    own, merged = (pd.read_csv(f / "summary.csv").set_index("run_id") for f in (kept, folder))
    assert merged.loc[own.index, "train_time_s"].tolist() == pytest.approx(own["train_time_s"].tolist())
    (kept / "summary.csv").unlink()
    code, _ = _merge([shards["s1"], kept, shards["s3"]], tmp_path / "m2", monkeypatch)
    assert code == 2 and "lacks runs it finished" in capsys.readouterr().err and not _folders(tmp_path / "m2")


def test_merge_of_different_sweeps_is_a_user_error(shards, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other"
    shutil.copytree(shards["s2"], other)
    m = json.loads((other / "manifest.json").read_text())
    m["config"]["seq_lens"] = [128]
    (other / "manifest.json").write_text(json.dumps(m))
    code, _ = _merge([shards["s1"], other], tmp_path / "m", monkeypatch)
    assert code == 2 and "seq_lens" in capsys.readouterr().err and not _folders(tmp_path / "m")
    code, _ = _merge([tmp_path / "nope"], tmp_path / "m", monkeypatch)
    assert code == 2 and "no manifest.json" in capsys.readouterr().err


# -- the GPU pool ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gpus", ["all", "0,1"])
def test_gpus_on_a_cpu_machine_is_a_user_error(gpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "r"
    assert main.main(["--preset", "smoke", "--gpus", gpus, "--out", str(out)]) == 2
    assert "no CUDA GPUs" in capsys.readouterr().err and not _folders(out)


def test_pinned_child_meters_its_own_gpu(monkeypatch):
    """The parent's CUDA_VISIBLE_DEVICES=3,5 and --gpus 1: the child sees only board 5, as cuda:0,
    and metrics/nvml.py maps that cuda:0 to NVML board 5."""
    from metrics.nvml import torch_device_target
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    env = processes.pin_env(1)
    assert env == {"CUDA_VISIBLE_DEVICES": "5", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env["CUDA_VISIBLE_DEVICES"])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace())
    assert torch_device_target(torch.device("cuda:0"))["index"] == 5


FAKE_CHILD = r"""
import json, os, sys, time
out, mode, run_id = sys.argv[1:4]
t0 = time.time()
if mode == "hang":
    time.sleep(60)
if mode == "die":
    sys.exit(3)
time.sleep(0.5)
row = dict(run_id=run_id, phase="measure", loss=1.0, train_time_s=0.1, tokens_per_s=10.0, t0=t0,
           t1=time.time(), visible=os.environ["CUDA_VISIBLE_DEVICES"])
json.dump(dict(status="ok", reason="", rows=[row], info={}, samples=[]), open(out + ".tmp", "w"))
os.replace(out + ".tmp", out)
"""
MODES = {"baseline": "ok", "lsh": "ok", "sdpa": "hang", "linear": "die", "gqa": "ok"}  # plan order


def _fake_start(calls, sw, run, gpu, interrupt_at=None):
    """Like the real launcher (pinned env, result file in .runs/) but a 0.5 s child with no torch."""
    calls.append((run["run_id"], gpu))
    if interrupt_at and len(calls) == interrupt_at:
        raise KeyboardInterrupt
    out = sw.folder / ".runs" / f"{run['run_id']}.result.json"
    out.parent.mkdir(exist_ok=True)
    mode = MODES[run["attention"]] if not interrupt_at else "ok"
    return subprocess.Popen([sys.executable, "-c", FAKE_CHILD, str(out), mode, run["run_id"]],
                            env={**os.environ, **processes.pin_env(gpu)})


def _pool_sweep(tmp_path, attentions, timeout=None):
    cfg = config.get_preset("smoke")
    cfg.attentions, cfg.out, cfg.timeout_s = attentions, str(tmp_path / "r"), timeout
    return Sweep.create(cfg, log=quiet)


def test_pool_spreads_runs_over_two_gpus_with_serial_statuses(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sw, calls = _pool_sweep(tmp_path, list(MODES), timeout=2.0), []
    lines = []
    sw.log = lambda *a, **k: lines.append(" ".join(map(str, a)))
    sw.run_all(GpuPool([0, 1], start=functools.partial(_fake_start, calls), poll_s=0.05))
    m = json.loads((sw.folder / "manifest.json").read_text())
    status = {r["attention"]: r["status"] for r in m["runs"]}
    assert status == {"baseline": "ok", "sdpa": "timeout", "linear": "error", "lsh": "ok", "gqa": "ok"}
    assert m["finished"] and {r["gpu"] for r in m["runs"]} == {0, 1}
    assert {g for _, g in calls} == {0, 1} and len(calls) == len(MODES)
    b = pd.read_csv(sw.folder / "batches.csv")
    assert sorted(b["run_id"]) == sorted(r["run_id"] for r in m["runs"] if r["status"] == "ok")
    by_run = {r["run_id"]: r for r in m["runs"]}
    assert all(str(by_run[x.run_id]["gpu"]) == str(x.visible) for x in b.itertuples())  # pinned
    spans = sorted((x.t0, x.t1, by_run[x.run_id]["gpu"]) for x in b.itertuples())
    assert any(a[1] > c[0] and a[2] != c[2] for a, c in zip(spans, spans[1:]))  # side by side
    for gpu in (0, 1):  # but never two at once on one GPU
        mine = [s for s in spans if s[2] == gpu]
        assert all(a[1] <= c[0] for a, c in zip(mine, mine[1:]))
    assert len(pd.read_csv(sw.folder / "summary.csv")) == len(MODES)
    # runs end out of order (sdpa hangs till its timeout): each result line names its run
    ends = [line for line in lines if "->" in line]
    assert len(ends) == len(MODES)
    for r in m["runs"]:
        assert sum(f"[gpu {r['gpu']}] tiny {r['attention']} seq_len=" in e and f"{r['status']}" in e
                   for e in ends) == 1


def test_pool_ctrl_c_then_resume_lands_every_run_once(tmp_path, monkeypatch):
    sw, calls = _pool_sweep(tmp_path, ["baseline", "lsh", "gqa"]), []
    with pytest.raises(Interrupted) as stopped:
        sw.run_all(GpuPool([0, 1], start=functools.partial(_fake_start, calls, interrupt_at=3), poll_s=0.05))
    assert stopped.value.code == 130 and stopped.value.folder == sw.folder
    m = json.loads((sw.folder / "manifest.json").read_text())
    assert all(r["status"] in ("pending", "ok", "interrupted") for r in m["runs"])  # nothing left "running"
    assert any(r["status"] == "interrupted" for r in m["runs"])
    again, calls2 = Sweep.resume(sw.folder, log=quiet), []
    again.run_all(GpuPool([0, 1], start=functools.partial(_fake_start, calls2), poll_s=0.05))
    b = pd.read_csv(sw.folder / "batches.csv")
    assert sorted(b["run_id"]) == sorted(r["run_id"] for r in again.runs)  # each run once
    assert all(r["status"] == "ok" for r in again.runs)


def test_pool_with_real_train_children(tmp_path, monkeypatch):
    """The real launcher: worker children pinned to "GPUs" 0 and 1 (CPU runs here, so the pin is
    only an environment variable), each child's output in .runs/<run_id>.log."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = main.config_from_args(main.parser().parse_args(SWEEP_ARGS + ["--out", str(tmp_path / "r")]))
    cfg.attentions = ["baseline", "sdpa"]
    sw = Sweep.create(cfg, log=quiet)
    sw.save_data(prepare_data(cfg, sw.runs))
    GpuPool([0, 1], poll_s=0.05).run(sw, sw.pending(), 0)
    got = [(r["status"], r["gpu"], r["cuda_visible_devices"]) for r in sw.runs]
    assert got == [("ok", 0, "0"), ("ok", 1, "1")]
    assert all((sw.folder / ".runs" / f"{r['run_id']}.log").stat().st_size > 0 for r in sw.runs)
    b = pd.read_csv(sw.folder / "batches.csv")
    assert b.groupby("run_id").size().tolist() == [cfg.steps] * 2
    assert pd.read_csv(sw.folder / "summary.csv")["gpu"].tolist() == [0, 1]


def test_shards_spread_each_mechanisms_lengths_and_keep_seeds_whole():
    scaling = plan(config.get_preset("scaling"))
    for k in (1, 2, 3):
        shard = select_shard(scaling, (k, 3))
        lengths = {a: sorted(r["seq_len"] for r in shard if r["attention"] == a) for a in config.get_preset("scaling").attention_list()}
        assert all(len(t) == 2 for t in lengths.values())   # every mechanism, 2 of its 6 lengths
    quality = plan(config.get_preset("quality"))
    for k in (1, 2, 3):
        assert {r["seed"] for r in select_shard(quality, (k, 3))} == {k - 1}
