"""``Predictor``: bundle in, decisions out. Preprocessing, inference, and the decision by the bundle's
rule, all driven by the bundle manifest: calibrated probabilities and the abstain threshold for a
classifier, the anomaly score and its accept / review / reject band for an anomaly bundle
(``deploy.decision``). The same calls serve both tasks."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

import numpy as np

from deploy.errors import DeployError
from deploy.manifest import (ANOMALY_OUTPUTS, MANIFEST_NAME, BundleError, Manifest, check_embedded_manifest,
                             read_manifest, verified_artefact)
from deploy.preprocess import PreprocessSpec, preprocess_batch, read_image
from deploy.runtimes import Runtime, get_runtime

if TYPE_CHECKING:
    from deploy.heatmap import Heatmap

AUTO_ORDER = ("tensorrt-fp16", "tensorrt-int8", "onnx", "onnx-int8")
PredictSource = Union[str, os.PathLike, np.ndarray, Sequence[Union[str, os.PathLike, np.ndarray]]]
_ACCEPTED = "pass a path (str or Path), a decoded uint8 image (numpy HxW or HxWxC) or a list of either"


@dataclass
class Decision:
    label: str  # predicted class (anomaly: ok class or the suspected defect), also when abstaining
    confidence: float  # calibrated max probability (anomaly: read off the good parts' scores, AnomalyRule.confidence)
    abstain: bool  # below the operating threshold (of its class), or in the anomaly review band: route to a person
    runtime: str
    path: str | None = None
    action: str = "accept"  # accept | reject | review, from the bundle's decision rule (deploy.decision)
    probabilities: dict[str, float] | None = None  # calibrated, per class; None for an anomaly bundle
    heatmap: "Heatmap | None" = field(default=None, repr=False)  # with predict(..., heatmap=True)
    score: float | None = None  # the anomaly score (1.0 = 99th percentile of good parts); None for a classifier

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a heatmap becomes its label, peak and method (the map goes to a PNG)."""
        d = asdict(replace(self, heatmap=None))
        del d["heatmap"]
        if self.heatmap is not None:
            d["heatmap"] = self.heatmap.to_dict()
        return d


def auto_runtime(formats: Iterable[str]) -> str | None:
    """What ``runtime="auto"`` deploys on this machine: TensorRT where it runs, else ONNX FP32 (else
    INT8). The one answer to "which runtime is deployed" for the Predictor and for ``kit verify``."""
    from deploy.runtimes.tensorrt_backend import tensorrt_unavailable_reason

    available = set(formats)
    trt_ok = tensorrt_unavailable_reason() is None
    return next((f for f in AUTO_ORDER if f in available and (trt_ok or not f.startswith("tensorrt"))), None)


def check_output_width(runtime: Runtime, manifest: Manifest, model_path: Path) -> None:
    """The model must give one score per class named in model.json. A shorter list loaded, and every
    micro-batch holding a part of a class without a name then failed whole; a longer one decided on scores
    that are not there. The width comes from the graph where it declares it, else from one inference on a
    zero batch. An anomaly bundle's outputs are checked by ``check_anomaly_outputs`` instead."""
    if manifest.anomaly is not None:
        return check_anomaly_outputs(runtime, manifest, model_path)
    width = getattr(runtime, "output_width", None)
    if width is None:
        spec = manifest.preprocess
        logits = np.asarray(runtime.run(np.zeros((1, spec.num_channels, *spec.image_size), np.float32)))
        width = logits.shape[1] if logits.ndim == 2 else None
        if width is None:
            raise BundleError(f"{model_path}: the model gives scores of shape {list(logits.shape)} for one image, "
                              f"expected [1, {len(manifest.classes)}] (one per class)")
    if width != len(manifest.classes):
        raise BundleError(f"{model_path}: the model gives {width} scores per image, model.json names "
                          f"{len(manifest.classes)} classes ({', '.join(manifest.classes)}); the class list must name "
                          "every output, in order: re-export the bundle (kit export RUN_DIR)")


def check_anomaly_outputs(runtime: Runtime, manifest: Manifest, model_path: Path) -> None:
    """An anomaly bundle's model gives ``score`` [N], ``anomaly_map`` [N, 1, H, W] at the model's input size and,
    for the hybrid only, ``kind_distance`` [N, kinds]: checked by name, then by shape on one inference of a zero
    batch of two (one where an engine takes no more), so a graph that does not fit model.json is refused at load
    instead of deciding on outputs that are not there."""
    rule, spec, fix = manifest.anomaly, manifest.preprocess, "re-export the bundle (kit export RUN_DIR)"
    wanted = list(ANOMALY_OUTPUTS if rule.kinds else ANOMALY_OUTPUTS[:2])
    names = list(getattr(runtime, "output_names", []))
    missing = [name for name in wanted if name not in names]
    if missing:
        raise BundleError(f"{model_path}: the model has no {missing[0]!r} output (outputs: {', '.join(names)}); an "
                          f"anomaly bundle's model gives {', '.join(wanted)}: {fix}")
    if "kind_distance" in names and not rule.kinds:
        raise BundleError(f"{model_path}: the model gives kind_distance but model.json's decision names no kinds; "
                          f"name them (decision.kinds, kind_radius, classes) or {fix}")
    n = max(1, min(2, int(getattr(runtime, "max_batch", 2))))
    outputs = runtime.run_named(np.zeros((n, spec.num_channels, *spec.image_size), np.float32))
    expected = {"score": (n,), "anomaly_map": (n, 1, *spec.image_size), "kind_distance": (n, len(rule.kinds))}
    for name in wanted:
        shape = tuple(np.shape(outputs[name]))
        if name == "kind_distance" and len(shape) == 2 and shape[0] == n and shape[1] != len(rule.kinds):
            raise BundleError(f"{model_path}: the model gives {shape[1]} kind distances per image, model.json names "
                              f"{len(rule.kinds)} kinds ({', '.join(rule.kinds)}); the kinds must name every distance, "
                              f"in order: {fix}")
        if shape != expected[name]:
            raise BundleError(f"{model_path}: the model's {name} output has shape {list(shape)} for {n} image(s), "
                              f"expected {list(expected[name])}: {fix}")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Predictor:
    """Runs one bundle artefact; use ``from_bundle``."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, runtime: Runtime) -> None:
        self.bundle_dir, self.manifest, self.runtime = bundle_dir, manifest, runtime

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, runtime: str = "auto", **options: Any) -> "Predictor":
        """``runtime``: auto (TensorRT where it runs, else ONNX FP32), onnx, onnx-int8, tensorrt (the
        bundle's FP16 engine, else its INT8 one), tensorrt-fp16, tensorrt-int8.

        Every artefact's sha256 is checked against the manifest before it is loaded.
        """
        bundle_dir = Path(bundle_dir)
        manifest = read_manifest(bundle_dir)
        if runtime == "auto":
            return cls._auto(bundle_dir, manifest, options)
        if runtime == "tensorrt":
            runtime = "tensorrt-int8" if "tensorrt-int8" in manifest.artefacts and "tensorrt-fp16" not in manifest.artefacts else "tensorrt-fp16"
        try:
            factory = get_runtime(runtime)
        except KeyError as exc:
            raise DeployError(str(exc).strip('"')) from None
        path = verified_artefact(bundle_dir, manifest, runtime)
        backend = factory(path, manifest, options)
        check_embedded_manifest(manifest, getattr(backend, "embedded_manifest", None), path, str(bundle_dir / MANIFEST_NAME))
        check_output_width(backend, manifest, path)
        return cls(bundle_dir, manifest, backend)

    @classmethod
    def _auto(cls, bundle_dir: Path, manifest: Manifest, options: dict[str, Any]) -> "Predictor":
        fmt = auto_runtime(manifest.artefacts)
        if fmt is None:
            raise DeployError(f"{bundle_dir}: no artefact this machine can run (bundle has: {', '.join(manifest.artefacts)})")
        return cls.from_bundle(bundle_dir, fmt, **options)

    @property
    def classes(self) -> list[str]:
        """The labels a decision can carry (an anomaly bundle's: its rule's labels)."""
        return self.manifest.classes

    @property
    def task(self) -> str:
        return self.manifest.task

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed float32 NCHW batch -> raw logits (classifiers)."""
        if self.manifest.anomaly is not None:
            raise DeployError(f"{self.bundle_dir}: an anomaly bundle gives scores, not logits: use Predictor.outputs, "
                              "or decide_batch for decisions")
        return self.runtime.run(images)

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed float32 NCHW batch -> the model's outputs by name, for either task: ``logits`` of a
        classifier; ``score``, ``anomaly_map`` (and ``kind_distance``) of an anomaly bundle, in one pass."""
        if self.manifest.anomaly is None:
            return {"logits": self.runtime.run(images)}
        return self.runtime.run_named(images)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.logits(images), self.manifest.temperature)

    def decide(self, probabilities: np.ndarray, paths: Sequence[str | None] | None = None) -> list[Decision]:
        """Probabilities -> decisions by the manifest's decision rule (the one ``kit verify`` certified)."""
        rule = self.manifest.decision_rule
        accepted = rule.accepted(probabilities, self.classes)
        top = probabilities.argmax(axis=1)
        out = []
        for i, cls_idx in enumerate(top):
            label, abstain = self.classes[cls_idx], not bool(accepted[i])
            out.append(Decision(
                label=label, confidence=float(probabilities[i, cls_idx]), abstain=abstain, runtime=self.runtime.name,
                path=_path_at(paths, i), action=rule.action(label, abstain),
                probabilities={c: float(p) for c, p in zip(self.classes, probabilities[i])},
            ))
        return out

    def decide_anomaly(self, outputs: dict[str, np.ndarray], paths: Sequence[str | None] | None = None) -> list[Decision]:
        """An anomaly bundle's outputs (``score``, and ``kind_distance`` for the hybrid) -> decisions by the
        manifest's ``AnomalyRule``: label, confidence, abstain (review band), action and the score itself."""
        rule = self.manifest.anomaly
        if rule is None:
            raise DeployError(f"{self.bundle_dir}: decide_anomaly needs an anomaly bundle (this one is a classifier)")
        scores = np.asarray(outputs["score"]).reshape(-1)
        outcome = rule.decide(scores, outputs.get("kind_distance") if rule.kinds else None)
        return [Decision(label=outcome.labels[i], confidence=float(outcome.confidence[i]),
                         abstain=bool(outcome.abstain[i]), runtime=self.runtime.name, path=_path_at(paths, i),
                         action=outcome.actions[i], score=float(scores[i]))
                for i in range(len(scores))]

    def predict(self, source: PredictSource, batch_size: int = 32, heatmap: bool = False,
                heatmap_class: str | None = None) -> list[Decision]:
        """The one call for every input: a path (str or Path), a decoded image (numpy uint8 HxW or
        HxWxC, in the bundle's channels: gray, or RGB order for an rgb bundle), or a list of either.

        Always returns a list of ``Decision``, one per image in input order; a single path or image
        gives a list of one (as Ultralytics' ``predict`` does), so callers never branch on the
        result type. A list must hold one kind: mixing paths and images raises ``DeployError``.

        ``heatmap=True`` attaches ``Decision.heatmap`` (``deploy.heatmap.Heatmap``): a map in the input
        image's pixels and its peak, for the predicted class or for ``heatmap_class``. An anomaly bundle
        gives its ``anomaly_map`` (one map per part, so no ``heatmap_class``), and each decision its ``score``.
        """
        kind, items = _split_source(source)
        if kind == "path":
            return self.predict_paths(items, batch_size, heatmap, heatmap_class)
        return self.predict_images(items, batch_size, heatmap, heatmap_class)

    def predict_images(self, images: Sequence[np.ndarray], batch_size: int = 32, heatmap: bool = False,
                       heatmap_class: str | None = None) -> list[Decision]:
        """Decoded uint8 images (HxW or HxWxC in the bundle's channels, any size) -> decisions.

        Images are checked first: a float or wrong-channel array would otherwise reach the model as
        a silently wrong tensor or fail deep inside the runtime.
        """
        spec, images = self.manifest.preprocess, list(images)
        for index, image in enumerate(images):
            _check_image(image, index, spec)
        _check_heatmap_args(heatmap, heatmap_class, self.classes, self.manifest.anomaly is not None)
        out: list[Decision] = []
        for start in range(0, len(images), batch_size):
            out += self.decide_images(images[start : start + batch_size], None, heatmap, heatmap_class)
        return out

    def predict_paths(self, paths: Iterable[str | Path], batch_size: int = 32, heatmap: bool = False,
                      heatmap_class: str | None = None) -> list[Decision]:
        paths = [Path(p) for p in paths]
        _check_heatmap_args(heatmap, heatmap_class, self.classes, self.manifest.anomaly is not None)
        out: list[Decision] = []
        spec = self.manifest.preprocess
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            out += self.decide_images([read_image(p, spec.channels) for p in chunk], [str(p) for p in chunk],
                                       heatmap, heatmap_class)
        return out

    def decide_images(self, images: Sequence[np.ndarray], paths: Sequence[str | None] | None = None,
                      heatmap: bool = False, heatmap_class: str | None = None) -> list[Decision]:
        """The one decide path: decoded images -> preprocess (once) -> ``decide_batch``. ``predict``,
        ``deploy.replay`` and ``deploy watch`` come through here; ``deploy serve`` preprocesses each
        request as it arrives (in parallel, before the micro-batcher) and joins at ``decide_batch``."""
        images = list(images)
        return self.decide_batch(preprocess_batch(images, self.manifest.preprocess), images, paths, heatmap, heatmap_class)

    def decide_batch(self, batch: np.ndarray, images: Sequence[np.ndarray] | None = None,
                     paths: Sequence[str | None] | None = None, heatmap: bool = False,
                     heatmap_class: str | None = None) -> list[Decision]:
        """Preprocessed float32 NCHW batch -> probabilities -> decisions by the manifest's rule. With
        ``heatmap``, the maps come from the same forward pass over the same tensor (``deploy.heatmap``);
        ``images`` (the decoded images the batch was made from) give the maps their pixel coordinates."""
        if self.manifest.anomaly is not None:
            return self._decide_anomaly_batch(batch, images, paths, heatmap, heatmap_class)
        if not heatmap:
            return self.decide(self.probabilities(batch), paths)
        if images is None or len(images) != len(batch):
            raise DeployError("decide_batch(heatmap=True) needs the decoded images the batch was made from")
        from deploy.heatmap import class_maps, heatmaps_for

        index = None if heatmap_class is None else self.classes.index(heatmap_class)
        logits, maps, method = class_maps(self, batch, index)
        decisions = self.decide(softmax(logits, self.manifest.temperature), paths)
        labels = [heatmap_class or d.label for d in decisions]
        origin = (self.manifest.extra.get("heatmap") or {}).get("origin_px")
        for decision, explained in zip(decisions, heatmaps_for(maps, images, labels, method, self.manifest.preprocess, origin)):
            decision.heatmap = explained
        return decisions

    def _decide_anomaly_batch(self, batch: np.ndarray, images: Sequence[np.ndarray] | None,
                              paths: Sequence[str | None] | None, heatmap: bool, heatmap_class: str | None) -> list[Decision]:
        """``decide_batch`` of an anomaly bundle: one forward pass gives the score and the anomaly map, so a
        heatmap costs only its resize to the image's pixels (``deploy.heatmap``, method ``anomaly-map``)."""
        _check_heatmap_args(heatmap, heatmap_class, self.classes, anomaly=True)
        if heatmap and (images is None or len(images) != len(batch)):
            raise DeployError("decide_batch(heatmap=True) needs the decoded images the batch was made from")
        outputs = self.runtime.run_named(batch)
        decisions = self.decide_anomaly(outputs, paths)
        if heatmap:
            from deploy.heatmap import ANOMALY_MAP_METHOD, heatmaps_for

            maps = np.asarray(outputs["anomaly_map"])[:, 0]
            for decision, explained in zip(decisions, heatmaps_for(maps, images, [d.label for d in decisions],
                                                                   ANOMALY_MAP_METHOD, self.manifest.preprocess)):
                decision.heatmap = explained
        return decisions

    def describe(self) -> str:
        return self.runtime.describe()


def _path_at(paths: Sequence[str | None] | None, index: int) -> str | None:
    return None if paths is None or paths[index] is None else str(paths[index])


def _source_kind(item: Any) -> str | None:
    if isinstance(item, (str, os.PathLike)):
        return "path"
    if isinstance(item, np.ndarray):
        return "image"
    return None


def _describe(item: Any) -> str:
    """What the caller gave, short enough for a one-line error."""
    if isinstance(item, np.ndarray):
        return f"a {item.dtype} array of shape {tuple(item.shape)}"
    if isinstance(item, (str, os.PathLike)):
        return f"the path {str(item)!r}"
    text = repr(item)
    return f"{type(item).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _split_source(source: Any) -> tuple[str, list[Any]]:
    """(kind, items) for ``Predictor.predict``: one kind per call, so a list of paths is never half
    read from disk and half taken as pixels."""
    is_list = isinstance(source, (list, tuple))
    items = list(source) if is_list else [source]
    kinds = [_source_kind(item) for item in items]
    for index, (item, kind) in enumerate(zip(items, kinds)):
        if kind is None:
            where = f"item {index} of the list is " if is_list else "got "
            raise DeployError(f"predict: unsupported input ({where}{_describe(item)}); {_ACCEPTED}")
    if len(set(kinds)) > 1:
        first_path, first_image = kinds.index("path"), kinds.index("image")
        raise DeployError(
            f"predict: the list mixes paths and images (item {first_path}: {_describe(items[first_path])}, "
            f"item {first_image}: {_describe(items[first_image])}); pass one kind per call"
        )
    return (kinds[0] if kinds else "path"), items


def _check_heatmap_args(heatmap: bool, heatmap_class: str | None, classes: list[str], anomaly: bool = False) -> None:
    if heatmap_class is None:
        return
    if anomaly:
        raise DeployError(f"heatmap class {heatmap_class!r}: an anomaly bundle has one map (where the part differs from "
                          "the good parts), not one per class; leave the heatmap class out")
    if not heatmap:
        raise DeployError(f"heatmap_class={heatmap_class!r} needs heatmap=True")
    if heatmap_class not in classes:
        raise DeployError(f"heatmap class {heatmap_class!r} is not one of the bundle's classes ({', '.join(classes)})")


def _check_image(image: Any, index: int, spec: PreprocessSpec) -> None:
    """A decoded image the bundle can take as it is: uint8, HxW or HxWxC, the bundle's channel count.
    Nothing is converted here: a 3-channel array could be BGR or RGB, and guessing would be silent."""
    if not isinstance(image, np.ndarray):
        raise DeployError(f"image {index}: expected a numpy array, got {_describe(image)}; {_ACCEPTED}")
    if image.dtype != np.uint8:
        raise DeployError(f"image {index}: {_describe(image)}; expected uint8 pixels (deploy.read_image decodes files so)")
    if image.ndim not in (2, 3):
        raise DeployError(f"image {index}: {_describe(image)}; expected HxW or HxWxC (a batch goes in as a list of images)")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != spec.num_channels:
        raise DeployError(
            f"image {index}: {_describe(image)} has {channels} channel(s), the bundle expects {spec.channels} "
            f"({spec.num_channels}); convert it first, e.g. deploy.read_image(path, {spec.channels!r})"
        )
