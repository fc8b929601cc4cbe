"""Atomic file writes: a crash never leaves a half-written file under its final name.

The writes themselves are ``deploy.atomic``'s (one recipe for both sides; ``kit`` may import
``deploy``, never the reverse), re-exported here under the names the training side uses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from deploy.atomic import write_atomic, write_json_atomic, write_text_atomic  # noqa: F401  (kit's names for them)
from deploy.spreadsheet import escape_cell


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def staging_dir(final: str | Path) -> Path:
    """An empty ``.<name>.partial`` folder next to ``final`` to assemble a stage's output in."""
    final = Path(final)
    staging = final.parent / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_dir(staging: str | Path, final: str | Path) -> Path:
    """Swap a complete staging folder into place: readers see the old folder or the new one, never half of one."""
    staging, final = Path(staging), Path(final)
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def write_csv_atomic(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Path:
    """Rows of dicts -> CSV for people; columns default to every key in first-seen order; floats to 6 significant
    digits; text a spreadsheet would run as a formula (a part id or file name ``=HYPERLINK(...)``) gets a quote in
    front (``deploy.spreadsheet``)."""
    import csv
    import io

    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else
                             escape_cell(v) if isinstance(v, str) else v) for k, v in r.items()})
    return write_text_atomic(path, buf.getvalue())
