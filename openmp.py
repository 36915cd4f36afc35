"""How idle OpenMP threads wait, set once for every coinfer process before torch loads.

Measured on a 2-core machine (benchmarks/bench_openmp.py): with libgomp's default spin-wait an
idle role's threads spin while the other role computes on the same cores; with
``OMP_WAIT_POLICY=PASSIVE`` every parallel region pays a thread wake-up and a GPT-2 shard ran
~40% slower. A short spin (``GOMP_SPINCOUNT=100000``) keeps back-to-back ops at full speed and
lets threads sleep within a fraction of a millisecond once a process waits on the link;
at 10000 spins threads fell asleep between ops after an idle spell and MiniLM ran 3-4x slower. Profiles and runs use the
same setting, so their timings are comparable.
"""

from __future__ import annotations

import os
import sys

SHORT_SPIN = "100000"


def configure_openmp_wait() -> bool:
    """Ask for the short spin unless the user chose a policy; call before torch is imported.

    Returns:
        True if the short spin is in effect for this process.
    """
    if "torch" not in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SHORT_SPIN)
    return os.environ.get("GOMP_SPINCOUNT") == SHORT_SPIN and "OMP_WAIT_POLICY" not in os.environ


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The same setting for a child process's environment."""
    if "OMP_WAIT_POLICY" not in env:
        env.setdefault("GOMP_SPINCOUNT", SHORT_SPIN)
    return env
