"""What the pipe benchmarks that run clients in child processes share.

Sizes from the command line, the marsconn parts a client needs wherever the
measured marsconn keeps them, the VM-specific memory preparation, how busy
a CPU was, and the checksum of an output file.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path
from typing import Any

__all__ = ["cpu_busy", "file_sha256", "marsconn_parts", "parse_size", "touch_memory"]


def parse_size(text: str) -> int:
    """``300MB`` (10^6), ``1GiB`` (2^30), ``64KiB`` or a plain number of bytes."""
    raw = text.strip().lower()
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    for suffix, factor in units.items():
        if raw.endswith(suffix):
            return int(float(raw[: -len(suffix)]) * factor)
    return int(raw.removesuffix("b"))


def marsconn_parts() -> tuple[Any, Any]:
    """NullAuditLogger and ServerHealth, wherever this marsconn keeps them.

    With ``--before DIR`` an earlier commit may be measured, from before the
    modules moved into sub-packages.
    """
    try:
        from marsconn.core.audit import NullAuditLogger
        from marsconn.run.health import ServerHealth
    except ImportError:
        from marsconn.audit import NullAuditLogger  # type: ignore[no-redef]
        from marsconn.health import ServerHealth  # type: ignore[no-redef]
    return NullAuditLogger, ServerHealth


def touch_memory(size: int) -> None:
    """Touch and free ``size`` bytes, so that the output file's pages are host-backed."""
    area = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        area[offset] = 1
    area.close()


def cpu_busy(cpu: int) -> float:
    """Seconds CPU ``cpu`` has been busy since boot (/proc/stat, in clock ticks)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                values = [int(v) for v in line.split()[1:]]
                return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
