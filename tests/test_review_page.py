"""The review page in a real browser: the system's headless Chromium driven by Selenium (both installed by
.ci/run where missing), against a real `deploy review` server on 127.0.0.1 with the station's API keys.

One browser session serves the module (a second one joins for the two-inspector test); waits are bounded.
Screenshots: REVIEW_SCREENSHOTS=DIR saves the page's states as DIR/review-*.png.
"""

from __future__ import annotations

import csv
import os
import shutil
import threading
from pathlib import Path

import pytest

from deploy.review import ReviewQueue
from deploy.review_app import ReviewAccess, ReviewServer, create_review_app
from deploy.review_journal import read_journal
from deploy.serve.auth import add_token
from tests.review_sample import HOSTILE_ID, sample_queue

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"no system Chromium ({CHROMIUM}) or its driver ({CHROMEDRIVER}); .ci/run installs them "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 10
SHOTS = os.environ.get("REVIEW_SCREENSHOTS")


def new_browser():
    """Headless Chromium from the system's package; Selenium Manager is never asked to download anything."""
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900",
                "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    """The sample line's review queue (48 parts) served behind the station's keys; an inspect key to type."""
    folder = tmp_path_factory.mktemp("review_page")
    queue_dir = sample_queue(folder)
    tokens = folder / "tokens"
    key = add_token(tokens, "line7-inspectors", ["inspect"])
    server = ReviewServer(create_review_app(ReviewQueue.open(queue_dir), ReviewAccess(tokens)), port=0).start()
    try:
        yield server.url, key, queue_dir, folder
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    driver = new_browser()
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, message: str):
    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message)


def text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def settled(driver) -> bool:
    """Every key pressed has been answered."""
    return driver.execute_script("return document.body.dataset.pending") == "0"


def start(driver, url: str, name: str, key: str) -> None:
    """Open the page; a first visit asks the name and key, a later one goes straight to the queue."""
    driver.get(url + "/")
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("start", "review"),
         "the page did not load")
    if driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "start":
        driver.find_element(By.ID, "inspector-name").send_keys(name)
        driver.find_element(By.ID, "api-key").send_keys(key + Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "review",
         "the review did not start")
    wait(driver, lambda d: d.execute_script("return document.getElementById('image').naturalWidth") > 0,
         "the part's image did not load")


def press(driver, keys: str) -> None:
    driver.find_element(By.TAG_NAME, "body").send_keys(keys)
    wait(driver, settled, f"the page did not answer the keys {keys!r}")


def labels(queue_dir: Path) -> dict[str, tuple[str, str]]:
    """part id (or sha256) -> (label, inspector) of every labelled row of queue.csv."""
    with (queue_dir / "queue.csv").open(newline="", encoding="utf-8") as fh:
        return {r["part_id"] or r["sha256"]: (r["label"], r["labelled_by"]) for r in csv.DictReader(fh) if r["label"]}


def shot(driver, name: str) -> None:
    if SHOTS:
        driver.save_screenshot(str(Path(SHOTS) / f"review-{name}.png"))


def test_label_20_parts_with_the_keyboard_undo_agree_and_reload(browser, station, tmp_path):
    url, key, queue_dir, _ = station
    start(browser, url, "Aiko Tanaka", key)
    assert text(browser, "progress") == "0 of 48 labelled, 48 to go"
    assert [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#classes button")] == ["1 dent", "2 ok", "3 scratch"]
    first = text(browser, "part-id")
    shot(browser, "start")
    press(browser, "1231231231" + "2222222222")
    assert text(browser, "progress") == "20 of 48 labelled, 28 to go"
    got = labels(queue_dir)
    assert len(got) == 20 and {who for _, who in got.values()} == {"Aiko Tanaka"}
    assert got[first] == ("dent", "Aiko Tanaka")
    assert sorted(label for label, _ in got.values()) == ["dent"] * 4 + ["ok"] * 13 + ["scratch"] * 3

    press(browser, "u")  # the last label is taken back, and its part shown again
    assert text(browser, "progress") == "19 of 48 labelled, 29 to go"
    assert text(browser, "current-label") == "not labelled yet"
    model = text(browser, "model-label")
    undone = text(browser, "part-id")
    press(browser, "a")  # agree with the model
    assert labels(queue_dir)[undone] == (model, "Aiko Tanaka")
    press(browser, "s")  # skip: the next part, nothing written
    assert len(labels(queue_dir)) == 20
    shot(browser, "labelled")

    browser.refresh()  # name and key kept for the tab: straight back to the queue, labels kept
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "review", "no reload")
    wait(browser, lambda d: text(d, "progress") == "20 of 48 labelled, 28 to go", "labels lost on reload")
    assert text(browser, "inspector") == "Aiko Tanaka"

    # what the inspector labelled is what kit ingest takes
    from typer.testing import CliRunner

    from kit.cli import app
    from tests.conftest import tiny_recipe_dict, write_recipe
    from tests.test_ingest import _png

    data = tmp_path / "data"
    for i, cls in enumerate(["dent", "ok", "scratch"]):
        for j in range(3):
            _png(data / cls / f"{cls}{j}.png", 10 + 30 * i + j)
    recipe = write_recipe(tmp_path / "line.yaml", tiny_recipe_dict(data))
    result = CliRunner().invoke(app, ["ingest", str(queue_dir / "queue.csv"), "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    added = {c: len(list((data / c).glob("reviewed-*/*.png"))) for c in ("dent", "ok", "scratch")}
    assert added == {c: sum(1 for label, _ in labels(queue_dir).values() if label == c) for c in added}
    assert sum(added.values()) == 20


def test_a_part_id_carrying_a_script_tag_shows_as_text(browser, station):
    url, key, queue_dir, _ = station
    if browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") != "review":
        start(browser, url, "Aiko Tanaka", key)
    for _ in range(48):  # to the hostile part, with the arrow key (nothing labelled)
        if text(browser, "part-id") == HOSTILE_ID:
            break
        press(browser, Keys.ARROW_RIGHT)
    assert text(browser, "part-id") == HOSTILE_ID
    wait(browser, lambda d: d.execute_script("return document.getElementById('image').naturalWidth") > 0, "no image")
    assert browser.execute_script("return window.__pwned") is None
    assert browser.execute_script("return document.querySelectorAll('script').length") == 1
    assert browser.execute_script("return document.querySelectorAll('#facts img').length") == 0
    shot(browser, "hostile-id")


def test_two_browsers_label_at_once_and_nothing_is_lost(browser, station):
    url, key, queue_dir, _ = station
    before = labels(queue_dir)
    other = new_browser()
    try:
        start(browser, url, "Aiko Tanaka", key)  # back to the first part still open
        start(other, url, "Ben Okafor", key)
        errors = []

        def work(driver, keys):
            try:
                press(driver, keys)
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(browser, "1" * 10)),
                   threading.Thread(target=work, args=(other, "s" * 10 + "3" * 10))]  # Ben starts 10 parts further
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        after = labels(queue_dir)
        new = {k: v for k, v in after.items() if k not in before}
        assert sorted(new.values()) == [("dent", "Aiko Tanaka")] * 10 + [("scratch", "Ben Okafor")] * 10
        entries, skipped = read_journal(queue_dir)
        assert skipped == 0 and len(entries) == 22 + 20  # 20 + undo + agree, then these 20: every label kept
        for driver in (browser, other):  # each page counts the other's labels after its own next answer
            wait(driver, lambda d: text(d, "progress").startswith(f"{len(after)} of 48"), "counts disagree")
        shot(other, "second-inspector")
    finally:
        other.quit()


def test_the_page_logs_no_javascript_error(browser, station):
    url, key, _, _ = station
    browser.get(url + "/")  # once more from the start: the page, its script and a part's pictures
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "review", "no page")
    wait(browser, lambda d: d.execute_script("return document.getElementById('overlay').naturalWidth") > 0, "no overlay")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
