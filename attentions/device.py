"""The CUDA compute capability every mechanism decides by, read once per device.

AB_EMULATE_CAPABILITY=7.5 makes every choice that depends on it (flex's pre-Ampere chunked path,
lsh's matmul path, flash unavailable, fp16 with the gradient scaler for dtype auto) as on a T4,
on any GPU: it emulates a T4's code paths, not its speed. Each run records it.
"""
import os

import torch

_CAPABILITY: dict = {}  # a plain dict: torch.compile traces a lookup as a constant


def _parse(text: str) -> tuple[int, int] | None:
    text = text.strip()
    if not text:
        return None
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


# Read once, at import (a run's process has its environment by then): dynamo traces a constant.
EMULATED = _parse(os.environ.get("AB_EMULATE_CAPABILITY", ""))


def emulated() -> tuple[int, int] | None:
    return EMULATED


def capability(device) -> tuple[int, int]:
    """(major, minor) of a CUDA device, or the emulated one."""
    fake = emulated()
    if fake is not None:
        return fake
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABILITY:
        _CAPABILITY[index] = tuple(torch.cuda.get_device_capability(index))
    return _CAPABILITY[index]
