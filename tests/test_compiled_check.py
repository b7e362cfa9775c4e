"""benchmarks/compiled_check.py: a run trained compiled step by step, its no-grad graph against eager.
On CUDA it is also lsh's regression test for the in-model fault: flex's backward kernel read out of
bounds inside a compiled gpt2 (an illegal memory access at the first step under
CUDA_LAUNCH_BLOCKING=1, on the H200), which kernel-level tests at small shapes did not catch."""
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import compiled_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compiled_check_trains_each_step_and_compares_the_no_grad_graph(capsys):
    rc = compiled_check.main(["--attention", "sliding_window", "--model", "tiny", "--seq-len", "64",
                              "--batch-size", "2", "--steps", "2", "--params", "window=8"])
    out = capsys.readouterr().out
    assert rc == 0 and "step 2/2: loss" in out and out.rstrip().endswith("ok")
    diff = float(out.split("max |compiled - eager| logits = ")[1].split()[0])
    assert diff < 1e-3  # fp32 on the CPU: compiled equals eager to rounding


@pytest.mark.skipif(torch.cuda.is_available(), reason="flash runs on a GPU: no failure to report there")
def test_compiled_check_reports_a_failure_with_its_phase_and_traceback(capsys):
    rc = compiled_check.main(["--attention", "flash", "--model", "tiny", "--seq-len", "64",
                              "--batch-size", "2", "--steps", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAILED in prepare:" in out and "Traceback" in out and "flash" in out
    with pytest.raises(ValueError, match="lsh has no parameter 'window'"):
        compiled_check.main(["--attention", "lsh", "--params", "window=3"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the H200)")
def test_lsh_trains_compiled_in_gpt2_under_blocking_launches_on_cuda():
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "benchmarks/compiled_check.py", "--attention", "lsh", "--layers", "2",
                           "--batch-size", "32", "--seq-len", "1024", "--steps", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "step 2/2: loss" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
