"""What ``kit audit`` found in the images this report's figures come from.

Validation chose the checkpoint and certified the operating threshold; the test split makes every figure of the
report. A wrong label there moves those figures, so when ``RUN_DIR/audit/audit.json`` (``kit.feedback.audit``) ranked
validation or test images and flagged some, page one says so, with how many of how many and which model scored them.
Read from the run directory (the audit is a later layer than the report: a file, not an import).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from kit.rundir import AUDIT_DIR, AUDIT_HTML, AUDIT_JSON

LISTED = 5  # flagged images named on the page; the rest are in audit.html


def label_audit_context(run_dir: Path, t: Callable[..., str]) -> dict[str, Any] | None:
    """None when no audit ranked validation, certification or test images; else the sentence for page one and the flagged images."""
    path = run_dir / AUDIT_DIR / AUDIT_JSON
    if not path.is_file():
        return None
    try:
        audit = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    by_split = {s: b for s, b in (audit.get("by_split") or {}).items() if s in ("val", "certify", "test")}
    if not by_split:
        return None
    flagged = sum(b["flagged"] for b in by_split.values())
    parts = t("sep").join(t("aud_split_" + s, k=b["flagged"], n=b["images"]) for s, b in by_split.items())
    images = [{**img, "split": s} for s, b in by_split.items() for img in b.get("flagged_images", [])]
    images.sort(key=lambda r: r["rank"])
    key = "aud_found" if flagged else "aud_clean"
    return {"flagged": flagged, "images": images[:LISTED], "more": max(0, len(images) - LISTED),
            "sentence": t(key, parts=parts, folds=audit.get("folds", "?"), page=f"{AUDIT_DIR}/{AUDIT_HTML}")}
