"""Meter: the one object train.py uses to measure a training step (optimum-benchmark style:
a measurement is a context manager around the work).

    meter = Meter(device, interval_s=0.05); meter.start()
    with meter.step() as row:      # host counters filled when the block exits (even if it raises);
                                   # the sampled GPU columns when the meter stops
        ...; torch.cuda.synchronize()   # the caller syncs, so the window holds the GPU work
    meter.stop()

Per step (exact deltas at the window's edges): cpu_percent, memory_gb, disk_read_mb,
disk_write_mb (metrics/system.py); gpu_memory_mb / gpu_memory_reserved_mb = torch's peak
allocated / reserved bytes since the step began / 1e6; energy_j = NVML energy counter delta.
Per step (from the sampler's series inside the window, metrics/sampler.py): gpu_power_w and
gpu_util_percent = mean of the samples, gpu_memory_nvml_mb = max of the samples.
Quality columns: window_s (the step's wall seconds as the meter saw it), samples_in_window,
sample_fallback (no sample inside; the nearest one used), energy_flag ("ok", "short_window":
window < 100 ms, the counter's update period, so the delta is coarse, but deltas of
consecutive steps still sum to the exact total; "nan": no counter).
Anything unmeasurable is NaN and `info()["nan_reasons"][column]` says why.
"""
from __future__ import annotations

import bisect
import contextlib
import os
import statistics
import time

from metrics.nvml import FIELDS as NVML_FIELDS, GPU_COLUMNS, NvmlReader, torch_device_target
from metrics.sampler import Sampler, maximum, mean
from metrics.system import ProcessReader, SeriesReader, in_family, step_values

NAN = float("nan")
ENERGY_MIN_WINDOW_S = 0.1  # NVML's energy counter updates about every 100 ms
SERIES_FIELDS = NVML_FIELDS + ("energy_counter_j", "cpu_percent", "memory_gb")
TORCH_GPU_COLUMNS = ("gpu_memory_mb", "gpu_memory_reserved_mb")
# What a step's row holds for the sampled columns until stop() completes them.
PENDING = {"gpu_power_w": NAN, "gpu_util_percent": NAN, "gpu_memory_nvml_mb": NAN, "energy_j": NAN,
           "samples_in_window": 0, "sample_fallback": False, "energy_flag": "nan"}
ROW_COLUMNS = ("cpu_percent", "memory_gb", "disk_read_mb", "disk_write_mb", "window_s") + \
    TORCH_GPU_COLUMNS + GPU_COLUMNS


class Meter:
    def __init__(self, device, interval_s: float = 0.05, nvml_index: int | None = None,
                 idle_s: float = 1.0, force_system_disk: bool = False, siblings=()):
        """device: the torch.device trained on. nvml_index: measure this NVML GPU instead of
        the one behind `device` (tests, or a CPU run that still wants the board's readings).
        idle_s: seconds of power samples for idle_power_w at start(). siblings: pids of the
        sweep's own runs, paused while this one is measured: not counted as other processes."""
        import torch

        self.siblings = set(siblings)

        self.device = torch.device(device)
        self.interval_s = float(interval_s)
        self.idle_s = float(idle_s)
        # torch.cuda's memory stats read 0, not an error, when CUDA is absent: guard here.
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.nan_reasons: dict[str, str] = {}
        self.process = ProcessReader(force_system_disk)
        self.nvml = self._open_nvml(nvml_index)
        self.series_reader = SeriesReader()
        self.sampler = Sampler(self._read_series, SERIES_FIELDS, self.interval_s)
        self.idle_power_w = NAN
        self.t_start: float | None = None
        self._windows: list = []  # (row, t0, t1) of steps whose sampled columns stop() completes
        if not self.cuda:
            why = "no CUDA in this torch/machine" if self.device.type == "cuda" else "no CUDA memory"
            for col in TORCH_GPU_COLUMNS:
                self.nan_reasons[col] = f"device is {self.device}: {why}"

    def _open_nvml(self, nvml_index) -> NvmlReader | None:
        if nvml_index is not None:
            return NvmlReader(int(nvml_index))
        if self.device.type != "cuda":
            for col in GPU_COLUMNS:
                self.nan_reasons[col] = f"device is {self.device}: no GPU to measure"
            return None
        try:
            return NvmlReader(torch_device_target(self.device))
        except Exception as e:  # NvmlReader never raises; torch_device_target might
            for col in GPU_COLUMNS:
                self.nan_reasons[col] = f"could not locate the GPU: {type(e).__name__}: {e}"
            return None

    def _read_series(self) -> tuple:
        # Every NVML call happens here, on the sampler thread: NVML reads can take milliseconds
        # (a driver ioctl), which the training thread must never wait for.
        gpu = self.nvml.read() if self.nvml is not None else (NAN, NAN, NAN)
        return gpu + (self.energy_counter_j(),) + self.series_reader.read()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Meter":
        """Measure idle power once (if NVML works), then start the sampler thread.
        Calling start() again after stop() resumes sampling (the series keeps growing)."""
        if self.t_start is None:
            self.t_start = time.perf_counter()
            self.idle_power_w = self._measure_idle()
            self.others_at_start = self._others()
        self.sampler.start()
        return self

    def _others(self) -> list[dict] | None:
        """Processes on the GPU now that are neither this run nor the sweep's other runs, nor any
        process of theirs (compile workers); None where NVML cannot list them."""
        found = self.nvml.other_processes() if self.nvml is not None else None
        if found is None:
            return None
        family = self.siblings | {os.getpid()}
        return [p for p in found if not in_family(p["pid"], family)]

    def _measure_idle(self) -> float:
        if self.nvml is None or not self.nvml.available or self.idle_s <= 0:
            return NAN
        watts, end = [], time.perf_counter() + self.idle_s
        while time.perf_counter() < end:
            watts.append(self.nvml.read()[0])
            time.sleep(self.interval_s)
        good = [w for w in watts if w == w]
        return statistics.median(good) if good else NAN

    def stop(self) -> None:
        """Stop sampling, take one last sample, and complete every step's sampled columns: a
        step's window is only fully covered by samples taken after it ended."""
        self.sampler.stop()
        self.others_at_stop = self._others()
        self.sampler.sample_once()
        self._sample_after_counter_update()
        counter = self._counter_points()
        for row, t0, t1 in self._windows:
            row.update(self._sampled(t0, t1, counter))
        self._windows.clear()

    def energy_counter_j(self) -> float:
        """NVML's cumulative energy counter now, in J (NaN without one)."""
        return self.nvml.energy_mj() / 1000.0 if self.nvml is not None else NAN

    # -- one step -------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self):
        row: dict = {}
        reset_ok = self._reset_torch_peak()
        c0 = self.process.counters(rss=False)  # memory_gb is the value at the end
        # Clocks last on entry and first on exit: the window bounds the work tightly. No NVML
        # call here: the sampler thread reads the energy counter, interpolated at stop().
        cpu0, t0 = time.process_time(), time.perf_counter()
        try:
            yield row
        finally:
            t1, cpu1 = time.perf_counter(), time.process_time()
            c1 = self.process.counters()
            try:
                row.update(self._row(t0, t1, cpu1 - cpu0, c0, c1, reset_ok))
                self._windows.append((row, t0, t1))  # sampled columns are completed at stop()
            except Exception as e:  # a metric must never end a run: every column NaN instead
                self.nan_reasons.setdefault("row", f"{type(e).__name__}: {e}")
                row.update({k: NAN for k in ROW_COLUMNS if k not in row},
                           samples_in_window=0, sample_fallback=False, energy_flag="nan")

    def _row(self, t0, t1, cpu_s, c0, c1, reset_ok) -> dict:
        window_s = t1 - t0
        row = step_values(window_s, cpu_s, c0, c1)
        row["window_s"] = window_s
        row.update(self._torch_peaks() if reset_ok else {c: NAN for c in TORCH_GPU_COLUMNS})
        row.update(PENDING)  # the sampled columns are filled in by stop(), off the step's clock
        return row

    def _sampled(self, t0: float, t1: float, counter) -> dict:
        """Columns from the sampler's series: means/max inside the window, energy from the
        cumulative counter interpolated at the window's edges."""
        samples, fallback = self.sampler.window(t0, t1)
        cols = list(zip(*samples)) if samples else [()] * len(SERIES_FIELDS)
        by_field = dict(zip(SERIES_FIELDS, cols))
        energy_j = _counter_at(counter, t1) - _counter_at(counter, t0)
        if energy_j != energy_j:
            flag = "nan"
        else:
            flag = "ok" if t1 - t0 >= ENERGY_MIN_WINDOW_S else "short_window"
        return {"gpu_power_w": mean(by_field["gpu_power_w"]),
                "gpu_util_percent": mean(by_field["gpu_util_percent"]),
                "gpu_memory_nvml_mb": maximum(by_field["gpu_memory_nvml_mb"]),
                "samples_in_window": 0 if fallback else len(samples), "sample_fallback": fallback,
                "energy_j": energy_j, "energy_flag": flag}

    def _sample_after_counter_update(self, limit_s: float = 0.3) -> None:
        """One more sample once the energy counter has moved on from its last value, so the
        counter's last update point lies after the last step (see counter_updates)."""
        last = self.energy_counter_j()
        if last != last:
            return
        end = time.perf_counter() + limit_s
        while time.perf_counter() < end:
            time.sleep(0.005)
            if self.energy_counter_j() != last:
                self.sampler.sample_once()
                return

    def _counter_points(self) -> tuple[list, list]:
        """(times, energy J) of the energy counter's updates, from the sampled series."""
        times, values = self.sampler.series()
        k = SERIES_FIELDS.index("energy_counter_j")
        return counter_updates([(t, v[k]) for t, v in zip(times, values) if v[k] == v[k]])

    def _reset_torch_peak(self) -> bool:
        """Start a new peak for this step; False (the step's peaks are NaN) if that failed."""
        if not self.cuda:
            return False
        try:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        except Exception as e:
            for c in TORCH_GPU_COLUMNS:
                self.nan_reasons.setdefault(c, f"reset_peak_memory_stats: {type(e).__name__}: {e}")
            return False

    def _torch_peaks(self) -> dict:
        if not self.cuda:
            return {c: NAN for c in TORCH_GPU_COLUMNS}
        try:
            import torch

            return {"gpu_memory_mb": torch.cuda.max_memory_allocated(self.device) / 1e6,
                    "gpu_memory_reserved_mb": torch.cuda.max_memory_reserved(self.device) / 1e6}
        except Exception as e:
            for c in TORCH_GPU_COLUMNS:
                self.nan_reasons.setdefault(c, f"torch.cuda memory stats: {type(e).__name__}: {e}")
            return {c: NAN for c in TORCH_GPU_COLUMNS}

    # -- outputs --------------------------------------------------------------------------
    def samples(self) -> list[dict]:
        """The raw series (samples.csv): t_s since start(), then SERIES_FIELDS."""
        times, values = self.sampler.series()
        t0 = self.t_start if self.t_start is not None else (times[0] if times else 0.0)
        return [{"t_s": t - t0, **dict(zip(SERIES_FIELDS, v))} for t, v in zip(times, values)]

    def other_gpu_processes(self) -> list[dict] | None:
        """Other processes seen on the GPU when the run started or stopped; None: not checked."""
        seen = [p for p in (getattr(self, "others_at_start", None), getattr(self, "others_at_stop", None))
                if p is not None]
        return None if not seen else list({p["pid"]: p for ps in seen for p in ps}.values())

    def info(self) -> dict:
        """For manifest.json: where each number comes from, and why any column is NaN."""
        reasons = dict(self.nan_reasons)
        if self.nvml is not None:
            for col, why in self.nvml.reasons.items():
                reasons.setdefault(col, why)
        for col, why in self.process.reasons.items():
            reasons.setdefault(col, why)
        out = self.nvml.info() if self.nvml is not None else {
            "nvml_available": False, "nvml_reason": reasons.get("gpu_power_w")}
        out.update({"device": str(self.device), "idle_power_w": self.idle_power_w,
                    "disk_counter_source": self.process.disk_source, "interval_s": self.interval_s,
                    "samples": len(self.sampler), "sampler_errors": list(self.sampler.errors),
                    "nan_reasons": reasons, "other_gpu_processes": self.other_gpu_processes()})
        return out


def counter_updates(points: list[tuple[float, float]]) -> tuple[list, list]:
    """NVML's energy counter moves about every 100 ms, and the sampler reads it about every
    50 ms, so consecutive readings repeat. Interpolating linearly between raw readings turns that
    staircase into per-step energies that alternate high and low (on the H200: 25 to 76 J for
    steps of 65 ms at constant power) and bias their median. Instead keep the first reading and
    every change, each dated midway between the last reading of the old value and the first of
    the new (within a quarter of the update period of the real update); interpolating between
    those follows the energy actually spent, and the deltas of consecutive steps still add up
    to the counter's own difference."""
    if not points:
        return [], []
    kept = [points[0]]
    for (ta, ea), (tb, eb) in zip(points, points[1:]):
        if eb != ea:
            kept.append(((ta + tb) / 2, eb))
    return [p[0] for p in kept], [p[1] for p in kept]


def _counter_at(counter, t: float) -> float:
    """The energy counter (J) at time t, linear between the samples around t; NaN if t is not
    inside the sampled span (the counter cannot be extrapolated honestly)."""
    times, joules = counter
    i = bisect.bisect_left(times, t)
    if not times or i == len(times) or (i == 0 and times[0] > t):
        return NAN
    if times[i] == t or i == 0:
        return joules[i]
    ta, tb = times[i - 1], times[i]
    return joules[i - 1] + (joules[i] - joules[i - 1]) * (t - ta) / (tb - ta)
