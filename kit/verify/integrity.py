"""Does a run still hold what ``kit verify`` measured? The checks ``kit report`` runs before it prints a figure.

- **Hashes**: ``kit verify`` records the sha256 of ``recipe.lock.yaml`` and of every file under ``bundle/`` and
  ``verify/`` in ``state.json`` (``kit.rundir.fingerprint_run``; ``kit threshold`` records them again). A file that
  differs, or is gone, is named.
- **Every rate against its counts**: each ``{k, n, rate, low, high}`` in the record must give ``rate = k / n`` and the
  two-sided Clopper-Pearson interval recomputed from k and n at its confidence; ppm columns must be the rate x 10^6.
- **The headline figures against their intervals**: accuracy, automation, accepted accuracy, false rejects and the
  worst escape rate in ``measured`` must equal the rates they are printed next to.
- **The gate and the verdict recomputed**: the gate from ``measured``, the intervals and the recipe lock's ``kpi:``
  targets, and the verdict from that gate; an edited bound, limit, value, pass mark or verdict is named.

A problem is one line naming the file and what disagrees. The report marks the run TAMPERED on page one and
``kit report`` exits 4 (``kit.verdict.TAMPERED_EXIT``); nothing is silently recomputed in its place.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

from kit.rundir import KPI_NAME, LOCK_NAME, VERIFY_DIR, fingerprint_run, read_state
from kit.verify import gate, regression, stats
from kit.verify.record import KpiRecord
from kit.verify.release import release_verdict

RATE_TOLERANCE = 1e-9  # k / n written by the same float division
INTERVAL_TOLERANCE = 1e-6  # Clopper-Pearson ends from scipy's beta quantiles, across scipy versions
KPI_FILE = f"{VERIFY_DIR}/{KPI_NAME}"


def recorded_hashes(run_dir: Path) -> dict[str, str] | None:
    """The fingerprint ``kit verify`` recorded; None for a run verified before it was recorded."""
    return (read_state(run_dir).get("stages", {}).get("verify") or {}).get("hashes")


def hash_problems(run_dir: Path, recorded: dict[str, str] | None) -> list[str]:
    """The files that changed, or went missing, since ``kit verify`` recorded their hashes."""
    if recorded is None:
        return []
    now = fingerprint_run(run_dir)
    out = []
    for name, digest in recorded.items():
        if name not in now:
            out.append(f"{name} was removed after `kit verify`")
        elif now[name] != digest:
            what = " (its recipe, the money and the targets are read from it)" if name == LOCK_NAME else ""
            out.append(f"{name} changed after `kit verify`{what}: sha256 recorded {digest[:12]}…, now {now[name][:12]}…")
    return out


def _rates(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if {"k", "n", "rate", "low", "high"} <= node.keys():
            yield where, node
        for key, value in node.items():
            yield from _rates(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _rates(value, f"{where}[{i}]")


def _differs(a: Any, b: Any, tolerance: float) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return not math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=tolerance)


def rate_problems(data: dict[str, Any], file: str) -> list[str]:
    """Every rate in ``data`` (a record as written) checked against its own k and n."""
    out = []
    for where, r in _rates(data):
        k, n = r["k"], r["n"]
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k <= n):
            out.append(f"{file}: {where}: k = {k!r}, n = {n!r} are not counts")
            continue
        expected = stats.rate(k, n, r.get("confidence", 0.95))
        if _differs(r["rate"], expected["rate"], RATE_TOLERANCE):
            out.append(f"{file}: {where}: rate {r['rate']} is not k / n = {k} / {n}")
        elif _differs(r["low"], expected["low"], INTERVAL_TOLERANCE) or _differs(r["high"], expected["high"], INTERVAL_TOLERANCE):
            out.append(f"{file}: {where}: interval {r['low']:.4g}-{r['high']:.4g} is not the one {k} of {n} give "
                       f"({expected['low']:.4g}-{expected['high']:.4g})")
        for ppm, of in (("ppm", "rate"), ("ppm_high", "high")):
            if ppm in r and _differs(r[ppm], None if r[of] is None else r[of] * 1e6, 1e-3):
                out.append(f"{file}: {where}: {ppm} {r[ppm]} is not {of} x 1,000,000")
    return out


def _headline_problems(kpi: KpiRecord) -> list[str]:
    """The figures page one prints big, against the rates printed next to them."""
    measured, intervals, out = kpi.measured, kpi.intervals, []
    for name in ("accuracy", "automation_rate", "accepted_accuracy", "false_reject_rate"):
        interval = intervals.of(name)
        value = getattr(measured, name)
        if interval is not None and value is not None and _differs(value, interval["rate"], RATE_TOLERANCE):
            out.append(f"{KPI_FILE}: measured.{name} {value} is not its interval's rate {interval['k']} / {interval['n']}")
    escapes = kpi.operating.escapes_test or {}
    worst = (escapes.get("classes") or {}).get(escapes.get("worst") or "")
    if worst is not None and measured.max_class_escape_rate is not None and \
            _differs(measured.max_class_escape_rate, worst["rate"], RATE_TOLERANCE):
        out.append(f"{KPI_FILE}: measured.max_class_escape_rate {measured.max_class_escape_rate} is not the worst class's "
                   f"rate {worst['k']} / {worst['n']}")
    return out


CHECK_FIELDS = ("value", "limit", "bound", "passed", "gated")


def gate_problems(kpi: KpiRecord, recipe: Any) -> list[str]:
    """The stored gate against the gate recomputed from the stored measurements and the lock's targets, and the stored
    verdict against the verdict of the stored gate."""
    from kit.verify.kpi import gate_bounds  # the one definition of each gated rate's interval

    measured, operating = kpi.measured.to_dict(), kpi.operating.to_dict()
    again = gate.evaluate_gate(measured, recipe.kpi, recipe.line.takt_ms,
                               gate_bounds(kpi.intervals.to_dict(), operating, kpi.differences))
    again = regression.with_regression_checks(again, kpi.previous.to_dict() if kpi.previous is not None else None)
    fresh = {c["target"]: c for c in again["checks"]}
    out = []
    for c in kpi.gate.checks:
        other = fresh.pop(c.target, None)
        if other is None:
            out.append(f"{KPI_FILE}: gate check {c.target} is not one the recipe's targets make")
            continue
        for name in CHECK_FIELDS:
            mine, theirs = getattr(c, name), other.get(name)
            if isinstance(mine, bool) or isinstance(theirs, bool) or mine is None or theirs is None:
                bad = mine != theirs
            else:
                bad = _differs(mine, theirs, INTERVAL_TOLERANCE)
            if bad:
                out.append(f"{KPI_FILE}: gate check {c.target}: {name} {mine!r}, but the measurements and the recipe "
                           f"give {theirs!r}")
                break
    if kpi.release is not None:  # written by a kit that stores the verdict: every check it makes must be there
        out += [f"{KPI_FILE}: gate check {t} is missing" for t, c in fresh.items() if c["gated"]]
        if kpi.gate.passed != all(c.passed for c in kpi.gate.gated):
            out.append(f"{KPI_FILE}: gate passed = {kpi.gate.passed}, but its checks say otherwise")
        expected = release_verdict(kpi.gate)
        if kpi.release.verdict != expected["verdict"] or kpi.release.label != expected["label"]:
            out.append(f"{KPI_FILE}: verdict {kpi.release.label}, but its gate gives {expected['label']}")
    return out


def check_kpi_run(run_dir: Path, kpi: KpiRecord, recipe: Any) -> dict[str, Any]:
    """All checks for a classifier run: ``problems`` (empty: the figures are the ones ``kit verify`` wrote),
    ``sealed`` (whether hashes were recorded at all) and the sha256 of ``kpi.json`` for the page's footer."""
    recorded = recorded_hashes(run_dir)
    problems = hash_problems(run_dir, recorded)
    problems += rate_problems(kpi.to_dict(), KPI_FILE) + _headline_problems(kpi) + gate_problems(kpi, recipe)
    return {"problems": problems, "sealed": recorded is not None, "tampered": bool(problems)}
