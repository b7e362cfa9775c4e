"""The notebook's one import (`from harness.report import notebook as report`): the machine's
description and which attentions it can run (cell 2), a previous result (cell 3, show), main.py
run as a child process with its output streamed (cell 4), and compare (cell 5).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from harness.errors import UserError
from harness.report.compare import compare  # noqa: F401  (cell 5)
from harness.report.display import display  # noqa: F401
from harness.report.results import list_results
from harness.report.show import show  # noqa: F401  (cell 3)
from harness.sweep.environment import environment


def system_info(root="results", verbose: bool = True) -> dict:
    """What this machine is and which of the nine attentions it can run, and why not (notebook cell 2)."""
    import shutil

    import torch

    from attentions import ORDER, get, names
    info = environment()
    dev = torch.device("cuda" if info["gpu_count"] else "cpu")
    if info["gpu_count"]:
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu_memory_gb": round(props.total_memory / 1e9, 1),
                 "compute_capability": f"{props.major}.{props.minor}"}
    info["memory_gb"] = round(info["memory_gb"], 1)
    disk = next(p for p in [Path(root).resolve(), *Path(root).resolve().parents] if p.exists())
    info["disk_free_gb"] = round(shutil.disk_usage(disk).free / 1e9, 1)
    info["attentions"] = {}
    for name in ORDER + [n for n in names() if n not in ORDER]:
        try:
            spec = get(name)
            why = spec.unavailable_reason(dev)
            info["attentions"][name] = f"no: {why}" if why else f"yes, kernel {spec.kernel(dev, spec.params)}"
        except UserError:
            info["attentions"][name] = "no: not in this checkout of attentions/"
    if verbose:
        for k, v in info.items():
            if k != "attentions":
                print(f"{k:>20}: {'none' if v is None else v}")
        print(f"\nattentions on this machine ({dev}):")
        for name, can in info["attentions"].items():
            print(f"{name:>20}: {can}")
    return info


def _stream(proc, text) -> None:
    while chunk := proc.stdout.read1(4096):
        sys.stdout.write(text.decode(chunk))
        sys.stdout.flush()


def latest_unfinished(root) -> str | None:
    """The newest results folder whose sweep never finished (a disconnect, Ctrl-C), or None."""
    import json
    try:
        folders = list_results(root)
    except Exception:  # no results folder yet
        return None
    for folder in folders:
        try:
            if json.loads((Path(folder) / "manifest.json").read_text()).get("finished") is None:
                return str(folder)
        except (OSError, ValueError):
            continue
    return None


def run_main(*args) -> None:
    """Run `python main.py ARGS` in a child process (the notebook's cell 4) and stream its output as it
    comes, bytes as they are, so tqdm's carriage-return redraws update one line in a notebook."""
    import codecs
    import subprocess
    here = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-u", str(here / "main.py"), *map(str, args)]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=here, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")   # a chunk may split a character
    try:
        _stream(proc, text)
    except KeyboardInterrupt:  # the notebook's stop button: main.py saves what finished and says
        proc.send_signal(signal.SIGINT)  # how to resume; let it print that, then stop the cell
        _stream(proc, text)
        proc.wait()
        raise
    if proc.wait() != 0:
        raise RuntimeError(f"main.py exited with code {proc.returncode}; its message is above")
