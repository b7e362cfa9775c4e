"""The environment recorded with every result: code commit, Python, torch, transformers, CUDA,
driver, GPU, power limit, CPU, memory; and the short device label a results folder is named by."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """HEAD, and whether the tracked files differ from it: a copied working tree (a remote GPU
    machine) can carry code that HEAD there does not have, and the manifest must not pretend."""
    try:
        p = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True, timeout=5)
        if p.returncode != 0 or not p.stdout.strip():
            return "unknown (no git history)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return p.stdout.strip() + (" + uncommitted changes" if dirty.returncode == 0 and dirty.stdout.strip()
                                   else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """Python, torch, transformers, CUDA, driver, GPU, power limit, CPU, memory: recorded with results."""
    import psutil
    import torch
    import transformers
    env = dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
               platform=platform.platform(), hostname=platform.node(), cpu=platform.processor() or platform.machine(),
               cpu_count=os.cpu_count(), memory_gb=psutil.virtual_memory().total / 1e9,
               cuda=torch.version.cuda, gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
               gpu=None, driver=None, power_limit_w=None)
    if env["gpu_count"]:
        # NVML, through the metrics' own reader: torch.cuda.get_device_name would open a CUDA
        # context in this parent process, holding GPU memory for the whole sweep.
        from metrics.nvml import NvmlReader
        nvml = NvmlReader(0)
        if nvml.available:
            env.update(gpu=nvml.name, driver=nvml.driver, power_limit_w=nvml.power_limit_w)
        else:
            env.update(nvml_error=nvml.reason, gpu=torch.cuda.get_device_name(0))
    return env


def device_label(env: dict) -> str:
    if not env.get("gpu"):
        return "cpu"
    name = env["gpu"].lower().replace("nvidia", "").strip()
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").split("-")[0] or "gpu"
