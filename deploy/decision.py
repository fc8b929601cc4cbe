"""The decision rules: model outputs -> label, abstain and the action on the line.

Two rules, one per task (``model.json`` ``task``): ``DecisionRule`` for classifiers (calibrated
probabilities) and ``AnomalyRule`` for anomaly bundles (an anomaly score learnt from good parts alone).

Written once here, read from the bundle manifest (``model.json`` ``decision``), so every runtime,
``deploy serve``, ``deploy watch`` and ``kit verify`` (which certifies and measures the operating
point) take exactly the same decision for the same probabilities.

- ``threshold``: the certified operating threshold; a part whose top probability is below it goes
  to a person (``review``). None: every part is decided by the model.
- ``class_thresholds``: optional stricter thresholds per predicted class (e.g. a higher bar before
  a part may be *accepted* as good). A class threshold can only raise the bar: the effective
  threshold for a part predicted as class c is ``max(threshold, class_thresholds[c])``. The
  certification in ``kit verify`` walks the global threshold with these floors applied, so the
  certificate covers the rule as deployed.
- ``ok_class``: the good-part class. A confident ``ok`` decision is ``accept``, a confident defect
  decision is ``reject``. A line without a good-part class (defect types only) has no accept /
  reject meaning: confident decisions are ``accept`` (the model's label stands, route the part by
  its label).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from deploy.errors import DeployError

ACCEPT, REJECT, REVIEW = "accept", "reject", "review"
ACTIONS = (ACCEPT, REJECT, REVIEW)


@dataclass(frozen=True)
class DecisionRule:
    threshold: float | None = None
    ok_class: str | None = None
    class_thresholds: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, classes: Sequence[str], source: str = "decision") -> "DecisionRule":
        d = dict(d or {})
        ok = d.get("ok_class")
        if ok is not None and ok not in classes:
            raise DeployError(f"{source}.ok_class: {ok!r} is not one of the classes ({', '.join(classes)})")
        per_class = dict(d.get("class_thresholds") or {})
        unknown = sorted(set(per_class) - set(classes))
        if unknown:
            raise DeployError(f"{source}.class_thresholds: {', '.join(map(repr, unknown))} not among the classes ({', '.join(classes)})")
        threshold = d.get("threshold")
        return cls(threshold=None if threshold is None else float(threshold), ok_class=ok,
                   class_thresholds={k: float(v) for k, v in per_class.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "ok_class": self.ok_class, "class_thresholds": dict(self.class_thresholds),
                "actions": {"review": "top probability below the threshold of its predicted class",
                            "accept": f"confident {self.ok_class!r}" if self.ok_class else "confident decision (no good-part class)",
                            "reject": "confident defect class" if self.ok_class else "never (no good-part class)"}}

    def class_floors(self, classes: Sequence[str]) -> np.ndarray:
        """Per class, the lowest confidence at which a part predicted as that class is decided alone
        (the class thresholds only; the global threshold applies on top)."""
        return np.array([self.class_thresholds.get(c, 0.0) for c in classes], dtype=np.float64)

    def accepted(self, probabilities: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """Boolean mask: the parts the model decides alone (not sent to a person)."""
        # float64 throughout: a float32 comparison would round a threshold just above 1.0 down to 1.0
        conf = probabilities.max(axis=1).astype(np.float64)
        bar = self.class_floors(classes)[probabilities.argmax(axis=1)]
        if self.threshold is not None:
            bar = np.maximum(bar, self.threshold)
        return conf >= bar

    def action(self, label: str, abstain: bool) -> str:
        if abstain:
            return REVIEW
        if self.ok_class is None or label == self.ok_class:
            return ACCEPT
        return REJECT


def effective_confidence(probabilities: np.ndarray, floors: np.ndarray | None) -> np.ndarray:
    """Top probability, set to 0 where it is below its predicted class's floor: thresholding this at t
    accepts exactly what ``DecisionRule(t, class_thresholds=...)`` accepts (for t > 0)."""
    conf = probabilities.max(axis=1).astype(np.float64)  # thresholds are float64 (see DecisionRule.accepted)
    if floors is None:
        return conf
    return np.where(conf >= floors[probabilities.argmax(axis=1)], conf, 0.0)


# -- anomaly bundles --------------------------------------------------------------------------------------------

GOOD_SCORE_QUANTILES = 101  # good_scores: the 0, 1, ..., 100 % quantiles of the good validation parts' scores
_ANOMALY_FIELDS = ("ok_class", "accept_below", "reject_at", "defect_label", "kinds", "kind_radius", "unknown_label",
                   "good_scores", "certified")
_ANOMALY_EXPLAINED = ("task", "actions", "threshold")  # written beside the fields; not read back


class AnomalyOutcome(NamedTuple):
    """The decisions of a batch by an ``AnomalyRule``, one entry per part."""

    labels: list[str]
    actions: list[str]
    abstain: np.ndarray  # bool: the review band (a person decides)
    confidence: np.ndarray  # float64 in [0, 1] (AnomalyRule.confidence)


@dataclass(frozen=True)
class AnomalyRule:
    """The decision rule of an anomaly bundle (``model.json`` ``task: anomaly``).

    The model gives an image anomaly score ``s``, normalised so that 1.0 is the 99th percentile of the good
    validation parts' scores (higher: less like a good part):

    - ``s >= reject_at``: ``reject``, labelled ``defect_label``; the hybrid (``kinds`` named) labels it with the
      nearest kind by the model's ``kind_distance`` output when that distance is within ``kind_radius[kind]``,
      else ``unknown_label``;
    - ``accept_below <= s < reject_at``: ``review`` (abstain), labelled as a reject would be: the suspected defect;
    - ``s < accept_below``: ``accept``, labelled ``ok_class``.

    A score that is not a number (NaN) is never accepted: it goes to review with confidence 0.

    ``confidence`` (``AnomalyRule.confidence``) is read off ``good_scores``, the 0..100 % quantiles of the good
    validation parts' scores, interpolated linearly between them: for an ``ok_class`` label the share of good
    validation parts scoring at least ``s`` (1.0: more typical than every one of them), for a defect label the
    share scoring below ``s``. Anyone holding ``model.json`` can recompute it from the logged score.
    """

    ok_class: str
    accept_below: float
    reject_at: float
    good_scores: tuple[float, ...]
    defect_label: str = "defect"
    kinds: tuple[str, ...] = ()
    kind_radius: Mapping[str, float] = field(default_factory=dict)
    unknown_label: str = "unknown defect"
    certified: bool = False

    def __post_init__(self) -> None:
        values = _anomaly_values({f.name: getattr(self, f.name) for f in fields(self)}, "AnomalyRule")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, classes: Sequence[str], source: str = "decision") -> "AnomalyRule":
        """The ``decision`` block of an anomaly bundle; every field written out (none is filled in), the labels
        it can give equal to ``classes``. A mistake is one ``DeployError`` line naming the field."""
        if not isinstance(d, Mapping):
            raise DeployError(f"{source}: expected an object with the anomaly rule ({', '.join(_ANOMALY_FIELDS)}), "
                              f"got {d!r}")
        if d.get("task", "anomaly") != "anomaly":
            raise DeployError(f"{source}.task: {d['task']!r}, expected 'anomaly' (the bundle's task)")
        unknown = sorted(set(d) - set(_ANOMALY_FIELDS) - set(_ANOMALY_EXPLAINED))
        if unknown:
            raise DeployError(f"{source}.{unknown[0]}: not a field of the anomaly rule (fields: {', '.join(_ANOMALY_FIELDS)})")
        missing = [name for name in _ANOMALY_FIELDS if name not in d]
        if missing:
            raise DeployError(f"{source}.{missing[0]}: missing; an anomaly bundle writes every field of its rule "
                              f"({', '.join(_ANOMALY_FIELDS)}): re-export or re-verify the bundle")
        rule = cls(**_anomaly_values({k: d[k] for k in _ANOMALY_FIELDS}, source))
        _check_labels(rule, list(classes), source)
        return rule

    def to_dict(self) -> dict[str, Any]:
        named = (f"the nearest of {', '.join(map(repr, self.kinds))} within its kind_radius, else "
                 f"{self.unknown_label!r}") if self.kinds else repr(self.defect_label)
        return {"task": "anomaly", "ok_class": self.ok_class, "accept_below": self.accept_below,
                "reject_at": self.reject_at, "defect_label": self.defect_label, "kinds": list(self.kinds),
                "kind_radius": dict(self.kind_radius), "unknown_label": self.unknown_label,
                "good_scores": list(self.good_scores), "certified": self.certified,
                "actions": {"accept": f"score below {self.accept_below:g}: {self.ok_class!r}",
                            "review": f"score from {self.accept_below:g} to below {self.reject_at:g}: a person decides "
                                      "(labelled with the suspected defect)",
                            "reject": f"score {self.reject_at:g} or more: {named}",
                            "confidence": f"{self.ok_class!r}: share of good validation parts scoring at least the "
                                          "part's score; a defect label: share scoring below it"}}

    def labels(self) -> list[str]:
        """The labels a decision can carry, in the order of ``model.json`` ``classes``."""
        return [self.ok_class, *self.kinds, self.unknown_label] if self.kinds else [self.ok_class, self.defect_label]

    def share_below(self, scores: np.ndarray) -> np.ndarray:
        """Share of the good validation parts scoring below each score, interpolated linearly between the
        quantiles in ``good_scores`` (0 at or below the lowest, 1 above the highest; NaN gives 1)."""
        good = np.asarray(self.good_scores, np.float64)
        s = np.asarray(scores, np.float64)
        i = np.searchsorted(good, s, side="left")  # good[i - 1] < s <= good[i]: a span of positive width
        lo, hi = good[np.clip(i - 1, 0, len(good) - 1)], good[np.clip(i, 0, len(good) - 1)]
        inside = (i > 0) & (i < len(good))
        frac = np.where(inside, (s - lo) / np.where(inside, hi - lo, 1.0), 0.0)
        share = (i - 1 + frac) / (len(good) - 1)
        return np.where(i == 0, 0.0, np.where(i >= len(good), 1.0, share))

    def confidence(self, scores: np.ndarray, accepted: np.ndarray) -> np.ndarray:
        """Per part, in [0, 1]: where ``accepted`` (labelled ``ok_class``) the share of good validation parts
        scoring at least the score, elsewhere the share scoring below it; 0 for a score that is not a number."""
        s = np.asarray(scores, np.float64)
        below = self.share_below(s)
        return np.where(np.isnan(s), 0.0, np.where(accepted, 1.0 - below, below))

    def defect_labels(self, n: int, kind_distance: np.ndarray | None = None) -> np.ndarray:
        """What a rejected part is called: ``defect_label``; the hybrid's nearest kind within its radius, else
        ``unknown_label``."""
        if not self.kinds:
            return np.full(n, self.defect_label, dtype=object)
        if kind_distance is None:
            raise DeployError(f"the anomaly rule names kinds ({', '.join(self.kinds)}) and needs the model's "
                              "kind_distance output to name a defect")
        distance = np.asarray(kind_distance, np.float64)
        if distance.shape != (n, len(self.kinds)):
            raise DeployError(f"kind_distance has shape {list(distance.shape)}, expected [{n}, {len(self.kinds)}] "
                              f"(one per kind: {', '.join(self.kinds)})")
        nearest = np.nan_to_num(distance, nan=np.inf).argmin(axis=1)
        radius = np.array([self.kind_radius[k] for k in self.kinds], np.float64)[nearest]
        within = distance[np.arange(n), nearest] <= radius
        return np.where(within, np.array(self.kinds, dtype=object)[nearest], self.unknown_label)

    def decide(self, scores: np.ndarray, kind_distance: np.ndarray | None = None) -> AnomalyOutcome:
        """Scores (N) and, for the hybrid, kind distances (N x kinds) -> the decisions of the N parts.
        Compared in float64, like ``DecisionRule``: a float32 score is compared at its exact value."""
        s = np.asarray(scores, np.float64).reshape(-1)
        reject, accept = s >= self.reject_at, s < self.accept_below  # NaN is neither: review
        labels = np.where(accept, self.ok_class, self.defect_labels(len(s), kind_distance))
        actions = np.where(reject, REJECT, np.where(accept, ACCEPT, REVIEW))
        return AnomalyOutcome([str(x) for x in labels], [str(a) for a in actions], ~reject & ~accept,
                              self.confidence(s, accept))


def _finite(value: Any) -> float | None:
    """A finite number as float, else None (a bool is no number here, a string neither)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DeployError(f"{where}: expected a non-empty name, got {value!r}")
    return value


def _anomaly_values(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The fields of an anomaly rule checked and in their types (tuples, a dict of floats), or one DeployError
    line naming the field."""
    out: dict[str, Any] = {name: _name(d[name], f"{source}.{name}") for name in ("ok_class", "defect_label", "unknown_label")}
    for name in ("accept_below", "reject_at"):
        out[name] = _finite(d[name])
        if out[name] is None:
            raise DeployError(f"{source}.{name}: {d[name]!r} is not a finite number")
    if out["accept_below"] > out["reject_at"]:
        raise DeployError(f"{source}.accept_below: {out['accept_below']:g} is above reject_at {out['reject_at']:g}; the "
                          "review band is accept_below <= score < reject_at (equal: no band)")
    kinds = d["kinds"]
    if isinstance(kinds, (str, bytes)) or not isinstance(kinds, Sequence):
        raise DeployError(f"{source}.kinds: expected a list of defect kind names ([] without named kinds), got {kinds!r}")
    out["kinds"] = tuple(_name(k, f"{source}.kinds") for k in kinds)
    labels = [out["ok_class"], *out["kinds"], out["unknown_label"]] if out["kinds"] else [out["ok_class"], out["defect_label"]]
    twice = next((x for i, x in enumerate(labels) if x in labels[:i]), None)
    if twice is not None:
        raise DeployError(f"{source}: the label {twice!r} is named twice (ok_class, kinds and unknown_label, or ok_class "
                          "and defect_label, must differ)")
    radius = d["kind_radius"]
    if not isinstance(radius, Mapping):
        raise DeployError(f"{source}.kind_radius: expected an object kind -> radius ({{}} without named kinds), got {radius!r}")
    stray = sorted(set(radius) - set(out["kinds"]))
    if stray:
        raise DeployError(f"{source}.kind_radius: {stray[0]!r} is not one of the kinds ({', '.join(out['kinds']) or 'none'})")
    lacking = [k for k in out["kinds"] if k not in radius]
    if lacking:
        raise DeployError(f"{source}.kind_radius: no radius for the kind {lacking[0]!r}; every kind needs one")
    out["kind_radius"] = {}
    for kind in out["kinds"]:
        value = _finite(radius[kind])
        if value is None or value < 0:
            raise DeployError(f"{source}.kind_radius.{kind}: {radius[kind]!r} is not a number >= 0")
        out["kind_radius"][kind] = value
    out["good_scores"] = _good_scores(d["good_scores"], f"{source}.good_scores")
    if not isinstance(d["certified"], bool):
        raise DeployError(f"{source}.certified: {d['certified']!r} is not true or false")
    out["certified"] = d["certified"]
    return out


def _good_scores(value: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != GOOD_SCORE_QUANTILES:
        count = f"{len(value)} values" if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else repr(value)
        raise DeployError(f"{where}: expected the {GOOD_SCORE_QUANTILES} quantiles 0, 1, ..., 100 % of the good "
                          f"validation parts' scores, got {count}")
    scores = [_finite(v) for v in value]
    bad = next((i for i, v in enumerate(scores) if v is None), None)
    if bad is not None:
        raise DeployError(f"{where}[{bad}]: {value[bad]!r} is not a finite number")
    down = next((i for i in range(1, len(scores)) if scores[i] < scores[i - 1]), None)
    if down is not None:
        raise DeployError(f"{where}: not non-decreasing ({scores[down - 1]:g} at {down - 1} %, then {scores[down]:g} at "
                          f"{down} %); write the quantiles in order")
    return tuple(scores)


def _check_labels(rule: AnomalyRule, classes: list[str], source: str) -> None:
    """``classes`` must be the labels the rule gives: [ok_class, defect_label], or [ok_class, *kinds, unknown_label]."""
    if classes == rule.labels():
        return
    shape = "[ok_class, *kinds, unknown_label]" if rule.kinds else "[ok_class, defect_label]"
    if not classes or classes[0] != rule.ok_class:
        name, value = "ok_class", rule.ok_class
    elif rule.kinds and classes[1:-1] != list(rule.kinds):
        name, value = "kinds", list(rule.kinds)
    elif rule.kinds:
        name, value = "unknown_label", rule.unknown_label
    else:
        name, value = "defect_label", rule.defect_label
    raise DeployError(f"{source}.{name}: {value!r} does not fit the classes {classes}; an anomaly bundle's classes are "
                      f"{shape} = {rule.labels()}")
