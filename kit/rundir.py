"""The run directory contract: every file and folder name of a run, its stage state, and the
readers of the files several stages share (the recorded split, the history).

Every stage reads only files written by earlier stages; these names and helpers are how it
finds them. Nothing else in the kit spells a run's file names.

```
runs/<line>/<run-id>/
  recipe.lock.yaml  state.json  split.csv  views.png  history.csv  teacher_check.json  metrics.json  run.log
  teacher.pt  student.pt  student-<method>.pt  checkpoints/
  bundle/ (parity.json ...)  verify/ (kpi.json, gate.csv ...)  report/ (report.html, report.pdf)
  report.stale/ (a report whose measurements were repeated)  audit/ (audit.json, audit.html ...)
```

Lower layers announce, higher ones react: a stage that repeats a measurement marks the report stale
here (``mark_report_stale``), next to ``mark_stage``, instead of importing the report.
"""

from __future__ import annotations

import csv
import html as html_lib
import io
import re
import shutil
from dataclasses import dataclass
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from deploy.manifest import sha256_file
from deploy.preprocess import PreprocessSpec, prepare_image, read_image, to_tensor
from kit.errors import RunDirError
from kit.io import read_json, write_json_atomic, write_text_atomic

LOCK_NAME, STATE_NAME, SPLIT_NAME = "recipe.lock.yaml", "state.json", "split.csv"
# Validation images held back from every choice (checkpoint, temperature, teacher check): the operating threshold is
# certified on them alone (``verify.certify_share``; split.csv rows of this split).
CERTIFY_SPLIT = "certify"
VIEWS_NAME, HISTORY_NAME, METRICS_NAME, LOG_NAME = "views.png", "history.csv", "metrics.json", "run.log"
TEACHER_CHECK_NAME = "teacher_check.json"  # the teacher against the majority-class baseline, on validation
CHECKPOINT_DIR = "checkpoints"  # per-epoch resume state while a training stage runs
BUNDLE_DIR, PARITY_NAME = "bundle", "parity.json"
VERIFY_DIR, KPI_NAME = "verify", "kpi.json"
REPORT_DIR, HTML_NAME, PDF_NAME = "report", "report.html", "report.pdf"


def report_names(lang: str) -> tuple[str, str]:
    """(HTML, PDF) file names of the report in ``lang``: English is ``report.html`` / ``report.pdf``, another language
    ``report.<lang>.html`` / ``report.<lang>.pdf`` beside it, so rendering one language keeps the other."""
    return (HTML_NAME, PDF_NAME) if lang == "en" else (f"report.{lang}.html", f"report.{lang}.pdf")


STALE_REPORT_DIR = REPORT_DIR + ".stale"  # a report made before the measurements were repeated
STALE_PDF_NAME = Path(PDF_NAME).stem + ".stale.pdf"  # its PDF (a PDF cannot take the banner)
# The tables ``kit verify`` writes next to kpi.json (``kit threshold`` rewrites the gate's).
VERIFY_METRICS_CSV, PER_CLASS_CSV, RELIABILITY_CSV = "metrics.csv", "per_class.csv", "reliability.csv"
ROBUSTNESS_CSV, ROBUSTNESS_SUMMARY_CSV = "robustness.csv", "robustness_summary.csv"
LATENCY_CSV, GATE_CSV = "latency.csv", "gate.csv"
TEACHER_ONNX_NAME = "teacher.onnx"  # the teacher exported for timing only, inside verify's staging folder
# ``kit audit``: the run's label-issue audit.
AUDIT_DIR, AUDIT_JSON, AUDIT_HTML = "audit", "audit.json", "audit.html"
LABEL_ISSUES_CSV, NEAR_DUPLICATES_CSV = "label_issues.csv", "near_duplicates.csv"

# The order stages run in. Recording a stage drops every later one from the state: what they
# wrote was made from the earlier stage's previous output. Comparison students share one slot.
STAGE_ORDER = ("data", "teacher", "teacher-check", "student", "compare", "evaluate", "export", "verify", "report")


def comparison_role(method: str) -> str:
    """Role (and checkpoint stem) of the comparison student trained with ``method``."""
    return f"student-{method}"


def ensemble_member_role(index: int) -> str:
    """Role (checkpoint stem, history rows) of the ensemble's ``index``-th member."""
    return f"teacher-m{index}"


def checkpoint_path(run_dir: str | Path, role: str) -> Path:
    """``teacher.pt``, ``student.pt``, ``student-<method>.pt``."""
    return Path(run_dir) / f"{role}.pt"


def parity_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / BUNDLE_DIR / PARITY_NAME


def kpi_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / VERIFY_DIR / KPI_NAME


def report_html_path(run_dir: str | Path) -> Path:
    """The run's report page: the English one, else the one of another language (``report.<lang>.html``)."""
    folder = Path(run_dir) / REPORT_DIR
    others = sorted(folder.glob("report.*.html")) if not (folder / HTML_NAME).is_file() else []
    return others[0] if others else folder / HTML_NAME


# -- stage state ---------------------------------------------------------------------------------

def read_state(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_NAME
    return read_json(path) if path.is_file() else {"stages": {}}


def stage_status(state: dict[str, Any], stage: str) -> str | None:
    """``done``, ``gate-failed`` or None (never ran, or dropped because an earlier stage ran again)."""
    return state.get("stages", {}).get(stage, {}).get("status")


def _slot(stage: str) -> int:
    return STAGE_ORDER.index("compare" if stage.startswith("student-") else stage)


def mark_stage(run_dir: str | Path, state: dict[str, Any], stage: str, seconds: float, status: str = "done",
               **extra: Any) -> None:
    """Record ``stage`` as finished (atomically) and drop the stages after it. The first stage recorded
    gives the run its id (``run_id``): reports and kpi.json name the run by it, whatever its folder is called."""
    state.setdefault("run_id", f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}")
    stages = state.setdefault("stages", {})
    for later in [s for s in stages if _slot(s) > _slot(stage)]:
        del stages[later]
    stages[stage] = {
        "status": status, "seconds": round(seconds, 2),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra,
    }
    write_json_atomic(Path(run_dir) / STATE_NAME, state)


# -- integrity: what `kit verify` measured, fingerprinted ---------------------------------------------

def fingerprint_run(run_dir: str | Path) -> dict[str, str]:
    """sha256 of every file a report is built from: ``recipe.lock.yaml`` and everything under ``bundle/`` and
    ``verify/`` (relative POSIX paths, sorted). ``kit verify`` records it; ``kit report`` compares."""
    run_dir = Path(run_dir)
    files = [run_dir / LOCK_NAME] + sorted(p for folder in (BUNDLE_DIR, VERIFY_DIR) for p in (run_dir / folder).rglob("*")
                                           if p.is_file())
    return {p.relative_to(run_dir).as_posix(): sha256_file(p) for p in files if p.is_file()}


def record_hashes(run_dir: str | Path, stage: str = "verify") -> dict[str, str] | None:
    """Record the run's fingerprint in ``state.json`` under ``stage`` (after ``kit threshold`` rewrote what ``kit verify``
    wrote); None when the stage has not finished."""
    state = read_state(run_dir)
    entry = state.get("stages", {}).get(stage)
    if entry is None:
        return None
    entry["hashes"] = fingerprint_run(run_dir)
    write_json_atomic(Path(run_dir) / STATE_NAME, state)
    return entry["hashes"]


# -- invalidation --------------------------------------------------------------------------------

# The stale banner in each report language (``kit.report.i18n`` shows the same text under ``stale_banner``).
STALE_BANNER = {
    "en": "STALE: made before the measurements were repeated on {date} ({reason}); run `kit report {run}` for a current report.",
    "ja": "古いレポート：{date} に測定がやり直される前に作成されたものです（{reason}）。最新のレポートは `kit report {run}` で作成してください。",
}
_BODY_TAG = re.compile(r"<body[^>]*>", re.IGNORECASE)
_LANG_ATTR = re.compile(r'<html[^>]*\blang="([A-Za-z-]+)"', re.IGNORECASE)


def mark_report_stale(run_dir: str | Path, reason: str) -> Path | None:
    """Move ``report/`` to ``report.stale/`` and put a banner at the top of its HTML, because the
    measurements it shows were just repeated (``reason``: the command, e.g. ``kit verify``).

    Call it after the new measurements are in place (``kit verify``, ``kit export``, ``kit threshold``): a
    report left in ``report/`` would look current. The banner is in the report's own language and is
    styled inline (a report from any version shows it). The PDF cannot take a banner, so it is renamed
    ``report.stale.pdf``. A previous ``report.stale/`` is replaced; ``kit report`` removes it once a current
    report is written. Returns the stale folder, or None when the run had no report.
    """
    run_dir = Path(run_dir)
    report = run_dir / REPORT_DIR
    if not report.is_dir():
        return None
    stale = run_dir / STALE_REPORT_DIR
    shutil.rmtree(stale, ignore_errors=True)
    report.rename(stale)
    for pdf in sorted(stale.glob("*.pdf")):  # report.pdf and each language's (report.ja.pdf)
        if not pdf.name.endswith(".stale.pdf"):
            pdf.rename(stale / (pdf.name[:-len(".pdf")] + ".stale.pdf"))
    for page in sorted(stale.glob("*.html")):  # report.html and each language's (report.ja.html)
        html = page.read_text(encoding="utf-8")
        found = _LANG_ATTR.search(html)
        lang = found.group(1) if found and found.group(1) in STALE_BANNER else "en"
        text = STALE_BANNER[lang].format(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                         reason=reason, run=str(run_dir))
        banner = ('<div class="stale-banner" role="alert" style="border: 3px solid #cf222e; background: #ffebe9; '
                  'color: #a40e26; font-weight: bold; padding: 8px 12px; margin: 0 0 8px 0;">'
                  f"{html_lib.escape(text)}</div>")
        body = _BODY_TAG.search(html)
        at = body.end() if body else 0
        write_text_atomic(page, html[:at] + "\n" + banner + html[at:])
    return stale


def require_stages(run_dir: str | Path, stages: list[str], command: str) -> dict[str, Any]:
    """The run's state, or a one-line error saying which stage is missing and how to finish it."""
    run_dir = Path(run_dir)
    if not (run_dir / LOCK_NAME).is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {LOCK_NAME}); make one with `kit run RECIPE`")
    state = read_state(run_dir)
    for stage in stages:
        if stage_status(state, stage) != "done":
            raise RunDirError(
                f"{run_dir}: stage '{stage}' has not finished, so `{command}` cannot run; "
                f"finish the run with `kit run {run_dir} --resume`"
            )
    return state


# -- the recorded split ----------------------------------------------------------------------------

def write_split(run_dir: str | Path, classes: list[str], splits: dict[str, Any]) -> None:
    """The images each split really used (unreadable files skipped during decoding are left out)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "split"])
    for name, split in splits.items():
        for sample in split.samples:
            writer.writerow([str(sample.path), classes[sample.label], name])
    write_text_atomic(Path(run_dir) / SPLIT_NAME, buf.getvalue())


def read_split_rows(run_dir: str | Path) -> list[tuple[str, str, str]]:
    """Every recorded ``(path, label, split)`` row of ``split.csv``, in file order."""
    path = Path(run_dir) / SPLIT_NAME
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {SPLIT_NAME}; finish the run with `kit run {run_dir} --resume`")
    with path.open(newline="", encoding="utf-8") as fh:
        return [(r["path"], r["label"], r["split"]) for r in csv.DictReader(fh)]


def has_split(run_dir: str | Path, split: str) -> bool:
    """Whether ``split.csv`` holds any row of ``split`` (a run from before the certification split has none)."""
    return any(r[2] == split for r in read_split_rows(run_dir))


def read_split(run_dir: str | Path, split: str) -> tuple[list[Path], list[str]]:
    """Paths and labels of one split exactly as the run used it."""
    rows = [r for r in read_split_rows(run_dir) if r[2] == split]
    return [Path(path) for path, _, _ in rows], [label for _, label, _ in rows]


@dataclass
class SplitData:
    """One recorded split, decoded and prepared by the edge runtime's own preprocessing."""

    paths: list[Path]
    images: np.ndarray  # prepared uint8 NxHxWxC
    labels: np.ndarray

    def inputs(self, spec: PreprocessSpec) -> np.ndarray:
        """The float32 NCHW model inputs."""
        return to_tensor(self.images, spec)

    def subset(self, indices: np.ndarray) -> "SplitData":
        return SplitData([self.paths[i] for i in indices], self.images[indices], self.labels[indices])


def load_split(run_dir: str | Path, split: str, spec: PreprocessSpec, classes: list[str]) -> SplitData:
    """A split exactly as the run used it, through the one preprocessing implementation."""
    paths, names = read_split(run_dir, split)
    lookup = {c: i for i, c in enumerate(classes)}
    images = np.stack([prepare_image(read_image(p, spec.channels), spec) for p in paths])
    return SplitData(paths, images, np.array([lookup[n] for n in names], dtype=np.int64))


# -- training history --------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_history(run_dir: str | Path, role: str, rows: list[dict[str, Any]]) -> None:
    """history.csv holds every role; a stage rewrites only its own rows."""
    path = Path(run_dir) / HISTORY_NAME
    kept: list[dict[str, Any]] = []
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as fh:
            kept = [r for r in csv.DictReader(fh) if r.get("role") != role]
    all_rows = kept + rows
    columns: list[str] = []
    for r in all_rows:
        columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    for r in all_rows:
        writer.writerow({k: _fmt(v) if isinstance(v, float) else v for k, v in r.items()})
    write_text_atomic(path, buf.getvalue())
