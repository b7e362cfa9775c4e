"""Per-batch measurements: the catalog of columns, the samplers, the FLOP count.

  catalog.py   every column: name, unit, meaning, summary rule (the one source of truth)
  meter.py     Meter: the facade train.py uses (start, `with meter.step() as row`, stop, info)
  sampler.py   the one background thread that polls NVML and psutil into a time series
  nvml.py      GPU power, utilisation, memory, energy counter (pynvml); NaN + reason without it
  system.py    this process's CPU time, RSS and disk bytes (psutil); model_size_mb
  flops.py     analytic FLOPs per training step, the PaLM/nanoGPT MFU numerator
  peak.py      peak dense bf16/fp16 tensor TFLOP/s per GPU (vendor datasheets), for MFU

Units are SI (MB = 1e6 bytes, GB = 1e9 bytes, W, J, s). A number that cannot be measured here
is NaN, never 0, and Meter.info()["nan_reasons"] says why.
"""
