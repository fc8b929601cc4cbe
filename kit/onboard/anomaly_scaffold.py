"""``kit init-line`` proposes ``task: anomaly``: when, and the parts of that recipe that differ from a classifier's.

The rule (``propose_anomaly``) is measured at two points, below. The recipe it leads to learns the good part from the
good images alone (``kit.anomaly``); the defect images, however few, measure it. ``kit.onboard.init_line`` surveys the
folder and writes the parts both tasks share (header, ``line:``, ``data:``, ``views:``, economics).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kit.onboard.targets import COMMENT_COLUMN, SCAFFOLD_VAL_FRACTION, next_target_line, strictest_certifiable
from kit.verify.stats import zero_failure_sample_size

if TYPE_CHECKING:
    from kit.onboard.init_line import LineSurvey

# A line whose rarest defect class has fewer images than this is proposed task: anomaly, not a classifier. Measured
# at two points, each trained supervised with the scaffold's recipe:
# - the sample line, 100 images per defect class (60 in training at its 0.6 split): 97.7 % test accuracy, its
#   operating target certified, GO (README, "What to expect"; 96.5-97.2 % over 3 seeds at the recipe budget in
#   benchmarks/RESULTS.md, "Tie rule for the best epoch: sample, 64 px, ... (recipe budget)");
# - the sparse line, 33-34 images per defect class (about 23 in training) and 900 good parts, the unedited scaffold:
#   test macro-F1 0.756 (RESULTS.md, "Sparse line before and after issue 19", row `kit run`, unedited scaffold) and
#   11 of 100 fresh scratches called good against the 5 % target (RESULTS.md, "Fresh parts ... (seed 7)"): NO-GO.
# No line between 34 and 100 was measured; 50 lies between, nearer the failing point (35 training images a class at
# a 0.7 split, 1.5x the sparse line's).
ANOMALY_BELOW_DEFECT_IMAGES = 50
# The hybrid (anomaly.name_defects: the score decides, a namer learnt from the labelled defects names the kind) is
# proposed when every defect class has at least this many images: 7 to learn a class centre from at a 0.7 split and
# one each for validation and test. Not measured.
NAME_DEFECTS_MIN_IMAGES = 10
# anomaly.max_false_reject_rate: the strictest of these (strictest first) that the good validation images certify
# with no false reject at 95 % confidence (kit.onboard.targets: 0.01 needs 299, 0.02 149, 0.05 59, 0.10 29).
FALSE_REJECT_LADDER = (0.01, 0.02, 0.05, 0.10)
# Fewer good validation images than the loosest rung needs (29: about 194 good images at a 15 % split) certify no
# operating point, so a line with defect folders keeps the classifier's scaffold; good parts alone have no other task.
MIN_GOOD_VAL_IMAGES = zero_failure_sample_size(FALSE_REJECT_LADDER[-1])


@dataclass(frozen=True)
class AnomalyProposal:
    """Why a line is proposed ``task: anomaly``, in the counts that decided it."""

    ok_class: str
    good_images: int
    good_val_images: int
    defects: dict[str, int]  # images per defect class (empty: good parts only)
    split_folders: bool

    @property
    def name_defects(self) -> bool:
        return bool(self.defects) and min(self.defects.values()) >= NAME_DEFECTS_MIN_IMAGES

    @property
    def false_reject_target(self) -> tuple[float | None, float | None]:
        """(the strictest certifiable ``FALSE_REJECT_LADDER`` rung, the next stricter one)."""
        return strictest_certifiable(FALSE_REJECT_LADDER, self.good_val_images)

    @property
    def good_train_images(self) -> int:
        """About: the split's 0.7 of the good images (kit.data.index.stratified_split), or all but val/ for folders."""
        if self.split_folders:
            return self.good_images - self.good_val_images
        return max(1, min(self.good_images - self.good_val_images - 1, round(self.good_images * 0.7)))


def propose_anomaly(survey: LineSurvey) -> AnomalyProposal | None:
    """``task: anomaly`` for a line of good parts alone, or one whose rarest defect class has fewer than
    ``ANOMALY_BELOW_DEFECT_IMAGES`` images while its good validation images certify at least the loosest false-reject
    target; None (a classifier) otherwise, and whenever the good-part class is unknown (anomaly mode learns it)."""
    if survey.ok_class is None:
        return None
    defects = {c: n for c, n in survey.counts.items() if c != survey.ok_class}
    if defects and (min(defects.values()) >= ANOMALY_BELOW_DEFECT_IMAGES or survey.good_val_images < MIN_GOOD_VAL_IMAGES):
        return None
    return AnomalyProposal(survey.ok_class, survey.counts[survey.ok_class], survey.good_val_images, defects,
                           survey.split_folders)


def anomaly_header(p: AnomalyProposal) -> str:
    """The header's comment: why anomaly mode, in counts, and what the defect images are for."""
    good = f"the {p.good_images} {p.ok_class!r} images"
    if not p.defects:
        text = (f"task: anomaly, proposed: the folder holds good parts only ({good}); the model learns them and rejects "
                "what is unlike them. With no defect image, escapes and image AUROC are unmeasured: GO needs defective "
                "parts, and the shadow period supplies them (kit shadow; reviewed parts come back with kit ingest).")
    else:
        rarest = min(p.defects, key=lambda c: p.defects[c])
        use = "validation (and the namer's class centres) and test" if p.name_defects else "validation and test only"
        text = (f"task: anomaly, proposed: the rarest defect class, {rarest!r}, has {p.defects[rarest]} images, fewer "
                f"than {ANOMALY_BELOW_DEFECT_IMAGES} (measured: a classifier learnt from 33-34 images per defect class "
                "was NO-GO on the sparse line, from 100 GO on the sample line; kit/onboard/anomaly_scaffold.py). The "
                f"model learns the good part from {good} alone and rejects what is unlike them; the "
                f"{sum(p.defects.values())} defect images serve {use}.")
    return textwrap.fill(text, width=118, initial_indent="# ", subsequent_indent="#   ", break_long_words=False,
                         break_on_hyphens=False) + "\n"


def anomaly_split_note(p: AnomalyProposal) -> str:
    if p.defects:
        return "good parts split like this; defect images go to val and test only"
    return "stratified random split, fixed seed"


def _false_reject_lines(p: AnomalyProposal) -> str:
    """``anomaly.max_false_reject_rate``: the strictest rung the good validation images certify, and the next one's
    price in images (the same ladder as the classifier's ``verify.threshold``, ``kit.onboard.targets``)."""
    chosen, stricter = p.false_reject_target
    where = "its val/ folder" if p.split_folders else f"a {SCAFFOLD_VAL_FRACTION * 100:g} % split"
    fraction = p.good_val_images / max(1, p.good_images) if p.split_folders else SCAFFOLD_VAL_FRACTION
    if chosen is None:
        needed = zero_failure_sample_size(FALSE_REJECT_LADDER[-1])
        return (f"  max_false_reject_rate: {FALSE_REJECT_LADDER[-1]:<7g}# {p.good_val_images} good validation images "
                f"({where}) certify no target;\n{COMMENT_COLUMN}# {FALSE_REJECT_LADDER[-1]:g} needs {needed} with no "
                f"false reject (about {math.ceil(needed / fraction):,} good images at this split): add good images\n")
    line = (f"  max_false_reject_rate: {chosen:<7g}# at most {chosen * 100:g} % of good parts rejected, certified at 95 % "
            f"confidence:\n{COMMENT_COLUMN}# {p.good_val_images} good validation images ({where}) with no false reject\n")
    if stricter is not None:
        line += next_target_line(stricter, zero_failure_sample_size(stricter), fraction, p.good_images, kind="good ")
    return line


def _comment(key_value: str, text: str) -> str:
    """``key_value`` with ``text`` as its comment from column 32, wrapped onto comment lines at that column."""
    return textwrap.fill(text, width=118, initial_indent=f"{key_value:<32}# ", subsequent_indent=f"{COMMENT_COLUMN}# ",
                         break_long_words=False, break_on_hyphens=False) + "\n"


def _name_defects_lines(p: AnomalyProposal) -> str:
    hybrid = ("the hybrid: the anomaly score decides accept / reject, and a namer learnt from the labelled defects "
              'names the kind of a rejected part (one unlike every class: "unknown defect")')
    if p.name_defects:
        counts = ", ".join(f"{c} {n}" for c, n in p.defects.items())
        return _comment("  name_defects: true", f"{hybrid}; proposed as every defect class has at least "
                        f"{NAME_DEFECTS_MIN_IMAGES} images ({counts}); the namer's class centres come from the "
                        "validation defects, so no defect image is taken from the escape measurement")
    if not p.defects:
        return _comment("  # name_defects: true", f"{hybrid}; needs labelled defect folders, at least "
                        f"{NAME_DEFECTS_MIN_IMAGES} images each")
    rarest = min(p.defects, key=lambda c: p.defects[c])
    return _comment("  # name_defects: true", f"{hybrid}; needs at least {NAME_DEFECTS_MIN_IMAGES} images of every "
                    f"defect class ({rarest!r} has {p.defects[rarest]})")


def anomaly_sections(p: AnomalyProposal, size_px: int, cpu_pixel_budget: int) -> str:
    """``teacher:``, ``student:``, ``anomaly:`` and ``kpi:`` of an anomaly recipe. No ``distill``, ``compare`` or
    ``verify.threshold``: the student regresses the teacher's features (``anomaly.cross_view``) and the operating
    point is the certified false-reject rate."""
    epoch_mpx = p.good_train_images * size_px**2 / 1e6
    fits = "within" if epoch_mpx <= cpu_pixel_budget / 1e6 else "over"
    epochs_note = (f"an epoch is about {p.good_train_images} good training images x {size_px}^2 px = {epoch_mpx:.0f} M px, "
                   f"{fits} the CPU budget ({cpu_pixel_budget / 1e6:g} M)")
    target = p.false_reject_target[0] or FALSE_REJECT_LADDER[-1]
    return f"""
teacher:
  arch: local_cnn_m             # 0.12 M parameters, a ~20 px receptive field with the background flattened: the good
                                # texture a few px at a time, so a small defect stands out wherever it is; for defects
                                # wider than about 8 px at the model's input (stains, missing parts) try resnet18
  epochs: 10                    # {epochs_note}
  batch_size: 32
  optimizer: adamw              # SGD at 0.05 stalled at chance for 5 of 10 epochs on one seed of the sparse line
  lr: 0.001
  weight_decay: 0.0001
  # pretrained: true            # no published weights exist for local_cnn: the teacher learns good parts against
                                # synthetic defects (anomaly.synthetic_defects)

student:
  arch: local_cnn_s             # 0.03 M parameters, the teacher's family: it regresses the teacher's features on good
                                # parts, and the anomaly map is where the two differ
  epochs: 10                    # feature regression converges fast (sparse line: image AUROC flat after ~5 epochs)
  batch_size: 32
  optimizer: adamw              # a regression: AdamW at a small rate, as STPM and EfficientAD train theirs
  lr: 0.003
  weight_decay: 0.00001

anomaly:                        # the good part learnt from good parts alone; a part unlike them is rejected
{_false_reject_lines(p)}  review_fraction: 0.02         # a band below the reject threshold goes to a person: 2 % of good parts
{_name_defects_lines(p)}
export:
  formats: [onnx, tensorrt-fp16]  # INT8 left out: quantized, the sparse line's anomaly graph moved 2.2 % of its reject
                                # decisions against FP32 (parity gate: 1 %); add onnx-int8 / tensorrt-int8 and read
                                # `kit export`'s parity table before deploying one

kpi:                            # release targets: `kit verify` and the report's GO / NO-GO gate on them
  min_image_auroc: 0.95         # the score ranks a defective test part above a good one 95 % of the time
  max_class_escape_rate: 0.05   # worst defect class: at most 5 % of its parts accepted as good
  max_false_reject_rate: {target:<7g}# good test parts rejected as a defect (anomaly's target, measured on test)
  # min_automation_rate: 0.70   # uncomment the ones management signs off on
  # gate_on: bound              # gate each rate on the pessimistic end of its 95 % interval, not its value
"""
