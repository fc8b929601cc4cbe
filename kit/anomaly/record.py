"""``verify/anomaly.json``: what ``kit verify`` measured on an anomaly bundle (``kit.anomaly.verify``), typed at the
top level; read by the report, the CLI and ``kit run`` through ``read_anomaly_record``, one-line errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from kit.errors import RunDirError
from kit.io import write_json_atomic
from kit.verdict import Record, Release, Verdict

ANOMALY_SCHEMA_VERSION = 1
DEFAULT_ESCAPE_LIMIT = 0.05  # the escape rate an "unmeasured" class is sized for when the recipe sets none
RECORD_NAME = "anomaly.json"


class AnomalyRecord(Record):
    schema_version: int = ANOMALY_SCHEMA_VERSION
    task: str = "anomaly"
    line: str
    run_dir: str
    recipe_hash: str
    created_at: str
    classes: list[str]  # the line's classes (the bundle decides ok / defect / the named kinds)
    ok_class: str
    deployed_runtime: str
    val: dict[str, Any]
    test: dict[str, Any]
    certificate: dict[str, Any]  # kit.anomaly.verify.certify
    escapes: dict[str, Any]  # per defect class: certified / not certified / unmeasured on validation
    figures: dict[str, Any]  # AUROC, AUPR, recall at 1 % and 5 % false rejects (test)
    operating_test: dict[str, Any]  # the operating point on test (kit.anomaly.verify.operating_figures)
    robustness: dict[str, Any]
    localisation: dict[str, Any]
    latency: dict[str, Any]
    gate: Verdict
    release: Optional[Release] = None  # the one verdict (``kit.anomaly.verdict``); None: written before it existed
    parity: Optional[dict[str, Any]] = None


def record_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "verify" / RECORD_NAME


def write_anomaly_record(run_dir: str | Path, record: AnomalyRecord) -> Path:
    path = record_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"schema_version": ANOMALY_SCHEMA_VERSION, **record.to_dict()})
    return path


def read_anomaly_record(run_dir: str | Path) -> AnomalyRecord:
    path = record_path(run_dir)
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no verify/{RECORD_NAME}; run `kit verify {run_dir}` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc}); run `kit verify {run_dir}` again") from None
    if not isinstance(data, dict) or data.get("schema_version") != ANOMALY_SCHEMA_VERSION:
        raise RunDirError(f"{path}: not an anomaly record this kit reads (schema_version "
                          f"{data.get('schema_version') if isinstance(data, dict) else None!r}); run `kit verify {run_dir}` again")
    try:
        return AnomalyRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise RunDirError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}; run `kit verify {run_dir}` again") from None
