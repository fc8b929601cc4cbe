"""``verify/kpi.json`` as a typed, versioned record: ``KpiRecord``, written by ``kit verify`` (and ``kit threshold``)
through ``write_kpi`` and read by the report, the CLI, the gate and ``kit run`` through ``read_kpi`` and attributes.

A new figure is one field here. A file this kit cannot read is refused with one line naming the file and
what is wrong (``RunDirError``): a ``schema_version`` newer than ``KPI_SCHEMA_VERSION``, a required field missing,
a wrong type, not JSON. A file written before the version existed (no ``schema_version``) is read as version 1
when its fields fit.

Typed: the top level; ``measured`` (the named KPI figures, the per-class escape rates in ``escape_rates``;
in the file they stay flat ``escape_rate[<class>]`` keys, which the gate's check names use); ``gate``
(``kit.verdict.Verdict`` of ``Check``); ``operating`` (its top-level fields); ``intervals`` (each a ``Rate``: a
``kit.verify.stats.rate`` dict, validated); ``previous`` (the old-vs-new comparison of ``kit.verify.regression``).

Left as ``dict[str, Any]`` (one reader renders each, or another module owns its shape): ``models`` (per-model
metrics, ``kit.evaluate``), ``calibration``, ``robustness``, ``latency``, ``misclassified``, ``differences``,
``machine``, ``localisation``, and inside ``operating`` the operating points ``val``/``test``/``per_runtime``,
``certificate``, ``escapes_test``, ``test_mix``, ``production`` and ``curve_test`` (``kit.verify.threshold``,
``escapes``, ``production``).

Numbers are kept as written (``kit.verdict.Number``) and ``to_dict()`` writes back only the keys that were read or
set, so a record dumps to the same JSON it was made from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, ValidationError, model_serializer, model_validator
from typing_extensions import NotRequired, TypedDict

from kit.errors import RunDirError
from kit.io import write_json_atomic
from kit.rundir import kpi_path
from kit.verdict import Number, Record, Release, Verdict

KPI_SCHEMA_VERSION = 1
ESCAPE_RATE_KEY = "escape_rate[{}]"  # measured's per-class key (and the gate's measure name)
HELDOUT_FAMILY_KEY = "heldout_relative_robustness[{}]"  # measured's per held-out family key (and the gate's measure)
# measured's keyed groups: the field that holds them -> the flat key each member has in the file
_FLAT_GROUPS = {"escape_rates": ESCAPE_RATE_KEY, "heldout_family_robustness": HELDOUT_FAMILY_KEY}


class Rate(TypedDict):
    """A rate with its counts and two-sided interval (``kit.verify.stats.rate``); read as a dict by the formatters."""

    __pydantic_config__ = {"extra": "forbid"}  # type: ignore[misc]

    k: int
    n: int
    rate: Optional[Number]  # None: nothing measured (n = 0)
    low: Number
    high: Number
    confidence: NotRequired[Number]
    method: NotRequired[str]


class Measured(Record):
    """The figures the gate compares with the recipe's ``kpi:`` targets (``kit.verify.kpi.measured_kpis``)."""

    accuracy: Optional[Number]
    macro_f1: Optional[Number]
    teacher_accuracy: Optional[Number]
    accuracy_gap: Optional[Number]  # teacher minus deployed student
    agreement: Optional[Number]
    relative_robustness: Optional[Number]
    heldout_relative_robustness: Optional[Number]
    latency_p95_ms: Optional[Number]
    ece: Optional[Number]
    automation_rate: Optional[Number]
    accepted_accuracy: Optional[Number]
    # from the operating section (``kit.verify.kpi.operating_measures``); None: unmeasured
    max_class_escape_rate: Optional[Number] = None
    worst_escape_class: Optional[str] = None
    false_reject_rate: Optional[Number] = None
    escape_rates: dict[str, Optional[Number]] = Field(default_factory=dict)  # class -> its escape rate
    # held-out family -> its mean accuracy over severities / clean accuracy (gated one by one, issue 28)
    heldout_family_robustness: dict[str, Optional[Number]] = Field(default_factory=dict)
    operating_risk_upper: Optional[Number] = None
    operating_risk_limit: Optional[Number] = None
    operating_target: Optional[str] = None
    # the certified risk on the test split and its one-sided 95 % upper bound (the gate's ``verify.threshold.test``)
    operating_test_risk: Optional[Number] = None
    operating_test_risk_upper: Optional[Number] = None

    @model_validator(mode="before")
    @classmethod
    def _gather_escape_rates(cls, data: Any) -> Any:
        """The file's flat ``escape_rate[<class>]`` (and ``heldout_relative_robustness[<family>]``) keys -> their
        field."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for group, pattern in _FLAT_GROUPS.items():
            if group in data:
                continue
            prefix = pattern.format("")[:-1]
            flat = {k: v for k, v in data.items() if k.startswith(prefix) and k.endswith("]")}
            if flat:
                out = {k: v for k, v in out.items() if k not in flat}
                out[group] = {k[len(prefix):-1]: v for k, v in flat.items()}
        return out

    @model_serializer(mode="wrap")
    def _flatten_escape_rates(self, handler: Any) -> dict[str, Any]:
        out = {}
        for key, value in handler(self).items():
            if key in _FLAT_GROUPS:
                out.update({_FLAT_GROUPS[key].format(c): v for c, v in value.items()})
            else:
                out[key] = value
        return out


class Intervals(Record):
    """Every rate of page one with its n and 95 % interval (test split, deployed runtime). Escape and false-reject
    rates only on a line with a good-part class."""

    accuracy: Rate
    automation_rate: Rate
    accepted_accuracy: Rate
    escape_rate: Optional[Rate] = None
    false_reject_rate: Optional[Rate] = None

    def of(self, measure: str) -> Rate | None:
        """The interval of a gate check's measure, None when it has none."""
        return getattr(self, measure, None) if measure in type(self).model_fields else None


class Operating(Record):
    """The operating threshold: its target, whether validation certified it, and what it does on test
    (``kit.verify.kpi.operating_section``)."""

    runtime: str
    temperature: Number
    class_thresholds: dict[str, Number] = Field(default_factory=dict)
    target: Optional[str] = None  # None: a fixed threshold (or none) without a target
    reached: Optional[bool] = None
    certified: Optional[bool] = None
    confidence: Optional[Number] = None
    threshold: Optional[Number]
    val: dict[str, Any]
    certificate: Optional[dict[str, Any]] = None  # only with a target
    ok_class: Optional[str] = None
    test: dict[str, Any]
    escapes_test: Optional[dict[str, Any]] = None
    test_mix: Optional[dict[str, Any]] = None
    production: Optional[dict[str, Any]] = None
    curve_test: list[dict[str, Any]] = Field(default_factory=list)
    per_runtime: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # which images certified (``kit.verify.kpi.certification_split``); None: written before it was recorded
    certified_on: Optional[dict[str, Any]] = None
    # the deployed model as an appraiser against the test labels (``kit.verify.appraiser``); None: no good-part class
    appraiser: Optional[dict[str, Any]] = None


class ClassChange(Record):
    """One class's recall, previous model vs this one (``kit.verify.regression.compare_models``)."""

    class_: str = Field(alias="class")
    n: int
    old: Optional[Number]
    new: Optional[Number]
    old_correct: int
    new_correct: int
    diff: Optional[Number]
    low: Optional[Number]
    high: Optional[Number]
    verdict: str  # worse | same | better


class OverallChange(Record):
    n: int
    old: Optional[Number]
    new: Optional[Number]
    diff: Optional[Number]
    low: Optional[Number]
    high: Optional[Number]
    verdict: str


class Previous(Record):
    """The previous model on this run's test split (``kit.verify.regression.previous_section``)."""

    confidence: Number
    n_boot: int
    per_class: list[ClassChange]
    overall: OverallChange
    excluded_seen_by_previous: int = 0
    run_dir: str
    bundle: str
    runtime: str
    gated: bool = False
    model_id: Optional[str] = None

    @property
    def worse(self) -> list[str]:
        return [r.class_ for r in self.per_class if r.verdict == "worse"]


class KpiRecord(Record):
    """``verify/kpi.json``."""

    schema_version: int = KPI_SCHEMA_VERSION
    line: str
    run_dir: str
    run_id: Optional[str] = None
    recipe_hash: str
    created_at: str
    classes: list[str]
    test_images: int
    val_images: int  # the validation images that chose (checkpoint, temperature)
    certify_images: Optional[int] = None  # the images the operating threshold was certified on (``operating.certified_on``)
    deployed_runtime: str
    skipped_runtimes: dict[str, str] = Field(default_factory=dict)
    distill_method: str
    compare: list[str] = Field(default_factory=list)
    models: dict[str, dict[str, Any]]
    misclassified: list[dict[str, Any]] = Field(default_factory=list)
    calibration: dict[str, Any]
    operating: Operating
    robustness: dict[str, Any]
    latency: dict[str, Any]
    measured: Measured
    intervals: Intervals
    gate: Verdict
    release: Optional[Release] = None  # the one verdict (``kit.verify.release``); None: written before it existed
    previous: Optional[Previous] = None  # None: the recipe names no previous run
    differences: list[dict[str, Any]] = Field(default_factory=list)
    machine: Optional[dict[str, Any]] = None
    localisation: Optional[dict[str, Any]] = None

    @property
    def verdict(self) -> Release:
        """The stored release verdict; for a file written before it was stored, the same function's answer."""
        if self.release is not None:
            return self.release
        from kit.verify.release import release_verdict

        return Release.model_validate(release_verdict(self.gate))

    @property
    def deployed(self) -> dict[str, Any]:
        """The deployed runtime's entry of ``models``."""
        return self.models[self.deployed_runtime]

    def to_dict(self) -> dict[str, Any]:
        """The file's content; ``schema_version`` first and always written (an old file gains it when rewritten)."""
        return {"schema_version": KPI_SCHEMA_VERSION, **{k: v for k, v in super().to_dict().items() if k != "schema_version"}}


def _source(run_dir_or_path: str | Path) -> Path:
    path = Path(run_dir_or_path)
    return path if path.suffix == ".json" else kpi_path(path)


def _run_dir(path: Path) -> Path:
    return path.parent.parent


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before", "function-wrap"))


def _problem(path: Path, exc: ValidationError) -> str:
    """A validation error in one line: what is missing or wrong, and the fix."""
    errors = exc.errors(include_url=False)
    again = f"run `kit verify {_run_dir(path)}` again"
    missing = [_location(e["loc"]) for e in errors if e["type"] == "missing"]
    if missing:
        return f"{path} was written by an older `kit verify` (no {', '.join(missing)}); {again}"
    first = errors[0]
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{path}: {_location(first['loc']) or 'kpi.json'}: {first['msg']} (got {got}){more}; {again}"


def parse_kpi(data: Any, source: str | Path) -> KpiRecord:
    """A ``kpi.json`` already parsed from JSON, checked; ``source`` names the file in the error."""
    path = Path(source)
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: not a kpi record (a JSON {type(data).__name__}, expected an object); "
                          f"run `kit verify {_run_dir(path)}` again")
    version = data.get("schema_version", 1)  # written before the version existed: read as version 1
    if version != KPI_SCHEMA_VERSION:
        raise RunDirError(f"{path}: schema_version {version!r} is not supported (this kit reads {KPI_SCHEMA_VERSION}); "
                          f"read it with the kit that wrote it, or run `kit verify {_run_dir(path)}` again")
    try:
        return KpiRecord.model_validate(data)
    except ValidationError as exc:
        raise RunDirError(_problem(path, exc)) from None


def read_kpi(run_dir_or_path: str | Path) -> KpiRecord:
    """``RUN_DIR/verify/kpi.json`` (or a ``kpi.json`` path), checked and typed."""
    path = _source(run_dir_or_path)
    if not path.is_file():
        raise RunDirError(f"{_run_dir(path)}: no verify/kpi.json; run `kit verify {_run_dir(path)}` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc}); run `kit verify {_run_dir(path)}` again") from None
    return parse_kpi(data, path)


def write_kpi(run_dir_or_path: str | Path, record: KpiRecord) -> Path:
    """Write the record (atomically) to ``RUN_DIR/verify/kpi.json`` or the ``kpi.json`` path given."""
    path = _source(run_dir_or_path)
    write_json_atomic(path, record.to_dict())
    return path
