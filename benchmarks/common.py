"""Shared by the benchmark scripts: a markdown table and the RESULTS.md record (command, versions,
machine, date), so every number in RESULTS.md says how to reproduce it."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} logical cores, {gpu}, {platform.system()} {platform.release()}"


def versions() -> str:
    names = ("torch", "timm", "onnxruntime", "albumentations", "numpy")
    found = []
    for n in names:
        try:
            found.append(f"{n} {metadata.version(n)}")
        except metadata.PackageNotFoundError:
            pass
    return f"Python {platform.python_version()}, " + ", ".join(found)


def append_results(title: str, table: str, notes: str = "") -> None:
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    block = (f"\n## {title}\n\n- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n- command: `{command}`\n"
             f"- machine: {machine()}\n- versions: {versions()}\n" + (f"- notes: {notes}\n" if notes else "") + f"\n{table}\n")
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in this folder; newest last.\n", encoding="utf-8")
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(block)
