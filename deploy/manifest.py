"""The bundle manifest (``model.json``): the single source of truth for every runtime.

It carries preprocessing, classes, output semantics, temperature, operating threshold,
artefact hashes and engine fingerprints. Loading a bundle verifies an artefact's sha256
before the artefact is used, so a model swapped or damaged in transit is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.decision import DecisionRule
from deploy.errors import DeployError
from deploy.preprocess import PreprocessSpec

MANIFEST_NAME = "model.json"
BUNDLE_FORMAT = "inspection-kit/bundle"
BUNDLE_VERSION = 1


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

    @property
    def decision_rule(self) -> DecisionRule:
        return DecisionRule(self.operating_threshold, self.ok_class, dict(self.class_thresholds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
            "classes": list(self.classes),
            "preprocess": self.preprocess.to_dict(),
            "input": {"name": "images", "dtype": "float32", "layout": "NCHW",
                      "shape": ["batch", self.preprocess.num_channels, *self.preprocess.image_size]},
            "output": {"name": "logits", "dtype": "float32", "shape": ["batch", len(self.classes)],
                       "semantics": "class scores; probabilities = softmax(logits / temperature)"},
            "temperature": self.temperature,
            "operating_threshold": self.operating_threshold,
            "decision": self.decision_rule.to_dict(),
            "artefacts": self.artefacts,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = MANIFEST_NAME) -> "Manifest":
        if d.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{source}: not an inspection-kit bundle manifest (format {d.get('format')!r})")
        if d.get("version") != BUNDLE_VERSION:
            raise BundleError(f"{source}: manifest version {d.get('version')} is not supported (expected {BUNDLE_VERSION})")
        known = {"format", "version", "classes", "preprocess", "input", "output", "temperature", "operating_threshold",
                 "decision", "artefacts"}
        try:
            classes = list(d["classes"])
            decision = d.get("decision")
            if decision is None and isinstance(d.get("operating_point"), dict):
                # A bundle verified before model.json had a decision block: its certified good-part class is
                # in operating_point; without it every confident defect would be "accept".
                decision = {"ok_class": d["operating_point"].get("ok_class")}
            rule = DecisionRule.from_dict(decision, classes, source=f"{source}: decision")
            threshold = d.get("operating_threshold", rule.threshold)
            return cls(
                classes=classes, preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                artefacts=dict(d["artefacts"]), temperature=float(d.get("temperature", 1.0)),
                operating_threshold=None if threshold is None else float(threshold),
                ok_class=rule.ok_class, class_thresholds=dict(rule.class_thresholds),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except DeployError as exc:
            raise BundleError(str(exc)) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{source}: malformed manifest ({type(exc).__name__}: {exc})") from None


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
