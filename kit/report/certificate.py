"""The operating threshold's certificate in words: what ``kit verify`` certified, on which images, what the test split
says about it, and what the certification images bound about escapes and false rejects (one-sided bounds, said so)."""

from __future__ import annotations

from typing import Callable

from kit.report.format import format_pct, format_rate_ci
from kit.verify.record import KpiRecord, Operating


def operating_sentences(kpi: KpiRecord, t: Callable[..., str]) -> list[str]:
    """What the operating threshold is worth, in two sentences: whether its target was certified on
    validation (with the certificate), then what actually happens on the test split. Abstaining is
    described only when the threshold sends some, but not all, parts to a person."""
    op = kpi.operating
    sentences = []
    if op.certificate:
        message = certificate_message(op, kpi.certify_images or kpi.val_images, t)
        sentences.append(t("op_certified" if op.certified else "op_not_certified", message=message))
    elif op.threshold is not None:
        sentences.append(t("op_no_target", thr=f"{op.threshold:.6g}"))
    else:
        sentences.append(t("op_no_threshold"))
    auto, acc = kpi.intervals.automation_rate, kpi.intervals.accepted_accuracy
    confirmation = _test_confirmation(kpi, t)
    if confirmation:
        sentences.append(confirmation)
    if auto["n"] and auto["k"] == auto["n"]:
        sentences.append(t("out_all", n=auto["n"], rate=format_rate_ci(auto, t)))
    elif auto["k"] == 0:
        sentences.append(t("out_none", n=auto["n"]))
    else:
        sentences.append(t("out_some", k=auto["k"], n=auto["n"], rate=format_rate_ci(auto, t), acc=format_rate_ci(acc, t),
                           rest=auto["n"] - auto["k"], thr=f"{op.threshold:.6g}"))  # as the certificate writes it
    return sentences


def _test_confirmation(kpi: KpiRecord, t: Callable[..., str]) -> str | None:
    """Whether the test split confirms a certified operating target: the same risk on test with its one-sided 95 %
    upper bound, the figures of the gate's ``verify.threshold.test`` check (``kit.verify.gate``)."""
    op, measured = kpi.operating, kpi.measured
    cert = op.certificate
    if not cert or not op.certified:
        return None
    err, upper = measured.operating_test_risk, measured.operating_test_risk_upper
    if err is None or upper is None:  # a kpi.json from before the check: the two-sided interval's end
        acc, esc = kpi.intervals.accepted_accuracy, kpi.intervals.escape_rate
        if cert["risk"] == "accepted_error_rate" and acc and acc["n"]:
            err, upper = 1.0 - acc["rate"], 1.0 - acc["low"]
        elif cert["risk"] != "accepted_error_rate" and esc and esc["n"]:
            err, upper = esc["rate"], esc["high"]
        else:
            return None
    limit = cert["limit"]
    key = "op_test_confirmed" if upper <= limit + 1e-12 else "op_test_unconfirmed"
    return t(key, err=format_pct(err), upper=format_pct(upper), limit=_percent_4g(limit))


def _percent_4g(x: float) -> str:
    """A percentage the way ``kit verify`` writes it in the certificate (``kit.verify.threshold``)."""
    return f"{x * 100:.4g} %"


def certificate_message(op: Operating, val_images: int, t: Callable[..., str]) -> str:
    """The certificate of ``kit verify`` in the report's language, from its fields; in English the words
    of ``certificate["message"]`` (a test holds the two together)."""
    cert, val = op.certificate or {}, op.val
    blocked = [c for c, v in (cert.get("class_escapes") or {}).items() if v["blocked"]]
    if blocked:
        v = cert["class_escapes"][blocked[0]]
        return t("cert_class_blocked", limit=_percent_4g(v["limit"]), cls=blocked[0], needed=v["needed"], n=v["n"])
    accuracy = cert["risk"] == "accepted_error_rate"
    suffix = "_acc" if accuracy else "_esc"
    claim = _percent_4g(round(1.0 - cert["limit"], 12) if accuracy else cert["limit"])
    level = _percent_4g(op.confidence)
    parts = val_images if accuracy else val.get("defective_parts", 0)
    if op.certified:
        taken = f"{val['automation_rate']:.1%}" if accuracy else str(val["escapes"])
        return t("cert_ok" + suffix, parts=parts, claim=claim, level=level, thr=f"{op.threshold:.6g}", taken=taken,
                 upper=_percent_4g(val["risk_upper"]))
    if cert["needed_images"] is None:
        return t("cert_zero" + suffix, claim=claim)
    stop = cert.get("stopped_at")
    if stop is None:
        return t("cert_needs" + suffix, parts=parts, claim=claim, level=level, needed=cert["needed_images"])
    return t("cert_failed" + suffix, parts=parts, thr=f"{stop['threshold']:.6g}", k=stop["k"], n=stop["n"],
             upper=_percent_4g(stop["risk_upper"]), level=level, limit=_percent_4g(cert["limit"]))


def certificate_sentences(kpi: KpiRecord, t: Callable[..., str]) -> list[str]:
    """Page two: which images certified (held out of every choice, or the same images that chose: optimistic), and
    the quality engineer's sentence: the escapes of every defect class and the false rejects, bounded on those images
    whatever the threshold, each a one-sided upper bound."""
    op = kpi.operating
    if not op.certificate:
        return []
    on = op.certified_on or {"independent": False, "images": kpi.val_images, "chose_images": kpi.val_images, "seed": None}
    level = _percent_4g(op.confidence or 0.95)
    out = [t("cert_held_out", n=on["images"], chose=on["chose_images"], seed=on["seed"], level=level) if on["independent"]
           else t("cert_same_images", n=on["images"], level=level)]
    risks = (op.certificate or {}).get("line_risks")
    if op.certified and risks:
        escapes = t("sep").join(t("cert_class_bound", cls=c, upper=format_pct(r["upper"]), k=r["k"], n=r["n"])
                                for c, r in risks.items() if r["kind"] == "escape")
        good = next(((c, r) for c, r in risks.items() if r["kind"] == "false_reject"), None)
        claim = _percent_4g(round(1.0 - op.certificate["limit"], 12)) if op.certificate["risk"] == "accepted_error_rate" \
            else None
        out.append(t("cert_quality", n=on["images"], thr=f"{op.threshold:.6g}", claim=claim or "–", escapes=escapes,
                     ok=good[0] if good else "–", fr=format_pct(good[1]["upper"]) if good else "–",
                     k=good[1]["k"] if good else 0, m=good[1]["n"] if good else 0, level=level))
    return out
