"""``kit shadow --study STUDY.csv``: an attribute agreement study, with the model as one more appraiser.

IATF 16949 asks for a measurement-system analysis of every inspection in the control plan; for a pass/fail
(attribute) inspection that is the AIAG attribute agreement study (MSA, 4th ed., chapter III-C). Each
inspector (*appraiser*) calls the same parts several times (*trials*), blind to the earlier calls; a
*reference* call per part, where known, is the standard. The study CSV holds one call per row::

    part,appraiser,trial,call,reference
    P001,Aiko,1,ok,ok
    P001,Aiko,2,ok,ok
    P001,Ben,1,scratch,ok

``call`` and ``reference`` are a class of the line or ok/ng words (``good``, ``pass`` -> the good class;
``ng``, ``reject``, ``defect`` -> ``ng``). A part's reference may stand on any of its rows; two different
references for one part are an error. The model joins as the appraiser ``model`` with one trial: its
decision in the log for the part of that id (the latest). In a pass/fail study (no call names a defect
class) its call is what happens to the part: ``accept`` is ok, ``reject`` and ``review`` (sent to a person)
are ng, since the part does not pass unseen; so its miss rate is the kit's escape rate and its false alarms
are the false rejects plus the good parts it sent to a person. In a study of classes its call is its label,
also where it sent the part to a person (counted as ``model_abstained``).

What a quality engineer's MSA tool prints, each figure ``kit.verify.attribute_agreement``'s (k of n with a
two-sided Clopper-Pearson interval; kappa with its interval):

- **within appraiser** (repeatability): parts on which all of an appraiser's trials agree, and the Fleiss
  kappa of those trials;
- **each appraiser against the reference**: effectiveness, miss rate and false-alarm rate per decision, each
  with its AIAG level, Cohen's kappa against the reference, and the AIAG verdict (acceptable / marginal /
  unacceptable: the worst of the three levels);
- **between appraisers** (reproducibility): parts on which every call of every inspector agrees, and their
  Fleiss kappa; the same with the model (each inspector's first trial and the model's call); Cohen's kappa of
  every pair on first trials;
- **all appraisers against the reference**: parts on which every call equals the reference;
- the sample size: a miss rate at or below 2 % at 95 % confidence needs 149 defective parts with no miss
  (``parts_needed``), against the defective and good parts this study has.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from deploy.decision_log import read_records
from kit.errors import ShadowError
from kit.verify.attribute_agreement import (AIAG_LEVELS, AIAG_REFERENCE, cohens_kappa, fleiss_kappa, parts_needed,
                                            versus_reference, within_appraiser)
from kit.verify.stats import rate

STUDY_FORMAT = "inspection-kit/attribute-study"
MODEL = "model"
NG = "ng"
OK_WORDS = {"ok", "good", "pass", "accept", "accepted", "g"}
NG_WORDS = {"ng", "nok", "nog", "bad", "defect", "defective", "fail", "reject", "rejected"}
COLUMNS = {"part": ("part", "part_id"), "appraiser": ("appraiser", "inspector", "operator"),
           "trial": ("trial", "replicate", "repeat"), "call": ("call", "result", "decision", "label"),
           "reference": ("reference", "standard", "truth")}


class StudyError(ShadowError):
    """The study CSV cannot be read as an attribute agreement study."""


def _normalise(word: str, ok_class: str, classes: set[str]) -> str:
    if word in classes:
        return word
    low = word.lower()
    if low in OK_WORDS or word == ok_class:
        return ok_class
    if low in NG_WORDS:
        return NG
    return word


def read_study(path: str | Path, ok_class: str = "ok", classes: Iterable[str] = ()) -> dict[str, Any]:
    """{calls: {appraiser: {part: [call per trial, in trial order]}}, reference: {part: call}}; every error names
    the file, the row and the field."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study CSV not found")
    known = set(classes)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
        col = {name: next((fields[c] for c in choices if c in fields), None) for name, choices in COLUMNS.items()}
        missing = [name for name in ("part", "appraiser", "trial", "call") if col[name] is None]
        if missing:
            raise StudyError(f"{path}: needs the columns part, appraiser, trial, call (and reference where known); "
                             f"missing {', '.join(missing)} (columns: {', '.join(reader.fieldnames or []) or 'none'})")
        calls: dict[str, dict[str, dict[int, str]]] = defaultdict(lambda: defaultdict(dict))
        reference: dict[str, tuple[str, int]] = {}
        for row_no, row in enumerate(reader, start=2):
            cell = {name: (row.get(c) or "").strip() if c else "" for name, c in col.items()}
            for name in ("part", "appraiser", "trial", "call"):
                if not cell[name]:
                    raise StudyError(f"{path}:{row_no}: {name} is empty")
            if cell["appraiser"] == MODEL:
                raise StudyError(f"{path}:{row_no}: appraiser {MODEL!r} is the model's name in the study (its calls come "
                                 "from the decision logs); rename this appraiser")
            try:
                trial = int(cell["trial"])
                if trial < 1:
                    raise ValueError
            except ValueError:
                raise StudyError(f"{path}:{row_no}: trial {cell['trial']!r} is not a whole number from 1") from None
            part, who = cell["part"], cell["appraiser"]
            if trial in calls[who][part]:
                raise StudyError(f"{path}:{row_no}: appraiser {who!r} has trial {trial} of part {part!r} twice")
            calls[who][part][trial] = _normalise(cell["call"], ok_class, known)
            if cell["reference"]:
                ref = _normalise(cell["reference"], ok_class, known)
                if part in reference and reference[part][0] != ref:
                    raise StudyError(f"{path}:{row_no}: reference {ref!r} of part {part!r} differs from "
                                     f"{reference[part][0]!r} on row {reference[part][1]}")
                reference.setdefault(part, (ref, row_no))
    if not calls:
        raise StudyError(f"{path}: no calls (one row per part, appraiser and trial)")
    return {"calls": {who: {part: [t[k] for k in sorted(t)] for part, t in parts.items()} for who, parts in calls.items()},
            "reference": {part: ref for part, (ref, _) in reference.items()}}


def model_calls(log_paths: Iterable[str | Path], parts: Iterable[str], ok_class: str,
                pass_fail: bool) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The model's call on each study part it decided (latest decision by part id), and counts."""
    log = read_records(log_paths)
    latest = {}
    for rec in sorted(log.records, key=lambda r: r.time):
        if rec.part_id:
            latest[rec.part_id] = rec
    calls, abstained, absent = {}, 0, 0
    for part in parts:
        rec = latest.get(part)
        if rec is None:
            absent += 1
            continue
        to_person = bool(rec.abstain or rec.action == "review")
        if pass_fail:  # what happens to the part: it passes unseen (accept) or it does not (reject, review)
            label = ok_class if rec.action == "accept" and not to_person else NG
        else:
            label = rec.label
        calls[part] = [label]
        abstained += to_person
    return calls, {"model_decisions": len(log.records), "model_parts": len(calls), "model_without_decision": absent,
                   "model_abstained": abstained}


def _pairs(calls: dict[str, list[str]], reference: dict[str, str]) -> tuple[list[str], list[str]]:
    decided, truth = [], []
    for part, trials in calls.items():
        if part in reference:
            decided += trials
            truth += [reference[part]] * len(trials)
    return decided, truth


def _appraiser(name: str, calls: dict[str, list[str]], reference: dict[str, str], ok_class: str,
               confidence: float) -> dict[str, Any]:
    decided, truth = _pairs(calls, reference)
    versus = versus_reference(decided, truth, good=ok_class, confidence=confidence)
    repeated = [trials for trials in calls.values() if len(trials) >= 2]
    trials = {len(t) for t in repeated}
    within_kappa = fleiss_kappa(repeated, confidence) if len(trials) == 1 else None
    with_ref = [p for p in calls if p in reference]
    return {
        "appraiser": name, "is_model": name == MODEL, "parts": len(calls), "decisions": sum(map(len, calls.values())),
        "trials": max(map(len, calls.values())),
        "within": within_appraiser(calls, confidence) if repeated else None,
        "within_kappa": within_kappa,
        "versus_reference": versus,
        "all_trials_match_reference": rate(sum(all(c == reference[p] for c in calls[p]) for p in with_ref),
                                           len(with_ref), confidence),
        "kappa_reference": cohens_kappa(decided, truth, confidence) if decided else None,
        "aiag": versus["aiag"],
    }


def attribute_study(study_csv: str | Path, log_paths: Iterable[str | Path] = (), ok_class: str = "ok",
                    classes: Iterable[str] = (), confidence: float = 0.95) -> dict[str, Any]:
    """The study's figures (see the module docstring): a JSON-ready dict."""
    study = read_study(study_csv, ok_class, classes)
    calls, reference = study["calls"], study["reference"]
    inspectors = sorted(calls)
    words = {c for parts in calls.values() for t in parts.values() for c in t} | set(reference.values())
    pass_fail = words <= {ok_class, NG}
    parts = sorted({p for parts in calls.values() for p in parts} | set(reference))
    counts: dict[str, Any] = {"parts": len(parts), "with_reference": len(reference),
                              "defective": sum(r != ok_class for r in reference.values()),
                              "good": sum(r == ok_class for r in reference.values())}
    appraisers = {who: calls[who] for who in inspectors}
    log_paths = list(log_paths)
    if log_paths:
        model, model_counts = model_calls(log_paths, parts, ok_class, pass_fail)
        counts.update(model_counts)
        if model:
            appraisers[MODEL] = model

    # between the inspectors: parts every inspector called with the same number of trials
    trials_of = {who: {len(t) for t in calls[who].values()} for who in inspectors}
    common = [p for p in parts if all(p in calls[who] for who in inspectors)]
    complete = [p for p in common if len({len(calls[who][p]) for who in inspectors}) == 1]
    counts["incomplete_parts"] = len(parts) - len(complete)
    all_calls = {p: [c for who in inspectors for c in calls[who][p]] for p in complete}
    between = {
        "appraisers": inspectors, "parts": len(complete),
        "agreement": rate(sum(len(set(v)) == 1 for v in all_calls.values()), len(all_calls), confidence),
        "fleiss": fleiss_kappa(list(all_calls.values()), confidence) if len(inspectors) > 1 else None,
        "all_match_reference": rate(sum(all(c == reference[p] for c in all_calls[p]) for p in complete if p in reference),
                                    sum(p in reference for p in complete), confidence),
    }
    firsts = {who: {p: t[0] for p, t in parts_.items()} for who, parts_ in appraisers.items()}
    with_model = None
    if MODEL in appraisers:
        shared = [p for p in complete if p in firsts[MODEL]]
        first_calls = [[firsts[who][p] for who in [*inspectors, MODEL]] for p in shared]
        with_model = {"appraisers": [*inspectors, MODEL], "parts": len(shared), "trial": 1,
                      "agreement": rate(sum(len(set(v)) == 1 for v in first_calls), len(first_calls), confidence),
                      "fleiss": fleiss_kappa(first_calls, confidence),
                      "all_match_reference": rate(
                          sum(all(c == reference[p] for c in v) for p, v in zip(shared, first_calls) if p in reference),
                          sum(p in reference for p in shared), confidence)}
    names = list(appraisers)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = [p for p in firsts[a] if p in firsts[b]]
            pairs.append({"a": a, "b": b, "parts": len(shared), **cohens_kappa([firsts[a][p] for p in shared],
                                                                               [firsts[b][p] for p in shared], confidence)})
    return {
        "format": STUDY_FORMAT, "version": 1, "study_csv": str(study_csv), "ok_class": ok_class,
        "pass_fail": pass_fail, "confidence": confidence, "counts": counts,
        "trials": {who: sorted(t) for who, t in trials_of.items()},
        "appraisers": [_appraiser(who, appraisers[who], reference, ok_class, confidence) for who in names],
        "between": between, "between_with_model": with_model, "pairs": pairs,
        "parts_needed": parts_needed(confidence), "aiag_levels": {k: list(v) for k, v in AIAG_LEVELS.items()},
        "reference_text": AIAG_REFERENCE,
    }


def sample_size_sentences(study: dict[str, Any]) -> list[str]:
    """The sample size statement, in English (the report words it per language from the same figures)."""
    need, counts = study["parts_needed"], study["counts"]
    level = f"{study['confidence']:.0%}"
    return [f"a miss rate <= {AIAG_LEVELS['miss_rate'][0]:.0%} at {level} confidence needs "
            f"{need['miss_rate']['acceptable']} defective parts with no miss ({AIAG_LEVELS['miss_rate'][1]:.0%}: "
            f"{need['miss_rate']['marginal']}); this study has {counts['defective']} defective parts",
            f"a false-alarm rate <= {AIAG_LEVELS['false_alarm_rate'][0]:.0%} at {level} confidence needs "
            f"{need['false_alarm_rate']['acceptable']} good parts with no false alarm "
            f"({AIAG_LEVELS['false_alarm_rate'][1]:.0%}: {need['false_alarm_rate']['marginal']}); this study has "
            f"{counts['good']} good parts"]


def study_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per appraiser, every figure with its counts and interval (``attribute_study.csv``)."""
    rows = []
    for a in study["appraisers"]:
        row: dict[str, Any] = {"appraiser": a["appraiser"], "parts": a["parts"], "decisions": a["decisions"],
                               "trials": a["trials"]}
        figures = {"within": a["within"], **{m: a["versus_reference"][m] for m in AIAG_LEVELS}}
        for name, r in figures.items():
            for field in ("k", "n", "rate", "low", "high"):
                row[f"{name}_{field}"] = None if r is None else r[field]
            if name in AIAG_LEVELS:
                row[f"{name}_aiag"] = r["aiag"]
        kappa = a["kappa_reference"] or {}
        row.update(kappa_reference=kappa.get("kappa"), kappa_reference_low=kappa.get("low"),
                   kappa_reference_high=kappa.get("high"), aiag=a["aiag"])
        rows.append(row)
    return rows
