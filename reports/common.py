"""Pieces every coinfer document shares: the model's identity and the measuring context."""

from __future__ import annotations

import os
import platform
import socket
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import coinfer


class Schema(BaseModel):
    """Base of all schema objects: unknown fields are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Document(Schema):
    """Base of every versioned coinfer file: its kind, version and who wrote it when.

    Subclasses narrow ``kind`` and ``schema_version`` to literals; loading checks both before the
    body (see :func:`coinfer.reports.io.load_document`).
    """

    kind: str
    schema_version: int
    coinfer_version: str = Field(default_factory=lambda: coinfer_version())
    created_utc: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class ModelIdentity(Schema):
    """Which model a document is about; two documents join only when these agree."""

    name: str = Field(description="the --model spec as given, e.g. 'gpt2' or a folder path")
    family: Literal["gpt2", "llama", "bert"]
    model_type: str = Field(description="config.json's model_type, e.g. 'qwen2'")
    config_sha256: str = Field(description="sha256 of the canonical architecture config")
    weights: Literal["real", "random"]
    weights_seed: int | None = Field(default=None, description="seed of random weights")
    # Added without a version bump: optional, so every file written before still loads.
    weights_detail: str | None = Field(
        default=None, description="how real weights were obtained, e.g. 'dequantized from Q4_1'"
    )
    weights_source: str | None = Field(
        default=None, description="the file the weights came from, e.g. 'x.Q4_1.gguf sha256:<hex>'"
    )
    num_blocks: int
    hidden_size: int
    vocab_size: int
    num_parameters: int
    is_decoder: bool
    # Added without a version bump: optional, so every file written before still loads.
    max_positions: int | None = Field(
        default=None, ge=1, description="longest sequence the model takes (prompt plus generated tokens); None: unstated"
    )

    @property
    def weights_label(self) -> str:
        """How the weights are printed everywhere: ``real``, ``random`` or ``real (<detail>)``."""
        return f"{self.weights} ({self.weights_detail})" if self.weights_detail else self.weights

    def same_architecture(self, other: ModelIdentity) -> bool:
        """True when both describe the same architecture (weights may differ)."""
        return self.config_sha256 == other.config_sha256 and self.family == other.family


class MachineInfo(Schema):
    """Where a measurement was taken."""

    hostname: str
    os: str
    cpu: str
    cpu_count_logical: int | None
    accelerator: str | None = Field(default=None, description="GPU name when measured on one")
    python: str
    torch_version: str | None = None
    transformers_version: str | None = None

    @classmethod
    def here(cls, accelerator: str | None = None, libraries: bool = False) -> MachineInfo:
        """Describe this machine.

        Args:
            accelerator: The GPU's name when the measurement ran on one.
            libraries: Also record the torch and transformers versions; this imports both, so
                only the commands that already run models ask for it.
        """
        info = cls(
            hostname=socket.gethostname(),
            os=f"{platform.system()} {platform.release()}",
            cpu=cpu_name(),
            cpu_count_logical=os.cpu_count(),
            accelerator=accelerator,
            python=platform.python_version(),
        )
        if libraries:
            import torch
            import transformers

            info.torch_version = torch.__version__
            info.transformers_version = transformers.__version__
        return info


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or the platform's best guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def coinfer_version() -> str:
    """The running coinfer's version string."""
    return coinfer.__version__


class KernelCheck(Schema):
    """One timing of the quiet check's reference kernel (see :mod:`coinfer.quiet`)."""

    label: str = Field(description="when it ran: 'before', 'after prefill', 'after', ...")
    lower_quartile_ms: float = Field(ge=0, description="lower quartile of the kernel's runs at this point")
    slowdown: float = Field(ge=0, description="lower_quartile_ms over the best single run seen in this process")


class Contention(Schema):
    """Was the machine quiet while a timed measurement ran? The evidence and the verdict.

    Two signals (:mod:`coinfer.quiet`): a fixed reference kernel timed before, between and after
    the measurement against the best run of it seen in this process, and the CPU time other
    processes used during the measurement per wall second, set against the cores this measurement
    left spare. ``contended`` needs both: the kernel slowed by more than ``slowdown_limit`` and
    other processes took more than ``crowding_limit_cores`` beyond the spare cores.
    """

    verdict: Literal["quiet", "busy", "contended"] = Field(
        description="contended: both signals; busy: one of them only (noted, not refused); quiet: neither"
    )
    kernel: str = Field(description="the reference kernel, e.g. 'fp32 GEMM 384x384 on cpu, 2 threads, 9 repeats'")
    kernel_best_ms: float = Field(ge=0, description="fastest single run of the kernel seen in this process")
    kernel_checks: list[KernelCheck] = Field(default_factory=list)
    kernel_slowdown: float = Field(ge=0, description="the largest slowdown over the checks")
    window_s: float = Field(ge=0, description="wall time the CPU accounting covered")
    other_cpu_cores: float = Field(
        description="CPU time of every other process (system-wide busy time minus this process tree's) per wall second"
    )
    steal_cores: float | None = Field(default=None, ge=0, description="hypervisor steal per wall second (VMs)")
    logical_cpus: int = Field(ge=1)
    threads: int = Field(ge=1, description="threads the measurement used")
    spare_cores: float = Field(description="logical_cpus - threads: what other processes could use without contending")
    crowding_cores: float = Field(description="other_cpu_cores - spare_cores")
    slowdown_limit: float = Field(gt=0)
    crowding_limit_cores: float = Field(ge=0)
