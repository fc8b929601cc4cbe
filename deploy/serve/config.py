"""``ServeConfig``: every setting of one ``deploy serve`` station (the CLI's options, one object)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deploy.intake import MAX_PIXELS
from deploy.line.config import LineConfig


@dataclass
class AccessConfig:
    """Who may use the station and what it keeps for integrators: API keys, TLS, the reload switch, kept images,
    idempotency (``deploy.serve.access``). The defaults are today's open station on 127.0.0.1."""

    tokens_file: Path | None = None  # hashed API keys (deploy token add); None: no authentication
    allow_reload: bool = True  # False (--no-reload): POST /v1/reload answers 403; SIGHUP still reloads
    tls_cert: Path | None = None  # PEM certificate (chain) and its key: uvicorn serves HTTPS
    tls_key: Path | None = None
    keep_images: Path | None = None  # served images kept by sha256 here, so review-queue and monitor find them
    keep_images_max_count: int = 100_000  # the oldest kept images are removed beyond these (0: no limit)
    keep_images_max_bytes: int = 0
    idempotency_ttl_s: float = 24 * 3600.0  # how long an Idempotency-Key is remembered
    idempotency_max_keys: int = 10_000  # and how many at most (the oldest are forgotten first)


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
    access: AccessConfig = field(default_factory=AccessConfig)  # keys, TLS, reload switch, kept images, idempotency
    line: LineConfig = field(default_factory=LineConfig)  # --publish (MQTT), --opcua, --modbus (deploy.line)

    def allowed_root(self) -> Path:
        return Path(self.reload_root or Path(self.bundle).resolve().parent).resolve()
