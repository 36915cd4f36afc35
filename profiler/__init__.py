"""coinfer.profiler: what each stage of a model costs on this machine (``coinfer profile``).

- :mod:`coinfer.profiler.measure`: the profile itself (:func:`run_profile`, :func:`profile_loaded`);
- :mod:`coinfer.profiler.timing`: stage-boundary timestamps, interleaved repeats, the fixed decode cache;
- :mod:`coinfer.profiler.memory`: per-stage prefill memory peaks and the whole run's peak;
- FLOPs per stage come from :mod:`coinfer.models.flops` (shared with the pruner);
- :mod:`coinfer.profiler.energy`: RAPL / NVML counters, power-model estimates, codecarbon summary;
- :mod:`coinfer.profiler.hardware`: physical cores, device and dtype checks, the GEMM peak;
- :mod:`coinfer.profiler.stats`: median, interquartile range, the noisy flag.

Nothing is imported here so that ``import coinfer.profiler`` stays cheap (torch loads on use).
"""
