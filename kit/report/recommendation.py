"""Page one's plain recommendation: GO, GO after a shadow period, or NO-GO, with reasons and next actions.

The verdict itself is ``kit verify``'s (``kpi.json`` ``release``, ``kit.verify.release``); this module words it:

- NO-GO: a gated target is missed (on the value the gate used). Each missed target names its next
  action: the class to collect, the corruption family to add to the strong view, the validation
  images needed for a certificate, ...
- GO after a shadow period: every target is met on its measured value, but some rate is met only
  as a point estimate (the pessimistic end of its 95 % interval is past the limit), so the test
  split is too small to say the target holds. The shadow period must show that bound cleared: for
  an escape limit, the defective parts to shadow with no escape (``zero_failure_sample_size``) and,
  with ``line.defect_rate``, about how many parts produced that is.
- GO: every target met and every rate's pessimistic bound within its limit.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from kit.report.breaking import breaking_summary
from kit.report.charts import family_name
from kit.verdict import GO, NO_GO, NONE, SHADOW, Check
from kit.verify.release import point_only  # noqa: F401  (the report's KPI table marks the same checks)
from kit.verify.record import KpiRecord
from kit.verify.stats import zero_failure_sample_size

GATE_BOUND_CONFIDENCE = 0.975  # one-sided level of the upper end of a two-sided 95 % interval


def _defect_share(kpi: KpiRecord, cls: str | None) -> float | None:
    """Production share of one defect class (or of all defects), from the production mix, if the recipe gives one."""
    production = kpi.operating.production
    if not production:
        return None
    weights = production["weights"]
    ok = kpi.operating.ok_class
    return weights.get(cls) if cls else sum(w for c, w in weights.items() if c != ok)


def _worst_family(kpi: KpiRecord, deployed: str, held_out_only: bool) -> str | None:
    summary = kpi.robustness["summary"].get(deployed) or {}
    fams = kpi.robustness["families"]
    scores = {f: v for f, v in (summary.get("per_family") or {}).items()
              if v is not None and (not held_out_only or fams[f]["coverage"] == "held-out")}
    return min(scores, key=scores.get) if scores else None


def _action(check: Check, kpi: KpiRecord, t: Callable[..., str]) -> str:
    target, deployed = check.target, kpi.deployed_runtime
    if target == "verify.threshold.test":
        return t("act_test_unconfirmed")
    if target == "verify.threshold":
        cert = kpi.operating.certificate or {}
        needed = cert.get("needed_images")
        if needed:
            return t("act_certify", needed=needed, n=kpi.val_images)
        return t("act_certify_errors")
    if (target.startswith("kpi.max_class_escape_rate") or target == "kpi.max_false_reject_rate") and check.value is None:
        return t("act_escape_unmeasured")
    if target.startswith("kpi.max_class_escape_rate"):
        cls = target[target.index("[") + 1:-1] if "[" in target else kpi.measured.worst_escape_class
        return t("act_escape", cls=cls or "?")
    if target == "kpi.max_false_reject_rate":
        return t("act_false_reject", ok=kpi.operating.ok_class or "?")
    if target.startswith("kpi.min_heldout_relative_robustness["):  # one held-out family (kit.verify.gate)
        return t("act_add_family", family=family_name(target[target.index("[") + 1:-1], t))
    if target in ("kpi.min_relative_robustness", "kpi.min_heldout_relative_robustness"):
        fam = _worst_family(kpi, deployed, target == "kpi.min_heldout_relative_robustness")
        return t("act_robustness", family=family_name(fam, t) if fam else "?")
    if target in ("kpi.max_latency_p95_ms", "line takt"):
        return t("act_latency")
    if target in ("kpi.min_accuracy", "kpi.min_macro_f1", "kpi.max_accuracy_gap", "kpi.min_agreement"):
        return t("act_accuracy")
    if target in ("kpi.min_automation_rate", "kpi.min_accepted_accuracy"):
        return t("act_automation")
    if target == "kpi.max_ece":
        return t("act_calibration")
    return t("act_see_table")


def _shadow_need(check: Check, kpi: KpiRecord, t: Callable[..., str]) -> str:
    """What a shadow period must show for a target met only as a point estimate."""
    target, limit = check.target, check.limit
    if target.startswith("kpi.max_class_escape_rate") or target == "kpi.max_false_reject_rate":
        if target == "kpi.max_false_reject_rate":
            cls, what = kpi.operating.ok_class, "good"
        else:
            cls = target[target.index("[") + 1:-1] if "[" in target else kpi.measured.worst_escape_class
            what = "defect"
        # the gate's bound is the upper end of a two-sided 95 % Clopper-Pearson interval: one-sided 97.5 %
        needed = zero_failure_sample_size(limit, GATE_BOUND_CONFIDENCE) if limit and limit > 0 else None
        if needed is None:
            return t("shadow_zero_limit", cls=cls)
        if target == "kpi.max_class_escape_rate":  # one limit for every defect class: each must show it
            return _every_class_need(kpi, needed, limit, t)
        share = _defect_share(kpi, cls) if what == "defect" else None
        if share:
            return t("shadow_escape_mix", n=needed, cls=cls, limit=f"{100 * limit:g} %", parts=f"{math.ceil(needed / share):,}")
        return t("shadow_escape" if what == "defect" else "shadow_false_reject", n=needed, cls=cls, limit=f"{100 * limit:g} %")
    bound = check.bound
    if target == "verify.threshold.test":
        zero, at_rate = _confirmation_parts(check.point, limit)
        return t("shadow_test_confirm", bound=f"{100 * bound:.1f} %" if bound is not None else "?", limit=f"{100 * limit:g} %",
                 zero=f"{zero:,}" if zero else "?", n=f"{at_rate:,}" if at_rate else "?",
                 err=f"{100 * check.point:.1f} %" if check.point is not None else "?")
    if target == "kpi.max_accuracy_gap":
        return t("shadow_gap", limit=f"{100 * limit:g}", bound=f"{100 * bound:.1f}" if bound is not None else "?")
    return t("shadow_bound", target=t("g_" + target.removeprefix("kpi.").split("[")[0].replace(" ", "_")),
             bound=f"{100 * bound:.1f} %" if bound is not None else "?", limit=f"{100 * limit:g} %")


def _every_class_need(kpi: KpiRecord, needed: int, limit: float, t: Callable[..., str]) -> str:
    ok = kpi.operating.ok_class
    defects = [c for c in (kpi.operating.escapes_test or {}).get("classes", {}) if c != ok]
    classes = t("sep").join(defects)
    production = kpi.operating.production
    shares = [production["weights"][c] for c in defects if production and production["weights"].get(c)] if production else []
    if shares:  # the rarest defect class sets how long the shadow period runs
        return t("shadow_escape_all_mix", n=needed, classes=classes, limit=f"{100 * limit:g} %",
                 parts=f"{math.ceil(needed / min(shares)):,}")
    return t("shadow_escape_all", n=needed, classes=classes, limit=f"{100 * limit:g} %")


def _corruption_warning(kpi: KpiRecord, t: Callable[..., str]) -> list[str]:
    """The line conditions that break the model (escapes or false rejects past their limits), named; page one's
    table (``kit.report.breaking``) gives the level of each in physical units and what to do."""
    return breaking_summary(kpi, t)


def recommend(kpi: KpiRecord, t: Callable[..., str]) -> dict[str, Any]:
    """Page one's reasons and next actions for the verdict ``kit verify`` stored (``kpi.verdict``): never another."""
    rel = kpi.verdict
    warnings = _corruption_warning(kpi, t) if rel.verdict != NONE else []
    by_target = {c.target: c for c in kpi.gate.gated}
    named = [by_target[r] for r in rel.reasons if r in by_target]
    if rel.verdict == NO_GO:
        return {"kind": NO_GO, "reasons": list(rel.reasons), "actions": list(dict.fromkeys(_action(c, kpi, t) for c in named)),
                "warnings": warnings}
    if rel.verdict == SHADOW:
        return {"kind": SHADOW, "reasons": list(rel.reasons),
                "actions": list(dict.fromkeys(_shadow_need(c, kpi, t) for c in named)), "warnings": warnings}
    if rel.verdict == GO:
        return {"kind": GO, "reasons": [], "actions": [t("act_go")], "warnings": warnings}
    return {"kind": NONE, "reasons": [], "actions": [], "warnings": []}


def other_shadow_needs(kpi: KpiRecord, t: Callable[..., str]) -> list[str]:
    """What the shadow period must show beyond escapes and false rejects (those are counted per class in the exit
    criteria, ``kit.report.shadow_exit``): the test confirmation of the certificate, an accuracy gap, other bounds."""
    by_target = {c.target: c for c in kpi.gate.gated}
    thin = [by_target[r] for r in kpi.verdict.reasons if r in by_target]
    return list(dict.fromkeys(_shadow_need(c, kpi, t) for c in thin if not _counted_per_class(c.target)))


def _counted_per_class(target: str) -> bool:
    return target.startswith("kpi.max_class_escape_rate") or target == "kpi.max_false_reject_rate"


def _confirmation_parts(error_rate: float | None, limit: float, confidence: float = 0.95) -> tuple[int | None, int | None]:
    """Parts decided alone (and checked) that show a one-sided bound within ``limit``: with no error at all, and with
    errors at the test split's rate (the smallest n whose ``ceil(rate x n)`` errors give a bound within the limit)."""
    from kit.verify.stats import clopper_pearson_upper

    zero = zero_failure_sample_size(limit, confidence) if limit > 0 else None
    if zero is None or error_rate is None or error_rate >= limit:
        return zero, None
    n = zero
    while clopper_pearson_upper(math.ceil(error_rate * n), n, confidence) > limit:
        n = math.ceil(n * 1.05) + 1
        if n > 10_000_000:
            return zero, None
    return zero, n
