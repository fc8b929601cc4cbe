"""The decision rule: calibrated probabilities -> label, abstain and the action on the line.

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

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

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
