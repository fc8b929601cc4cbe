"""deploy review's store and API: labels journalled and written to queue.csv atomically, nothing lost when two
write at once or a crash tears a line, only files of the queue served, bad input a 4xx JSON line, the station's
keys and scopes. The page itself, in a real browser: tests/test_review_page.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from deploy.review import ReviewError, ReviewQueue
from deploy.review_app import CSP, ReviewAccess, ReviewServer, create_review_app
from deploy.review_journal import JOURNAL_NAME, read_journal
from deploy.review_queue import ReviewPolicy, build_review_queue
from deploy.serve.auth import add_token
from tests.edge_bundle import BLOCK_HEAVY
from tests.review_sample import HOSTILE_ID, sample_queue

pytestmark = pytest.mark.edge
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A sample-line queue folder (48 parts) and the folder it was made in (logs, bundle)."""
    folder = tmp_path_factory.mktemp("review")
    return folder, sample_queue(folder)


@pytest.fixture
def queue_dir(made, tmp_path):
    """A fresh copy of the queue per test."""
    import shutil

    return Path(shutil.copytree(made[1], tmp_path / "queue"))


def _rows(queue_dir: Path) -> list[dict]:
    with (queue_dir / "queue.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _call(url: str, body: dict | bytes | None = None, key: str | None = None) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            raw, status, headers = answer.read(), answer.status, {k.lower(): v for k, v in answer.headers.items()}
    except urllib.error.HTTPError as err:
        raw, status, headers = err.read(), err.code, {k.lower(): v for k, v in err.headers.items()}
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, {"bytes": len(raw)}, headers


def test_classes_come_from_the_decision_log_and_labels_land_in_queue_csv(queue_dir):
    queue = ReviewQueue.open(queue_dir)
    assert queue.classes == ["dent", "ok", "scratch"]  # recorded by deploy review-queue from the log
    parts = queue.parts()
    assert len(parts) == 48 and all(p["has_overlay"] for p in parts)
    entry = queue.label(parts[0]["key"], "scratch", "Aiko Tanaka")
    assert entry["inspector"] == "Aiko Tanaka" and entry["model_label"] == parts[0]["model_label"]
    row = _rows(queue_dir)[0]
    assert (row["label"], row["labelled_by"], row["labelled_at"]) == ("scratch", "Aiko Tanaka", entry["time"])
    queue.label(parts[0]["key"], "", "Aiko Tanaka")  # undo: the cell is empty again, the journal keeps both
    assert _rows(queue_dir)[0]["label"] == ""
    assert [e["label"] for e in read_journal(queue_dir)[0]] == ["scratch", ""]


@pytest.mark.parametrize("part, label, inspector, kind", [
    ("part:nope", "ok", "A", "unknown_part"), (None, "smudge", "A", "unknown_class"),
    (None, "ok", "", "bad_inspector"), (None, "ok", "tab\there", "bad_inspector")])
def test_a_label_the_queue_cannot_take_is_refused_and_nothing_is_written(queue_dir, part, label, inspector, kind):
    queue = ReviewQueue.open(queue_dir)
    with pytest.raises(ReviewError) as err:
        queue.label(part or queue.parts()[0]["key"], label, inspector)
    assert err.value.kind == kind
    assert not (queue_dir / JOURNAL_NAME).exists()


def test_two_writers_at_once_lose_nothing(queue_dir):
    """Two ReviewQueue objects (two `deploy review` processes) and several threads label at once."""
    queues = [ReviewQueue.open(queue_dir), ReviewQueue.open(queue_dir)]
    keys = [p["key"] for p in queues[0].parts()]
    errors = []

    def work(w: int) -> None:
        try:
            for i, key in enumerate(keys[w::4]):
                queues[w % 2].label(key, ["dent", "ok", "scratch"][i % 3], f"inspector-{w}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    entries, skipped = read_journal(queue_dir)
    assert len(entries) == 48 and skipped == 0
    rows = {r["part_id"] or r["sha256"]: r for r in _rows(queue_dir)}
    assert sum(1 for r in rows.values() if r["label"]) == 48
    assert {r["labelled_by"] for r in rows.values()} == {f"inspector-{w}" for w in range(4)}


def test_a_line_torn_by_a_crash_costs_only_that_label(queue_dir):
    queue = ReviewQueue.open(queue_dir)
    keys = [p["key"] for p in queue.parts()]
    queue.label(keys[0], "ok", "A")
    with (queue_dir / JOURNAL_NAME).open("ab") as fh:
        fh.write(b'{"format": "inspection-kit/review-label", "part": "' + keys[1].encode() + b'", "lab')  # power cut
    queue.label(keys[2], "dent", "A")
    entries, skipped = read_journal(queue_dir)
    assert [e["part"] for e in entries] == [keys[0], keys[2]] and skipped == 1
    assert [r["label"] for r in _rows(queue_dir)[:3]] == ["ok", "", "dent"]


def test_review_queue_run_later_keeps_the_labels_and_adds_rows(made, queue_dir):
    queue = ReviewQueue.open(queue_dir)
    key = queue.parts()[5]["key"]
    queue.label(key, "dent", "A")
    (queue_dir / "queue.csv").write_text((queue_dir / "queue.csv").read_text().replace(",dent,A,", ",,,", 1))  # as if
    # review-queue had read the file before the label and rewritten it after
    result = build_review_queue([made[0] / "logs"], None, queue_dir, ReviewPolicy(lowest=100, audit_rate=0))
    assert result.added == []  # every part is queued already
    assert {p["key"]: p["label"] for p in ReviewQueue.open(queue_dir).parts()}[key] == "dent"
    assert _rows(queue_dir)[5]["label"] == "dent"


@pytest.fixture
def server(queue_dir, tmp_path):
    tokens = tmp_path / "tokens"
    keys = {"inspect": add_token(tokens, "inspector-7", ["inspect"]), "metrics": add_token(tokens, "scraper", ["metrics"])}
    srv = ReviewServer(create_review_app(ReviewQueue.open(queue_dir), ReviewAccess(tokens)), port=0).start()
    try:
        yield srv.url, keys, queue_dir
    finally:
        srv.stop()


def test_the_api_needs_a_key_of_scope_inspect_and_records_its_name(server):
    url, keys, queue_dir = server
    status, body, headers = _call(url + "/api/queue")
    assert status == 401 and body["error"] == "unauthenticated" and headers["www-authenticate"].startswith("Bearer")
    assert _call(url + "/api/queue", key="isk_0123456789ab.nope")[1]["error"] == "invalid_key"
    status, body, _ = _call(url + "/api/queue", key=keys["metrics"])
    assert status == 403 and body["error"] == "insufficient_scope"
    status, body, _ = _call(url + "/api/config")  # open: the page asks for a key when it says so
    assert status == 200 and body["auth"] is True
    status, body, headers = _call(url + "/api/queue", key=keys["inspect"])
    assert status == 200 and body["classes"] == ["dent", "ok", "scratch"] and headers["content-security-policy"] == CSP
    key = body["parts"][0]["key"]
    status, body, _ = _call(url + "/api/labels", {"part": key, "label": "ok", "inspector": "Aiko"}, keys["inspect"])
    assert status == 200 and body["summary"]["labelled"] == 1
    assert read_journal(queue_dir)[0][-1]["key"] == "inspector-7"


def test_bad_input_is_a_4xx_json_line_never_a_5xx(server):
    url, keys, queue_dir = server
    key = keys["inspect"]
    part = _call(url + "/api/queue", key=key)[1]["parts"][0]["key"]
    cases = [(b"{", 400, "bad_request"), (b"[1]", 400, "bad_request"), (b"x" * 5000, 413, "too_large"),
             ({"part": part, "label": 3, "inspector": "A"}, 400, "bad_request"),
             ({"part": part, "label": "<b>smudge</b>", "inspector": "A"}, 400, "unknown_class"),
             ({"part": "part:../../etc", "label": "ok", "inspector": "A"}, 404, "unknown_part"),
             ({"part": part, "label": "ok", "inspector": "\x00"}, 400, "bad_inspector")]
    for body, status, kind in cases:
        got = _call(url + "/api/labels", body, key)
        assert got[:2] == (status, {"error": kind, "message": got[1].get("message")}), body
    assert not (queue_dir / JOURNAL_NAME).exists()
    assert _call(url + "/api/image?part=" + urllib.parse.quote(part) + "&kind=image", key=key)[0] == 200
    assert _call(url + "/api/image?part=" + urllib.parse.quote(part) + "&kind=path", key=key)[0] == 400
    for path in ("/api/image?part=part:nope", "/api/../queue.csv", "/queue.csv", "/images/", "/labels.jsonl"):
        status, body, _ = _call(url + path, key=key)
        assert status == 404 and body["error"] == "not_found", path
    assert _call(url + "/api/queue", b"{}", key)[:2] == (405, {"error": "method_not_allowed",
                                                             "message": "Method Not Allowed"})


def test_only_files_inside_the_queue_folder_are_served(queue_dir, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes((queue_dir / _rows(queue_dir)[0]["path"]).read_bytes())
    rows = _rows(queue_dir)
    rows[0]["path"], rows[1]["path"] = "../secret.png", str(outside)  # a queue.csv edited by hand, or by someone else
    (queue_dir / "images" / "link.png").symlink_to(outside)
    rows[2]["path"] = "images/link.png"
    with (queue_dir / "queue.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    queue = ReviewQueue.open(queue_dir)
    keys = [p["key"] for p in queue.parts()]
    assert [queue.file_of(k, "image") for k in keys[:3]] == [None, None, None]
    assert queue.file_of(keys[3], "image") is not None and queue.file_of(keys[3], "../queue.csv") is None


def test_the_hostile_part_id_is_kept_verbatim_in_the_api(made):
    parts = ReviewQueue.open(made[1]).parts()
    assert HOSTILE_ID in [p["part_id"] for p in parts]


def test_cli_words_mistakes_in_one_line_and_runs_without_torch(tmp_path):
    env_dir = tmp_path / "site"
    env_dir.mkdir()
    (env_dir / "sitecustomize.py").write_text(BLOCK_HEAVY)
    env = {"PYTHONPATH": f"{env_dir}:{REPO}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "deploy", "review", str(tmp_path / "nowhere")], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"error: {tmp_path / 'nowhere'}: no queue.csv; make the queue first with deploy review-queue "
                          f"--log LOGS --images IMAGES --out {tmp_path / 'nowhere'}\n")
    code = ("from deploy.review_app import create_review_app; from deploy.review import ReviewQueue; "
            "import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'kit')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_the_page_and_the_label_audit_show_images_through_one_thumbnail(server):
    """Item 4 of issue 30: one thumbnail path (deploy.overlay.thumbnail_png) for the review page and kit audit."""
    from deploy.overlay import thumbnail_png
    from deploy.review_app import IMAGE_PX
    from kit.report.images import data_uri, thumbnail

    url, keys, queue_dir = server
    row = _rows(queue_dir)[0]
    request = urllib.request.Request(url + "/api/image?kind=image&part=" + urllib.parse.quote(f"part:{row['part_id']}"),
                                     headers={"Authorization": f"Bearer {keys['inspect']}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        served = answer.read()
    assert served == thumbnail_png(queue_dir / row["path"], IMAGE_PX)
    assert thumbnail(str(queue_dir / row["path"]), "rgb", IMAGE_PX) == data_uri(served)
    assert thumbnail(str(queue_dir / "gone.png"), "gray") is None
