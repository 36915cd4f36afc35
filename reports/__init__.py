"""Versioned schemas of the files that pass between stages, with atomic JSON io."""

from coinfer.reports.common import MachineInfo, ModelIdentity, Schema
from coinfer.reports.io import (
    atomic_write_bytes,
    check_writable,
    file_sha256,
    load_document,
    to_json,
    write_json,
)
from coinfer.reports.plan import Plan
from coinfer.reports.profile import Profile
from coinfer.reports.prune import PruneReport

__all__ = [
    "MachineInfo",
    "ModelIdentity",
    "Plan",
    "Profile",
    "PruneReport",
    "Schema",
    "atomic_write_bytes",
    "check_writable",
    "file_sha256",
    "load_document",
    "to_json",
    "write_json",
]
