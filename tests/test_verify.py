"""Verification: corruption suite, calibration, operating threshold, latency harness, KPI gate,
and ``kit verify`` / ``kit threshold`` on a real tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from deploy.bench import bench_end_to_end, bench_model
from deploy.manifest import read_manifest
from deploy.memory import PeakMemory
from deploy.preprocess import PreprocessSpec, prepare_image, read_image
from kit.cli import app
from kit.evaluate import classification_metrics
from kit.recipe.schema import KpiTargets, ThresholdTarget
from kit.verify.calibration import expected_calibration_error, fit_temperature, reliability_table
from kit.views.corruptions import corrupt_images, coverage, image_seed, list_corruptions, severity_table
from kit.verify.gate import evaluate_gate
from kit.verify.stats import clopper_pearson
from kit.verify.threshold import choose_threshold, operating_point, parse_target
from kit.views import build_view

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def line_images() -> np.ndarray:
    """Eight committed sample-line images (two per class of four classes), prepared at 48 px."""
    spec = PreprocessSpec(image_size=(48, 48))
    root = REPO / "sample_data" / "sample_line"
    paths = [p for cls in ("ok", "scratch", "dent", "stain") for p in sorted((root / cls).glob("*.png"))[:2]]
    return np.stack([prepare_image(read_image(p, "gray"), spec) for p in paths])


# -- corruption suite ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", list_corruptions())
def test_each_severity_changes_the_image_and_harsher_changes_it_more(family, line_images):
    changes = []
    for severity, value in enumerate(severity_table(family), start=1):
        out = corrupt_images(line_images, family, value, run_seed=0)
        assert out.shape == line_images.shape and out.dtype == np.uint8
        changes.append(float(np.abs(out.astype(np.float64) - line_images).mean()))
    assert changes[0] > 0.3, f"{family} severity 1 barely changes the image ({changes[0]:.3f})"
    assert all(b > a for a, b in zip(changes, changes[1:])), f"{family} not monotone: {changes}"


@pytest.mark.parametrize("family", ["gaussian_noise", "shadow", "motion_blur", "jpeg"])
def test_corruptions_are_deterministic_and_seeded_per_image(family, line_images):
    value = severity_table(family)[2]
    first = corrupt_images(line_images, family, value, run_seed=0)
    assert np.array_equal(first, corrupt_images(line_images, family, value, run_seed=0))
    # Every image has its own seed, the same for every model that is scored on it.
    seeds = {image_seed(0, family, i) for i in range(len(line_images))}
    assert len(seeds) == len(line_images)
    if family in ("gaussian_noise", "shadow"):  # the randomness is visible: another run seed differs
        assert not np.array_equal(first, corrupt_images(line_images, family, value, run_seed=1))


def test_coverage_separates_in_recipe_from_held_out():
    strong = build_view([{"lighting": {"severity": 2}}, {"blur": {"severity": 2}},
                         {"Affine": {"translate_percent": [-0.05, 0.05], "p": 0.5}}], "views.strong", (48, 48), 1)
    cover = coverage(strong, list_corruptions())
    assert {f for f, c in cover.items() if c == "in-recipe"} == {
        "darker", "brighter", "gamma", "shift", "defocus", "motion_blur", "gaussian_blur"}
    assert cover["rotation"] == "held-out"  # a translate-only Affine does not rotate
    assert cover["jpeg"] == cover["gaussian_noise"] == cover["shadow"] == "held-out"


def test_recipe_severity_override_is_checked(tmp_path, tiny_line):
    from kit.errors import RecipeError
    from kit.recipe import load_recipe
    from tests.conftest import tiny_recipe_dict, write_recipe

    bad = tiny_recipe_dict(tiny_line, **{"verify.corruptions.severities": {"uneven_illumination": [0.1, 0.2, 0.3, 0.4, 0.5]}})
    with pytest.raises(RecipeError, match=r"verify.corruptions.severities.uneven_illumination\[2\]: 0.3 is not a valid severity"):
        load_recipe(write_recipe(tmp_path / "bad.yaml", bad))
    typo = tiny_recipe_dict(tiny_line, **{"verify.corruptions.families": ["darkr"]})
    with pytest.raises(RecipeError, match="unknown corruption family 'darkr' \\(did you mean darker\\?\\)"):
        load_recipe(write_recipe(tmp_path / "typo.yaml", typo))


# -- calibration and threshold ------------------------------------------------------------------

def _overconfident(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax claims ~99 % confidence on data that is right ~80 % of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < 0.8, labels, (labels + 1) % 3)
    logits = rng.normal(0, 0.3, (n, 3))
    logits[np.arange(n), pred] += 6.0
    return logits.astype(np.float32), labels


def test_temperature_scaling_cools_an_overconfident_model():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    from deploy.predictor import softmax

    before, after = expected_calibration_error(softmax(logits), labels), expected_calibration_error(softmax(logits, t), labels)
    assert t > 2.0
    assert before > 0.15 and after < 0.05
    table = reliability_table(softmax(logits, t), labels)
    assert sum(r["count"] for r in table) == len(labels) and len(table) == 10


def test_threshold_search_reaches_its_target_on_validation():
    from deploy.predictor import softmax

    logits, labels = _overconfident()
    rng = np.random.default_rng(1)
    logits = logits + rng.normal(0, 2.0, logits.shape).astype(np.float32)  # spread the confidences
    probs = softmax(logits)
    classes = ["ok", "scratch", "dent"]
    target = ThresholdTarget(accepted_accuracy=0.9)
    choice = choose_threshold(probs, labels, target, classes)
    assert choice["reached"] and choice["val"]["accepted_accuracy"] >= 0.9
    assert 0 < choice["val"]["automation_rate"] < 1
    # The chosen threshold is the lowest that works: one step lower misses the target.
    lower = np.max(probs.max(1)[probs.max(1) < choice["threshold"]])
    assert operating_point(probs, labels, float(lower))["accepted_accuracy"] < 0.9

    escape = choose_threshold(probs, labels, ThresholdTarget(max_escape_rate=0.01, ok_class="ok"), classes)
    assert escape["reached"] and escape["val"]["escape_rate"] <= 0.01
    impossible = choose_threshold(np.full((10, 3), 1 / 3, np.float32), np.arange(10) % 3, ThresholdTarget(accepted_accuracy=0.99), classes)
    assert not impossible["reached"] and impossible["threshold"] > 1.0  # above every confidence: nothing automated
    assert operating_point(probs, labels, impossible["threshold"])["automation_rate"] == 0.0


def test_threshold_target_parsing():
    assert parse_target("accepted_accuracy=0.995").accepted_accuracy == 0.995
    assert parse_target("max_escape_rate=0.001", ok_class="ok").max_escape_rate == 0.001
    from kit.errors import ArgumentError

    from kit.errors import RecipeError
    from kit.verify.threshold import ok_class_index

    # the good-part class may come from line.ok_class, so parsing accepts it; resolving without one fails
    bare = parse_target("max_escape_rate=0.001")
    assert ok_class_index(bare, ["good", "dent"], "good") == 0
    with pytest.raises(RecipeError, match="max_escape_rate needs the good-part class: set line.ok_class"):
        ok_class_index(bare, ["good", "dent"])
    with pytest.raises(ArgumentError, match="^target: expected accepted_accuracy=VALUE") as raised:
        parse_target("accuracy>0.9")
    assert raised.value.worded(lambda name: "--" + name).startswith("--target: expected")


# -- gate and latency harness -------------------------------------------------------------------

MEASURED = {"accuracy": 0.95, "accuracy_gap": 0.01, "agreement": 0.96, "relative_robustness": 0.8,
            "heldout_relative_robustness": 0.7, "latency_p95_ms": 2.0, "automation_rate": 0.9,
            "accepted_accuracy": 0.995, "macro_f1": 0.94, "ece": 0.02}


def test_gate_passes_reachable_targets_and_fails_one_out_of_reach():
    ok = evaluate_gate(MEASURED, KpiTargets(max_accuracy_gap=0.02, min_agreement=0.95, max_latency_p95_ms=5.0), takt_ms=500.0)
    assert ok["passed"] and ok["failed"] == []
    assert sum(c["gated"] for c in ok["checks"]) == 4  # three targets and the line takt
    bad = evaluate_gate(MEASURED, KpiTargets(max_accuracy_gap=0.02, min_automation_rate=0.95), takt_ms=None)
    assert not bad["passed"] and bad["failed"] == ["kpi.min_automation_rate"]
    reported = evaluate_gate(MEASURED, KpiTargets(), takt_ms=None)
    assert reported["passed"] and not any(c["gated"] for c in reported["checks"])
    assert {c["measure"] for c in reported["checks"]} >= {"accuracy_gap", "relative_robustness", "automation_rate"}
    slow = evaluate_gate(MEASURED, KpiTargets(), takt_ms=1.0)
    assert slow["failed"] == ["line takt"]


def test_latency_harness_on_a_plain_function():
    spec = PreprocessSpec(image_size=(32, 32))
    weights = np.random.default_rng(0).normal(size=(32 * 32, 4)).astype(np.float32)

    def infer(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ weights

    with PeakMemory() as memory:
        r = bench_model(infer, batch=4, warmup=2, iters=30, spec=spec)
    assert r["batch"] == 4 and r["iters"] == 30
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert r["images_per_s"] > 0
    if memory.peak_mb is not None:
        assert memory.added_mb is not None and memory.peak_mb >= memory.added_mb >= 0
    paths = sorted((REPO / "sample_data" / "sample_line" / "ok").glob("*.png"))[:3]
    e2e = bench_end_to_end(infer, paths, batch=2, warmup=1, iters=10, spec=spec)
    assert e2e["p50_ms"] <= e2e["p95_ms"] <= e2e["p99_ms"]
    with pytest.raises(ValueError, match="needs the PreprocessSpec"):
        bench_model(infer, batch=1)


# -- kit verify / kit threshold on a real tiny run ----------------------------------------------

def test_verify_writes_every_section(finished_run):
    kpi = json.loads((finished_run / "verify" / "kpi.json").read_text())
    assert kpi["deployed_runtime"] == "onnx"
    assert {"teacher", "student", "student-none", "onnx", "onnx-int8"} <= set(kpi["models"])
    onnx = kpi["models"]["onnx"]
    assert onnx["agreement"] == kpi["models"]["student"]["agreement"]  # ONNX FP32 decides like the torch student
    assert set(onnx["per_class"]["ok"]) >= {"precision", "recall", "teacher_agreement", "mean_kl"}
    rob = kpi["robustness"]
    assert len(rob["rows"]) == len(list_corruptions()) * 5 * len(kpi["models"])
    assert {v["coverage"] for v in rob["families"].values()} == {"in-recipe", "held-out"}
    s = rob["summary"]["onnx"]
    assert s["all"]["relative_robustness"] == pytest.approx(s["all"]["mean_accuracy"] / s["clean_accuracy"])
    lat = kpi["latency"]
    assert {(r["model"], r["mode"], r["batch"]) for r in lat["rows"]} >= {("onnx", "end_to_end", 1), ("teacher", "model_only", 4)}
    assert all(r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in lat["rows"])
    assert lat["takt_ms"] == 1000.0 and lat["threads"]["torch_threads"] >= 1
    assert kpi["gate"]["passed"] and kpi["measured"]["latency_p95_ms"] > 0
    manifest = read_manifest(finished_run / "bundle")
    assert manifest.temperature == pytest.approx(kpi["calibration"]["temperature"])
    assert manifest.operating_threshold == kpi["operating"]["threshold"]
    for name in ("metrics.csv", "per_class.csv", "robustness.csv", "robustness_summary.csv", "latency.csv",
                 "reliability.csv", "gate.csv"):
        assert (finished_run / "verify" / name).stat().st_size > 0, name
    state = json.loads((finished_run / "state.json").read_text())
    assert list(state["stages"]) == ["data", "teacher", "teacher-check", "student", "student-none", "evaluate", "export",
                                     "verify", "report"]
    acc = kpi["intervals"]["accuracy"]  # every rate carries its n and a 95 % Clopper-Pearson interval
    assert acc["n"] == kpi["test_images"] and acc["k"] == round(kpi["models"]["onnx"]["accuracy"] * acc["n"])
    assert (acc["low"], acc["high"]) == pytest.approx(clopper_pearson(acc["k"], acc["n"]))


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    return run_dir


def _set_lock(run_dir: Path, section: str, value: dict) -> None:
    lock = run_dir / "recipe.lock.yaml"
    body = yaml.safe_load(lock.read_text())
    body["recipe"][section] = value
    lock.write_text(yaml.safe_dump(body, sort_keys=False))


def test_verify_is_deterministic_and_gates_an_unreachable_target(run_copy, finished_run):
    _set_lock(run_copy, "kpi", {"max_latency_p95_ms": 1e-6, "min_agreement": 0.0})
    result = CliRunner().invoke(app, ["verify", str(run_copy)])
    assert result.exit_code == 1, result.output
    assert "verdict: NO-GO (kpi.max_latency_p95_ms" in result.output  # the one verdict, not a gate line of its own
    again = json.loads((run_copy / "verify" / "kpi.json").read_text())
    first = json.loads((finished_run / "verify" / "kpi.json").read_text())
    assert again["robustness"]["rows"] == first["robustness"]["rows"]
    assert again["models"]["onnx"]["accuracy"] == first["models"]["onnx"]["accuracy"]
    assert json.loads((run_copy / "state.json").read_text())["stages"]["verify"]["status"] == "gate-failed"
    # the report described the previous measurements: it is no longer where a current report would be
    assert not (run_copy / "report" / "report.html").exists()
    stale = (run_copy / "report.stale" / "report.html").read_text(encoding="utf-8")
    assert "STALE" in stale and "kit verify" in stale


def test_kit_threshold_retunes_without_reexport(run_copy):
    onnx_before = (run_copy / "bundle" / "model.onnx").read_bytes()
    result = CliRunner().invoke(app, ["threshold", str(run_copy), "--target", "max_escape_rate=0.0", "--ok-class", "ok"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(run_copy / "bundle")
    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    assert kpi["operating"]["target"].startswith("escape_rate <= 0")
    assert manifest.operating_threshold == kpi["operating"]["threshold"]
    assert manifest.extra["operating_point"]["ok_class"] == "ok"
    assert (run_copy / "bundle" / "model.onnx").read_bytes() == onnx_before
    bad = CliRunner().invoke(app, ["threshold", str(run_copy), "--target", "max_escape_rate=0.01", "--ok-class", "good"])
    assert bad.exit_code == 1 and "'good' is not a class of this line" in bad.output


def test_verify_needs_an_export(tmp_path):
    result = CliRunner().invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "not a run directory" in result.output


def test_an_uncertifiable_operating_target_is_a_missed_target_on_page_one(run_copy):
    from kit.report import build_report

    _set_lock(run_copy, "verify", {"latency": {"batch": 4, "warmup": 1, "iters": 5},
                                   "threshold": {"accepted_accuracy": 0.99, "confidence": 0.95}})
    result = CliRunner().invoke(app, ["verify", str(run_copy)])
    assert result.exit_code == 1, result.output
    assert "not certifiable with" in result.output
    kpi = json.loads((run_copy / "verify" / "kpi.json").read_text())
    assert kpi["operating"]["certificate"]["message"] == (
        f"not certifiable with {kpi['certify_images']} validation images: 99 % accepted accuracy at 95 % confidence "
        "needs about 299 accepted validation images with no error")
    assert kpi["gate"]["failed"] == ["verify.threshold"] and kpi["operating"]["certified"] is False
    assert kpi["operating"]["threshold"] > 1.0 and kpi["operating"]["test"]["automation_rate"] == 0.0
    html = build_report(run_copy, log=lambda m: None).html.read_text(encoding="utf-8")
    assert 'class="verdict nogo"' in html and "Operating target certified on validation" in html


def test_a_model_that_calls_every_part_good_fails_the_default_gate():
    """The targets the shipped sample recipe sets (and kit init-line suggests) stop a constant-"ok" model,
    whatever its accuracy on a mostly-good test mix."""
    from kit.recipe import load_recipe
    from kit.verify.escapes import escape_table

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "sample_line.yaml", check=False)
    classes = ["crack", "dent", "ok", "scratch"]
    labels = np.array([2] * 960 + [0] * 20 + [1] * 10 + [3] * 10)  # 96 % good parts
    always_ok = np.tile(np.eye(4)[2], (len(labels), 1)).astype(np.float32)
    escapes = escape_table(always_ok, labels, classes, ok_index=2, threshold=0.9)
    assert escapes["worst"] in ("crack", "dent", "scratch") and escapes["worst_rate"] == 1.0
    assert escapes["classes"]["dent"]["k"] == 10 and escapes["classes"]["ok"]["kind"] == "false_reject"
    m = classification_metrics(labels, always_ok.argmax(1), classes)
    measured = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "automation_rate": 1.0, "accepted_accuracy": 0.96,
                "max_class_escape_rate": escapes["worst_rate"], "agreement": 1.0, "accuracy_gap": 0.0}
    verdict = evaluate_gate(measured, recipe.kpi, takt_ms=None)
    assert m["accuracy"] == 0.96 and not verdict["passed"]
    assert "kpi.max_class_escape_rate" in verdict["failed"] and "kpi.min_macro_f1" in verdict["failed"]
