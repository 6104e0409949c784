"""What machine this is: CPU name and feature flags, read once from /proc/cpuinfo."""

from __future__ import annotations

import platform
from pathlib import Path


def cpuinfo() -> str:
    """The text of /proc/cpuinfo, or "" where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return ""


def cpu_name(info: str | None = None) -> str:
    """The CPU's model name ("Intel(R) Xeon(R) ..."), else what platform knows."""
    for line in (cpuinfo() if info is None else info).splitlines():
        if line.startswith(("model name", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(info: str | None = None) -> set[str]:
    """The CPU feature flags ("avx512_bf16", "amx_bf16", ...; Arm: "Features")."""
    flags: set[str] = set()
    for line in (cpuinfo() if info is None else info).splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
    return flags
