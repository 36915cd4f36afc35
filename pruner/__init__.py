"""coinfer.pruner: structured pruning (heads and MLP channels), distortion, speed-up, shard export.

Modules: ``api`` (``run_prune``, the one call behind ``coinfer prune``), ``structure`` (which heads
and channels a ratio removes), ``importance`` (magnitude, activation, taylor), ``metrics``,
``measure``, ``calibration`` and ``tp_adapter`` (the only importer of torch-pruning). Importing
this package is cheap; torch loads only when a function needs it.
"""
