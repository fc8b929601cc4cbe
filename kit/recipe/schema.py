"""The recipe schema: one YAML file per camera line, validated by pydantic v2.

Defaults live here and nowhere else. Every model forbids unknown keys, so a typo is an error,
never a silently ignored setting. Semantic checks that need other libraries (timm names,
albumentations transforms, files on disk) happen in ``kit.recipe.load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, SerializeAsAny,
                      ValidationError, ValidationInfo, field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from kit.distill.methods import CRLDConfig, MethodSettings, get_method, list_methods

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class LineConfig(_Strict):
    """The camera line: what management knows it by, and how fast parts arrive."""

    name: Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    description: str = ""
    parts_per_minute: Optional[Annotated[float, Field(gt=0)]] = None
    budget_ms: Optional[Annotated[float, Field(gt=0)]] = None
    # The good-part class: escapes are defective parts accepted as this class (kpi.max_class_escape_rate,
    # escape-rate thresholds). null: a class literally named "ok", if any; a line of defect types has none.
    ok_class: Optional[str] = None
    # Share of defective parts in production (the test split is rarely the line's mix): one number for all
    # defect classes together, or per defect class. Automation, escapes per million parts produced and false
    # rejects are re-weighted from per-class rates to this mix; null: figures use the test mix and say so.
    defect_rate: Optional[Union[Annotated[float, Field(gt=0, lt=1)], dict[str, Annotated[float, Field(ge=0, lt=1)]]]] = None

    @field_validator("defect_rate")
    @classmethod
    def _defect_total_below_one(cls, value: Any) -> Any:
        if isinstance(value, dict) and not 0 < sum(value.values()) < 1:
            raise ValueError(f"the per-class shares must sum to more than 0 and less than 1 (got {sum(value.values()):g})")
        return value

    @property
    def takt_ms(self) -> float | None:
        """Time available per part: the explicit budget, else 60 000 / parts per minute."""
        if self.budget_ms is not None:
            return self.budget_ms
        return 60_000.0 / self.parts_per_minute if self.parts_per_minute else None


class SplitConfig(_Strict):
    """Stratified random split; fractions must sum to 1."""

    train: Annotated[float, Field(gt=0, lt=1)] = 0.7
    val: Annotated[float, Field(gt=0, lt=1)] = 0.15
    test: Annotated[float, Field(gt=0, lt=1)] = 0.15
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        return self


class SplitFolders(_Strict):
    """Explicit split: each split is its own image folder with class subfolders."""

    train: str
    val: str
    test: str


class NormalizeConfig(_Strict):
    mean: list[float]
    std: list[Annotated[float, Field(gt=0)]]


def _square_shorthand(v: Any) -> Any:
    return (v, v) if isinstance(v, int) and not isinstance(v, bool) else v


def _size_range(v: tuple[int, int]) -> tuple[int, int]:
    if min(v) < 16 or max(v) > 4096:
        raise ValueError(f"each side of image_size must be between 16 and 4096 px (got {list(v)})")
    return v


# An input size in px, (height, width); a single number means square. data.image_size and teacher.image_size.
ImageSize = Annotated[tuple[int, int], BeforeValidator(_square_shorthand), AfterValidator(_size_range)]


class DataConfig(_Strict):
    """Where the line's images are and how they become model input."""

    root: str
    layout: Literal["imagefolder", "manifest"] = "imagefolder"
    manifest: Optional[str] = None  # CSV with columns path,label[,split]; paths relative to root
    classes: Optional[list[str]] = None  # explicit class order; default: sorted folder names
    image_size: ImageSize = (96, 96)  # height, width in px; a single number means square
    channels: Literal["gray", "rgb"] = "gray"
    roi: Optional[tuple[int, int, int, int]] = None  # x, y, width, height in source pixels
    interpolation: Literal["area", "linear", "cubic", "nearest"] = "area"
    normalize: Optional[NormalizeConfig] = None  # default: ImageNet statistics (gray: their mean)
    split: SplitConfig = SplitConfig()
    split_folders: Optional[SplitFolders] = None
    dedupe: bool = True  # drop exact duplicate files before splitting (they leak train -> test)
    # Defect masks (optional): a folder with the images' relative layout (<class>/<stem>.png), non-zero pixels =
    # defect. kit verify then measures whether the heatmaps point at the defects (images without one are skipped).
    masks: Optional[str] = None
    max_unreadable_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    min_images_per_class: Annotated[int, Field(ge=1)] = 3
    # DataLoader workers; auto: none on CPU (training is compute-bound and workers would take
    # the cores the model needs), up to 8 on CUDA.
    num_workers: Union[Literal["auto"], Annotated[int, Field(ge=0, le=64)]] = "auto"

    @property
    def num_channels(self) -> int:
        return 1 if self.channels == "gray" else 3

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, v: Any) -> Any:
        if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            raise ValueError("roi is [x, y, width, height] with x, y >= 0 and width, height > 0")
        return v

    @model_validator(mode="after")
    def _layout_fields(self) -> "DataConfig":
        if self.layout == "manifest" and not self.manifest:
            raise ValueError("layout 'manifest' needs a 'manifest' CSV path")
        if self.layout == "imagefolder" and self.manifest:
            raise ValueError("'manifest' is only used with layout: manifest")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes contains duplicates")
        if self.normalize is not None:
            n = self.num_channels
            if len(self.normalize.mean) != n or len(self.normalize.std) != n:
                raise ValueError(f"normalize.mean and normalize.std need {n} value(s) for channels {self.channels!r}")
        return self



ViewStep = dict[str, Any]  # {TransformOrPreset: {kwargs}}; checked by kit.views.build


class ViewsConfig(_Strict):
    """Albumentations pipelines on uint8 images, applied after ROI/resize, before normalisation."""

    weak: list[ViewStep] = Field(default_factory=list)
    strong: list[ViewStep] = Field(default_factory=list)


class TrainConfig(_Strict):
    """Optimisation settings shared by teacher and student."""

    arch: Annotated[str, Field(min_length=1)]
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 20
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    lr: Annotated[float, Field(gt=0, le=10)] = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    scheduler: Literal["onecycle", "cosine", "constant"] = "onecycle"
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # timm's published weights, through its Hugging Face cache (pre-fetch them for an offline plant PC: docs/recipe.md).
    pretrained: bool = False
    pretrained_file: Optional[str] = None  # local timm weights (.safetensors/.pth); excludes `pretrained`
    drop_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # Clip the global gradient norm: distillation losses carry a T^2 factor and can spike early.
    grad_clip_norm: Optional[Annotated[float, Field(gt=0)]] = 5.0
    compile: bool = False  # torch.compile the training step's model (worth it on GPU for long runs)
    # Imbalanced lines (mostly good parts): `sampler` draws every class equally often per epoch, `loss` weights
    # cross-entropy by inverse class frequency; `auto` is `sampler` when the largest training class has more than
    # kit.data.balance.IMBALANCE_RATIO times the images of the smallest, else `none`.
    balance: Literal["auto", "none", "sampler", "loss"] = "auto"
    # The validation score that picks the best epoch; a model that calls every part good cannot win macro-F1.
    select_by: Literal["macro_f1", "balanced_accuracy", "accuracy"] = "macro_f1"
    # Which of several epochs with the same best select_by score is kept (validation saturates on easy lines:
    # 23 epochs at 1.000): val_loss (the lowest validation loss among them) | last | first. The first tied epoch
    # kept an under-trained model (sample line, recipe budget: 94.7 % on test against 97.0 % for val_loss and last;
    # benchmarks/tie_rule.py, RESULTS.md)
    tie_break: Literal["first", "last", "val_loss"] = "val_loss"

    @field_validator("pretrained_file")
    @classmethod
    def _one_weights_source(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if v is not None and info.data.get("pretrained"):
            raise ValueError("set pretrained: true or pretrained_file, not both")
        return v


class EnsembleConfig(_Strict):
    """A teacher made of several models whose averaged logits are the teacher (``kit.models.EnsembleModel``).

    Exactly one of: ``members`` seeds of ``teacher.arch``; one member per architecture in
    ``archs`` (same training settings); or existing teacher checkpoints, used as they are.
    """

    members: Optional[int] = None
    archs: Optional[list[Annotated[str, Field(min_length=1)]]] = None
    checkpoints: Optional[list[Annotated[str, Field(min_length=1)]]] = None

    @field_validator("members", "archs", "checkpoints")
    @classmethod
    def _at_least_two(cls, v: Any, info: ValidationInfo) -> Any:
        count = v if isinstance(v, int) else len(v) if v is not None else None
        if count is not None and count < 2:
            raise ValueError(f"an ensemble needs at least 2 {info.field_name}; for a single teacher leave teacher.ensemble out")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> "EnsembleConfig":
        if sum(v is not None for v in (self.members, self.archs, self.checkpoints)) != 1:
            raise ValueError("set exactly one of members, archs or checkpoints")
        return self


class TeacherConfig(TrainConfig):
    arch: Annotated[str, Field(min_length=1)] = "resnet18"
    checkpoint: Optional[str] = None  # an existing teacher.pt: skip teacher training
    train_views: Literal["weak", "strong", "mix"] = "mix"  # mix: each sample weak or strong, 50/50
    ensemble: Optional[EnsembleConfig] = None  # several models averaged into one teacher; null: a single teacher
    # After training: a teacher no better than calling every part the majority class stops the run (stop), or
    # is only a warning (warn); see kit.verify.teacher_check.
    check: Literal["stop", "warn"] = "stop"
    # The teacher may read larger images than the student (height, width; a single number means square): small
    # defects the student's resize blurs stay visible to it. Views are then drawn at this size and the student's
    # input is the same view resized, so both see one random transform. null: data.image_size.
    image_size: Optional[ImageSize] = None

    @field_validator("ensemble")
    @classmethod
    def _ensemble_fits(cls, v: Optional[EnsembleConfig], info: ValidationInfo) -> Optional[EnsembleConfig]:
        if v is not None and info.data.get("checkpoint"):
            raise ValueError("teacher.checkpoint already is the teacher; for an ensemble of checkpoints use ensemble.checkpoints")
        if v is not None and v.archs and info.data.get("pretrained_file"):
            raise ValueError("pretrained_file holds weights for one architecture; with ensemble.archs use pretrained: true")
        return v


class StudentConfig(TrainConfig):
    arch: Annotated[str, Field(min_length=1)] = "mobilenetv3_small_100"
    # A finished run directory: the main student starts from that run's deployed student (student.pt, same
    # architecture and classes) and is fine-tuned on this line's data; null: random (or pretrained) weights.
    init_from: Optional[str] = None


ExportFormat = Literal["onnx", "onnx-int8", "tensorrt-fp16", "tensorrt-int8", "triton"]  # triton: a model repository in the bundle


class ParityGates(_Strict):
    """Decision-level tolerances between rungs of the parity ladder; a miss fails ``kit export``."""

    onnx_min_agreement: Annotated[float, Field(ge=0, le=1)] = 1.0  # ONNX FP32 vs torch student, top-1
    onnx_max_abs_prob_delta: Annotated[float, Field(ge=0)] = 1e-4  # ONNX FP32 vs torch student
    int8_min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.99  # ONNX INT8 vs ONNX FP32
    tensorrt_fp16_min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.99  # vs ONNX FP32
    tensorrt_int8_min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.98  # vs ONNX FP32
    # The in-graph heatmap output (bundles whose student has one), each map min-max normalised to [0, 1]:
    heatmap_onnx_max_abs_delta: Annotated[float, Field(ge=0)] = 1e-3  # ONNX FP32 vs torch student
    heatmap_int8_max_mean_abs_delta: Annotated[float, Field(ge=0)] = 0.1  # ONNX INT8 vs ONNX FP32 (sample line: 0.025)
    # task: anomaly: ONNX FP32 vs torch, max |delta score| / max(|score|, 1) (scores reach hundreds on odd parts)
    anomaly_onnx_max_rel_score_delta: Annotated[float, Field(ge=0)] = 1e-4


class ExportConfig(_Strict):
    """The edge bundle: which artefacts, how INT8 is calibrated, how big a batch engines take."""

    formats: list[ExportFormat] = Field(default_factory=lambda: ["onnx", "onnx-int8", "tensorrt-fp16", "tensorrt-int8"])
    opset: Annotated[int, Field(ge=17, le=23)] = 18
    # Training images to calibrate INT8 on (all of them when the split is smaller); fewer than a few
    # hundred lets one unusual batch set the activation ranges.
    calibration_images: Annotated[int, Field(ge=1, le=100_000)] = 512
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    min_batch: Annotated[int, Field(ge=1)] = 1
    opt_batch: Annotated[int, Field(ge=1)] = 8
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 32
    workspace_mb: Annotated[int, Field(ge=64)] = 1024
    operating_threshold: Optional[Annotated[float, Field(ge=0, le=1)]] = None  # abstain below this confidence
    parity: ParityGates = ParityGates()

    @model_validator(mode="after")
    def _batch_order(self) -> "ExportConfig":
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need min_batch <= opt_batch <= max_batch (got {self.min_batch}, {self.opt_batch}, {self.max_batch})")
        if "onnx" not in self.formats:
            raise ValueError("formats must include 'onnx': every other artefact is built from it")
        return self


class ThresholdTarget(_Strict):
    """What the operating confidence threshold is tuned for on the validation split.

    ``accepted_accuracy``: the accuracy of the decisions the model takes alone must reach this.
    ``max_escape_rate``: at most this fraction of defective parts may be auto-accepted as
    ``ok_class``. The lowest threshold meeting the target is chosen: the most automation.
    """

    accepted_accuracy: Optional[Annotated[float, Field(gt=0, le=1)]] = None
    max_escape_rate: Optional[Annotated[float, Field(ge=0, lt=1)]] = None
    ok_class: Optional[str] = None  # the good-part class; escapes are defects accepted as this (default line.ok_class)
    # The target must hold on new parts with this probability: the threshold is certified by a one-sided
    # Clopper-Pearson bound on validation (kit.verify.threshold.certify_threshold), not by a point estimate.
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95
    # Optional stricter thresholds per predicted class (e.g. a higher bar before a part is accepted as good).
    # They only raise the bar; the certified threshold is searched with them applied (deploy.decision).
    class_thresholds: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=dict)
    # Optional escape limits per defect class, certified together with the main target: a threshold is certified
    # only where every listed class's escape bound is within its limit too (needs the good-part class).
    class_escape_limits: dict[str, Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_target(self) -> "ThresholdTarget":
        if (self.accepted_accuracy is None) == (self.max_escape_rate is None):
            raise ValueError("set exactly one of accepted_accuracy or max_escape_rate")
        return self


class CorruptionConfig(_Strict):
    """The robustness suite: which corruption families, and optional severity tables."""

    families: Optional[list[str]] = None  # default: every registered family
    # family -> five values, mild to harsh, in the family's own unit (see `kit corruptions`)
    severities: dict[str, list[float]] = Field(default_factory=dict)
    max_images: Optional[Annotated[int, Field(ge=1)]] = None  # cap on test images per corruption (default: all)

    @field_validator("severities")
    @classmethod
    def _five_levels(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, levels in v.items():
            if len(levels) != 5:
                raise ValueError(f"{name}: a severity table has exactly 5 values, mild to harsh (got {len(levels)})")
        return v


class LatencyConfig(_Strict):
    batch: Annotated[int, Field(ge=1, le=4096)] = 8  # the batch-N measurement next to batch 1
    warmup: Annotated[int, Field(ge=0)] = 10
    iters: Annotated[int, Field(ge=5)] = 100
    threads: Annotated[int, Field(ge=0)] = 0  # CPU threads for torch and ONNX Runtime; 0: their defaults


class VerifyConfig(_Strict):
    """``kit verify``: what is measured on the exported artefacts."""

    corruptions: CorruptionConfig = CorruptionConfig()
    latency: LatencyConfig = LatencyConfig()
    # Fit a temperature on the validation split (stored in the bundle manifest).
    calibrate: bool = True
    # null: keep export.operating_threshold as it is.
    threshold: Optional[ThresholdTarget] = ThresholdTarget(accepted_accuracy=0.99)
    # Share of each class's validation images held back from every choice (the checkpoint, the temperature, the teacher
    # check) and used only to certify the operating threshold (split.csv: "certify"). 0 certifies on the images that
    # chose, which makes the certificate optimistic (the report says so). Classifier runs only.
    certify_share: Annotated[float, Field(ge=0, lt=1)] = 0.5


class KpiTargets(_Strict):
    """Release targets; ``kit verify`` fails when one is missed. A target left out is reported, not gated.

    All are measured on the test split with the deployed runtime (TensorRT where the machine
    runs it, else ONNX FP32), against the torch teacher.
    """

    max_accuracy_gap: Optional[Annotated[float, Field(ge=-1, le=1)]] = None  # teacher minus student accuracy
    min_accuracy: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    min_macro_f1: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    # Per defect class: the share of its test parts accepted as the good-part class (line.ok_class); the worst
    # class is gated, so a model that calls every part good fails it whatever its accuracy.
    # One limit for every defect class, or a limit per defect class (classes left out are reported, not gated).
    max_class_escape_rate: Optional[Union[Annotated[float, Field(ge=0, le=1)], dict[str, Annotated[float, Field(ge=0, le=1)]]]] = None
    # The good-part class: share of its test parts rejected as a defect (confidently; reviewed parts are not rejects).
    max_false_reject_rate: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    min_agreement: Optional[Annotated[float, Field(ge=0, le=1)]] = None  # teacher-student top-1
    min_relative_robustness: Optional[Annotated[float, Field(ge=0, le=2)]] = None  # mean corrupted / clean accuracy
    min_heldout_relative_robustness: Optional[Annotated[float, Field(ge=0, le=2)]] = None  # held-out families only
    max_latency_p95_ms: Optional[Annotated[float, Field(gt=0)]] = None  # end-to-end, batch 1
    min_automation_rate: Optional[Annotated[float, Field(ge=0, le=1)]] = None  # share decided without a person
    min_accepted_accuracy: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    max_ece: Optional[Annotated[float, Field(ge=0, le=1)]] = None  # after temperature scaling
    # task: anomaly only: the area under the ROC curve of the image score, good against defective test parts.
    min_image_auroc: Optional[Annotated[float, Field(ge=0, le=1)]] = None
    # point: gate the measured rate; bound: gate the pessimistic end of its 95 % interval (lower bound for a
    # minimum, upper for a maximum), so a pass holds with 95 % confidence. The report shows both either way.
    gate_on: Literal["point", "bound"] = "point"
    # With `previous` set: a class whose recall against the previous model got worse beyond its paired 95 %
    # interval fails the gate (kpi.no_regression[<class>]). null: on when `previous` is set; false: reported only.
    no_regression: Optional[bool] = None


class EconomicsConfig(_Strict):
    """What a part costs to inspect by hand: the report turns the automation rate into hours and money.

    Every field is printed next to the figure it produces. Without parts_per_day,
    manual_seconds_per_part and labour_cost_per_hour the report shows the automation rate only.
    """

    parts_per_day: Optional[Annotated[float, Field(gt=0)]] = None
    manual_seconds_per_part: Optional[Annotated[float, Field(gt=0)]] = None
    labour_cost_per_hour: Optional[Annotated[float, Field(ge=0)]] = None
    currency: Annotated[str, Field(min_length=1, max_length=8)] = "EUR"
    working_days_per_month: Annotated[float, Field(gt=0, le=31)] = 21.0
    # Expected cost of one escape (a defective part shipped) and of one false reject (a good part scrapped or
    # re-worked), in ``currency``: net savings subtract them. Unset: the report shows gross savings and says so.
    escape_cost: Optional[Annotated[float, Field(ge=0)]] = None
    false_reject_cost: Optional[Annotated[float, Field(ge=0)]] = None


class ReportConfig(_Strict):
    language: Literal["en", "ja"] = "en"


class MonitorConfig(_Strict):
    """Drift thresholds, stored in the bundle's reference profile so the edge box applies them."""

    psi_watch: Annotated[float, Field(gt=0)] = 0.1  # population stability index: usual rule of thumb
    psi_drift: Annotated[float, Field(gt=0)] = 0.25
    ks_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01  # Kolmogorov-Smirnov significance level
    min_images: Annotated[int, Field(ge=1)] = 30  # below this the verdict is marked unreliable

    @model_validator(mode="after")
    def _ordered(self) -> "MonitorConfig":
        if self.psi_watch >= self.psi_drift:
            raise ValueError(f"psi_watch ({self.psi_watch:g}) must be below psi_drift ({self.psi_drift:g})")
        return self


class AnomalyConfig(_Strict):
    """``task: anomaly``: the good part is learnt from good parts alone (``kit.anomaly``).

    The teacher's features are learnt on the line's good images against synthetic defects pasted in (the
    ``defects`` view family), or taken from published weights (``teacher.pretrained``/``pretrained_file``). The
    student regresses them; the anomaly map is where they differ. Defect images, any number including none, serve
    validation, certification and test only (with ``name_defects`` the validation ones also give the namer its
    class centres)."""

    # The synthetic defects the teacher learns to tell from good parts (scars, pits, CutPaste patches, Perlin blobs).
    synthetic_defects: Annotated[int, Field(ge=1, le=5)] = 3
    # Both networks read the image with its local contrast normalised (a fixed input stage, ``kit.anomaly.model.
    # LocalContrastNorm``): a part seen darker, brighter or under uneven light then gives nearly the same input.
    contrast_norm: bool = True
    # The teacher's features of the strong view held to the weak view's with this weight (0: off). Off by default:
    # on the sparse line a weight of 1 took validation AUROC from 0.97 to 0.89 (invariance to blur and noise blinds
    # features to defects of a few pixels); try it where lighting, not small defects, is the problem.
    teacher_invariance: Annotated[float, Field(ge=0)] = 0.0
    # The student, fed the strong view, regresses the teacher's features of the weak view (photometric changes only,
    # so both stay aligned): lighting, blur and noise then do not raise the score. false: same view for both.
    cross_view: bool = True
    # Locations where the teacher's own features change most between the two views (above this quantile of that
    # change, per batch) are left out of the cross-view loss, as CRLD masks unconfident teacher outputs. 1: no mask.
    unstable_quantile: Annotated[float, Field(gt=0, le=1)] = 0.9
    # Image score from the anomaly map: the mean of its top share of locations (robust to one hot pixel), or its max.
    score: Literal["topk_mean", "max"] = "topk_mean"
    topk_fraction: Annotated[float, Field(gt=0, le=1)] = 0.02
    # The certified operating point: at most this share of good parts rejected, at verify.threshold's confidence
    # (95 %), by a one-sided Clopper-Pearson bound on the good validation images. 0.05 needs 59 of them with no
    # false reject, 0.01 needs 299.
    max_false_reject_rate: Annotated[float, Field(gt=0, lt=1)] = 0.05
    # The review band below the reject threshold: parts scoring between the accept and the reject thresholds go
    # to a person. Its width is this share of good validation parts (0: no band, every part decided).
    review_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.02
    # The hybrid: the labelled defect classes of the validation split give a namer (nearest class centre in the
    # teacher's features, weighted by the anomaly map); a rejected part unlike every named class is ``unknown_label``.
    name_defects: bool = False
    unknown_label: Annotated[str, Field(min_length=1, max_length=40)] = "unknown defect"


class Recipe(_Strict):
    """One camera line: data, views, teacher, student, distillation."""

    schema_version: Literal[1] = SCHEMA_VERSION
    # classify: one class per folder, learnt from labelled examples of each. anomaly: learnt from good parts alone
    # (``anomaly:``); a part unlike them is rejected, whatever its kind.
    task: Literal["classify", "anomaly"] = "classify"
    line: LineConfig
    data: DataConfig
    views: ViewsConfig = ViewsConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    # Validated against the method registry (``kit.distill.methods``): each method brings its settings.
    distill: SerializeAsAny[MethodSettings] = CRLDConfig()
    # Extra students trained with the same budget and other methods, for the robustness comparison.
    compare: list[str] = Field(default_factory=list)
    export: ExportConfig = ExportConfig()
    verify: VerifyConfig = VerifyConfig()
    kpi: KpiTargets = KpiTargets()
    economics: EconomicsConfig = EconomicsConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    report: ReportConfig = ReportConfig()
    monitor: MonitorConfig = MonitorConfig()
    # The run this model replaces (a run directory with a bundle): `kit verify` scores it on this run's test split
    # and reports old vs new per class (kit.verify.regression); null: a first model.
    previous: Optional[str] = None
    seed: int = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"

    # Set by the loader, not by the user: the folder relative paths resolve against.
    _base_dir: Path = PrivateAttr(default_factory=lambda: Path(".").resolve())

    @field_validator("distill", mode="wrap")
    @classmethod
    def _distill_settings(cls, value: Any, handler: Any) -> MethodSettings:
        """The settings model of the method named in ``distill.method`` (default crld) validates the block."""
        if isinstance(value, MethodSettings):
            return value
        if not isinstance(value, dict):
            return handler(value)  # pydantic's own "should be a valid dictionary" error
        name = value.get("method", "crld")
        if name not in list_methods():
            raise ValidationError.from_exception_data("distill", [InitErrorDetails(
                type=PydanticCustomError("unknown_method", "unknown distillation method; choose from {choices}",
                                         {"choices": ", ".join(list_methods())}),
                loc=("method",), input=name)])
        return get_method(name).settings.model_validate(value)

    @field_validator("compare")
    @classmethod
    def _known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in list_methods()]
        if unknown:
            raise ValueError(f"unknown distillation method {unknown[0]!r}; choose from {', '.join(list_methods())}")
        return value

    @model_validator(mode="after")
    def _compare_methods(self) -> "Recipe":
        if len(set(self.compare)) != len(self.compare):
            raise ValueError("compare: lists a method twice")
        if self.distill.method in self.compare:
            raise ValueError(f"compare: {self.distill.method!r} is already the main method (distill.method)")
        target = self.verify.threshold
        if target is not None and target.class_escape_limits and not (target.ok_class or self.line.ok_class):
            raise ValueError("verify.threshold.class_escape_limits needs the good-part class: set line.ok_class")
        if target is not None and target.max_escape_rate is not None and not (target.ok_class or self.line.ok_class):
            raise ValueError("verify.threshold.max_escape_rate needs the good-part class: set line.ok_class "
                             "(or verify.threshold.ok_class)")
        if self.data.classes is not None:
            problem = self.class_name_problem(self.data.classes)
            if problem:
                raise ValueError(problem)
        ok = self.line.ok_class
        for field_name, value in self._class_named_fields().items():
            if field_name != "verify.threshold.class_thresholds" and ok is not None and ok in value:
                raise ValueError(f"{field_name}: {ok!r} is the good-part class; list defect classes only")
        size = self.teacher.image_size
        if size is not None and (size[0] < self.data.image_size[0] or size[1] < self.data.image_size[1]):
            raise ValueError(f"teacher.image_size {list(size)} is smaller than data.image_size {list(self.data.image_size)}; "
                             "the teacher may read larger images than the student, not smaller")
        if size is not None and abs(size[0] * self.data.image_size[1] - size[1] * self.data.image_size[0]) > \
                0.02 * size[0] * self.data.image_size[1]:
            raise ValueError(f"teacher.image_size {list(size)} has another shape than data.image_size "
                             f"{list(self.data.image_size)}; keep height / width the same, or a rotation drawn for the "
                             "teacher becomes a shear for the student")
        if isinstance(self.line.defect_rate, dict) and not self.line.ok_class:
            raise ValueError("line.defect_rate per class needs the good-part class: set line.ok_class")
        if self.task == "anomaly":
            self._check_anomaly()
        return self

    def _check_anomaly(self) -> None:
        """What ``task: anomaly`` needs: the good-part class it learns, and no setting that only a classifier has."""
        if not self.line.ok_class:
            raise ValueError("task: anomaly learns the good part: set line.ok_class to the good-part folder")
        if self.compare:
            raise ValueError("compare: comparison students are for task: classify; in anomaly mode the benchmark "
                             "compares the references (benchmarks/anomaly_quality.py)")
        if "triton" in self.export.formats:
            raise ValueError("export.formats: triton serves classifiers' logits; an anomaly bundle's score and map "
                             "are served by `deploy serve` (leave triton out)")
        if self.teacher.image_size is not None:
            raise ValueError("teacher.image_size: in anomaly mode teacher and student read the same image (their "
                             "features are compared location by location); leave it out")
        if self.data.classes is not None and self.anomaly.unknown_label in self.data.classes:
            raise ValueError(f"anomaly.unknown_label: {self.anomaly.unknown_label!r} is already a class name")

    def _class_named_fields(self) -> dict[str, dict[str, Any]]:
        """Every per-class field of the recipe that is set, by its field path."""
        target = self.verify.threshold
        named = {"line.defect_rate": self.line.defect_rate, "kpi.max_class_escape_rate": self.kpi.max_class_escape_rate,
                 "verify.threshold.class_thresholds": target.class_thresholds if target is not None else None,
                 "verify.threshold.class_escape_limits": target.class_escape_limits if target is not None else None}
        return {name: value for name, value in named.items() if isinstance(value, dict) and value}

    def class_name_problem(self, classes: list[str]) -> str | None:
        """The first field that names a class the line does not have, as one line naming the field (None when every
        name holds). Run by the validator when ``data.classes`` is given, and on the classes found when the data is
        read, so a renamed class folder stops the run before training instead of at export."""
        listed = ", ".join(classes)
        if self.line.ok_class is not None and self.line.ok_class not in classes:
            return f"line.ok_class: {self.line.ok_class!r} is not one of the line's classes ({listed})"
        target_ok = self.verify.threshold.ok_class if self.verify.threshold is not None else None
        if target_ok is not None and target_ok not in classes:
            return f"verify.threshold.ok_class: {target_ok!r} is not one of the line's classes ({listed})"
        for field_name, value in self._class_named_fields().items():
            unknown = [c for c in value if c not in classes]
            if unknown:
                return f"{field_name}: {unknown[0]!r} is not one of the line's classes ({listed})"
        if (self.kpi.max_class_escape_rate is not None or self.kpi.max_false_reject_rate is not None) \
                and self.line.ok_class is None and "ok" not in classes:
            return ("kpi.max_class_escape_rate / max_false_reject_rate need the good-part class: set line.ok_class "
                    f"to one of the line's classes ({listed})")
        return None

    @property
    def view_size(self) -> tuple[int, int]:
        """The size views are drawn at: the teacher's when it reads larger images (``kit.data.PairedViewDataset``)."""
        return tuple(self.teacher.image_size or self.data.image_size)

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self._base_dir / path).resolve()
