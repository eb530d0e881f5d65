"""``opso review``'s sample, media and HTTP routes on a demo run (no browser: urllib and http.client).
The browser drives the page in ``tests/integration/test_review_browser.py``."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from opso_core.audio import Audio
from pipelines.cli import main
from pipelines.outputs.results import read_status
from pipelines.review.media import ClipMedia, spectrogram_png
from pipelines.review.queue import review_items
from pipelines.review.reviews import read_reviews
from pipelines.review.server import ReviewApp, ReviewServer


@pytest.fixture(scope="module")
def demo(tmp_path_factory, dask_client):
    from pipelines.demo import prepare_demo
    from pipelines.driver.run import run_pipeline

    folder = tmp_path_factory.mktemp("review_demo")
    config = prepare_demo(folder)
    run_pipeline(config, dask_client, progress=False)
    return folder


@pytest.fixture
def run(demo, tmp_path):
    """A fresh copy of the demo's run folder (no reviews yet)."""
    target = tmp_path / "results"
    shutil.copytree(demo / "results", target)
    return str(target)


def start_server(run: str, **items) -> ReviewServer:
    status = read_status(run)
    app = ReviewApp(run, review_items(run, **items), ClipMedia(run, status["config"]))
    return ReviewServer(app, token="t0ken").start()


def request(server: ReviewServer, path: str, body=None, token: str | None = "t0ken"):
    """(status, headers, body bytes) of a request to ``server`` (raw path: nothing normalised)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    headers = {"X-Opso-Token": token} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request("POST", path, body=data, headers=headers)
    else:
        connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    out = response.status, dict(response.getheaders()), response.read()
    connection.close()
    return out


def test_the_sample_spans_every_score_bin_and_is_the_same_at_every_start(run):
    items = review_items(run)
    scores = pd.read_parquet(f"{run}/scores/detector=ribbit:frog12")
    frog = items[items["class"] == "frog12"]
    assert set(items["class"]) == {"frog12", "fast_pulser"} and list(items["id"]) == list(range(len(items)))
    # every clip of the class is in exactly one stratum: the strata's sizes add up to the run's clips
    assert frog.drop_duplicates("stratum")["stratum_size"].sum() == len(scores)
    assert frog["stratum"].nunique() >= 8 and (frog["stratum_sampled"] <= 5).all()
    assert {0, 9} <= set(frog["stratum"])  # the lowest and the highest scores are both reviewed
    again = review_items(run)
    pd.testing.assert_frame_equal(items, again)
    # a class's sample does not depend on which other classes are reviewed
    alone = review_items(run, classes=["frog12"])
    pd.testing.assert_frame_equal(alone.drop(columns="id").reset_index(drop=True),
                                  frog.drop(columns="id").reset_index(drop=True))
    other_seed = review_items(run, seed=1)
    assert not other_seed[["file", "start_time"]].equals(items[["file", "start_time"]])


def test_unknown_detectors_and_classes_are_named(run, capsys):
    assert main(["review", run, "--detector", "ribbit:nope", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opso: error: review: the run has no detector 'ribbit:nope'") and "ribbit:frog12" in err
    assert main(["review", run, "--class", "Turdus migratorius", "--port", "0"]) == 2
    assert "no detector of the run has class 'Turdus migratorius'" in capsys.readouterr().err
    assert main(["review", run + "-missing", "--port", "0"]) == 2
    assert "no opso run at" in capsys.readouterr().err


def test_every_request_needs_the_token(run):
    server = start_server(run)
    try:
        for token in (None, "wrong", "t0ken-and-more"):
            status, _, body = request(server, "/", token=token)
            assert status == 403 and b"token" in body
            assert request(server, "/api/clip/0/audio.wav", token=token)[0] == 403
            assert request(server, "/api/answer", {"id": 0, "label": "present", "reviewer": "x"}, token=token)[0] == 403
        assert request(server, "/?token=t0ken", token=None)[0] == 200
        status, headers, page = request(server, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html") and b"opso review" in page
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/?token=t0ken")
        assert not list(read_reviews(run)["reviewer"])  # the refused answers wrote nothing
    finally:
        server.stop()


def test_wrong_methods_get_405(run):
    server = start_server(run)
    try:
        for method, path, allowed in (("GET", "/api/answer", "POST"), ("POST", "/api/state", "GET"),
                                      ("PUT", "/api/answer", "POST"), ("DELETE", "/api/clip/0/audio.wav", "GET"),
                                      ("OPTIONS", "/", "GET")):
            connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
            connection.request(method, path, body=b"{}" if method != "GET" else None,
                               headers={"X-Opso-Token": "t0ken", "Content-Type": "application/json"})
            response = connection.getresponse()
            body = response.read()
            connection.close()
            assert response.status == 405 and response.getheader("Allow") == allowed, (method, path, body)
            assert json.loads(body)["error"] == f"{path} takes {allowed}"
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        connection.request("PUT", "/api/answer", body=b"{}")  # no token: refused before anything else
        assert connection.getresponse().status == 403
        connection.close()
    finally:
        server.stop()


def test_bad_options_are_one_line_errors(run, tmp_path, capsys):
    for argv, message in (([run, "--port", "99999"], "--port is 0 (any free port) to 65535"),
                          ([run, "--context-s", "-5"], "--context-s is 0 to 30 seconds"),
                          ([run, "--token", ""], "--token needs at least 8 characters"),
                          ([str(tmp_path / "nope.yaml")], "configuration file not found"),
                          ([run, "--host", "256.1.1.1", "--port", "0"], "is not an address of this machine")):
        assert main(["review", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("opso: error: ") and message in err and err.count("\n") == 1, err


def test_clips_are_named_by_id_only(run):
    server = start_server(run)
    n = len(server.app.items)
    try:
        for path in (f"/api/clip/{n}/audio.wav", "/api/clip/99999999/spectrogram.png", "/api/clip/-1/audio.wav",
                     "/api/clip/1/../../run.json", "/api/clip/..%2F..%2Frun.json/audio.wav", "/../run.json",
                     "/run.json", "/api/clip/1/audio.wav/../../../../etc/passwd", "/api/clip/1/other.txt",
                     "/static/review.html", "/api/clip/0x1/audio.wav"):
            status, _, body = request(server, path)
            assert status == 404, path
            assert b"run.json" not in body or b"error" in body
    finally:
        server.stop()


def test_audio_is_the_clip_with_a_second_of_context_from_the_archive(run):
    server = start_server(run)
    try:
        items = server.app.items
        inner = items[(items["start_time"] >= 2) & (items["end_time"] <= 58)].iloc[0]
        status, headers, body = request(server, f"/api/clip/{int(inner['id'])}/audio.wav")
        assert status == 200 and headers["Content-Type"] == "audio/wav"
        samples, rate = sf.read(io.BytesIO(body), dtype="float32")
        assert rate == 16000 and len(samples) == 16000 * 4  # 2 s clip + 1 s either side
        original = Audio.from_file(inner["file"], offset=inner["start_time"] - 1, duration=4.0).samples
        peak = np.abs(original).max()
        np.testing.assert_allclose(samples, original / peak * 10 ** (-1 / 20), atol=1.5 / 32768)
        first = items[items["start_time"] == 0].iloc[0]  # no context before a file's start
        samples, _ = sf.read(io.BytesIO(request(server, f"/api/clip/{int(first['id'])}/audio.wav")[2]))
        assert len(samples) == 16000 * 3
    finally:
        server.stop()


def test_spectrograms_come_from_the_store_or_from_the_audio(run, tmp_path):
    import xarray as xr

    config = read_status(run)["config"]
    items = review_items(run)
    row = items.iloc[0]
    media = ClipMedia(run, config)
    png, source = media.spectrogram(row["file"], row["start_time"], row["end_time"])
    assert source == "stored"
    store = xr.open_zarr(f"{run}/spectrograms.zarr")
    index = int(np.flatnonzero((store["file"].values == row["file"]) & (store["start_time"].values == row["start_time"]))[0])
    assert png == spectrogram_png(store["spectrogram"].isel(clip=index).values, (-100.0, -20.0))
    image = Image.open(io.BytesIO(png))
    assert image.size == (640, 240)
    shutil.rmtree(f"{run}/spectrograms.zarr")  # a run with spectrogram.store: none
    png, source = ClipMedia(run, config).spectrogram(row["file"], row["start_time"], row["end_time"])
    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    assert source == "computed" and grey.shape == (240, 640) and grey.std() > 1  # a picture, not a blank


def test_answers_are_written_at_once_and_read_back_after_a_restart(run):
    server = start_server(run)
    try:
        items = server.app.items
        frog = items[items["class"] == "frog12"]
        for i, label in zip(frog["id"].iloc[:3], ("present", "absent", "unsure"), strict=True):
            status, _, body = request(server, "/api/answer", {"id": int(i), "label": label, "reviewer": "ana"})
            assert status == 200, body
        assert json.loads(body) == {"id": int(frog["id"].iloc[2]), "label": "unsure", "answered": 3, "n": len(frog)}
        # a changed mind: the latest answer counts
        assert request(server, "/api/answer", {"id": int(frog["id"].iloc[0]), "label": "absent", "reviewer": "ana"})[0] == 200
        for bad, message in (({"id": 0, "label": "maybe", "reviewer": "ana"}, b"label is one of"),
                             ({"id": 0, "label": "present", "reviewer": "../etc"}, b"reviewer's name"),
                             ({"id": 0, "label": "present"}, b"reviewer's name"),
                             ({"id": "0", "label": "present", "reviewer": "ana"}, b"a clip number"),
                             ({"id": 0, "label": "present", "reviewer": "   "}, b"reviewer's name"),
                             ({"id": 10 ** 9, "label": "present", "reviewer": "ana"}, b"no such clip"),
                             (b"not json", b"not JSON"), (b"[1, 2]", b"JSON object")):
            status, _, body = request(server, "/api/answer", bad)
            assert status in (400, 404) and message in body, (bad, body)
        assert request(server, "/api/state?reviewer=../x")[0] == 400
        # a name with spaces around it is the same reviewer (the page trims it too)
        status, _, body = request(server, "/api/answer", {"id": int(frog["id"].iloc[0]), "label": "absent",
                                                          "reviewer": " ana "})
        assert status == 200 and json.loads(body)["answered"] == 3
        reviews = read_reviews(run)
        assert len(reviews) == 3 and set(reviews["reviewer"]) == {"ana"}
        first = reviews.set_index("start_time").loc[frog["start_time"].iloc[0]]
        assert first["label"] == "absent" and first["stratum_size"] == frog["stratum_size"].iloc[0]
        assert len(read_reviews(run, latest=False)) == 5
    finally:
        server.stop()
    again = start_server(run)  # a new server (a restart): the answers come back from the run folder
    try:
        state = json.loads(request(again, "/api/state?reviewer=ana")[2])
        answered = {i["id"]: i["label"] for i in state["items"] if i["label"]}
        assert answered == {int(frog["id"].iloc[0]): "absent", int(frog["id"].iloc[1]): "absent",
                            int(frog["id"].iloc[2]): "unsure"}
        assert {c["class"]: c["answered"] for c in state["classes"]} == {"fast_pulser": 0, "frog12": 3}
        assert not any(i["label"] for i in json.loads(request(again, "/api/state?reviewer=ben")[2])["items"])
        assert all("/" not in i["file_name"] for i in state["items"])  # names only, no paths to the client
    finally:
        again.stop()


def test_reviewers_at_once_on_two_servers_never_overwrite_each_other(run):
    servers = [start_server(run), start_server(run)]
    try:
        ids = list(servers[0].app.items["id"].iloc[:20])

        def answer(job):
            server, reviewer, item, label = job
            return request(server, "/api/answer", {"id": int(item), "label": label, "reviewer": reviewer})[0]

        jobs = [(servers[k % 2], reviewer, item, label) for k, (reviewer, label) in
                enumerate((("ana", "present"), ("ben", "absent"))) for item in ids]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(answer, jobs)) == {200}
        reviews = read_reviews(run)
        assert len(reviews) == 40
        assert (reviews.groupby("reviewer")["label"].agg(set) == pd.Series({"ana": {"present"}, "ben": {"absent"}})).all()
        # each server sees the other's answers on the next load
        state = json.loads(request(servers[0], "/api/state?reviewer=ben")[2])
        assert sum(1 for i in state["items"] if i["label"] == "absent") == 20
    finally:
        for server in servers:
            server.stop()


def test_calibration_from_the_page(run, demo):
    server = start_server(run, classes=["frog12"])
    try:
        labels = pd.read_csv(demo / "labels.csv")
        truth = labels.set_index(["file", "start_time"])["frog12"]
        for item in server.app.items.itertuples():
            label = "present" if truth[(item.file, item.start_time)] else "absent"
            assert request(server, "/api/answer", {"id": item.id, "label": label, "reviewer": "sim"})[0] == 200
        status, _, body = request(server, "/api/calibrate", {"target_precision": 0.9})
        assert status == 200, body
        result = json.loads(body)
        (frog,) = result["classes"]
        assert frog["status"] == "ok" and frog["class_name"] == "frog12" and frog["n_reviews"] == len(server.app.items)
        curve = frog["curve"]
        assert curve["axis"] == "log10(score)" and len(curve["curve"]) == 120 and len(curve["points"]) == frog["n_reviews"]
        probabilities = [p for _, p in curve["curve"]]
        assert probabilities == sorted(probabilities) and probabilities[-1] > 0.9
        assert curve["threshold_low"] <= curve["threshold"] == pytest.approx(np.log10(frog["threshold"]))
        assert pd.read_parquet(f"{run}/calibration.parquet")["threshold"].iloc[0] == frog["threshold"]
        assert request(server, "/api/calibrate", {"target_precision": "high"})[0] == 400
        status, _, body = request(server, "/api/calibrate", {"target_precision": 1.5})
        assert status == 400 and b"between 0 and 1" in body
    finally:
        server.stop()


def test_the_command_serves_until_interrupted(run, monkeypatch, capsys):
    from pipelines.review import server as server_module

    def interrupted(self):
        self.start()
        try:
            assert request(self, "/api/state?reviewer=ana")[0] == 200  # it serves...
        finally:
            self.stop()
        raise KeyboardInterrupt  # ...until Ctrl-C

    monkeypatch.setattr(server_module.ReviewServer, "serve_forever", interrupted)
    monkeypatch.setattr(server_module, "new_token", lambda: "t0ken")
    assert main(["review", run, "--port", "0", "--detector", "ribbit:frog12"]) == 0
    captured = capsys.readouterr()
    assert "opso review: 42 clips of 1 class(es)" in captured.out
    assert "open http://127.0.0.1:" in captured.out and "?token=t0ken" in captured.out
    assert "stopped; every answer is saved" in captured.err and "warning" not in captured.err


def test_a_port_in_use_is_skipped_or_named(run, capsys):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        assert main(["review", run, "--port", str(taken.getsockname()[1])]) == 2
        assert f"cannot listen on 127.0.0.1 port {taken.getsockname()[1]}" in capsys.readouterr().err
    finally:
        taken.close()


def test_urllib_sees_the_same_page(run):
    """The printed address works as given (token in the query), as a browser opens it."""
    server = start_server(run)
    try:
        with urllib.request.urlopen(server.url, timeout=30) as response:
            assert response.status == 200 and b"<title>opso review</title>" in response.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url.split("?")[0], timeout=30)
        assert refused.value.code == 403
    finally:
        server.stop()


@pytest.mark.s3
def test_a_run_and_archive_in_a_bucket(demo, tmp_path, s3_storage_options, dask_client, monkeypatch, capsys):
    """Clips from an archive in a bucket, answers into a run folder in the bucket; the command takes the
    run's storage options for the archive on the same storage."""
    import s3fs

    from pipelines.config import load_config
    from pipelines.demo import DEMO_SPECIES
    from pipelines.driver.run import run_pipeline
    from pipelines.review import server as server_module

    fs = s3fs.S3FileSystem(**s3_storage_options, skip_instance_cache=True)
    fs.mkdir("review-s3")
    fs.put(str(demo / "archive" / "rec00"), "review-s3/archive/rec00", recursive=True)
    options = dict(s3_storage_options)
    config = load_config({"input": {"url": "s3://review-s3/archive", "storage_options": options, "pattern": "**/*.WAV"},
                          "output": {"url": "s3://review-s3/results", "storage_options": options},
                          "clips": {"duration": 2.0}, "spectrogram": {"sample_rate": 16000, "clips_per_chunk": 32},
                          "ribbit": DEMO_SPECIES}, environ={})
    run_pipeline(config, dask_client, progress=False)
    run = "s3://review-s3/results"
    items = review_items(run, options, classes=["frog12"])
    media = ClipMedia(run, read_status(run, options)["config"], options, options)
    server = ReviewServer(ReviewApp(run, items, media, options), token="t0ken").start()
    try:
        inner = items[(items["start_time"] >= 2) & (items["end_time"] <= 58)].iloc[0]
        status, _, body = request(server, f"/api/clip/{int(inner['id'])}/audio.wav")
        assert status == 200
        local = str(demo / "archive" / "rec00" / inner["file"].rsplit("/", 1)[-1])
        original = Audio.from_file(local, offset=inner["start_time"] - 1, duration=4.0).samples
        samples, _ = sf.read(io.BytesIO(body), dtype="float32")
        np.testing.assert_allclose(samples, original / np.abs(original).max() * 10 ** (-1 / 20), atol=1.5 / 32768)
        assert media.spectrogram(inner["file"], inner["start_time"], inner["end_time"])[1] == "stored"
        assert request(server, "/api/answer", {"id": int(inner["id"]), "label": "present", "reviewer": "ana"})[0] == 200
    finally:
        server.stop()
    assert read_reviews(run, options)["label"].tolist() == ["present"]
    assert fs.ls("review-s3/results/reviews")

    def serve_once(self):  # the command, given the run's URL and options only, reads the archive too
        self.start()
        try:
            item = self.app.items.iloc[0]
            assert request(self, f"/api/clip/{int(item['id'])}/audio.wav")[0] == 200
        finally:
            self.stop()

    monkeypatch.setattr(server_module.ReviewServer, "serve_forever", serve_once)
    monkeypatch.setattr(server_module, "new_token", lambda: "t0ken")
    assert main(["review", run, "--port", "0", "--storage-options", json.dumps(options)]) == 0
    assert "open http://127.0.0.1:" in capsys.readouterr().out
