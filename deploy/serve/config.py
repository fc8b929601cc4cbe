"""``ServeConfig``: every setting of one ``deploy serve`` station (the CLI's options, one object)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.intake import MAX_PIXELS


@dataclass
class ServeConfig:
    bundle: Path
    runtime: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 2.0
    max_bytes: int = 32 * 1024 * 1024
    max_queue: int = 1024
    log_dir: Path | None = Path("decisions")
    threads: int | None = None  # ONNX Runtime intra-op threads (None: its default)
    fsync_interval_s: float = 1.0
    read_timeout_s: float = 10.0  # a request body must arrive within this (else 408)
    # POST /v1/reload only loads bundles inside this folder (default: the folder holding the first bundle), so a
    # request can never make the server read a path elsewhere on its disk.
    reload_root: Path | None = None
    # the largest image decoded (width x height); its decoded bytes at most 3 per pixel (deploy.intake)
    max_pixels: int = MAX_PIXELS

    def allowed_root(self) -> Path:
        return Path(self.reload_root or Path(self.bundle).resolve().parent).resolve()
