"""Peak dense 16-bit tensor-core throughput per GPU, the denominator of MFU.

Numbers are NVIDIA's own, DENSE (datasheets print "X | 2X*" where * = with 2:4 structured
sparsity; training never uses that, so the table holds X). BF16 where the GPU has BF16 tensor
cores, FP16 for Turing/Volta (T4, V100: no BF16 in hardware), with FP32 accumulate (what
torch's bf16/fp16 matmuls use; GeForce cards run FP16-accumulate at twice the rate).

Sources:
  T4, V100 (SXM2/PCIe/S), A100, A10, A30, A40, L4, L40, L40S, H100 (SXM/PCIe/NVL), H200 (SXM/NVL),
  GH200, RTX A6000, RTX 6000 Ada: NVIDIA product datasheets (nvidia.com/en-us/data-center/...,
  "Tensor Core" rows). RTX 3090: NVIDIA Ampere GA102 whitepaper, "Peak BF16 Tensor TFLOPS with
  FP32 Accumulate". RTX 4090: NVIDIA Ada Lovelace (AD102) whitepaper, same row.
Not in the table, on purpose: A10G (an AWS-only part with no NVIDIA datasheet; measured bf16
matmuls top out near 70 TFLOP/s, far from the A10's 125, so borrowing the A10 figure would be
wrong). An unknown name gives NaN with the reason, never a guess.
"""
from __future__ import annotations

import re

NAN = float("nan")
DATASHEET = "NVIDIA datasheet, dense (sparsity figure / 2)"

# (pattern searched in torch.cuda.get_device_name(), label, TFLOP/s, source). First match wins,
# so the more specific names come first (H100 PCIe before H100, A10G before A10, ...).
PEAKS: list[tuple[str, str, float, str]] = [
    (r"\bA10G\b", "A10G", NAN, "no NVIDIA datasheet for the AWS A10G; the A10's 125 does not apply"),
    (r"\bGH200\b", "GH200", 989.0, DATASHEET),
    (r"\bH200\b.*\bNVL\b", "H200 NVL", 835.0, DATASHEET),
    (r"\bH200\b", "H200 SXM", 989.0, DATASHEET),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756.0, DATASHEET),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", 835.0, DATASHEET),
    (r"\bH100\b", "H100 SXM", 989.0, DATASHEET + "; an H100 without PCIe/NVL in its name is SXM (HBM3)"),
    (r"\bA100\b", "A100", 312.0, DATASHEET + " (SXM and PCIe alike)"),
    (r"\bA10\b", "A10", 125.0, DATASHEET),
    (r"\bA30\b", "A30", 165.0, DATASHEET),
    (r"\bA40\b", "A40", 149.7, DATASHEET),
    (r"\bL40S\b", "L40S", 362.05, DATASHEET),
    (r"\bL40\b", "L40", 181.05, DATASHEET),
    (r"\bL4\b", "L4", 121.0, DATASHEET),
    (r"\bT4\b", "T4", 65.0, "NVIDIA T4 datasheet, FP16/FP32 mixed precision (no BF16 on Turing)"),
    (r"\bV100S\b", "V100S PCIe", 130.0, "NVIDIA V100 datasheet, tensor FP16 (no BF16 on Volta)"),
    (r"\bV100\b.*\bSXM", "V100 SXM2", 125.0, "NVIDIA V100 datasheet, tensor FP16 (no BF16 on Volta)"),
    (r"\bV100\b.*\bPCIE\b", "V100 PCIe", 112.0, "NVIDIA V100 datasheet, tensor FP16 (no BF16 on Volta)"),
    (r"\bRTX A6000\b", "RTX A6000", 154.8, DATASHEET),
    (r"\bRTX 6000 Ada\b", "RTX 6000 Ada", 364.25, DATASHEET),
    (r"\bRTX 4090\b(?! D)", "RTX 4090", 165.2, "NVIDIA Ada whitepaper, BF16 with FP32 accumulate"),
    (r"\bRTX 3090\b(?! Ti)", "RTX 3090", 71.0, "NVIDIA GA102 whitepaper, BF16 with FP32 accumulate"),
]


FP16_ONLY = ("T4", "V100")  # no BF16 tensor cores: bf16 runs far below the table's figure


def lookup(device_name: str | None) -> tuple[float, str]:
    """(peak dense 16-bit TFLOP/s, source) for a CUDA device name; (NaN, why) if unknown."""
    if not device_name:
        return NAN, "no GPU name (not a CUDA device)"
    for pattern, label, tflops, source in PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return tflops, f"{label}: {source}"
    return NAN, f"'{device_name}' is not in metrics/peak.py's table; add its dense datasheet figure"


def peak_info(device, dtype=None) -> tuple[float, str]:
    """(TFLOP/s, source or reason) for a torch.device or a device name, training in `dtype`.

    Only 16-bit training has a peak here: float32 (or TF32) and bf16 on a GPU without BF16
    tensor cores give NaN with the reason rather than a denominator that does not apply.
    """
    name = device if isinstance(device, str) and not device.startswith(("cuda", "cpu", "mps")) else None
    if name is None:
        if getattr(device, "type", str(device).split(":")[0]) != "cuda":
            return NAN, f"device is {device}: MFU is defined against a GPU's tensor-core peak"
        try:
            import torch

            name = torch.cuda.get_device_name(device)
        except Exception as e:
            return NAN, f"could not read the GPU name: {type(e).__name__}: {e}"
    value, source = lookup(name)
    kind = str(dtype).replace("torch.", "") if dtype is not None else None
    if kind not in (None, "bfloat16", "float16"):
        return NAN, f"{kind} training: the table holds 16-bit tensor-core peaks only"
    if kind == "bfloat16" and source.split(":")[0].startswith(FP16_ONLY):
        return NAN, f"{source.split(':')[0]} has no BF16 tensor cores; train in float16 for an MFU"
    return value, source


def peak_tflops(device, dtype=None) -> float:
    """Peak dense TFLOP/s for `device` (torch.device or name) in `dtype`; NaN if unknown.
    The reason for a NaN is peak_info(device, dtype)[1]."""
    return peak_info(device, dtype)[0]
