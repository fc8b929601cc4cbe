"""The operating confidence threshold: below it a part goes to a person.

Chosen on the validation split, then reported on the test split: automation rate (coverage),
abstain rate, accuracy of the decisions taken alone, and escapes (defective parts auto-accepted
as good). Two ways to choose it:

- ``certify_threshold`` (what ``kit verify`` should use): the lowest threshold whose target
  holds *with a stated confidence*, by fixed-sequence testing of one-sided Clopper-Pearson
  bounds (Learn then Test). The target then holds on new parts, not just on validation.
- ``choose_threshold`` (kept for compatibility): the lowest threshold whose *point estimate*
  meets the target on validation. With zero margin it misses the target on new parts about
  half the time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import ValidationError
from scipy.stats import binom

from deploy.decision import effective_confidence
from kit.errors import ArgumentError, RecipeError
from kit.recipe.schema import ThresholdTarget
from kit.verify.stats import clopper_pearson_upper, zero_failure_sample_size


def accepted_mask(probabilities: np.ndarray, threshold: float | None, floors: np.ndarray | None = None) -> np.ndarray:
    """The parts decided without a person, by the deployed rule (``deploy.decision.DecisionRule.accepted``):
    top probability at or above the threshold and at or above its predicted class's floor."""
    # float64: against a Python float, numpy 2 compares a float32 array in float32, where NO_AUTOMATION
    # (just above 1.0) rounds to 1.0 and would accept every part whose confidence is exactly 1.0
    conf = probabilities.max(axis=1).astype(np.float64)
    accepted = conf >= threshold if threshold is not None else np.ones(len(conf), bool)
    if floors is not None:
        accepted &= conf >= floors[probabilities.argmax(axis=1)]
    return accepted


def operating_point(probabilities: np.ndarray, labels: np.ndarray, threshold: float | None,
                    ok_index: int | None = None, floors: np.ndarray | None = None) -> dict[str, Any]:
    pred = probabilities.argmax(axis=1)
    accepted = accepted_mask(probabilities, threshold, floors)
    n = len(labels)
    n_acc = int(accepted.sum())
    out: dict[str, Any] = {
        "threshold": threshold, "images": n, "accepted": n_acc,
        "accepted_correct": int((pred[accepted] == labels[accepted]).sum()),
        "automation_rate": n_acc / n if n else 0.0,
        "abstain_rate": 1.0 - n_acc / n if n else 0.0,
        "accepted_accuracy": float((pred[accepted] == labels[accepted]).mean()) if n_acc else None,
        "overall_accuracy": float((pred == labels).mean()) if n else 0.0,
    }
    if ok_index is not None:
        defective = labels != ok_index
        escapes = accepted & defective & (pred == ok_index)
        out["escape_rate"] = float(escapes.sum() / defective.sum()) if defective.any() else 0.0
        out["escapes"] = int(escapes.sum())
        out["defective_parts"] = int(defective.sum())
        good = ~defective
        false_rejects = accepted & good & (pred != ok_index)
        out["false_rejects"] = int(false_rejects.sum())
        out["good_parts"] = int(good.sum())
        out["false_reject_rate"] = float(false_rejects.sum() / good.sum()) if good.any() else 0.0
    return out


def coverage_curve(probabilities: np.ndarray, labels: np.ndarray, points: int = 41) -> list[dict[str, Any]]:
    """Automation rate vs accuracy of accepted decisions as the threshold rises (for the report's chart)."""
    conf = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    thresholds = np.unique(np.quantile(conf, np.linspace(0, 1, points))) if len(conf) else np.array([])
    rows = []
    for t in thresholds:
        accepted = conf >= t  # t is one of conf's own values: same precision
        rows.append({"threshold": float(t), "automation_rate": float(accepted.mean()),
                     "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None})
    return rows


def _meets(point: dict[str, Any], target: ThresholdTarget) -> bool:
    if target.accepted_accuracy is not None:
        return point["accepted_accuracy"] is not None and point["accepted_accuracy"] >= target.accepted_accuracy - 1e-12
    return point["escape_rate"] <= target.max_escape_rate + 1e-12


NO_AUTOMATION = float(np.nextafter(1.0, 2.0))  # above every confidence, 1.0 included: every part goes to a person


def ok_class_index(target: ThresholdTarget | None, classes: list[str], line_ok_class: str | None = None) -> int | None:
    """The good-part class: the target's ``ok_class``, else ``line.ok_class``, else a class literally named
    ``ok``; None for a line of defect types only. An escape-rate target without one is an error."""
    name = (target.ok_class if target is not None and target.ok_class else None) or line_ok_class
    name = name or ("ok" if "ok" in classes else None)
    if name is None:
        if target is not None and target.max_escape_rate is not None:
            raise RecipeError("verify.threshold.max_escape_rate needs the good-part class: set line.ok_class "
                              "(or pass the ok class)")
        return None
    if name not in classes:
        raise RecipeError(f"line.ok_class: {name!r} is not a class of this line ({', '.join(classes)})")
    return classes.index(name)


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray, target: ThresholdTarget,
                     classes: list[str]) -> dict[str, Any]:
    """Scan every distinct confidence (ascending) and keep the first whose point estimate meets the target.

    No margin for sampling error: use ``certify_threshold`` to choose the operating threshold.
    Kept for ``kit threshold`` and existing callers until they move over.
    """
    ok_index = ok_class_index(target, classes)
    candidates = np.unique(np.concatenate([[0.0], probabilities.max(axis=1)]))
    for t in candidates:
        point = operating_point(probabilities, labels, float(t), ok_index)
        if point["automation_rate"] > 0 and _meets(point, target):
            return {"threshold": float(t), "reached": True, "val": point}
    # Unreachable even on the most confident images: every part goes to a person.
    return {"threshold": NO_AUTOMATION, "reached": False, "val": operating_point(probabilities, labels, NO_AUTOMATION, ok_index)}


def certify_threshold(probabilities: np.ndarray, labels: np.ndarray, target: ThresholdTarget, classes: list[str],
                      confidence: float = 0.95, line_ok_class: str | None = None,
                      floors: np.ndarray | None = None) -> dict[str, Any]:
    """The lowest threshold whose target holds on new parts with probability ``confidence``.

    Learn then Test (Angelopoulos, Bates, Candes, Jordan, Lei 2021, arXiv:2110.01052) with
    fixed-sequence testing: one null hypothesis per threshold t, "the risk at t exceeds the
    limit", tested in a fixed order from the most conservative threshold (highest) downwards,
    stopping at the first that is not rejected. Only the first true null met can be rejected
    in error, so the chance of certifying any threshold whose risk exceeds the limit is at most
    ``alpha = 1 - confidence``, however many thresholds are walked. A threshold is rejected
    (certified) when the one-sided Clopper-Pearson upper bound on its risk is at most the limit,
    i.e. when the binomial p-value ``P(Bin(n, limit) <= k) <= alpha``; that form is evaluated
    for every threshold at once.

    Risk, as ``operating_point`` measures it:

    - ``accepted_accuracy = a``: errors among accepted parts, k of n accepted, limit ``1 - a``.
      Given the accepted count the errors are binomial, so the bound is exact for that count.
    - ``max_escape_rate = e``: escapes (defective parts accepted as the ok class) over all n
      defective parts, limit ``e``. Monotone in t, so the fixed order loses nothing.

    Candidates are the distinct validation confidences, highest first. Between two consecutive
    values the accepted set, hence every test, is constant, so this walk is what any finer fixed
    grid would do, and fixed-sequence testing pays no price for the grid's length (unlike a
    Bonferroni split); a coarse fixed grid would only give up automation. Thresholds whose
    sample is too small to be certified even with zero errors (n below ``needed_images``,
    ``ln(alpha) / ln(1 - limit)``) are skipped rather than tested: they can never be rejected
    and would stop the walk at the first part. Angelopoulos & Bates (2021, arXiv:2107.07511,
    selective classification) skip thresholds with under 30 accepted points for the same
    reason; the floor here is the one the bound itself implies. The floor depends on the
    confidences only, never on which parts are wrong.

    Returns ``threshold`` (``NO_AUTOMATION``, just above 1.0, when nothing is certified: every part goes
    to a person, a confidence of exactly 1.0 included),
    ``certified``, ``confidence``, ``risk`` (``accepted_error_rate`` or ``escape_rate``),
    ``limit``, ``val`` (``operating_point`` at the threshold plus ``risk_upper``, the bound),
    ``tested`` (hypotheses tested, the failing one included), ``stopped_at`` (the threshold
    that failed, with its k, n and bound; None when the walk ran out), ``floors`` (per-class
    thresholds, fixed before the search, applied to every candidate, so the certificate covers the rule
    as deployed), ``needed_images`` (the
    fewest accepted, or defective, validation parts that could certify the limit with zero
    errors; None for a zero limit) and a one-line ``message``.
    """
    alpha = 1.0 - confidence
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (got {confidence})")
    ok_index = ok_class_index(target, classes, line_ok_class)
    risk_name, limit = _risk_limit(target)
    thresholds, k, n = _risk_counts(probabilities, labels, target, ok_index, floors)
    needed = zero_failure_sample_size(limit, confidence)
    walk = np.flatnonzero(n >= needed) if needed is not None else np.array([], int)
    rejected = binom.cdf(k[walk], n[walk], limit) <= alpha
    per_class = _class_escape_tests(probabilities, labels, thresholds, target, classes, ok_index, floors, alpha)
    if per_class is not None:
        blocked = [c for c, v in per_class.items() if v["needed"] is None or v["n"] < v["needed"]]
        walk = walk if not blocked else np.array([], int)
        rejected = (rejected & np.all([v["passes"][walk] for v in per_class.values()], axis=0)) if len(walk) else rejected[:0]
    stop = int(np.argmin(rejected)) if not rejected.all() else len(walk)
    out: dict[str, Any] = {"threshold": NO_AUTOMATION, "certified": stop > 0, "confidence": confidence, "risk": risk_name,
                           "limit": limit, "tested": min(stop + 1, len(walk)), "stopped_at": None, "needed_images": needed}
    if stop < len(walk):
        j = walk[stop]
        out["stopped_at"] = {"threshold": float(thresholds[j]), "k": int(k[j]), "n": int(n[j]),
                             "risk_upper": clopper_pearson_upper(int(k[j]), int(n[j]), confidence)}
    upper = None
    if stop > 0:
        j = walk[stop - 1]
        out["threshold"] = _between(thresholds, j)
        upper = clopper_pearson_upper(int(k[j]), int(n[j]), confidence)
    out["val"] = {**operating_point(probabilities, labels, out["threshold"], ok_index, floors), "risk_upper": upper}
    out["message"] = _certify_message(out, target, _sample_size(labels, target, ok_index))
    if per_class is not None:
        out["class_escapes"] = _class_escape_summary(per_class, thresholds, out["threshold"], confidence)
        blocked = [c for c, v in out["class_escapes"].items() if v["blocked"]]
        if blocked:
            out["certified"], out["threshold"] = False, NO_AUTOMATION
            out["val"] = {**operating_point(probabilities, labels, NO_AUTOMATION, ok_index, floors), "risk_upper": None}
            v = out["class_escapes"][blocked[0]]
            out["message"] = (f"not certifiable: the escape limit of {_percent(v['limit'])} for {blocked[0]} needs about "
                              f"{v['needed']} defective {blocked[0]} validation images with no escape (have {v['n']})")
    return out


SAFETY_GAP = 1e-6  # below the lowest accepted confidence when no lower one exists


def _between(thresholds: np.ndarray, j: int) -> float:
    """A threshold that accepts exactly the parts ``thresholds[j]`` accepts (descending candidates), placed halfway
    to the next lower confidence: a part whose confidence is recomputed with float noise (another machine,
    another runtime, float32 vs float64) is still decided as it was certified."""
    if j + 1 < len(thresholds):  # in float64: two adjacent float32 confidences have no float32 between them
        return (float(thresholds[j]) + float(thresholds[j + 1])) / 2.0
    return max(0.0, float(thresholds[j]) - SAFETY_GAP)


def _class_escape_tests(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, target: ThresholdTarget,
                        classes: list[str], ok_index: int | None, floors: np.ndarray | None,
                        alpha: float) -> dict[str, dict[str, Any]] | None:
    """Per class of ``target.class_escape_limits``: whether each candidate threshold's escape bound is within the
    class's limit. Every class null is tested at the full ``alpha``: the threshold's null ("some risk is over its
    limit") is a union, rejected only when each part is (an intersection-union test needs no correction)."""
    if not target.class_escape_limits:
        return None
    if ok_index is None:
        raise RecipeError("verify.threshold.class_escape_limits needs the good-part class: set line.ok_class")
    conf = effective_confidence(probabilities, floors)
    pred = probabilities.argmax(axis=1)
    out = {}
    for name, limit in target.class_escape_limits.items():
        if name not in classes:
            raise RecipeError(f"verify.threshold.class_escape_limits: {name!r} is not a class of this line ({', '.join(classes)})")
        members = labels == classes.index(name)
        k = _count_at_or_above(conf[members & (pred == ok_index)], thresholds)
        n = int(members.sum())
        out[name] = {"limit": float(limit), "n": n, "k": k, "needed": zero_failure_sample_size(limit, 1.0 - alpha),
                     "passes": (binom.cdf(k, n, limit) <= alpha) if n else np.zeros(len(thresholds), bool)}
    return out


def _class_escape_summary(per_class: dict[str, dict[str, Any]], thresholds: np.ndarray, threshold: float,
                          confidence: float) -> dict[str, dict[str, Any]]:
    at = np.flatnonzero(thresholds >= threshold)
    j = int(at[-1]) if len(at) else None  # the chosen threshold's position (None: nothing accepted)
    out = {}
    for name, v in per_class.items():
        k = int(v["k"][j]) if j is not None else 0
        out[name] = {"limit": v["limit"], "n": v["n"], "k": k, "needed": v["needed"],
                     "upper": clopper_pearson_upper(k, v["n"], confidence) if v["n"] else None,
                     "blocked": v["needed"] is None or v["n"] < v["needed"]}
    return out


def _risk_limit(target: ThresholdTarget) -> tuple[str, float]:
    if target.accepted_accuracy is not None:
        return "accepted_error_rate", round(1.0 - target.accepted_accuracy, 12)  # 1 - 0.99 is 0.010000000000000009
    return "escape_rate", float(target.max_escape_rate)


def _sample_size(labels: np.ndarray, target: ThresholdTarget, ok_index: int | None) -> int:
    """The parts a risk is measured over when all are accepted: every part, or every defective one."""
    return int(len(labels)) if target.accepted_accuracy is not None else int((labels != ok_index).sum())


def _risk_counts(probabilities: np.ndarray, labels: np.ndarray, target: ThresholdTarget,
                 ok_index: int | None, floors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct confidences (descending) and, at each as the threshold, the risk's k events in n parts.
    With class floors a part below its floor has confidence 0: no candidate threshold accepts it."""
    conf = effective_confidence(probabilities, floors)
    pred = probabilities.argmax(axis=1)
    thresholds = np.unique(conf[conf > 0])[::-1]
    if target.accepted_accuracy is not None:
        event = pred != labels
        n = _count_at_or_above(conf, thresholds)
    else:
        event = (labels != ok_index) & (pred == ok_index)
        n = np.full(len(thresholds), _sample_size(labels, target, ok_index))
    return thresholds, _count_at_or_above(conf[event], thresholds), n


def _count_at_or_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many ``values`` are >= each threshold (the parts a threshold accepts)."""
    return len(values) - np.searchsorted(np.sort(values), thresholds, side="left")


def _percent(x: float) -> str:
    return f"{x * 100:.4g} %"


def _certify_message(out: dict[str, Any], target: ThresholdTarget, parts: int) -> str:
    accuracy = target.accepted_accuracy is not None
    claim = (f"{_percent(target.accepted_accuracy)} accepted accuracy" if accuracy
             else f"an escape rate of at most {_percent(out['limit'])}")
    level = f"at {_percent(out['confidence'])} confidence"
    pool = "validation images" if accuracy else "defective validation images"
    if out["certified"]:
        val = out["val"]
        taken = f"{val['automation_rate']:.1%} automated" if accuracy else f"{val['escapes']} escapes accepted"
        return (f"certified with {parts} {pool}: {claim} {level} at threshold {out['threshold']:.6g} ({taken}; "
                f"upper bound {_percent(val['risk_upper'])} on the {out['risk'].replace('_', ' ')})")
    if out["needed_images"] is None:
        key = "accepted_accuracy below 1" if accuracy else "max_escape_rate above 0 (e.g. 0.001)"
        return f"not certifiable: {claim} means zero errors, which no finite validation set can certify; set {key}"
    if out["stopped_at"] is None:
        what = "accepted validation images with no error" if accuracy else "defective validation images with no escape"
        return f"not certifiable with {parts} {pool}: {claim} {level} needs about {out['needed_images']} {what}"
    stop = out["stopped_at"]
    events = "errors among {} accepted parts" if accuracy else "escapes among {} defective parts"
    return (f"not certified with {parts} {pool}: at the most conservative testable threshold {stop['threshold']:.6g}, "
            f"{stop['k']} {events.format(stop['n'])} give an upper bound of {_percent(stop['risk_upper'])} {level}, above the "
            f"{_percent(out['limit'])} limit; every part goes to a person")


def describe_target(target: ThresholdTarget) -> str:
    if target.accepted_accuracy is not None:
        return f"accepted_accuracy >= {target.accepted_accuracy:g}"
    return f"escape_rate <= {target.max_escape_rate:g} (ok class {target.ok_class!r})"


def parse_target(text: str, ok_class: str | None = None) -> ThresholdTarget:
    """``accepted_accuracy=0.995`` or ``max_escape_rate=0.001`` (with ``ok_class``) -> a target."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key not in ("accepted_accuracy", "max_escape_rate"):
        raise ArgumentError("target", f"expected accepted_accuracy=VALUE or max_escape_rate=VALUE (got {text!r})")
    try:
        number = float(value)
    except ValueError:
        raise ArgumentError("target", f"{value.strip()!r} is not a number") from None
    try:
        return ThresholdTarget(**{key: number, "ok_class": ok_class})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ArgumentError("target", f"{text}: {where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}") from None


def strictest_certifiable_limit(n: int, confidence: float = 0.95) -> float | None:
    """The lowest risk limit that ``n`` parts with no error among them can certify: ``1 - alpha^(1/n)``
    (the one-sided Clopper-Pearson bound at k = 0). None for no parts."""
    return None if n <= 0 else clopper_pearson_upper(0, n, confidence)


def certifiability_problems(target: ThresholdTarget | None, labels: np.ndarray, classes: list[str],
                            line_ok_class: str | None = None) -> list[str]:
    """Before any training: the parts of the operating target that the validation split is too small to certify
    even if the model made no error at all, one line each with the images needed and what it can certify instead.
    Such a run can only end with every part sent to a person, so ``kit run`` says it at the start."""
    if target is None:
        return []
    confidence, problems = target.confidence, []
    ok_index = ok_class_index(target, classes, line_ok_class)
    _, limit = _risk_limit(target)
    have = _sample_size(labels, target, ok_index)
    needed = zero_failure_sample_size(limit, confidence)
    level = f"at {_percent(confidence)} confidence"
    pool = "validation images" if target.accepted_accuracy is not None else "defective validation images"
    if needed is not None and have < needed:
        best = strictest_certifiable_limit(have, confidence)
        if target.accepted_accuracy is not None:
            instead = (f"accepted_accuracy {math.floor((1 - best) * 1000) / 1000:g} is the strictest these can certify, with no error at all"
                       if best is not None and best < 1 else "none can be certified")
            problems.append(f"verify.threshold.accepted_accuracy: {_percent(target.accepted_accuracy)} {level} needs at "
                            f"least {needed} {pool} with no error, this split has {have}: {instead}; or add "
                            f"{needed - have} images to the validation split")
        else:
            instead = (f"max_escape_rate {math.ceil(best * 1000) / 1000:g} is the strictest these can certify, with no error at all"
                       if best is not None and best < 1 else "none can be certified")
            problems.append(f"verify.threshold.max_escape_rate: {_percent(limit)} {level} needs at least {needed} {pool} "
                            f"with no escape, this split has {have}: {instead}; or add {needed - have} defective images "
                            "to the validation split")
    for name, class_limit in target.class_escape_limits.items():
        n = int((labels == classes.index(name)).sum()) if name in classes else 0
        needed = zero_failure_sample_size(class_limit, confidence)
        if needed is not None and n < needed:
            problems.append(f"verify.threshold.class_escape_limits.{name}: {_percent(class_limit)} {level} needs at least "
                            f"{needed} {name} validation images with no escape, this split has {n}")
    return problems
