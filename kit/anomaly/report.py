"""``kit report`` in anomaly mode: page one says GO, GO after a shadow period, or NO-GO with its reasons, from
``verify/anomaly.json`` alone, every rate with its n and 95 % interval.

- **NO-GO**: the operating point is not certified, or a measured target is missed.
- **GO after a shadow period**: every measured target is met, but an escape target is unmeasured or not yet
  certified (too few defective parts): the page says how many defective parts the shadow period must bring.
- **GO**: every target met and every defect class's escapes certified.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import jinja2

from kit.anomaly.record import RECORD_NAME, AnomalyRecord, read_anomaly_record
from kit.io import publish_dir, staging_dir, write_text_atomic
from deploy.manifest import read_manifest
from kit.rundir import BUNDLE_DIR, HTML_NAME, REPORT_DIR, mark_stage, require_stages
from kit.anomaly.verdict import GO, NO_GO, SHADOW, Recommendation, anomaly_release, recommend, release_of  # noqa: F401
from kit.verify.integrity import hash_problems, rate_problems, recorded_hashes


def _pct(rate: dict[str, Any] | None) -> str:
    if rate is None or rate.get("rate") is None:
        return "unmeasured (n = 0)"
    return f"{rate['rate']:.1%} ({rate['k']} of {rate['n']}; 95 % interval {rate['low']:.1%} - {rate['high']:.1%})"


def breaking_points(record: AnomalyRecord, limit: float, image_size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Per corruption family, the mildest severity at which good parts are rejected above ``limit`` (the false-reject
    target), with the value in the family's own unit and, given the model's ``image_size``, in physical units (the one
    definition the classifier's report uses, ``kit.physical``); families that never cross it are listed as holding."""
    from kit.views.corruptions import get_corruption
    from kit.physical import physical_level

    out = []
    by_family: dict[str, list[dict[str, Any]]] = {}
    for row in record.robustness.get("rows", []):
        by_family.setdefault(row["family"], []).append(row)
    for family, rows in by_family.items():
        crossed = next((r for r in sorted(rows, key=lambda r: r["severity"])
                        if r["false_reject"]["rate"] is not None and r["false_reject"]["rate"] > limit), None)
        unit = get_corruption(family).unit
        physical = (physical_level(family, crossed["value"], image_size).text
                    if crossed is not None and image_size is not None else None)
        out.append({"family": family, "unit": unit, "severity": None if crossed is None else crossed["severity"],
                    "value": None if crossed is None else crossed["value"], "physical": physical,
                    "false_reject": None if crossed is None else crossed["false_reject"]})
    return sorted(out, key=lambda b: (b["severity"] is None, b["severity"] or 0, b["family"]))


def _false_reject_limit(record: AnomalyRecord) -> float:
    limits = [c.limit for c in record.gate.checks if c.target == "kpi.max_false_reject_rate" and c.limit is not None]
    return min(limits) if limits else float(record.certificate["target"])


_PAGE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ r.line }}: anomaly model release report</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.2em .5em;text-align:left}
.v{font-size:1.6em;font-weight:bold}.NO-GO{color:#b00}.GO{color:#070}.SHADOW{color:#a60}</style></head><body>
<h1>{{ r.line }}: anomaly model (learnt from good parts alone)</h1>
<p class="v {{ css }}">{{ rec.verdict }}</p>
{% if rec.reasons %}<ul>{% for x in rec.reasons %}<li>{{ x }}</li>{% endfor %}</ul>{% endif %}
<h2>Line conditions that make good parts look defective</h2>
<p>The mildest level of each change at which more than {{ '%.0f %%' % (100 * fr_limit) }} of good test parts are rejected
({{ r.robustness.n_good }} good parts per cell):</p>
<table><tr><th>change</th><th>from</th><th>good parts rejected there</th></tr>
{% for b in breaks %}<tr><td>{{ b.family }}</td><td>{% if b.severity is none %}holds up to the harshest level tested{% elif b.physical %}{{ b.physical }}{% else %}severity {{ b.severity }}: {{ b.unit }} {{ b.value }}{% endif %}</td>
<td>{{ '-' if b.false_reject is none else pct(b.false_reject) }}</td></tr>{% endfor %}</table>
<h2>Operating point</h2>
<p>{{ r.certificate.message }}. Reject at score {{ reject }}, review from {{ '%.4g' % r.certificate.accept_below }}
(score 1.0 = the 99th percentile of good validation parts). Validation: {{ r.val.n_good }} good of {{ r.val.n }} images.</p>
<table><tr><th>On {{ r.test.n }} test images ({{ r.test.n_good }} good), {{ r.deployed_runtime }}</th><th>rate</th></tr>
<tr><td>good parts rejected (false rejects)</td><td>{{ pct(op.false_reject_rate) }}</td></tr>
<tr><td>good parts sent to review</td><td>{{ pct(op.good_review_rate) }}</td></tr>
<tr><td>defective parts accepted (escapes)</td><td>{{ pct(op.escape_rate) }}</td></tr>
<tr><td>parts decided without a person</td><td>{{ pct(op.automation_rate) }}</td></tr>
{% for name, row in op.per_class.items() %}<tr><td>{{ name }}: caught (rejected or reviewed)</td><td>{{ pct(row.caught) }}</td></tr>{% endfor %}
</table>
<h2>Escapes on validation, per defect class</h2>
<table><tr><th>class</th><th>status</th><th>escapes</th><th>limit</th><th>defective parts that would certify it</th></tr>
{% for name, e in r.escapes.items() %}<tr><td>{{ name }}</td><td>{{ e.status }}</td><td>{{ e.get('k', '-') }} of {{ e.get('n', 0) }}</td>
<td>{{ '%.0f %%' % (100 * e.limit) }}</td><td>{{ e.needed_defective_parts }}</td></tr>{% endfor %}
</table>
<h2>Ranking (test)</h2>
<p>Image AUROC {{ fmt(r.figures.auroc) }}, AUPR {{ fmt(r.figures.aupr) }} ({{ r.test.n - r.test.n_good }} defective, {{ r.test.n_good }} good).
{% if r.figures.recall_at_1pct_false_reject %}At 1 % false rejects on test, caught {{ pct(r.figures.recall_at_1pct_false_reject.caught) }}.{% endif %}</p>
<table><tr><th>defect class</th><th>AUROC against good parts</th></tr>
{% for name, v in r.figures.per_class_auroc.items() %}<tr><td>{{ name }}</td><td>{{ fmt(v) }}</td></tr>{% endfor %}</table>
<h2>Good parts under line changes (robustness)</h2>
<p>Clean: {{ pct(r.robustness.clean_false_reject) }} rejected.</p>
<table><tr><th>family</th><th>severity</th><th>good parts rejected</th><th>sent to review</th></tr>
{% for row in r.robustness.rows %}<tr><td>{{ row.family }}</td><td>{{ row.severity }}</td><td>{{ pct(row.false_reject) }}</td><td>{{ pct(row.review) }}</td></tr>{% endfor %}</table>
<h2>Where the map points</h2>
{% if r.localisation.status == 'measured' %}<p>Peak within {{ r.localisation.tolerance_px_at_input }} px (model input) of the defect mask:
{{ pct(r.localisation.pointing) }}; AUPRO (to 30 % good pixels flagged) {{ fmt(r.localisation['aupro_0.3']) }}.</p>
{% else %}<p>Not measured: {{ r.localisation.reason }}.</p>{% endif %}
<h2>Speed</h2><p>End to end per part, batch 1, {{ r.latency.runtime }}: p95 {{ '%.2f' % r.latency.p95_ms }} ms, p50 {{ '%.2f' % r.latency.p50_ms }} ms ({{ r.latency.iters }} parts).</p>
<h2>Gate</h2><table><tr><th>target</th><th>measure</th><th>value</th><th>limit</th><th>result</th></tr>
{% for c in r.gate.checks %}<tr><td>{{ c.target }}</td><td>{{ c.measure }}</td><td>{{ 'unmeasured' if c.value is none else '%.4g' % c.value }}</td>
<td>{{ '-' if c.limit is none else c.op ~ ' ' ~ ('%g' % c.limit) }}</td><td>{{ 'reported' if not c.gated else ('met' if c.passed else ('unmeasured: not met' if c.value is none else 'missed')) }}</td></tr>{% endfor %}</table>
<p><small>{{ r.run_dir }} · recipe {{ r.recipe_hash[:12] }} · {{ r.created_at }}</small></p>
</body></html>""")


def stored_recommendation(record: AnomalyRecord) -> Recommendation:
    """The verdict ``kit verify`` stored (``release``), with its reasons in words: what the CLI and the page print."""
    rel = release_of(record)
    return Recommendation(rel.label, list(rel.notes))


def integrity_problems(run_dir: Path, record: AnomalyRecord) -> list[str]:
    """The classifier report's integrity checks (``kit.verify.integrity``) on an anomaly run: files changed since
    ``kit verify``, every rate against its k and n, and the stored verdict against the one its figures give."""
    problems = hash_problems(run_dir, recorded_hashes(run_dir)) + rate_problems(record.to_dict(), f"verify/{RECORD_NAME}")
    if record.release is not None:
        again = anomaly_release(record)
        if (record.release.verdict, record.release.label) != (again["verdict"], again["label"]):
            problems.append(f"verify/{RECORD_NAME}: verdict {record.release.label}, but its figures give {again['label']}")
    return problems


def render_anomaly_html(record: AnomalyRecord, tampered: list[str] | None = None,
                        image_size: tuple[int, int] | None = None) -> str:
    """``image_size``: the model's input (height, width px), for the breaking conditions in physical units."""
    rec = stored_recommendation(record)
    if tampered:
        rec = Recommendation("TAMPERED: not a release decision", list(tampered), tuple(tampered))
    reject = record.certificate["reject_at"]
    fr_limit = _false_reject_limit(record)
    return _PAGE.render(r=record, rec=rec, op=record.operating_test, pct=_pct, fr_limit=fr_limit,
                        breaks=breaking_points(record, fr_limit, image_size),
                        css={GO: "GO", SHADOW: "SHADOW"}.get(rec.verdict, "NO-GO"),
                        reject="none (not certified: every part reviewed)" if reject is None else f"{reject:.4g}",
                        fmt=lambda v: "unmeasured" if v is None else f"{v:.4f}")


def build_anomaly_report(run_dir: str | Path, log: Callable[[str], None] = print) -> Recommendation:
    run_dir = Path(run_dir)
    state = require_stages(run_dir, ["export"], "kit report")
    started = time.perf_counter()
    record = read_anomaly_record(run_dir)
    tampered = integrity_problems(run_dir, record)
    staging = staging_dir(run_dir / REPORT_DIR)
    image_size = tuple(read_manifest(run_dir / BUNDLE_DIR).preprocess.image_size)
    write_text_atomic(staging / HTML_NAME, render_anomaly_html(record, tampered, image_size))
    out = publish_dir(staging, run_dir / REPORT_DIR)
    rec = stored_recommendation(record)
    if tampered:
        rec = Recommendation(rec.verdict, rec.reasons, tuple(tampered))
    said = f"TAMPERED: {tampered[0]}" if tampered else rec.verdict + (f": {rec.reasons[0]}" if rec.reasons else "")
    mark_stage(run_dir, state, "report", time.perf_counter() - started, verdict="TAMPERED" if tampered else rec.verdict,
               tampered=tampered)
    log(f"report: {out / HTML_NAME} ({said})")
    return rec
