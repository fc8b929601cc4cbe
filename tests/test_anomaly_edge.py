"""Anomaly bundles on the edge (``task: anomaly``): the rule (deploy.decision.AnomalyRule) against hand-computed
scores and confidences, the hybrid's kind naming, the anomaly map as the heatmap, the manifest's refusals, and
every station command (predict, serve, watch, monitor, review-queue, bench) on a real anomaly bundle.

The models are tests/data/make_edge_anomaly.py's: for a uniform image at grey level v the map is
25 (v / 127.5 - 1)^2 everywhere and the score the same; the rule is tests/edge_bundle.anomaly_rule: accept below
0.93, reject from 1.12, good_scores q / 99 (q <= 99) then 2.0, so the share of good parts below s is 0.99 s
(s <= 1) and 0.99 + (s - 1) / 100 (1 <= s <= 2)."""

from __future__ import annotations

import base64
import csv
import http.client
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from deploy.cli import app as deploy_app
from deploy.decision import AnomalyRule
from deploy.decision_log import read_records
from deploy.errors import DeployError
from deploy.manifest import BundleError, Manifest, read_manifest, sha256_file
from deploy.predictor import Predictor
from tests.edge_bundle import ANOMALY_SPEC, GOOD_SCORES, anomaly_rule, good_parts, level_score, make_anomaly_bundle

pytestmark = pytest.mark.edge

# grey level -> (score, label, action, abstain, confidence), computed by hand from the formulas above
BY_HAND = {
    128: (0.00038447, "ok", "accept", False, 1 - 0.99 * 0.00038447),   # x = 0.0039: a good part
    150: (0.77854671, "ok", "accept", False, 1 - 0.99 * 0.77854671),   # x = 0.1765: still below 0.93
    153: (1.0, "defect", "review", True, 0.99),                        # x = 0.2: the 99th percentile, in the band
    160: (1.62437524, "defect", "reject", False, 0.99 + 0.00624375),   # x = 0.2549: past reject_at 1.12
}
TOLERANCE = 1e-5  # float32 scores


def _uniform(level: int, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.full(shape, level, np.uint8)


def _spot(shape=(48, 64), x0=40, y0=12, side=4) -> np.ndarray:
    """A good part with a bright square; the map (and its peak) must be there."""
    image = _uniform(128, shape)
    image[y0 : y0 + side, x0 : x0 + side] = 255
    return image


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("anomaly")
    return {"plain": make_anomaly_bundle(root / "plain"), "hybrid": make_anomaly_bundle(root / "hybrid", hybrid=True)}


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    """PNG files: 3 good parts, the hand-computed levels, a part with a bright spot."""
    folder = tmp_path_factory.mktemp("parts")
    for i, image in enumerate(good_parts(3, seed=7)):
        cv2.imwrite(str(folder / f"good_{i}.png"), image)
    for level in BY_HAND:
        cv2.imwrite(str(folder / f"level_{level}.png"), _uniform(level))
    cv2.imwrite(str(folder / "spot.png"), _spot())
    return folder


# -- the rule -----------------------------------------------------------------------------------------------------

def test_decisions_and_confidences_are_the_hand_computed_ones(bundles):
    predictor = Predictor.from_bundle(bundles["plain"], "onnx")
    assert predictor.task == "anomaly" and predictor.classes == ["ok", "defect"]
    decisions = predictor.predict([_uniform(v) for v in BY_HAND])
    for (level, (score, label, action, abstain, confidence)), d in zip(BY_HAND.items(), decisions):
        assert d.score == pytest.approx(score, abs=TOLERANCE) == pytest.approx(level_score(level), abs=TOLERANCE)
        assert (d.label, d.action, d.abstain) == (label, action, abstain), level
        assert d.confidence == pytest.approx(confidence, abs=TOLERANCE), level
        assert d.probabilities is None
    row = decisions[3].to_dict()
    assert row["score"] == pytest.approx(1.62437524, abs=TOLERANCE) and row["probabilities"] is None


def test_the_review_band_edges_and_a_score_that_is_not_a_number():
    rule = anomaly_rule()
    out = rule.decide(np.array([0.9299, 0.93, 1.1199, 1.12, np.nan, np.inf, -1.0]))
    assert out.actions == ["accept", "review", "review", "reject", "review", "reject", "accept"]
    assert out.labels == ["ok", "defect", "defect", "defect", "defect", "defect", "ok"]
    assert out.abstain.tolist() == [False, True, True, False, True, False, False]
    # accept: share of good parts scoring at least s; review and reject: share scoring below s; NaN: 0
    assert out.confidence.tolist() == pytest.approx([1 - 0.99 * 0.9299, 0.99 * 0.93, 0.99 + 0.1199 / 100,
                                                     0.99 + 0.12 / 100, 0.0, 1.0, 1.0])
    # ties among the quantiles: the share below a tied value is the share strictly below it
    tied = AnomalyRule("ok", 1.0, 1.0, tuple([0.5] * 51 + list(np.linspace(0.5, 1.5, 51)[1:])))
    assert tied.share_below(np.array([0.4, 0.5, 1.0, 1.5, 3.0])).tolist() == pytest.approx([0.0, 0.0, 0.75, 1.0, 1.0])


def test_the_hybrid_names_a_known_kind_and_answers_unknown_far_from_every_centre(bundles):
    predictor = Predictor.from_bundle(bundles["hybrid"], "onnx")
    assert predictor.classes == ["ok", "dark", "bright", "unknown defect"]
    half = _uniform(0)
    half[:, 16:] = 255  # average level mid grey: far from both kinds' centres (x -0.6 and 0.6), score 25
    images = [_uniform(204), _uniform(51), _uniform(180), _uniform(170), half, _uniform(153), _uniform(128)]
    got = [(d.label, d.action) for d in predictor.predict(images)]
    assert got == [("bright", "reject"),  # x 0.6: distance 0 to bright
                   ("dark", "reject"),  # x -0.6
                   ("bright", "reject"),  # x 0.412: (0.6 - 0.412)^2 = 0.035 <= radius 0.04
                   ("unknown defect", "reject"),  # x 0.333: 0.071 > 0.04
                   ("unknown defect", "reject"),
                   ("unknown defect", "review"),  # the suspected defect of a part in the band, named like a reject
                   ("ok", "accept")]
    # a part in the band near a kind is labelled with that kind (the rule alone: this toy model cannot make one)
    out = predictor.manifest.anomaly.decide(np.array([1.0, 1.0]), np.array([[0.01, 0.5], [0.5, 0.05]]))
    assert (out.labels, out.actions) == (["dark", "unknown defect"], ["review", "review"])


def test_the_anomaly_map_is_the_heatmap_and_peaks_on_the_bright_spot(bundles):
    predictor = Predictor.from_bundle(bundles["plain"], "onnx")
    image = _spot()
    plain, explained = predictor.predict(image)[0], predictor.predict(image, heatmap=True)[0]
    assert (explained.label, explained.action, explained.score) == (plain.label, plain.action, plain.score)
    assert explained.score == pytest.approx(25.0, abs=TOLERANCE)  # (255 / 127.5 - 1)^2 * 25 where the spot covers cells
    heat = explained.heatmap
    assert heat.method == "anomaly-map" and heat.label == "defect" and heat.map.shape == image.shape
    x, y = heat.peak_xy
    assert 39 <= x <= 44 and 11 <= y <= 16, heat.peak_xy  # the spot: x 40-43, y 12-15 (1 px for the resize)
    assert heat.map[20:40, 0:20].max() < 0.05  # far from the spot the map is flat
    with pytest.raises(DeployError, match="^heatmap class 'defect': an anomaly bundle has one map"):
        predictor.predict(image, heatmap=True, heatmap_class="defect")


# -- the manifest -------------------------------------------------------------------------------------------------

def _edited(bundle: Path, folder: Path, edit) -> Path:
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / "model.json").read_text())
    edit(manifest)
    (folder / "model.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _set(path: str, value):
    def edit(m):
        node, *keys = m, *path.split(".")
        for key in keys[:-1]:
            node = node[key]
        if value is _set:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return edit


REFUSALS = {
    "no decision": ("plain", _set("decision", _set), "decision: missing; an anomaly bundle's decision block holds its "
                    "rule (ok_class, accept_below, reject_at, good_scores, ...): re-export or re-verify the bundle"),
    "no reject_at": ("plain", _set("decision.reject_at", _set), "decision.reject_at: missing; an anomaly bundle writes "
                     "every field of its rule"),
    "band upside down": ("plain", _set("decision.accept_below", 1.5), "decision.accept_below: 1.5 is above reject_at "
                         "1.12; the review band is accept_below <= score < reject_at (equal: no band)"),
    "kinds out of order": ("hybrid", _set("decision.kinds", ["bright", "dark"]), "decision.kinds: ['bright', 'dark'] "
                           "does not fit the classes ['ok', 'dark', 'bright', 'unknown defect']"),
    "radius of an unknown kind": ("hybrid", _set("decision.kind_radius.rust", 0.1), "decision.kind_radius: 'rust' is "
                                  "not one of the kinds (dark, bright)"),
    "a kind without radius": ("hybrid", _set("decision.kind_radius.dark", _set), "decision.kind_radius: no radius for "
                              "the kind 'dark'; every kind needs one"),
    "good_scores going down": ("plain", _set("decision.good_scores", [0.0] * 50 + [0.5, 0.4] + [1.0] * 49),
                               "decision.good_scores: not non-decreasing (0.5 at 50 %, then 0.4 at 51 %)"),
    "good_scores too short": ("plain", _set("decision.good_scores", list(GOOD_SCORES[:100])),
                              "decision.good_scores: expected the 101 quantiles 0, 1, ..., 100 % of the good validation "
                              "parts' scores, got 100 values"),
    "a typo": ("plain", lambda m: m["decision"].update(reject_a=m["decision"].pop("reject_at")),
               "decision.reject_a: not a field of the anomaly rule"),
    "an unknown task": ("plain", _set("task", "segment"), "task: 'segment' is not a task of this kit (choose from "
                        "classify, anomaly)"),
    "task lost": ("plain", _set("task", _set), "task: missing, but decision is an anomaly rule (decision.task "
                  "'anomaly'); write \"task\": \"anomaly\""),
    "an operating threshold": ("plain", _set("operating_threshold", 0.5), "operating_threshold: 0.5; an anomaly bundle "
                               "decides by decision.accept_below and decision.reject_at: write null"),
    "a temperature": ("plain", _set("temperature", 2.0), "temperature: 2.0; an anomaly bundle has no softmax to "
                      "calibrate: write 1.0"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_broken_anomaly_manifest_is_refused_in_one_line_naming_the_field(bundles, tmp_path, case):
    which, edit, reason = REFUSALS[case]
    bundle = _edited(bundles[which], tmp_path / "b", edit)
    result = CliRunner().invoke(deploy_app, ["predict", str(bundle), str(tmp_path), "--runtime", "onnx"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {bundle / 'model.json'}: {reason}"), result.output
    assert result.output.count("\n") == 1


def _with_model(bundle: Path, folder: Path, model: Path) -> Path:
    """``bundle`` serving another model file (without an embedded manifest), its sha256 updated."""
    shutil.copytree(bundle, folder)
    shutil.copy(model, folder / "model.onnx")
    manifest = json.loads((folder / "model.json").read_text())
    manifest["artefacts"]["onnx"]["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def test_a_model_whose_outputs_do_not_fit_the_anomaly_manifest_is_refused_at_load(bundles, tmp_path):
    data = Path(__file__).parent / "data"
    cases = [(bundles["plain"], data / "edge_anomaly_hybrid.onnx", "the model gives kind_distance but model.json's "
              "decision names no kinds"),
             (bundles["hybrid"], data / "edge_anomaly.onnx", "the model has no 'kind_distance' output (outputs: score, "
              "anomaly_map); an anomaly bundle's model gives score, anomaly_map, kind_distance"),
             (bundles["plain"], data / "edge_linear_seed0.onnx", "the model has no 'score' output (outputs: logits)")]
    for i, (bundle, model, reason) in enumerate(cases):
        swapped = _with_model(bundle, tmp_path / str(i), model)
        with pytest.raises(BundleError) as refused:
            Predictor.from_bundle(swapped, "onnx")
        assert str(refused.value).startswith(f"{swapped / 'model.onnx'}: {reason}") and "\n" not in str(refused.value)


def test_the_kit_writes_an_anomaly_manifest_by_constructing_it(bundles):
    rule = anomaly_rule(hybrid=True)
    manifest = Manifest(classes=rule.labels(), preprocess=ANOMALY_SPEC, artefacts={}, task="anomaly", anomaly=rule)
    d = manifest.to_dict()
    assert d["task"] == "anomaly" and d["temperature"] == 1.0 and d["operating_threshold"] is None
    assert [o["name"] for o in d["outputs"]] == ["score", "anomaly_map", "kind_distance"]
    assert d["decision"]["reject_at"] == 1.12 and d["decision"]["kinds"] == ["dark", "bright"]
    assert "nearest of 'dark', 'bright'" in d["decision"]["actions"]["reject"]
    again = Manifest.from_dict(json.loads(json.dumps(d)))
    assert again.anomaly == rule and again.task == "anomaly" and again.ok_class == "ok"
    assert read_manifest(bundles["hybrid"]).anomaly == rule
    with pytest.raises(DeployError, match="^Manifest: task 'anomaly' needs its AnomalyRule"):
        Manifest(classes=["ok", "defect"], preprocess=ANOMALY_SPEC, artefacts={}, task="anomaly")
    with pytest.raises(DeployError, match=r"^Manifest: classes \['ok', 'defect'\] are not the labels of the anomaly rule"):
        Manifest(classes=["ok", "defect"], preprocess=ANOMALY_SPEC, artefacts={}, task="anomaly", anomaly=rule)
    with pytest.raises(DeployError, match="^AnomalyRule.good_scores: not non-decreasing"):
        anomaly_rule(good_scores=tuple(reversed(GOOD_SCORES)))
    with pytest.raises(DeployError, match="use Manifest.anomaly"):
        _ = again.decision_rule
    assert Manifest(classes=["a", "b"], preprocess=ANOMALY_SPEC, artefacts={}).to_dict()["task"] == "classify"


# -- the station --------------------------------------------------------------------------------------------------

def test_deploy_predict_prints_the_score_and_writes_anomaly_map_overlays(bundles, parts, tmp_path):
    result = CliRunner().invoke(deploy_app, ["predict", str(bundles["plain"]), str(parts), "--runtime", "onnx",
                                             "--heatmaps", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).stem: r for r in map(json.loads, (x for x in result.stdout.splitlines() if x.startswith("{")))}
    assert rows["level_160"]["score"] == pytest.approx(1.62437524, abs=TOLERANCE) and rows["level_160"]["action"] == "reject"
    assert rows["spot"]["heatmap"]["method"] == "anomaly-map" and Path(rows["spot"]["heatmap"]["overlay"]).is_file()
    refused = CliRunner().invoke(deploy_app, ["predict", str(bundles["plain"]), str(parts), "--runtime", "onnx",
                                              "--heatmaps", str(tmp_path / "m2"), "--heatmap-class", "defect"])
    assert refused.exit_code == 1  # after the "# runtime" lines on stderr, one error line
    assert refused.output.splitlines()[-1].startswith("error: heatmap class 'defect': an anomaly bundle has one map")


def _post(port: int, path: str, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST" if body else "GET", path, body=body or None, headers={"Content-Type": "image/png"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_serve_answers_an_anomaly_decision_with_its_score_and_logs_it(bundles, parts, tmp_path):
    pytest.importorskip("fastapi")
    from deploy.serve import ServeConfig, build_station

    station = build_station(ServeConfig(bundle=bundles["plain"], log_dir=tmp_path / "log", runtime="onnx"), port=0).start()
    port = station.sock.getsockname()[1]
    try:
        status, got = _post(port, "/v1/inspect?part_id=p160", (parts / "level_160.png").read_bytes())
        assert status == 200, got
        assert (got["label"], got["action"], got["abstain"], got["probabilities"]) == ("defect", "reject", False, None)
        assert got["score"] == pytest.approx(1.62437524, abs=TOLERANCE)
        assert got["confidence"] == pytest.approx(0.99624375, abs=TOLERANCE)
        status, spot = _post(port, "/v1/inspect?heatmap=1&part_id=spot", (parts / "spot.png").read_bytes())
        assert status == 200 and spot["heatmap"]["method"] == "anomaly-map", spot
        png = cv2.imdecode(np.frombuffer(base64.b64decode(spot["heatmap"]["png_base64"]), np.uint8), cv2.IMREAD_UNCHANGED)
        x, y = spot["heatmap"]["peak_xy"]
        assert png.shape == (48, 64) and png[y, x] == 255 and 39 <= x <= 44 and 11 <= y <= 16
        status, refused = _post(port, "/v1/inspect?heatmap_class=defect", (parts / "spot.png").read_bytes())
        assert status == 400 and refused["error"] == "bad_request" and "one map" in refused["message"]
        status, summary = _post(port, "/v1/model", b"")
        assert summary["task"] == "anomaly" and summary["decision"]["reject_at"] == 1.12
    finally:
        station.stop()
    lines = [json.loads(line) for f in sorted((tmp_path / "log").glob("decisions-*.jsonl")) for line in f.read_text().splitlines()]
    logged = {line["part_id"]: line for line in lines}
    assert logged["p160"]["score"] == got["score"] and logged["p160"]["probabilities"] == {}
    assert logged["spot"]["score"] == pytest.approx(25.0, abs=TOLERANCE)


def test_watch_then_monitor_and_review_queue_on_an_anomaly_bundle(bundles, parts, tmp_path):
    """deploy watch decides and moves each file by its band; deploy monitor reads the log (score, review rate, label
    mix); deploy review-queue queues the review band with its score and an anomaly-map overlay."""
    from deploy.review_queue import ReviewPolicy, build_review_queue
    from deploy.watch import WatchConfig, run_watch

    in_dir, done = tmp_path / "in", tmp_path / "done"
    in_dir.mkdir()
    for i, image in enumerate(good_parts(34, seed=3)):
        cv2.imwrite(str(in_dir / f"good_{i:02d}.png"), image)
    for name in ("level_153.png", "level_160.png", "spot.png"):
        shutil.copy(parts / name, in_dir / name)
    lines: list[str] = []
    watcher = run_watch(WatchConfig(in_dir, bundles["plain"], done, runtime="onnx", settle_ms=0, poll_ms=5), once=True,
                        out=lines.append)
    assert (watcher.decided, watcher.errors) == (37, 0)
    assert {p.name for p in (done / "review").iterdir()} == {"level_153.png"}
    assert {p.name for p in (done / "reject").iterdir()} == {"level_160.png", "spot.png"}
    assert len(list((done / "accept").iterdir())) == 34
    out = {json.loads(line)["image"]: json.loads(line) for line in lines}
    assert out["level_160.png"]["score"] == pytest.approx(1.62437524, abs=TOLERANCE)
    records = read_records([done / "decisions"]).records
    assert all(r.score is not None and r.probabilities == {} for r in records)

    result = CliRunner().invoke(deploy_app, ["monitor", str(bundles["plain"]), str(done / "decisions"),
                                             "--out", str(tmp_path / "m")])
    report = json.loads((tmp_path / "m" / "drift.json").read_text())
    checks = {r["check"]: r for r in report["checks"]}
    assert {"score", "predicted_classes", "brightness"} <= set(checks)
    assert report["abstain"]["band"] == [0.93, 1.12] and report["abstain"]["new_rate"] == pytest.approx(1 / 37)
    assert report["predicted_share"] == pytest.approx({"ok": 34 / 37, "defect": 3 / 37})
    assert "abstain rate 0.0% -> 2.7% (review band 0.93 to 1.12)" in result.output
    # the score's distribution is the reference's (34 good parts, 3 defects in the tail), but the label mix is not:
    # the good reference parts had no defect at all, so 3 defects of 37 are a drift of the mix (exit 2)
    assert (checks["score"]["status"], checks["predicted_classes"]["status"]) == ("ok", "drift")
    assert result.exit_code == 2 and report["status"] == "drift", result.output

    queue = build_review_queue([done / "decisions"], None, tmp_path / "q", ReviewPolicy(lowest=1, audit_rate=0.0),
                               bundle=bundles["plain"])
    assert queue.by_reason == {"abstained": 1, "audit": 0, "drift": 0, "low_confidence": 1}
    with (tmp_path / "q" / "queue.csv").open() as fh:
        rows = {r["reason"]: r for r in csv.DictReader(fh)}
    assert rows["abstained"]["part_id"] == "level_153" and float(rows["abstained"]["score"]) == pytest.approx(1.0, abs=1e-5)
    # the least confident part decided alone is the one nearest the band: the accepted part scoring highest
    # (confidence 1 - 0.99 s, about 0.91), not the rejects (share of good parts below their score: 0.996 and 1)
    nearest = max((r for r in records if r.action == "accept"), key=lambda r: r.score)
    low = rows["low_confidence"]
    assert (low["part_id"], low["model_label"]) == (nearest.part_id, "ok")
    assert float(low["confidence"]) == pytest.approx(1 - 0.99 * nearest.score, abs=1e-5) and float(low["confidence"]) < 0.99
    assert all((tmp_path / "q" / r["overlay"]).is_file() for r in rows.values())


def test_monitor_on_images_flags_a_shifted_score_and_names_a_profile_without_scores(bundles, tmp_path):
    from deploy.monitor import monitor

    folders = {}
    for name, level in (("same", 128), ("brighter", 140)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for i, image in enumerate(good_parts(30, seed=11, level=level)):
            cv2.imwrite(str(folders[name] / f"{i}.png"), image)
    same = monitor(bundles["hybrid"], sorted(folders["same"].iterdir()), runtime="onnx")
    assert {r["check"]: r["status"] for r in same["checks"]}["score"] == "ok"
    assert same["predicted_share"] == {"ok": 1.0, "dark": 0.0, "bright": 0.0, "unknown defect": 0.0}
    shifted = monitor(bundles["hybrid"], sorted(folders["brighter"].iterdir()), runtime="onnx")
    score = next(r for r in shifted["checks"] if r["check"] == "score")
    assert score["status"] == "drift" and score["new_median"] > 10 * score["reference_median"]
    # a profile holding a classifier's logits, not scores: one line saying what to do
    broken = _edited(bundles["plain"], tmp_path / "broken", lambda m: None)
    profile = json.loads((broken / "profile.json").read_text())
    profile.pop("scores")
    profile.update(task="classify", logits=[[0.0, 1.0]])
    (broken / "profile.json").write_text(json.dumps(profile))
    _edited_profile_sha(broken)
    with pytest.raises(DeployError, match=r"profile.json: no reference scores for this anomaly bundle .*re-export it"):
        monitor(broken, sorted(folders["same"].iterdir()), runtime="onnx")


def _edited_profile_sha(bundle: Path) -> None:
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["profile"]["sha256"] = sha256_file(bundle / "profile.json")
    (bundle / "model.json").write_text(json.dumps(manifest))


def test_bench_and_replay_run_an_anomaly_bundle(bundles, parts, tmp_path):
    from deploy.bench import bench_end_to_end, bench_heatmap, bench_model
    from deploy.replay import replay_images

    predictor = Predictor.from_bundle(bundles["hybrid"], "onnx")
    assert bench_model(predictor, batch=2, warmup=1, iters=5)["images_per_s"] > 0
    assert bench_end_to_end(predictor, sorted(parts.iterdir()), warmup=1, iters=5)["iters"] == 5
    assert bench_heatmap(predictor, batch=1, warmup=1, iters=5)["method"] == "anomaly-map"
    records = replay_images(predictor, sorted(parts.glob("level_*.png")), tmp_path / "log")
    assert [(r.part_id, r.label, r.action) for r in records] == [
        ("level_128", "ok", "accept"), ("level_150", "ok", "accept"), ("level_153", "unknown defect", "review"),
        ("level_160", "unknown defect", "reject")]
    assert records[3].score == pytest.approx(1.62437524, abs=TOLERANCE)
