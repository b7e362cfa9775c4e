"""One background thread that samples slow-moving gauges into a time series.

The thread calls `read()` every `interval_s` seconds and stores (t, values) with t from
time.perf_counter (monotonic, the same clock the training loop's step windows use). A step then
asks for the samples inside its own [t0, t1] window; a step shorter than the interval may hold
none, and then gets the sample nearest to the window's midpoint, flagged as a fallback, never a
made-up 0 (the optimum-benchmark trackers do the same kind of windowed polling).

Cost: the thread wakes 1/interval_s times a second and runs only `read()` (NVML calls through
ctypes release the GIL; psutil reads /proc), so at 50 ms it takes well under 1% of one core.
It never touches torch.cuda: CUDA calls from a second thread would serialise with the training
loop's own.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from typing import Callable

NAN = float("nan")


class Sampler:
    def __init__(self, read: Callable[[], tuple], fields: tuple[str, ...], interval_s: float = 0.05):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.read = read
        self.fields = tuple(fields)
        self.interval_s = float(interval_s)
        self._times: list[float] = []      # perf_counter seconds, ascending
        self._values: list[tuple] = []     # one tuple per time, in `fields` order
        self._lock = threading.Lock()      # appends vs window reads from the training thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []        # first few exceptions that escaped read()

    # -- thread ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (again after stop(): the series keeps growing)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5 * self.interval_s + 1.0)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            self.sample_once()
            # Schedule on a fixed grid so slow reads do not make the interval drift.
            next_t += self.interval_s
            delay = next_t - time.perf_counter()
            if delay < 0:  # fell behind (a read took longer than the interval): skip ahead
                next_t = time.perf_counter()
                delay = 0.0
            self._stop.wait(delay)

    def sample_once(self) -> None:
        t = time.perf_counter()
        try:
            values = tuple(self.read())
        except Exception as e:  # a reader bug must not kill the thread or the run
            if len(self.errors) < 5:
                self.errors.append(f"{type(e).__name__}: {e}")
            values = (NAN,) * len(self.fields)
        with self._lock:
            self._times.append(t)
            self._values.append(values)

    # -- queries --------------------------------------------------------------------------
    def window(self, t0: float, t1: float) -> tuple[list[tuple], bool]:
        """Samples with t0 <= t <= t1, or ([nearest], True) when there are none, or ([], False)."""
        with self._lock:
            lo = bisect.bisect_left(self._times, t0)
            hi = bisect.bisect_right(self._times, t1)
            if hi > lo:
                return self._values[lo:hi], False
            if not self._times:
                return [], False
            mid = 0.5 * (t0 + t1)
            # lo == hi: the candidates are the last sample before t0 and the first after t1.
            cands = [i for i in (lo - 1, lo) if 0 <= i < len(self._times)]
            best = min(cands, key=lambda i: abs(self._times[i] - mid))
            return [self._values[best]], True

    def series(self) -> tuple[list[float], list[tuple]]:
        with self._lock:
            return list(self._times), list(self._values)

    def __len__(self) -> int:
        return len(self._times)


def mean(values) -> float:
    """Mean of the non-NaN values; NaN if there are none."""
    good = [v for v in values if v == v]
    return math.fsum(good) / len(good) if good else NAN


def maximum(values) -> float:
    good = [v for v in values if v == v]
    return max(good) if good else NAN
