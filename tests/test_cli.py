"""Bad input: a clear message naming the problem, exit code 2, nothing written."""
import json
import subprocess
import sys

import pytest

import config
import main
from conftest import ROOT
from harness.errors import UserError


def _run_main(argv, capsys):
    code = main.main(argv)
    return code, capsys.readouterr().err


BAD = [
    (["--preset", "smok"], "unknown preset 'smok'", "smoke"),
    (["--preset", "smoke", "--model", "gpt3"], "unknown model 'gpt3'", "gpt2"),
    (["--preset", "smoke", "--attention", "sdpaa"], "unknown attention 'sdpaa'", "sdpa"),
    (["--preset", "smoke", "--batch-size", "0"], "batch_size", None),
    (["--preset", "smoke", "--steps", "-1"], "batches_per_epoch", None),
    (["--preset", "smoke", "--epochs", "0"], "epochs", None),
    (["--preset", "smoke", "--seq-len", "1"], "seq_lens", None),
    (["--preset", "smoke", "--seq-len", "abc"], "integers", None),
    (["--preset", "fast_test", "--init", "pretrained", "--seq-len", "2048"], "1024 positions", None),
    (["--preset", "smoke", "--model", "GPT2"], "unknown model 'GPT2'", "gpt2"),
    (["--preset", "smoke", "--init", "pretrained"], "which --offline forbids", None),
    (["--preset", "smoke", "--dataset", "allenai/other-dataset"], "is a hub id", None),
    (["--preset", "smoke", "--attention", ""], "an empty name", None),
    (["--preset", "smoke", "--attention", "sdpa,,linear"], "an empty name", None),
    (["--preset", "smoke", "--attention", "sdpa,sdpa"], "sdpa named twice", None),
    (["--preset", "smoke", "--device", "cuda"], "sees no CUDA GPU", None),
    (["--preset", "smoke", "--device", "cuda:1"], "sees no CUDA GPU", None),
    (["--preset", "smoke", "--warmup", "4"], "warmup_steps", None),
    (["--preset", "smoke", "--device", "tpu"], "unknown device", None),
    (["--preset", "smoke", "--dtype", "bf16"], "dtype bf16 is for GPUs", None),
    (["--preset", "smoke", "--precompile", "many"], "--precompile", None),
    (["--preset", "smoke", "--precompile", "-2"], "precompile must be", None),
]


@pytest.mark.parametrize("argv,message,suggestion", BAD)
def test_bad_input_exit_2_and_nothing_written(argv, message, suggestion, tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "no GPU" cases also on a GPU host
    out = tmp_path / "results"
    code, err = _run_main(argv + ["--out", str(out)], capsys)
    assert code == 2
    assert message in err
    if suggestion:
        assert f"Did you mean '{suggestion}'" in err
    assert not out.exists() or not any(out.iterdir())


def test_empty_and_missing_dataset(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": []}) + "\n" + json.dumps({"id": 3}) + "\n")
    for path in (empty, bad, tmp_path / "missing.jsonl"):
        out = tmp_path / f"out_{path.stem}"
        code, err = _run_main(["--preset", "smoke", "--dataset", str(path), "--out", str(out)], capsys)
        assert code == 2, err
        assert path.name in err
        assert not out.exists() or not any(out.iterdir())


def test_unwritable_results_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the results folder should be
    code, err = _run_main(["--preset", "smoke", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and "not writable" in err


def test_drive_not_mounted(capsys):
    code, err = _run_main(["--preset", "smoke", "--out", "/content/drive/MyDrive/ab"], capsys)
    assert code == 2 and "Drive is not mounted" in err


def test_resume_missing_folder(tmp_path, capsys):
    code, err = _run_main(["--resume", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no manifest.json" in err


def test_real_process_exit_code():
    p = subprocess.run([sys.executable, "main.py", "--preset", "nope"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    assert "unknown preset 'nope'" in p.stderr and "Traceback" not in p.stderr


def test_cli_overrides_map_to_config():
    args = main.parser().parse_args(["--preset", "smoke", "--attention", "single", "--seq-len", "64,128",
                                     "--steps", "3", "--epochs", "1", "--warmup", "1", "--batch-size", "4"])
    cfg = main.config_from_args(args)
    assert cfg.attentions == ["baseline", "flash"]
    assert cfg.seq_lens == [64, 128] and cfg.batch_size == 4
    assert cfg.steps == 3 and cfg.measured_steps == 2


def test_full_test_preset_measures_more_than_fast_test():
    fast, full = config.get_preset("fast_test"), config.get_preset("full_test")
    assert full.measured_steps > fast.measured_steps >= 1
    for name in config.PRESETS:
        config.validate(config.get_preset(name))


def test_validation_names_the_field():
    cfg = config.get_preset("smoke")
    cfg.lr = 0
    with pytest.raises(UserError, match="lr"):
        config.validate(cfg)


@pytest.mark.parametrize("command", ["show", "compare", "merge", None])
def test_every_subcommand_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main.main(([command] if command else []) + ["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and f"usage: main.py{' ' + command if command else ''}" in out
    if command is None:  # the top-level help names the subcommands, --resume and the exit codes
        assert all(word in out for word in ("show", "compare", "merge", "--resume", "Exit codes", "143"))


def test_show_piped_into_a_closed_reader_ends_quietly(tmp_path):
    """`main.py show | head -1`: no BrokenPipeError traceback."""
    from fake_results import make_results
    make_results(tmp_path / "r")
    p = subprocess.run(f"{sys.executable} main.py show --root {tmp_path / 'r'} | head -1", shell=True, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


@pytest.mark.parametrize("gpu,memory,preset", [
    ("Tesla T4", 15.8, "t4"), ("NVIDIA L4", 23.7, "l4"), ("NVIDIA A100-SXM4-40GB", 42.5, "a100"),
    ("NVIDIA H100 80GB HBM3", 85.0, "h100"), ("NVIDIA H200", 150.8, "h100"), ("NVIDIA L40S", 48.0, "a100"),
    ("Some GPU", 12.0, "t4"), (None, None, "smoke")])
def test_each_gpu_tier_gets_its_preset(gpu, memory, preset):
    assert config.gpu_preset(gpu, memory) == preset
    config.validate(config.get_preset(preset))
