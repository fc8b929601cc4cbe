"""Resident memory of this process, for the latency harness's peak-memory column.

Linux lets a process reset its peak resident set size (``VmHWM``) by writing 5 to
``/proc/self/clear_refs``; the peak over a measured section is then ``VmHWM`` read after it.
Where that is unavailable the functions return None rather than a number that means something else.
"""

from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float | None:
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024.0


def reset_peak_rss() -> bool:
    """Start a new peak window; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory() as m: ...`` -> ``m.peak_mb`` (process peak inside the block) and
    ``m.added_mb`` (peak minus resident memory before it): what loading and running a model cost."""

    def __init__(self) -> None:
        self.before_mb: float | None = None
        self.peak_mb: float | None = None
        self._ok = False

    def __enter__(self) -> "PeakMemory":
        self._ok = reset_peak_rss()
        self.before_mb = rss_mb()
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_mb = peak_rss_mb() if self._ok else None

    @property
    def added_mb(self) -> float | None:
        if self.peak_mb is None or self.before_mb is None:
            return None
        return max(0.0, self.peak_mb - self.before_mb)
