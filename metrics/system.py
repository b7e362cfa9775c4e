"""This process's CPU time, resident memory and disk bytes (psutil + the OS's own counters),
and the model's size in memory.

  cpu_percent    100 * (CPU seconds of this process, all threads) / (wall seconds of the step):
                 percent of ONE core, so it exceeds 100 when torch's intra-op threads run in
                 parallel. CPU seconds come from time.process_time() (CLOCK_PROCESS_CPUTIME_ID,
                 ns resolution); psutil's cpu_times tick in 10 ms jiffies, too coarse for a step.
  memory_gb      resident set size (psutil memory_info().rss) / 1e9.
  disk_*_mb      psutil.Process().io_counters() read_bytes / write_bytes deltas / 1e6: bytes this
                 process made the storage layer read or write (Linux: /proc/<pid>/io, counted
                 when pages are dirtied or read from the device; page-cache hits are not reads).
                 Where a platform has no per-process counter (macOS), the system-wide
                 psutil.disk_io_counters() are used instead, and `disk_source` says so: those
                 include every other process on the machine.
  model_size_mb  parameters + buffers as stored: sum(numel * element_size) / 1e6.
"""
from __future__ import annotations


import psutil

NAN = float("nan")
PROCESS_SOURCE = "process io_counters"
SYSTEM_SOURCE = "system-wide (fallback)"


def _err(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


class ProcessReader:
    """Point readings of this process; each returns NaN (reason in `reasons`) instead of raising."""

    def __init__(self, force_system_disk: bool = False):
        self.proc = psutil.Process()
        self.reasons: dict[str, str] = {}
        self.disk_source = self._pick_disk_source(force_system_disk)

    def _pick_disk_source(self, force_system: bool) -> str | None:
        if not force_system:
            try:
                self.proc.io_counters()
                return PROCESS_SOURCE
            except Exception as e:  # AttributeError on macOS, AccessDenied in some sandboxes
                why = f"per-process io_counters unavailable ({_err(e)})"
        else:
            why = "forced"
        try:
            if psutil.disk_io_counters() is not None:
                return SYSTEM_SOURCE
            why += "; psutil.disk_io_counters() returned None (no disks visible)"
        except Exception as e:
            why += f"; system-wide counters failed ({_err(e)})"
        for col in ("disk_read_mb", "disk_write_mb"):
            self.reasons[col] = why
        return None

    def rss_bytes(self) -> float:
        try:
            return float(self.proc.memory_info().rss)
        except Exception as e:
            self.reasons.setdefault("memory_gb", f"memory_info failed: {_err(e)}")
            return NAN

    def disk_bytes(self) -> tuple[float, float]:
        """(read_bytes, write_bytes) cumulative, from `disk_source`."""
        try:
            if self.disk_source == PROCESS_SOURCE:
                c = self.proc.io_counters()
            elif self.disk_source == SYSTEM_SOURCE:
                c = psutil.disk_io_counters()
            else:
                return NAN, NAN
            return float(c.read_bytes), float(c.write_bytes)
        except Exception as e:
            for col in ("disk_read_mb", "disk_write_mb"):
                self.reasons.setdefault(col, f"io counters failed: {_err(e)}")
            return NAN, NAN

    def counters(self, rss: bool = True) -> tuple[float, float, float]:
        """(rss_bytes, read_bytes, write_bytes) now; the step's clocks are read by the caller.
        rss=False skips the RSS read (NaN) where only the end-of-step value is used."""
        read_b, write_b = self.disk_bytes()
        return (self.rss_bytes() if rss else NAN), read_b, write_b


def step_values(wall_s: float, cpu_s: float, before: tuple, after: tuple) -> dict:
    """Per-step columns from the step's wall and CPU seconds and two counters() readings."""
    return {
        "cpu_percent": 100.0 * cpu_s / wall_s if wall_s > 0 else NAN,
        "memory_gb": after[0] / 1e9,
        "disk_read_mb": (after[1] - before[1]) / 1e6,
        "disk_write_mb": (after[2] - before[2]) / 1e6,
    }


class SeriesReader:
    """The sampler thread's own psutil view (a separate Process: cpu_percent keeps state)."""

    def __init__(self):
        self.proc = psutil.Process()
        try:
            self.proc.cpu_percent(None)  # first call only primes the counter
        except Exception:
            pass

    def read(self) -> tuple[float, float]:
        """(cpu_percent since the previous sample, percent of one core; rss GB)."""
        try:
            cpu = float(self.proc.cpu_percent(None))
        except Exception:
            cpu = NAN
        try:
            rss = self.proc.memory_info().rss / 1e9
        except Exception:
            rss = NAN
        return cpu, rss


def model_size_mb(model) -> float:
    """Parameters + buffers as stored: sum(numel * element_size) / 1e6. Tied tensors once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total / 1e6


def in_family(pid: int, roots) -> bool:
    """Whether process `pid` is one of `roots` or descends from one (psutil's parent chain): a
    run's own Inductor compile workers, or a paused sibling run's, each hold a CUDA context of
    their own, and are not another user's work on the GPU. A pid psutil cannot see (gone, or in
    another container) is not in the family."""
    roots = set(roots)
    if pid in roots:
        return True
    try:
        return any(p.pid in roots for p in psutil.Process(pid).parents())
    except (psutil.Error, OSError):
        return False
