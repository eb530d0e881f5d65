"""The review page in a real browser (Debian's Chromium driven by Playwright) against ``opso review``
run as a user runs it: 30 clips reviewed with the keyboard through a killed and restarted server, two
reviewers at once, the token and unknown ids refused, calibration drawn in the page.

Screenshots go to ``$OPSO_SCREENSHOTS_DIR`` when set (``docs/images`` takes them from there:
``OPSO_SCREENSHOTS_DIR=docs/images pytest tests/integration/test_review_browser.py``), else to the
test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipelines.review.queue import review_items
from pipelines.review.reviews import read_reviews

CHROMIUM = os.environ.get("OPSO_CHROMIUM") or shutil.which("chromium")
TOKEN = "browser-test-token"
FROG = "ribbit:frog12 / frog12"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); "
                                                         ".ci/run installs it")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, dask_client):
    from pipelines.demo import prepare_demo
    from pipelines.driver.run import run_pipeline

    folder = tmp_path_factory.mktemp("browser_demo")
    run_pipeline(prepare_demo(folder), dask_client, progress=False)
    return folder


@pytest.fixture
def run(demo, tmp_path):
    shutil.copytree(demo / "results", tmp_path / "results")
    return str(tmp_path / "results")


@pytest.fixture
def truth(demo):
    labels = pd.read_csv(demo / "labels.csv")
    return labels.set_index(["file", "start_time"])["frog12"].astype(bool)


@pytest.fixture
def screenshots(tmp_path):
    folder = Path(os.environ.get("OPSO_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``opso review RUN`` in its own process, as a user starts it; ``url`` is the address it prints."""

    def __init__(self, run: str, port: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "review", run, "--port", str(port),
                                      "--token", TOKEN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.printed = []
        for line in self.proc.stdout:
            self.printed.append(line)
            found = re.search(r"open (http://\S+)", line)
            if found:
                self.url = found[1]
                break
        else:
            raise AssertionError(f"opso review printed no address: {self.printed} {self.proc.stderr.read()}")
        self.base = self.url.split("/?")[0]

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def open_page(browser, url: str, reviewer: str):
    page = browser.new_context(viewport={"width": 1200, "height": 820}).new_page()
    page.goto(url)
    page.fill("#reviewer", reviewer)
    page.press("#reviewer", "Enter")  # the name is kept in the browser and the answers are loaded
    page.select_option("#class-select", label=FROG)
    page.wait_for_function("() => document.getElementById('progress').textContent.includes('answered')")
    return page


def current_clip(page) -> int:
    """The clip shown, once its spectrogram has loaded and its audio has a duration."""
    page.wait_for_function("() => { const i = document.getElementById('spectrogram'); "
                           "return i.complete && i.naturalWidth === 640 && i.dataset.id === "
                           "document.getElementById('audio').dataset.id; }")
    page.wait_for_function("() => document.getElementById('audio').duration > 0")
    return int(page.get_attribute("#spectrogram", "data-id"))


def answer_with_keys(page, items: pd.DataFrame, truth: pd.Series, n: int) -> list[int]:
    """Answer ``n`` clips with the keyboard (P / A from the true labels); the ids answered."""
    done = []
    for _ in range(n):
        clip = current_clip(page)
        item = items.loc[clip]
        duration = page.evaluate("document.getElementById('audio').duration")
        expected = min(item.end_time + 1, 60.0) - max(item.start_time - 1, 0.0)  # 1 s of context, cut at the ends
        assert abs(duration - expected) < 0.01, (duration, expected)
        page.keyboard.press("p" if truth[(item.file, item.start_time)] else "a")
        page.wait_for_function(f"() => document.getElementById('spectrogram').dataset.id !== '{clip}' || "
                               "document.getElementById('done').style.display === 'block'")
        done.append(clip)
    return done


def test_thirty_clips_with_the_keyboard_through_a_restart(browser, run, truth, screenshots):
    items = review_items(run).set_index("id")
    port = free_port()
    server = Server(run, port)
    try:
        page = open_page(browser, server.url, "ana")
        n_frog = int((items["class"] == "frog12").sum())
        first = answer_with_keys(page, items, truth, 15)
        assert page.inner_text("#progress") == f"15 of {n_frog} answered"
        server.kill()  # killed mid-review: every answer given is already in the run folder
        assert len(read_reviews(run)) == 15
        server = Server(run, port)
        page.goto(server.url)  # the reviewer's name comes back from the browser, the answers from the run
        page.wait_for_function(f"() => document.getElementById('progress').textContent === '15 of {n_frog} answered'")
        resumed = current_clip(page)
        frog_ids = list(items.index[items["class"] == "frog12"])
        assert resumed == frog_ids[15] and resumed not in first  # where the reviewer stopped
        second = answer_with_keys(page, items, truth, 15)
        assert page.inner_text("#progress") == f"30 of {n_frog} answered"
        reviews = read_reviews(run)
        assert len(reviews) == 30 and set(reviews["reviewer"]) == {"ana"}
        assert sorted(first + second) == sorted(frog_ids[:30])
        for review in reviews.itertuples():
            assert review.label == ("present" if truth[(review.file, review.start_time)] else "absent")
        # going back shows the answer given
        page.keyboard.press("ArrowLeft")
        assert page.inner_text("#answer-state").startswith("Your answer: ")

        page.fill("#target", "0.9")
        page.click("#calibrate")
        page.wait_for_selector("#calibration .curve")
        text = page.inner_text("#calibration")
        assert "ribbit:frog12 / frog12" in text and "calibration.parquet" in text
        assert ("threshold" in text and page.locator("#calibration svg polyline").count() == 1) or \
            "review more" in text
        page.locator("aside").screenshot(path=str(screenshots / "review-calibration.png"))
        for _ in range(30):  # back to a clip with a call, for the docs' picture of the page
            item = items.loc[current_clip(page)]
            if truth[(item.file, item.start_time)] and item.stratum >= 7:
                break
            page.keyboard.press("ArrowLeft")
        page.screenshot(path=str(screenshots / "review-page.png"), full_page=True)
    finally:
        server.kill()
    for name in ("review-page.png", "review-calibration.png"):
        assert (screenshots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_reviewers_at_once(browser, run, truth):
    items = review_items(run).set_index("id")
    server = Server(run, free_port())
    try:
        ana, ben = open_page(browser, server.url, "ana"), open_page(browser, server.url, "ben")
        for _ in range(5):  # turn about, on one server
            answer_with_keys(ana, items, truth, 2)
            answer_with_keys(ben, items, truth, 2)
        reviews = read_reviews(run)
        assert reviews.groupby("reviewer").size().to_dict() == {"ana": 10, "ben": 10}
        assert ana.inner_text("#progress").startswith("10 of") and ben.inner_text("#progress").startswith("10 of")
        assert set(reviews[reviews.reviewer == "ana"].start_time) == set(reviews[reviews.reviewer == "ben"].start_time)
    finally:
        server.kill()


def test_the_token_and_clip_ids_are_checked(browser, run):
    server = Server(run, free_port())
    try:
        page = browser.new_context().new_page()
        assert page.goto(server.base + "/").status == 403
        assert page.goto(server.base + "/?token=wrong").status == 403
        assert page.goto(f"{server.base}/api/clip/0/audio.wav").status == 403
        for path in ("/api/clip/99999/audio.wav", "/api/clip/1/..%2F..%2Frun.json", "/api/clip/..%2Frun.json/audio.wav",
                     "/run.json", "/reviews/"):
            response = page.goto(f"{server.base}{path}?token={TOKEN}")
            assert response.status == 404, path
        assert page.goto(server.url).status == 200
        assert page.title() == "opso review"
    finally:
        server.kill()
