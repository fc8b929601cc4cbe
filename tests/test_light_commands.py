"""``kit shadow`` (joins two CSV-like inputs) and ``kit ingest`` (copies reviewed images) run where torch, timm and
albumentations cannot be imported: each runs in a fresh interpreter with those modules blocked."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from deploy.decision_log import DecisionLog, DecisionRecord
from kit.feedback.shadow import shadow_period
from kit.recipe.schema import ThresholdTarget
from tests.test_ingest import reviewed_line, write_queue_csv

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "timm", "albumentations")
# A finder in front of the others refuses the blocked names, as if they were not installed. (``sys.modules[name] =
# None`` would refuse them too, but scipy takes a name present in sys.modules for a loaded torch and reads its Tensor.)
RUN_KIT = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in %r:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
sys.meta_path.insert(0, Blocked())
from kit.cli import main
sys.argv = ["kit", *sys.argv[1:]]
main()
""" % (BLOCKED,)

def _kit(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", RUN_KIT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_blocking_works():
    for name in BLOCKED:
        done = subprocess.run([sys.executable, "-c", RUN_KIT.replace("from kit.cli import main", f"import {name}")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and f"No module named {name!r} (blocked)" in done.stderr


def _record(i: int, label: str) -> DecisionRecord:
    return DecisionRecord(time=f"2026-12-01T08:00:{i:02d}+00:00", part_id=f"p{i:02d}", image_sha256=f"{i:064x}", label=label,
                          confidence=0.99, probabilities={c: 0.99 if c == label else 0.01 for c in ("crack", "ok")}, abstain=False,
                          action="accept" if label == "ok" else "reject", model_id="m1", runtime="onnx", source="test",
                          image=f"p{i:02d}.png")


def test_shadow_runs_without_torch(tmp_path):
    """10 parts, 5 good and 5 cracked; the model accepts one cracked part (an escape)."""
    logs = tmp_path / "logs"
    with DecisionLog(logs, durable=False) as log:
        for i in range(10):
            log.append(_record(i, "ok" if i < 6 else "crack"))
    inspectors = tmp_path / "inspectors.csv"
    with inspectors.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["part_id", "label"])
        w.writeheader()
        w.writerows({"part_id": f"p{i:02d}", "label": "ok" if i < 5 else "crack"} for i in range(10))

    done = _kit("shadow", "--log", str(logs), "--inspector", str(inspectors), "--out", str(tmp_path / "out"),
                "--target", "max_escape_rate=0.05")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str(tmp_path / "out" / "shadow.html")
    written = json.loads((tmp_path / "out" / "shadow.json").read_text())
    s, c = written["summary"], written["counts"]
    assert (c["matched"], c["decisions"], c["inspector_rows"]) == (10, 10, 10)
    assert (s["escapes"]["k"], s["escapes"]["n"]) == (1, 5)
    assert (s["false_rejects"]["k"], s["false_rejects"]["n"]) == (0, 5)
    expected = shadow_period([logs], inspectors, ThresholdTarget(max_escape_rate=0.05))  # the same join, torch loaded
    assert written["summary"] == json.loads(json.dumps(expected["summary"]))
    assert (tmp_path / "out" / "shadow_parts.csv").is_file()


def test_ingest_runs_without_torch(tmp_path):
    data, recipe, queue, rows = reviewed_line(tmp_path, [("a", 200, "dent"), ("b", 201, "ok")])
    write_queue_csv(queue, rows)

    done = _kit("ingest", str(queue / "queue.csv"), "--recipe", str(recipe))
    assert done.returncode == 0, done.stderr
    assert "added 2 images (dent 1, ok 1); already in the data 0; not reviewed yet 0; refused 0" in done.stderr  # the console
    assert done.stdout.splitlines()[-1] == str(data)
    landed = sorted(p.relative_to(data).parts[0] for p in data.rglob("reviewed-*/*.png"))
    assert landed == ["dent", "ok"]
