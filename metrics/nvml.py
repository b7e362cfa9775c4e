"""GPU board readings from NVML (package nvidia-ml-py, module pynvml).

What is read, and what NVML says about it (NVML API reference, nvmlDevice* queries):
  power     nvmlDeviceGetPowerUsage, mW -> W. On Ampere (except GA100) and newer it is a 1 s
            trailing average, so it smooths steps shorter than ~1 s; the energy counter does not.
  util      nvmlDeviceGetUtilizationRates().gpu, % of the last sample period (1/6 s to 1 s,
            by product) in which at least one kernel ran: a busy fraction, not an SM occupancy.
  memory    nvmlDeviceGetMemoryInfo().used, bytes -> MB (1e6): every process on the device plus
            the driver's reservation, so it is always >= torch's own numbers.
  energy    nvmlDeviceGetTotalEnergyConsumption, mJ since the driver loaded (Volta and newer).
            The counter updates about every 100 ms, so a delta over a shorter window is coarse.

Nothing here raises: a failed init leaves `available` False with `reason`; a failed read returns
NaN and records why in `reasons` (column -> text). A query the GPU does not support (power on
a MIG slice, energy before Volta) is not asked again.
"""
from __future__ import annotations

import os

NAN = float("nan")
FIELDS = ("gpu_power_w", "gpu_util_percent", "gpu_memory_nvml_mb")
GPU_COLUMNS = FIELDS + ("energy_j",)


def torch_device_target(device) -> dict:
    """How to find torch's CUDA `device` in NVML: its UUID, PCI bus id and a fallback index.

    torch numbers devices among CUDA_VISIBLE_DEVICES (and by CUDA_DEVICE_ORDER), NVML numbers
    every device by PCI bus, so index i in torch is not index i in NVML in general; the UUID
    and the PCI bus id name the same board in both. Call from the main thread (uses torch.cuda).
    """
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    target = {"visible_index": index, "index": index, "index_how": "torch index (no CUDA_VISIBLE_DEVICES)"}
    try:
        props = torch.cuda.get_device_properties(index)
        uuid = str(getattr(props, "uuid", "") or "")
        if uuid:
            target["uuid"] = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        if hasattr(props, "pci_bus_id"):
            target["pci_bus_id"] = "%08X:%02X:%02X.0" % (getattr(props, "pci_domain_id", 0),
                                                       props.pci_bus_id, props.pci_device_id)
    except Exception as e:  # keep going with the index fallback
        target["props_error"] = f"{type(e).__name__}: {e}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        entries = [v.strip() for v in visible.split(",") if v.strip()]
        if index < len(entries):
            entry = entries[index]
            if entry.isdigit():
                target["index"] = int(entry)
                target["index_how"] = f"CUDA_VISIBLE_DEVICES entry {index} = {entry}"
            elif entry.startswith(("GPU-", "MIG-")):
                target.setdefault("uuid", entry)
    return target


def _err(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


class NvmlReader:
    """Reads one GPU. `target`: an NVML index (int) or a dict from torch_device_target."""

    def __init__(self, target, module=None):
        self.available = False
        self.reason: str | None = None
        self.reasons: dict[str, str] = {}
        self.handle = None
        self.how = ""
        self.index = None
        self.name = self.driver = None
        self.power_limit_w = NAN
        self._unsupported: set[str] = set()
        try:
            if module is None:
                import pynvml as module  # nvidia-ml-py; imported here so CPU-only installs work
            self.nv = module
            module.nvmlInit()
        except ImportError:
            self._fail("pynvml not installed (pip install nvidia-ml-py)")
            return
        except Exception as e:
            self._fail(f"NVML init failed ({_err(e)}): no NVIDIA driver/library on this machine")
            return
        try:
            self.handle, self.how = self._find(target)
        except Exception as e:
            self._fail(f"NVML could not find the GPU {target!r}: {_err(e)}")
            return
        self.available = True
        self._describe()

    def _fail(self, reason: str) -> None:
        self.reason = reason
        for col in GPU_COLUMNS:
            self.reasons.setdefault(col, reason)

    def _find(self, target):
        nv = self.nv
        if isinstance(target, int):
            target = {"index": target, "index_how": "given NVML index"}
        if target.get("uuid"):
            try:
                return nv.nvmlDeviceGetHandleByUUID(target["uuid"]), f"uuid {target['uuid']}"
            except Exception:
                pass
        if target.get("pci_bus_id"):
            try:
                return nv.nvmlDeviceGetHandleByPciBusId(target["pci_bus_id"]), f"pci {target['pci_bus_id']}"
            except Exception:
                pass
        index = int(target["index"])
        return nv.nvmlDeviceGetHandleByIndex(index), f"index {index} ({target.get('index_how', '')})"

    def _describe(self) -> None:
        nv, h = self.nv, self.handle
        for attr, call in (("name", lambda: nv.nvmlDeviceGetName(h)),
                           ("driver", lambda: nv.nvmlSystemGetDriverVersion()),
                           ("index", lambda: nv.nvmlDeviceGetIndex(h))):
            try:
                value = call()
                setattr(self, attr, value.decode() if isinstance(value, bytes) else value)
            except Exception:
                pass
        try:  # the limit the board enforces now (may be below the default TDP)
            self.power_limit_w = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
        except Exception:
            pass

    def _query(self, column: str, call) -> float:
        """call() -> float; NaN (with the reason kept) on any error."""
        if not self.available or column in self._unsupported:
            return NAN
        try:
            return float(call())
        except Exception as e:
            not_supported = getattr(self.nv, "NVMLError_NotSupported", None)
            if not_supported is not None and isinstance(e, not_supported):
                self._unsupported.add(column)  # permanent: do not pay for it every sample
            self.reasons.setdefault(column, f"NVML read failed: {_err(e)}")
            return NAN

    def read(self) -> tuple[float, float, float]:
        """(gpu_power_w, gpu_util_percent, gpu_memory_nvml_mb), NaN where unreadable."""
        nv, h = getattr(self, "nv", None), self.handle
        return (
            self._query("gpu_power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
            self._query("gpu_util_percent", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
            self._query("gpu_memory_nvml_mb", lambda: nv.nvmlDeviceGetMemoryInfo(h).used / 1e6),
        )

    def energy_mj(self) -> float:
        """Cumulative energy counter in mJ (NaN if unsupported)."""
        nv, h = getattr(self, "nv", None), self.handle
        return self._query("energy_j", lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h))

    def memory_total_mb(self) -> float:
        """The board's memory, MB (NaN if unreadable)."""
        nv, h = getattr(self, "nv", None), self.handle
        return self._query("memory_total_mb", lambda: nv.nvmlDeviceGetMemoryInfo(h).total / 1e6)

    def other_processes(self) -> list[dict] | None:
        """Processes other than this one using the GPU (compute and graphics), as optimum-benchmark's
        device-isolation check sees them: [{pid, used_mb}], or None where NVML cannot list them.
        A process in another container shows with its pid there, or none at all."""
        if not self.available:
            return None
        import os
        found = {}
        for call in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                for proc in getattr(self.nv, call)(self.handle):
                    used = getattr(proc, "usedGpuMemory", None)
                    found[proc.pid] = dict(pid=proc.pid, used_mb=used / 1e6 if isinstance(used, int) else NAN)
            except Exception:
                return None
        return [v for pid, v in sorted(found.items()) if pid != os.getpid()]

    def info(self) -> dict:
        return {"nvml_available": self.available, "nvml_reason": self.reason,
                "nvml_index": self.index, "nvml_match": self.how, "gpu_name": self.name,
                "driver_version": self.driver, "power_limit_w": self.power_limit_w}
