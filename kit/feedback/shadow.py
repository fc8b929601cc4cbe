"""``kit shadow``: the model in the shadow of the inspectors, before it decides alone.

During a shadow period the station logs its decisions (``deploy.decision_log``) while people still
decide every part. Joining the two per part answers what management asks before automation is
widened: how often model and inspector agree, which parts the model would have decided alone,
the escapes it would have made (defective parts it would have accepted as good) and the false
rejects (good parts it would have rejected), per class, each with its exact binomial interval
(``kit.verify.stats``).

The recommendation reuses the operating threshold's certification (``kit.verify.threshold.
certify_threshold``, Learn then Test with one-sided Clopper-Pearson bounds), with the
inspectors' decisions as ground truth: "automate at threshold t" when, over the N shadowed
defective parts, the upper bound on the escape rate at t is at most the target; otherwise "keep
shadowing", with how many more defective parts the bound needs.

The join never drops a part silently: inspector rows with no model decision, model decisions no
inspector saw, repeated rows and labels that are neither a class nor ok/ng are counted and listed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from deploy.decision_log import DecisionRecord, read_records
from kit.errors import ShadowError
from kit.feedback.attribute_study import attribute_study, read_study, study_rows
from kit.io import publish_dir, staging_dir, write_csv_atomic, write_json_atomic, write_text_atomic
from kit.recipe.schema import ThresholdTarget
from kit.report.after_golive import SHADOW_FORMAT, SHADOW_NAME, read_shadow, render_shadow_page
from kit.verify import stats
from kit.verify.threshold import certify_threshold

SHADOW_HTML, SHADOW_PARTS, STUDY_CSV = "shadow.html", "shadow_parts.csv", "attribute_study.csv"  # next to SHADOW_NAME (the record the report reads)
OK_WORDS = {"ok", "good", "pass", "accept", "accepted", "g"}
NG_WORDS = {"ng", "nok", "nog", "bad", "defect", "defective", "fail", "reject", "rejected"}
PART_COLUMNS, SHA_COLUMNS = ("part_id", "part"), ("image_sha256", "sha256")
LABEL_COLUMNS = ("label", "inspector_label", "decision", "result")
LISTED = 200  # ids listed per problem in shadow.json (all of them are counted)


@dataclass
class InspectorRow:
    line: int
    part_id: str | None
    sha256: str | None
    raw_label: str
    time: str | None
    label: str | None = None  # a class of the model, when the inspector named one
    good: bool | None = None  # inspector's ok / ng

    @property
    def key(self) -> str:
        return f"part:{self.part_id}" if self.part_id else f"sha256:{self.sha256}"


def _column(fields: list[str], choices: tuple[str, ...]) -> str | None:
    lowered = {f.strip().lower(): f for f in fields}
    return next((lowered[c] for c in choices if c in lowered), None)


def read_inspector_csv(path: str | Path) -> list[InspectorRow]:
    """Rows of an inspectors' CSV: a part id (``part_id``) or the image's sha256 (``image_sha256``/``sha256``),
    the inspector's decision (``label``/``inspector_label``/``decision``: a class name, or ok/ng) and
    optionally ``time``. A row without an id is kept (and reported as unmatched)."""
    path = Path(path)
    if not path.is_file():
        raise ShadowError(f"{path}: inspector CSV not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        part_col, sha_col = _column(fields, PART_COLUMNS), _column(fields, SHA_COLUMNS)
        label_col, time_col = _column(fields, LABEL_COLUMNS), _column(fields, ("time", "timestamp"))
        if part_col is None and sha_col is None:
            raise ShadowError(f"{path}: needs a part_id or an image_sha256 column to join on (columns: {', '.join(fields) or 'none'})")
        if label_col is None:
            raise ShadowError(f"{path}: needs the inspector's decision in a column named {' or '.join(LABEL_COLUMNS)} "
                              f"(columns: {', '.join(fields) or 'none'})")
        rows = []
        for line, r in enumerate(reader, start=2):
            def cell(col: str | None) -> str | None:
                v = (r.get(col) or "").strip() if col else ""
                return v or None
            rows.append(InspectorRow(line, cell(part_col), (cell(sha_col) or "").lower() or None, cell(label_col) or "", cell(time_col)))
    return rows


def _interpret(row: InspectorRow, classes: list[str], ok_class: str) -> bool:
    """Fill ``label``/``good`` from the inspector's word; False when it is neither a class nor ok/ng."""
    raw = row.raw_label
    if raw in classes:
        row.label, row.good = raw, raw == ok_class
    elif raw.lower() in OK_WORDS:
        row.label, row.good = ok_class, True
    elif raw.lower() in NG_WORDS:
        row.label, row.good = None, False
    else:
        return False
    return True


def _latest(records: Iterable[DecisionRecord]) -> dict[str, DecisionRecord]:
    out: dict[str, DecisionRecord] = {}
    for rec in sorted(records, key=lambda r: r.time):
        out[f"part:{rec.part_id}" if rec.part_id else f"sha256:{rec.image_sha256}"] = rec
    return out


def _is_anomaly_log(records: list[DecisionRecord]) -> bool:
    """An anomaly bundle logs a score and no probabilities (``deploy.decision_log``)."""
    return bool(records) and all(r.score is not None and not r.probabilities for r in records)


def _anomaly_classes(records: list[DecisionRecord], ok_class: str | None) -> list[str]:
    """The labels an anomaly bundle's rule gave: its good-part class first (the one ``accept`` carries)."""
    ok = ok_class or next((r.label for r in records if r.action == "accept"), None) or "ok"
    return [ok] + sorted({r.label for r in records} - {ok})


def _model_classes(records: list[DecisionRecord]) -> list[str]:
    orders = {tuple(r.probabilities) for r in records if r.probabilities}
    if len(orders) != 1:
        found = " / ".join(",".join(o) for o in sorted(orders)) or "none"
        raise ShadowError(f"the decision logs hold {len(orders)} different class lists ({found}); "
                          "shadow one model at a time (select the log files of one bundle)")
    return list(next(iter(orders)))


def _ok_class(ok_class: str | None, classes: list[str], records: list[DecisionRecord]) -> str:
    if ok_class is not None:
        if ok_class not in classes:
            raise ShadowError(f"ok class {ok_class!r} is not a class of the model ({', '.join(classes)})")
        return ok_class
    accepted = {r.label for r in records if r.action == "accept" and not r.abstain}
    if "ok" in classes:
        return "ok"
    if len(accepted) == 1 and not any(r.action == "reject" for r in records):
        raise ShadowError("the model has no good-part class (every confident decision is `accept`); pass the ok class")
    if len(accepted) == 1:
        return next(iter(accepted))
    raise ShadowError(f"cannot tell the good-part class from the logs; pass it (one of {', '.join(classes)})")


def reference_rows(study_csv: str | Path) -> list[InspectorRow]:
    """An attribute study's reference calls as inspectors' decisions: the shadow period's truth when no
    inspectors' CSV is given (``kit shadow --study`` alone)."""
    study = read_study(study_csv)
    return [InspectorRow(line, part, None, ref, None) for line, (part, ref) in enumerate(sorted(study["reference"].items()), 2)]


def shadow_period(log_paths: Iterable[str | Path], inspector_csv: str | Path | None, target: ThresholdTarget | None = None,
                  ok_class: str | None = None, confidence: float = 0.95, study_csv: str | Path | None = None) -> dict[str, Any]:
    """Join the decision logs with the inspectors' decisions; counts, intervals, per class, recommendation.

    ``target``: what automation must guarantee (default ``max_escape_rate=0.01``); with
    ``accepted_accuracy`` every inspector row must name a class. ``study_csv``: an attribute agreement study
    (``kit.feedback.attribute_study``, the model as one more appraiser) under ``study``; without
    ``inspector_csv`` its reference calls are the inspectors' decisions.
    """
    if inspector_csv is None and study_csv is None:
        raise ShadowError("give the inspectors' decisions (--inspector CSV), an attribute study (--study CSV), or both")
    target = target or ThresholdTarget(max_escape_rate=0.01)
    log = read_records(log_paths)
    if not log.records:
        raise ShadowError(f"no decision records in {', '.join(map(str, log.files)) or 'the given logs'}")
    anomaly = _is_anomaly_log(log.records)
    classes = _anomaly_classes(log.records, ok_class or target.ok_class) if anomaly else _model_classes(log.records)
    ok = _ok_class(ok_class or target.ok_class, classes, log.records)
    by_key = _latest(log.records)
    by_sha = {rec.image_sha256: rec for rec in sorted(log.records, key=lambda r: r.time)}
    repeated_model = len(log.records) - len(by_key)

    rows = read_inspector_csv(inspector_csv) if inspector_csv is not None else reference_rows(study_csv)
    problems: dict[str, list[str]] = {"inspector_without_decision": [], "decision_without_inspector": [],
                                      "repeated_inspector_rows": [], "unknown_labels": [], "rows_without_id": [],
                                      "sha256_differs": []}
    latest_rows: dict[str, InspectorRow] = {}
    for row in rows:
        if not row.part_id and not row.sha256:
            problems["rows_without_id"].append(f"line {row.line}")
            continue
        if not _interpret(row, classes, ok) and not (anomaly and _defect_kind(row)):
            problems["unknown_labels"].append(f"line {row.line}: {row.raw_label!r}")
            continue
        if row.key in latest_rows:
            problems["repeated_inspector_rows"].append(f"line {row.line}: {row.key}")
            if (row.time or "") < (latest_rows[row.key].time or ""):
                continue  # the later decision stands
        latest_rows[row.key] = row

    pairs: list[tuple[InspectorRow, DecisionRecord]] = []
    used: set[str] = set()
    for key, row in latest_rows.items():
        rec = by_key.get(key) if row.part_id else None
        if rec is None and row.sha256:
            rec = by_sha.get(row.sha256)
        if rec is None:
            problems["inspector_without_decision"].append(key)
            continue
        if row.sha256 and row.part_id and rec.image_sha256 != row.sha256:
            problems["sha256_differs"].append(key)
        used.add(f"part:{rec.part_id}" if rec.part_id else f"sha256:{rec.image_sha256}")
        pairs.append((row, rec))
    problems["decision_without_inspector"] = sorted(set(by_key) - used)
    if target.accepted_accuracy is not None and any(row.label is None for row, _ in pairs):
        raise ShadowError("an accepted_accuracy target needs the inspectors' class of every part; "
                          "some rows only say ng: use a max_escape_rate target")
    parts = [_part(row, rec, ok) for row, rec in pairs]
    out = {
        "format": SHADOW_FORMAT, "version": 1,
        "logs": [str(p) for p in log.files], "skipped_log_lines": log.skipped_lines,
        "inspector_csv": str(inspector_csv) if inspector_csv is not None else f"{study_csv} (reference calls)",
        "repeated_model_records": repeated_model, "classes": classes, "ok_class": ok,
        "period": {"first": min((r.time for _, r in pairs), default=None), "last": max((r.time for _, r in pairs), default=None)},
        "model_ids": sorted({r.model_id for _, r in pairs}),
        "counts": {"decisions": len(log.records), "inspector_rows": len(rows), "matched": len(pairs),
                   **{k: len(v) for k, v in problems.items()}},
        "mismatches": {k: v[:LISTED] for k, v in problems.items()},
        "summary": _summary(parts, confidence),
        "per_class": _per_class(parts, classes + _inspector_kinds(parts, classes), ok, confidence),
        "recommendation": recommend_anomaly(pairs, target, confidence) if anomaly else
        recommend(pairs, classes, ok, target, confidence),
        "parts": parts,
    }
    if study_csv is not None:
        out["study"] = attribute_study(study_csv, log.files, ok_class=ok, classes=classes, confidence=confidence)
    return out


def _inspector_kinds(parts: list[dict[str, Any]], classes: list[str]) -> list[str]:
    """Defect kinds the inspectors named that the model does not (an anomaly bundle names none)."""
    return sorted({p["inspector_label"] for p in parts if p["inspector_label"] and p["inspector_label"] not in classes})


def _defect_kind(row: InspectorRow) -> bool:
    """Anomaly logs: the model names no defect kind, so an inspector's own kind (``scratch``) is a defect of that
    kind (counted per kind); empty words stay unknown."""
    if not row.raw_label.strip():
        return False
    row.label, row.good = row.raw_label.strip(), False
    return True


def recommend_anomaly(pairs: list[tuple[InspectorRow, DecisionRecord]], target: ThresholdTarget,
                      confidence: float) -> dict[str, Any]:
    """An anomaly bundle's operating point is fixed by its manifest (its accept threshold): the shadow period
    certifies its escapes with the inspectors as ground truth, or says how many defective parts are still needed."""
    limit = target.max_escape_rate if target.max_escape_rate is not None else 0.01
    defective = [(row, rec) for row, rec in pairs if row.good is False]
    escapes = sum(rec.action == "accept" for _, rec in defective)
    n = len(defective)
    upper = stats.clopper_pearson_upper(escapes, n, confidence) if n else 1.0
    out = {"target": f"escape rate <= {limit:g}", "risk": "escape", "limit": limit, "confidence": confidence,
           "shadowed_parts": len(pairs), "pool": n, "pool_name": "defective parts", "escapes": escapes,
           "threshold": None, "upper": upper if n else None}
    level = f"{confidence:.0%}"
    if n and upper <= limit:
        automated = sum(rec.action != "review" for _, rec in pairs) / len(pairs)
        out.update(decision="automate", automation_rate=automated,
                   message=f"automate at the bundle's thresholds: {escapes} escape(s) among {n} shadowed defective parts "
                           f"put the {level} upper bound on the escape rate at {upper:.3%}, at or below the target "
                           f"{limit:.3%}; {automated:.1%} of the shadowed parts would have been decided without a person")
        return out
    needed = defective_parts_needed(escapes, limit, confidence)
    out.update(decision="keep_shadowing", needed=needed, more=max(0, (needed or 0) - n),
               message=f"keep shadowing: {escapes} escape(s) among {n} shadowed defective parts; {needed} defective parts "
                       f"with at most {escapes} escape(s) would certify escapes <= {limit:.3%} at {level} confidence: "
                       f"about {max(0, (needed or 0) - n)} more")
    return out


def _part(row: InspectorRow, rec: DecisionRecord, ok: str) -> dict[str, Any]:
    automated = not rec.abstain and rec.action != "review"
    model_good = rec.label == ok
    escape = automated and model_good and row.good is False
    false_reject = automated and not model_good and row.good is True
    return {"part_id": rec.part_id, "image_sha256": rec.image_sha256, "time": rec.time, "image": rec.image,
            "model_label": rec.label, "confidence": rec.confidence, "action": rec.action, "automated": automated,
            "inspector": row.raw_label, "inspector_label": row.label, "inspector_good": row.good,
            "agree": (rec.label == row.label) if row.label is not None else (model_good == row.good),
            "agree_ok_ng": model_good == row.good, "escape": escape, "false_reject": false_reject,
            "outcome": "escape" if escape else "false reject" if false_reject else "to a person" if not automated
            else "agree" if model_good == row.good else "other"}


def _summary(parts: list[dict[str, Any]], confidence: float) -> dict[str, Any]:
    n = len(parts)
    auto = [p for p in parts if p["automated"]]
    defective = [p for p in parts if p["inspector_good"] is False]
    good = [p for p in parts if p["inspector_good"] is True]
    with_class = [p for p in parts if p["inspector_label"] is not None]
    return {
        "parts": n, "defective": len(defective), "good": len(good),
        "agreement": stats.rate(sum(p["agree"] for p in with_class), len(with_class), confidence),
        "agreement_ok_ng": stats.rate(sum(p["agree_ok_ng"] for p in parts), n, confidence),
        "automated": stats.rate(len(auto), n, confidence),
        "agreement_automated": stats.rate(sum(p["agree_ok_ng"] for p in auto), len(auto), confidence),
        "escapes": stats.rate(sum(p["escape"] for p in parts), len(defective), confidence),
        "false_rejects": stats.rate(sum(p["false_reject"] for p in parts), len(good), confidence),
    }


def _per_class(parts: list[dict[str, Any]], classes: list[str], ok: str, confidence: float) -> list[dict[str, Any]]:
    out = []
    groups = [(c, [p for p in parts if p["inspector_label"] == c]) for c in classes]
    groups.append(("ng (no class)", [p for p in parts if p["inspector_label"] is None]))
    for name, members in groups:
        if not members and name not in classes:
            continue
        n = len(members)
        row = {"class": name, "kind": "good" if name == ok else "defect", "parts": n,
               "automated": stats.rate(sum(p["automated"] for p in members), n, confidence),
               "agreement": stats.rate(sum(p["agree"] for p in members), n, confidence)}
        if name == ok:
            row["false_rejects"] = stats.rate(sum(p["false_reject"] for p in members), n, confidence)
        else:
            row["escapes"] = stats.rate(sum(p["escape"] for p in members), n, confidence)
        out.append(row)
    return out


def defective_parts_needed(escapes: int, limit: float, confidence: float) -> int | None:
    """The fewest defective parts whose ``escapes`` give a one-sided upper bound at or below ``limit``."""
    return stats.sample_size_with_failures(escapes, limit, confidence)


def recommend(pairs: list[tuple[InspectorRow, DecisionRecord]], classes: list[str], ok: str, target: ThresholdTarget,
              confidence: float) -> dict[str, Any]:
    """Certify a threshold on the shadowed parts, with the inspectors as ground truth (``certify_threshold``)."""
    if not pairs:
        return {"decision": "keep_shadowing", "threshold": None, "message": "no shadowed part could be joined yet"}
    ok_index = classes.index(ok)
    defect_fallback = next(i for i in range(len(classes)) if i != ok_index) if len(classes) > 1 else ok_index
    probs = np.array([[rec.probabilities[c] for c in classes] for _, rec in pairs], dtype=np.float64)
    # An inspector's bare "ng" counts as a defect of some class other than ok: escapes only ask "defect or not".
    labels = np.array([classes.index(row.label) if row.label is not None else defect_fallback for row, _ in pairs])
    cert = certify_threshold(probs, labels, target, classes, confidence, ok)
    escape_target = target.accepted_accuracy is None
    pool = int((labels != ok_index).sum()) if escape_target else len(labels)
    pool_name = "defective parts" if escape_target else "parts"
    risk = "escape rate" if escape_target else "error rate of automated decisions"
    out = {"target": f"{risk} <= {cert['limit']:g}", "risk": cert["risk"], "limit": cert["limit"], "confidence": confidence,
           "shadowed_parts": len(pairs), "pool": pool, "pool_name": pool_name}
    level = f"{confidence:.0%}"
    if cert["certified"]:
        val = cert["val"]
        out.update(decision="automate", threshold=cert["threshold"], upper=val["risk_upper"],
                   automation_rate=val["automation_rate"], escapes=val.get("escapes"),
                   message=(f"automate at threshold {cert['threshold']:.4g}: over the {pool} shadowed {pool_name}, the "
                            f"{level} upper bound on the {risk} is {val['risk_upper']:.3%}, at or below the target "
                            f"{cert['limit']:.3%}; {val['automation_rate']:.1%} of the shadowed parts would have been "
                            "decided without a person"))
        return out
    stop = cert["stopped_at"]
    events = stop["k"] if stop else 0
    if cert["needed_images"] is None:
        out.update(decision="keep_shadowing", threshold=None, needed=None,
                   message=f"keep shadowing: a {risk} of 0 cannot be certified by any number of parts; set a target above 0")
        return out
    if escape_target:
        needed = defective_parts_needed(events, cert["limit"], confidence)
    else:
        needed = cert["needed_images"]
    more = max(0, (needed or 0) - (stop["n"] if stop and not escape_target else pool))
    share = pool / len(pairs) if escape_target and pool else None
    out.update(decision="keep_shadowing", threshold=None, needed=needed, more=more,
               more_parts=math.ceil(more / share) if share else None, stopped_at=stop)
    more_text = f"about {more} more {pool_name}" + (f" (about {out['more_parts']} parts at the observed defect share)"
                                                   if out["more_parts"] else "")
    if stop:
        why = (f"{events} escape(s) at the most conservative testable threshold put the {level} upper bound on the {risk} "
               f"at {stop['risk_upper']:.3%}, above the target {cert['limit']:.3%}")
    else:
        why = (f"{pool} {pool_name} are too few to bound the {risk} at {cert['limit']:.3%} with {level} confidence, "
               "even with none wrong")
    out["message"] = (f"keep shadowing: {why}; {needed} {pool_name} with at most {events} escape(s) would certify it: "
                      f"{more_text}, if no new {'escape' if escape_target else 'error'} appears")
    return out


@dataclass
class ShadowFiles:
    folder: Path
    json: Path
    html: Path
    parts_csv: Path


def write_shadow(result: dict[str, Any], out_dir: str | Path, lang: str = "en") -> ShadowFiles:
    """``shadow.json``, ``shadow_parts.csv`` (one row per joined part) and ``shadow.html`` in ``out_dir``,
    assembled in a staging folder and swapped in whole."""
    out_dir = Path(out_dir)
    staging = staging_dir(out_dir)
    write_json_atomic(staging / SHADOW_NAME, result)
    write_csv_atomic(staging / SHADOW_PARTS, result["parts"])
    if result.get("study"):
        write_csv_atomic(staging / STUDY_CSV, study_rows(result["study"]))
    write_text_atomic(staging / SHADOW_HTML, render_shadow_page(result, lang))
    folder = publish_dir(staging, out_dir)
    return ShadowFiles(folder, folder / SHADOW_NAME, folder / SHADOW_HTML, folder / SHADOW_PARTS)

