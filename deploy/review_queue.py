"""``deploy review-queue``: the parts a person should look at, from the station's decision logs.

Torch-free (runs on the line's box). Reasons a part is queued, in the order a day's cap serves them:

- ``abstained``: the model sent it to a person (below its operating threshold);
- ``audit``: a random sample of the parts the model decided alone, ``audit_rate`` of each predicted
  class per day (at least one per class seen), so the labels that come back are not all uncertain
  parts of one class and can estimate the automated error rate without bias. Up to a tenth of a
  day's cap (at least one slot) is kept for it, so uncertain parts never crowd it out;
- ``drift``: decided alone on a day ``deploy monitor`` flagged (``drift_days``), least confident first;
- ``low_confidence``: the ``lowest`` least confident parts decided alone, per day.

``max_per_day`` caps the parts queued per day of the log (parts queued by earlier runs count). A
part (its part id, else its image sha256) is queued once: ``QUEUE_DIR/.queue-state.json`` remembers
every part ever queued, across runs, even after rows are removed from ``queue.csv``.

``queue.csv`` (path relative to QUEUE_DIR, sha256, part id, time, model label, confidence, reason,
an empty ``label`` column for the reviewer, the overlay and, for an anomaly bundle, the score) keeps the
rows of earlier runs and their filled-in labels; it and the state file are replaced atomically, after
the images are copied. A cell a spreadsheet would run as a formula (a part id ``=HYPERLINK(...)``) is
written with a quote in front (``deploy.spreadsheet``) and read back without it.

Decisions of an anomaly bundle (no probabilities, a ``score``) are queued by the same reasons and
order: their confidence is the share of good validation parts the score is more typical than (accepted)
or above (a defect label), so "least confident" is "nearest the review band", from either side, and the
review band's own parts come nearest its accept edge first.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from deploy.atomic import copy_atomic, write_bytes_atomic
from deploy.decision_log import DecisionRecord, read_records
from deploy.errors import DeployError
from deploy.filenames import readable
from deploy.preprocess import IMAGE_SUFFIXES
from deploy.review_journal import apply_journal, queue_lock, row_key
from deploy.spreadsheet import escape_cell, unescape_cell

QUEUE_NAME, STATE_NAME, IMAGES_DIR = "queue.csv", ".queue-state.json", "images"
STATE_FORMAT = "inspection-kit/review-queue-state"
COLUMNS = ["path", "sha256", "part_id", "time", "model_label", "confidence", "action", "reason", "label", "queued_at",
           "overlay", "score", "labelled_by", "labelled_at"]  # the last two: who gave the label and when (deploy review)
REASONS = ("abstained", "audit", "drift", "low_confidence")
AUDIT_SHARE_OF_CAP = 0.1


@dataclass
class QueueResult:
    queue_csv: Path
    added: list[dict[str, Any]]
    by_reason: dict[str, int]
    already_queued: int
    over_cap: int
    missing_images: list[str] = field(default_factory=list)  # part keys whose image was not found (or changed)
    skipped_log_lines: int = 0


def part_key(record: DecisionRecord) -> str:
    return f"part:{record.part_id}" if record.part_id else f"sha256:{record.image_sha256}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_queue(out_dir: Path) -> list[dict[str, str]]:
    path = out_dir / QUEUE_NAME
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [{k: unescape_cell(v) if isinstance(v, str) else v for k, v in row.items()} for row in csv.DictReader(fh)]


def write_queue_csv(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """queue.csv, atomically, every cell a spreadsheet would run written as text (``deploy.spreadsheet``)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", restval="")
    writer.writeheader()
    writer.writerows({k: escape_cell(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows)
    return write_bytes_atomic(out_dir / QUEUE_NAME, buf.getvalue().encode("utf-8"))


def _read_state(out_dir: Path) -> dict[str, Any]:
    path = out_dir / STATE_NAME
    if not path.is_file():
        return {"format": STATE_FORMAT, "version": 1, "queued": {}}
    state = json.loads(path.read_text(encoding="utf-8"))
    if state.get("format") != STATE_FORMAT:
        raise DeployError(f"{path}: not a review-queue state file; move it away or choose another QUEUE_DIR")
    return state


class _ImageFinder:
    """The file of a logged image: its logged path, that path under ``images``, its name under ``images``, or
    (last) any image under ``images`` with the same sha256. A file whose content changed is not it."""

    def __init__(self, images: Path | None) -> None:
        self.images, self._by_sha = images, None

    def find(self, record: DecisionRecord) -> Path | None:
        candidates = []
        if record.image:
            logged = Path(record.image)
            candidates.append(logged)
            if self.images is not None and not logged.is_absolute():
                candidates.append(self.images / logged)
            if self.images is not None:
                candidates.append(self.images / logged.name)
        for path in candidates:
            if path.is_file() and _sha256(path) == record.image_sha256:
                return path
        return self._sha_index().get(record.image_sha256)

    def _sha_index(self) -> dict[str, Path]:
        if self._by_sha is None:
            self._by_sha = {}
            if self.images is not None and self.images.is_dir():
                for p in sorted(self.images.rglob("*")):
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                        self._by_sha.setdefault(_sha256(p), p)
        return self._by_sha


class _Explainer:
    """Heatmap overlays of queued images from the bundle (``deploy.heatmap``, ``deploy.overlay``)."""

    def __init__(self, bundle: Path) -> None:
        from deploy.predictor import Predictor

        self.predictor = Predictor.from_bundle(bundle)

    def write(self, source: Path, record: DecisionRecord, path: Path) -> Path | None:
        from deploy.overlay import overlay_caption, write_overlay
        from deploy.preprocess import read_image

        channels = self.predictor.manifest.preprocess.channels
        try:
            image = read_image(source, channels)
        except DeployError:
            return None  # the copy is queued anyway; the reviewer sees the image without the map
        per_class = self.predictor.task == "classify"  # an anomaly bundle has one map, whatever the label
        decision = self.predictor.predict_images([image], heatmap=True, heatmap_class=record.label
                                                 if per_class and record.label in self.predictor.classes else None)[0]
        caption = overlay_caption(record.label, record.confidence, record.action, score=record.score)
        return write_overlay(path, image, decision.heatmap, caption, channels=channels)


def _day(record: DecisionRecord) -> str:
    return datetime.fromisoformat(record.time).astimezone(timezone.utc).strftime("%Y-%m-%d")


def _decided_alone(r: DecisionRecord) -> bool:
    return not r.abstain and r.action != "review"


def _audit_sample(records: list[DecisionRecord], rate: float, seed: int, day: str) -> list[DecisionRecord]:
    """``ceil(rate * n)`` of each predicted class (at least one per class present), drawn at random, reproducibly."""
    if rate <= 0:
        return []
    out = []
    for label in sorted({r.label for r in records}):
        members = sorted((r for r in records if r.label == label), key=part_key)
        k = min(len(members), max(1, math.ceil(rate * len(members))))
        ranked = sorted(members, key=lambda r: hashlib.sha256(f"{seed}|{day}|{part_key(r)}".encode()).hexdigest())
        out += ranked[:k]
    return out


@dataclass(frozen=True)
class ReviewPolicy:
    """Which parts go to a person: the abstained ones, a random audit share of those decided alone, every part of
    a drift day, the N least confident per day; at most ``max_per_day`` per day, only ``classes`` when given."""

    abstained: bool = True
    lowest: int = 0
    audit_rate: float = 0.01
    max_per_day: int | None = None
    classes: tuple[str, ...] = ()
    drift_days: tuple[str, ...] = ()
    seed: int = 0  # of the audit sample

    def __post_init__(self) -> None:
        if not 0 <= self.audit_rate <= 1:
            raise DeployError(f"audit rate must lie between 0 and 1 (got {self.audit_rate:g})")
        if self.max_per_day is not None and self.max_per_day < 1:
            raise DeployError(f"max per day must be at least 1 (got {self.max_per_day})")
        for day in self.drift_days:
            try:
                datetime.strptime(day, "%Y-%m-%d")
            except ValueError:
                raise DeployError(f"drift day {day!r} is not a date; write it as YYYY-MM-DD") from None


def select_for_review(records: list[DecisionRecord], policy: ReviewPolicy, queued_per_day: dict[str, int] | None = None,
                      queued: Iterable[str] = ()) -> tuple[list[tuple[DecisionRecord, str]], int]:
    """(record, reason) to queue, and how many candidates a day's cap left out. ``records``: one per part;
    the selection is a function of the day's records (the audit draw and the least confident are the same
    in every run), then parts in ``queued`` (keys of parts queued before) are left out;
    ``queued_per_day``: parts earlier runs queued, per day (they use up the cap)."""
    done = set(queued)
    drift = set(policy.drift_days)
    abstained, lowest, audit_rate, max_per_day, seed = (policy.abstained, policy.lowest, policy.audit_rate,
                                                        policy.max_per_day, policy.seed)
    queued_per_day = queued_per_day or {}
    by_day: dict[str, list[DecisionRecord]] = {}
    for r in records:
        by_day.setdefault(_day(r), []).append(r)
    chosen: list[tuple[DecisionRecord, str]] = []
    over_cap = 0
    for day in sorted(by_day):
        day_records = by_day[day]
        alone = [r for r in day_records if _decided_alone(r)]
        by_confidence = sorted(alone, key=lambda r: (r.confidence, part_key(r)))
        wanted: dict[str, list[DecisionRecord]] = {
            "abstained": sorted((r for r in day_records if not _decided_alone(r)), key=lambda r: (r.confidence, part_key(r)))
            if abstained else [],
            "audit": _audit_sample(alone, audit_rate, seed, day),
            "drift": by_confidence if day in drift else [],
            "low_confidence": by_confidence[:max(0, lowest)],
        }
        ordered: list[tuple[DecisionRecord, str]] = []
        seen: set[str] = set()

        def take(items: list[DecisionRecord], reason: str) -> None:
            for r in items:
                if part_key(r) not in seen and part_key(r) not in done:
                    seen.add(part_key(r))
                    ordered.append((r, reason))

        capacity = None if max_per_day is None else max(0, max_per_day - queued_per_day.get(day, 0))
        if capacity is not None and wanted["audit"]:
            take(wanted["audit"][:max(1, math.floor(AUDIT_SHARE_OF_CAP * max_per_day))], "audit")
        for reason in REASONS:
            take(wanted[reason], reason)
        if capacity is not None and len(ordered) > capacity:
            over_cap += len(ordered) - capacity
            ordered = ordered[:capacity]
        chosen += ordered
    return chosen, over_cap


def build_review_queue(log_paths: Iterable[str | Path], images: str | Path | None, out_dir: str | Path,
                       policy: ReviewPolicy = ReviewPolicy(), bundle: str | Path | None = None) -> QueueResult:
    """Copy the images that need a person (by ``policy``) into ``out_dir`` and add their rows to
    ``out_dir/queue.csv``.

    ``bundle``: also write a heatmap overlay next to each queued image (``<image>.overlay.png``, the
    ``overlay`` column): where the model saw its class, so the reviewer looks there first."""
    log = read_records(log_paths)
    if not log.records:
        raise DeployError(f"no decision records in {', '.join(map(str, log.files)) or 'the given logs'}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    known = sorted({c for r in log.records for c in r.probabilities} | {r.label for r in log.records})
    wanted_classes = set(policy.classes)
    unknown = sorted(wanted_classes - set(known))
    if unknown:
        raise DeployError(f"class {unknown[0]!r} is not among the logged classes ({', '.join(known)})")

    latest: dict[str, DecisionRecord] = {}
    for r in sorted(log.records, key=lambda r: r.time):
        latest[part_key(r)] = r
    state = _read_state(out_dir)
    existing = read_queue(out_dir)
    queued = dict(state["queued"])
    for row in existing:  # rows of queue.csv also count (a state file lost or from an older run)
        key = f"part:{row['part_id']}" if row.get("part_id") else f"sha256:{row['sha256']}"
        queued.setdefault(key, {"day": (row.get("time") or "")[:10], "reason": row.get("reason")})
    candidates = [r for r in latest.values() if not wanted_classes or r.label in wanted_classes]
    already = sum(1 for k, r in latest.items() if k in queued and (not wanted_classes or r.label in wanted_classes))
    per_day: dict[str, int] = {}
    for entry in queued.values():
        per_day[entry.get("day") or ""] = per_day.get(entry.get("day") or "", 0) + 1
    chosen, over_cap = select_for_review(candidates, policy, queued_per_day=per_day, queued=set(queued))

    explain = _Explainer(Path(bundle)) if bundle is not None else None
    finder = _ImageFinder(Path(images) if images is not None else None)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    added, missing = [], []
    for record, reason in chosen:
        source = finder.find(record)
        if source is None:
            missing.append(part_key(record))
            continue
        rel = Path(IMAGES_DIR) / _day(record) / f"{record.image_sha256[:16]}{source.suffix.lower()}"
        copy_atomic(source, out_dir / rel)
        overlay = explain.write(source, record, out_dir / rel.with_suffix(".overlay.png")) if explain is not None else None
        row = {"path": rel.as_posix(), "sha256": record.image_sha256, "part_id": record.part_id or "",
               "time": record.time, "model_label": record.label, "confidence": f"{record.confidence:.6g}",
               "action": record.action, "reason": reason, "label": "", "queued_at": now,
               "overlay": overlay.relative_to(out_dir).as_posix() if overlay is not None else "",
               "score": "" if record.score is None else f"{record.score:.6g}"}
        added.append({k: readable(v) for k, v in row.items()})  # a part id from a non-UTF-8 file name: \xNN
        queued[part_key(record)] = {"day": _day(record), "reason": reason, "queued_at": now}

    with queue_lock(out_dir):  # `deploy review` may be labelling this queue: its labels since we read it stay
        rows = {row_key(r): r for r in read_queue(out_dir)}
        merged = [rows.get(row_key(r), r) for r in existing] + added
        write_queue_csv(out_dir, apply_journal(merged, out_dir))
    state["queued"] = queued
    state["classes"] = sorted(set(state.get("classes", [])) | set(known))  # what deploy review offers as labels
    write_bytes_atomic(out_dir / STATE_NAME, (json.dumps(state, indent=1) + "\n").encode("utf-8"))
    by_reason = {reason: sum(1 for a in added if a["reason"] == reason) for reason in REASONS}
    return QueueResult(out_dir / QUEUE_NAME, added, by_reason, already, over_cap, missing, log.skipped_lines)
