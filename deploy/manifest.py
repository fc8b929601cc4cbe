"""The bundle manifest (``model.json``): the single source of truth for every runtime.

It carries the task, preprocessing, classes, output semantics, temperature, operating threshold,
the decision rule, artefact hashes and engine fingerprints. Loading a bundle verifies an artefact's
sha256 before the artefact is used, so a model swapped or damaged in transit is refused.

Two tasks (``task``; absent: ``classify``, so older bundles keep working):

- ``classify``: ``images`` -> ``logits`` [N, classes] (+ optional ``heatmap``), decided by
  ``Manifest.decision_rule`` (``deploy.decision.DecisionRule``);
- ``anomaly``: ``images`` -> ``score`` [N], ``anomaly_map`` [N, 1, H, W] (+ ``kind_distance`` [N, kinds]
  for the hybrid), decided by ``Manifest.anomaly`` (``deploy.decision.AnomalyRule``), written as the
  ``decision`` block. The training side writes such a manifest as::

      rule = AnomalyRule(ok_class="ok", accept_below=0.93, reject_at=1.12, good_scores=quantiles)
      manifest = Manifest(classes=rule.labels(), preprocess=spec, artefacts={}, task="anomaly", anomaly=rule,
                          extra={...})

  ``temperature`` (1.0) and ``operating_threshold`` (null) are written for every task; an anomaly bundle
  must keep them so (its thresholds are the rule's ``accept_below`` and ``reject_at``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.decision import AnomalyRule, DecisionRule
from deploy.errors import DeployError
from deploy.preprocess import PreprocessSpec

MANIFEST_NAME = "model.json"
BUNDLE_FORMAT = "inspection-kit/bundle"
BUNDLE_VERSION = 1
TASKS = ("classify", "anomaly")
ANOMALY_OUTPUTS = ("score", "anomaly_map", "kind_distance")  # in this order; kind_distance for the hybrid only


class BundleError(DeployError):
    """A bundle is incomplete, altered or does not fit this machine."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    classes: list[str]
    preprocess: PreprocessSpec
    artefacts: dict[str, dict[str, Any]]  # format -> {file, sha256, bytes, fingerprint?}
    temperature: float = 1.0
    operating_threshold: float | None = None
    ok_class: str | None = None  # the good-part class: confident decisions for it are "accept", others "reject"
    class_thresholds: dict[str, float] = field(default_factory=dict)  # stricter per predicted class (deploy.decision)
    extra: dict[str, Any] = field(default_factory=dict)  # line, recipe hash, versions, parity gates, ...
    task: str = "classify"  # classify | anomaly
    anomaly: AnomalyRule | None = None  # the decision rule of an anomaly bundle (task "anomaly"), else None

    def __post_init__(self) -> None:
        check_task(self.task, self.anomaly, "Manifest")
        if self.anomaly is not None:
            check_anomaly_manifest(self.anomaly, self.classes, self.temperature, self.operating_threshold, "Manifest")
            if self.ok_class not in (None, self.anomaly.ok_class) or self.class_thresholds:
                raise DeployError(f"Manifest: ok_class {self.ok_class!r} / class_thresholds {self.class_thresholds} belong "
                                  "to classifiers; an anomaly bundle's good-part class is its AnomalyRule's ok_class")

    @property
    def decision_rule(self) -> DecisionRule:
        """The classifier's rule; an anomaly bundle decides by ``anomaly`` (``AnomalyRule``) instead."""
        if self.anomaly is not None:
            raise DeployError("an anomaly bundle (task 'anomaly') has no classifier decision rule: use Manifest.anomaly")
        return DecisionRule(self.operating_threshold, self.ok_class, dict(self.class_thresholds))

    def decision_dict(self) -> dict[str, Any]:
        """The ``decision`` block of ``model.json``: the task's rule, with its actions explained."""
        return self.anomaly.to_dict() if self.anomaly is not None else self.decision_rule.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "task": self.task,
            "classes": list(self.classes),
            "preprocess": self.preprocess.to_dict(),
            "input": {"name": "images", "dtype": "float32", "layout": "NCHW",
                      "shape": ["batch", self.preprocess.num_channels, *self.preprocess.image_size]},
            **self._outputs(),
            "temperature": self.temperature,
            "operating_threshold": self.operating_threshold,
            "decision": self.decision_dict(),
            "artefacts": self.artefacts,
            **self.extra,
        }

    def _outputs(self) -> dict[str, Any]:
        if self.anomaly is None:
            return {"output": {"name": "logits", "dtype": "float32", "shape": ["batch", len(self.classes)],
                               "semantics": "class scores; probabilities = softmax(logits / temperature)"}}
        score = {"name": "score", "dtype": "float32", "shape": ["batch"],
                 "semantics": "image anomaly score; 1.0 = the 99th percentile of the good validation parts' scores"}
        outputs = [score, {"name": "anomaly_map", "dtype": "float32", "shape": ["batch", 1, *self.preprocess.image_size],
                           "semantics": "the anomaly score per pixel of the model input, normalised as score"}]
        if self.anomaly.kinds:
            outputs.append({"name": "kind_distance", "dtype": "float32", "shape": ["batch", len(self.anomaly.kinds)],
                            "semantics": f"squared distance to each kind's centre ({', '.join(self.anomaly.kinds)})"})
        return {"output": score, "outputs": outputs}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = MANIFEST_NAME) -> "Manifest":
        """Every value that steers a decision must be written out (``steering_values``); none is filled in."""
        if d.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{source}: not an inspection-kit bundle manifest (format {d.get('format')!r})")
        if d.get("version") != BUNDLE_VERSION:
            raise BundleError(f"{source}: manifest version {d.get('version')} is not supported (expected {BUNDLE_VERSION})")
        known = {"format", "version", "task", "classes", "preprocess", "input", "output", "outputs", "temperature",
                 "operating_threshold", "decision", "artefacts"}
        try:
            classes = _classes(d.get("classes"), source)
            extra = {k: v for k, v in d.items() if k not in known}
            task = _task(d, source)
            if task == "anomaly":
                temperature, threshold, anomaly = anomaly_steering_values(d, classes, source)
                return cls(classes=classes, preprocess=PreprocessSpec.from_dict(d["preprocess"]), artefacts=dict(d["artefacts"]), temperature=temperature,
                           operating_threshold=threshold, ok_class=anomaly.ok_class, extra=extra, task=task,
                           anomaly=anomaly)
            temperature, threshold, decision = steering_values(d, source)
            rule = DecisionRule.from_dict(decision, classes, source=f"{source}: decision")
            return cls(
                classes=classes, preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                artefacts=dict(d["artefacts"]), temperature=temperature, operating_threshold=threshold,
                ok_class=rule.ok_class, class_thresholds=dict(rule.class_thresholds), extra=extra,
            )
        except DeployError as exc:
            raise BundleError(str(exc)) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{source}: malformed manifest ({type(exc).__name__}: {exc})") from None


def _number(value: Any) -> float | None:
    """A finite JSON number as float, else None (a bool is no number here, a string neither)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _classes(value: Any, source: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise BundleError(f"{source}: classes: expected a non-empty list of class names, got {value!r}")
    twice = next((c for i, c in enumerate(value) if c in value[:i]), None)
    if twice is not None:
        raise BundleError(f"{source}: classes: {twice!r} is named twice")
    return list(value)


def _task(d: dict[str, Any], source: str) -> str:
    """``task`` of a manifest; absent: ``classify`` (bundles from before anomaly bundles), unless the decision block
    says it is an anomaly rule: then ``task`` was lost and the bundle would be read as a classifier."""
    if "task" not in d:
        decision = d.get("decision")
        if isinstance(decision, dict) and decision.get("task") == "anomaly":
            raise BundleError(f"{source}: task: missing, but decision is an anomaly rule (decision.task 'anomaly'); "
                              "write \"task\": \"anomaly\" (or re-export the bundle)")
        return "classify"
    if d["task"] not in TASKS:
        raise BundleError(f"{source}: task: {d['task']!r} is not a task of this kit (choose from {', '.join(TASKS)})")
    if d["task"] == "anomaly" and d.get("decision") is None:
        raise BundleError(f"{source}: decision: missing; an anomaly bundle's decision block holds its rule "
                          "(ok_class, accept_below, reject_at, good_scores, ...): re-export or re-verify the bundle")
    return d["task"]


def check_task(task: str, anomaly: AnomalyRule | None, source: str) -> None:
    """``task`` names a task, and an anomaly rule is there exactly for task ``anomaly``."""
    if task not in TASKS:
        raise DeployError(f"{source}: task {task!r} is not a task of this kit (choose from {', '.join(TASKS)})")
    if (task == "anomaly") != (anomaly is not None):
        raise DeployError(f"{source}: task {task!r} " + ("needs its AnomalyRule (anomaly=...)" if anomaly is None
                                                        else "has no AnomalyRule: pass task='anomaly' with it"))


def check_anomaly_manifest(rule: AnomalyRule, classes: list[str], temperature: float, threshold: float | None,
                           source: str) -> None:
    """What an anomaly manifest holds beside its rule: the rule's labels as classes, temperature 1.0 and no
    operating threshold (the rule's accept_below and reject_at are its thresholds)."""
    if list(classes) != rule.labels():
        raise DeployError(f"{source}: classes {list(classes)} are not the labels of the anomaly rule {rule.labels()} "
                          "(AnomalyRule.labels())")
    if temperature != 1.0:
        raise DeployError(f"{source}: temperature: {temperature!r}; an anomaly bundle has no softmax to calibrate: "
                          "write 1.0")
    if threshold is not None:
        raise DeployError(f"{source}: operating_threshold: {threshold!r}; an anomaly bundle decides by "
                          "decision.accept_below and decision.reject_at: write null")


def steering_values(d: dict[str, Any], source: str) -> tuple[float, float | None, dict[str, Any]]:
    """(temperature, operating threshold, decision block) of a classifier's manifest, each written out explicitly.

    These decide what happens to a part; a default filled in for a missing one turned a confident defect into
    ``accept`` (no ``ok_class``), skipped calibration (no temperature) or removed the review band (no
    threshold), with no word. ``kit export`` writes all of them and ``kit verify`` rewrites them, so a bundle
    the kit wrote always has them; a missing one means a hand-edited or truncated ``model.json``. An explicit
    ``null`` is a decision of its own: ``operating_threshold: null`` is "no review band", ``ok_class: null``
    "a line without a good-part class". A bundle verified before ``decision`` existed names its certified
    good-part class in ``operating_point.ok_class``, which stands in for the block.
    """
    temperature, threshold = _calibration_values(d, source)
    decision = d.get("decision")
    legacy = d.get("operating_point")
    if decision is None and isinstance(legacy, dict) and "ok_class" in legacy:
        decision = {"ok_class": legacy["ok_class"]}
    if decision is None:
        raise BundleError(f"{source}: decision: missing; it holds the good-part class (ok_class) that tells accept "
                          "from reject")
    if not isinstance(decision, dict):
        raise BundleError(f"{source}: decision: expected an object with ok_class, got {decision!r}")
    if "ok_class" not in decision:
        raise BundleError(f"{source}: decision.ok_class: missing; name the good-part class, or write null for a line "
                          "without one (every confident decision is then accept)")
    if "threshold" in decision:
        stated = None if decision["threshold"] is None else _number(decision["threshold"])
        if stated != threshold or (decision["threshold"] is not None and stated is None):
            raise BundleError(f"{source}: decision.threshold {decision['threshold']!r} disagrees with operating_threshold "
                              f"{d['operating_threshold']!r}; the two are written together, one of them was edited by "
                              "hand: re-export or re-verify the bundle")
    return temperature, threshold, {**decision, "threshold": threshold}


def anomaly_steering_values(d: dict[str, Any], classes: list[str], source: str) -> tuple[float, float | None, AnomalyRule]:
    """(temperature, operating threshold, rule) of an anomaly manifest, each written out explicitly (the rule's
    fields too: ``AnomalyRule.from_dict`` fills in none)."""
    temperature, threshold = _calibration_values(d, source)
    rule = AnomalyRule.from_dict(d["decision"], classes, source=f"{source}: decision")
    check_anomaly_manifest(rule, classes, temperature, threshold, source)
    return temperature, threshold, rule


def _calibration_values(d: dict[str, Any], source: str) -> tuple[float, float | None]:
    """``temperature`` and ``operating_threshold``, both written out (``steering_values`` says why)."""
    if "temperature" not in d:
        raise BundleError(f"{source}: temperature: missing; write the calibrated temperature (1.0: uncalibrated)")
    temperature = _number(d["temperature"])
    if temperature is None or temperature <= 0:
        raise BundleError(f"{source}: temperature: {d['temperature']!r} is not a positive number")
    if "operating_threshold" not in d:
        raise BundleError(f"{source}: operating_threshold: missing; write the certified threshold, or null for no "
                          "review band (every part decided by the model)")
    threshold = None if d["operating_threshold"] is None else _number(d["operating_threshold"])
    if d["operating_threshold"] is not None and threshold is None:
        raise BundleError(f"{source}: operating_threshold: {d['operating_threshold']!r} is not a number or null")
    return temperature, threshold


# kit export embeds the manifest in each ONNX file's metadata under this key (kit.export.onnx_fp32.MANIFEST_KEY)
EMBEDDED_MANIFEST_KEY = "inspection_kit_manifest"
# What the embedded copy is authoritative for: what the model file was exported with. Temperature, threshold
# and decision rule are not compared: kit verify rewrites them in model.json after export, by design.
_EXPORTED_WITH = ("classes", "preprocess")


def check_embedded_manifest(manifest: Manifest, embedded: str | None, model_path: Path, source: str) -> None:
    """``model.json`` against the manifest embedded in the model file: the class list (names and order) and the
    preprocessing must be the ones the model was exported with. The model file's sha256 is checked against
    model.json, so without this a hand-edited class list or preprocessing was served as if nothing changed.
    A model file without an embedded manifest (made elsewhere) has nothing to compare."""
    if embedded is None:
        return
    try:
        theirs = json.loads(embedded)
        exported = {"classes": list(theirs["classes"]),
                    "preprocess": PreprocessSpec.from_dict(theirs["preprocess"]).to_dict()}
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{model_path}: the manifest embedded in the model is unreadable ({type(exc).__name__}: {exc}); "
                          "re-export the bundle (kit export RUN_DIR)") from None
    ours = {"classes": manifest.classes, "preprocess": manifest.preprocess.to_dict()}
    fix = ("model.json was edited or belongs to another model: copy the bundle again or re-export it "
           "(kit export RUN_DIR)")
    if ours["classes"] != exported["classes"]:
        raise BundleError(f"{source}: classes {ours['classes']} differ from the ones {model_path.name} was exported "
                          f"with ({exported['classes']}); {fix}")
    for key, value in ours["preprocess"].items():
        if value != exported["preprocess"].get(key):
            raise BundleError(f"{source}: preprocess.{key} {value} differs from the one {model_path.name} was exported "
                              f"with ({exported['preprocess'].get(key)}); {fix}")


def read_manifest(bundle_dir: str | Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST_NAME}; is this an exported bundle? (kit export RUN_DIR)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_dict(data, source=str(path))


def verified_artefact(bundle_dir: str | Path, manifest: Manifest, fmt: str) -> Path:
    """The artefact's path, after checking that its bytes are the ones the manifest names."""
    entry = manifest.artefacts.get(fmt)
    if entry is None:
        raise BundleError(f"{bundle_dir}: the bundle has no {fmt!r} artefact (has: {', '.join(manifest.artefacts) or 'none'})")
    path = Path(bundle_dir) / entry["file"]
    if not path.is_file():
        raise BundleError(f"{path}: listed in the manifest but missing")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise BundleError(
            f"{path}: sha256 {actual[:12]}... does not match the manifest's {entry['sha256'][:12]}...; "
            "the file was altered or damaged: copy the bundle again or re-export"
        )
    return path


def model_id(bundle_dir: str | Path) -> str:
    """The model's identity on the line (decision log, ``deploy serve``): sha256 of the bundle's
    ``model.json``, which names every artefact's sha256, the threshold and the temperature, so any
    change to what decides a part gives a new id."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST_NAME}; is this an exported bundle? (kit export RUN_DIR)")
    return sha256_file(path)
