"""``opso review``: a small web server for reviewing a run's clips in the browser.

One static page (``static/review.html``, no build step) and a JSON API, served by the standard
library's threaded HTTP server: the page needs a handful of routes and no framework earns its weight
for them. It binds ``127.0.0.1`` by default and every request carries the server's random token
(``?token=`` in the page's address, then the ``X-Opso-Token`` header or ``token`` parameter), as
Jupyter does; a request without it gets 403.

Routes (clips are named by their id in :func:`pipelines.review.queue.review_items`; no route takes
a path, so nothing outside the run and its archive can be read):

- ``GET /``: the page;
- ``GET /api/state?reviewer=NAME``: the run, the classes with each one's progress for the reviewer,
  and the items with the reviewer's answers;
- ``POST /api/answer`` ``{"id", "label", "reviewer"}``: write the answer at once
  (:func:`pipelines.review.reviews.write_review`);
- ``GET /api/clip/<id>/audio.wav`` and ``/api/clip/<id>/spectrogram.png``;
- ``POST /api/calibrate`` ``{"target_precision"}``: :func:`pipelines.review.calibrate_run.calibrate_run`
  (writes ``calibration.parquet``) and each class's curve (:func:`pipelines.review.curves.class_curve`).

Unknown routes and ids get 404. Every answer is a file of its own in ``reviews/``: several servers
(one per reviewer, or on several machines) can serve one run at once, and a killed server loses no
answer; a restarted one reads them back, so each reviewer continues where they stopped.
"""

from __future__ import annotations

import hmac
import http.server
import importlib.resources
import json
import logging
import math
import re
import secrets
import threading
import urllib.parse

import numpy as np
import pandas as pd

from opso_core.errors import OpsoError
from pipelines.errors import ConfigError
from pipelines.review.media import ClipMedia, wav_bytes
from pipelines.review.reviews import LABELS, read_reviews, valid_reviewer, write_review

__all__ = ["ReviewApp", "ReviewServer", "new_token"]

logger = logging.getLogger(__name__)

_CLIP_ROUTE = re.compile(r"^/api/clip/(\d{1,12})/(audio\.wav|spectrogram\.png)$")
#: the other routes and their method
_ROUTES = {"/": "GET", "/api/state": "GET", "/api/answer": "POST", "/api/calibrate": "POST"}
#: largest request body accepted (bytes): an answer is a few hundred
MAX_BODY_BYTES = 64 * 1024


def new_token() -> str:
    """A random token for the page's address (48 hex digits)."""
    return secrets.token_hex(24)


def _json_value(value):
    """A table value as JSON (NaN, NaT and infinities as None, timestamps as ISO 8601)."""
    if value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ReviewApp:
    """What the server does, without HTTP: the sample, the answers, the media.

    Parameters
    ----------
    run_url : str
    items : pandas.DataFrame
        :func:`pipelines.review.queue.review_items` of the run.
    media : ClipMedia
    storage_options : dict, optional
        fsspec options of the run folder.
    """

    def __init__(self, run_url: str, items: pd.DataFrame, media: ClipMedia, storage_options=None):
        self.run_url = run_url
        self.items = items.reset_index(drop=True)
        self.media = media
        self.storage_options = storage_options
        # an answer is about one clip: the same start with another end (other clip settings) is another clip
        self._by_key = {(detector, class_name, file, round(float(start), 6), round(float(end), 6)): int(item_id)
                        for detector, class_name, file, start, end, item_id in
                        self.items[["detector", "class", "file", "start_time", "end_time", "id"]].itertuples(
                            index=False, name=None)}
        self._answers: dict[str, dict[int, str]] = {}
        self._lock = threading.Lock()
        self.refresh()

    # ---- answers
    def refresh(self) -> None:
        """Read every reviewer's latest answers back from the run folder (other servers' included)."""
        reviews = read_reviews(self.run_url, self.storage_options)
        answers: dict[str, dict[int, str]] = {}
        columns = ["reviewer", "detector", "class", "file", "start_time", "end_time", "label"]
        for reviewer, detector, class_name, file, start, end, label in reviews[columns].itertuples(index=False,
                                                                                                    name=None):
            item = self._by_key.get((detector, class_name, file, round(float(start), 6), round(float(end), 6)))
            if item is not None:
                answers.setdefault(reviewer, {})[item] = label
        with self._lock:
            self._answers = answers

    def item(self, item_id: int) -> pd.Series | None:
        """The item with this id, or None."""
        if 0 <= item_id < len(self.items):
            return self.items.iloc[item_id]
        return None

    def state(self, reviewer: str | None) -> dict:
        """The page's data for ``reviewer`` (answers read back from the run folder first)."""
        self.refresh()
        with self._lock:
            mine = dict(self._answers.get((reviewer or "").strip(), {}))
        classes = []
        if reviewer and not valid_reviewer(reviewer.strip()):
            raise ConfigError("a reviewer's name is 1 to 64 letters, digits, spaces or . @ ' -")
        for (detector, class_name), group in self.items.groupby(["detector", "class"], sort=False):
            ids = group["id"].to_numpy()
            classes.append({"detector": detector, "class": class_name, "n": int(len(ids)),
                            "answered": int(sum(1 for i in ids if int(i) in mine))})
        columns = ["id", "detector", "class", "clip", "file", "recorder", "start_time", "end_time",
                   "start_time_utc", "score", "stratum"]
        items = [{c: _json_value(v) for c, v in zip(columns, row, strict=True)}
                 for row in self.items[columns].itertuples(index=False)]
        for item in items:
            item["file_name"] = str(item.pop("file")).rsplit("/", 1)[-1]
            item["label"] = mine.get(item["id"])
        return {"run": self.run_url, "labels": list(LABELS), "context_s": self.media.context_s,
                "classes": classes, "items": items}

    def answer(self, item_id, label, reviewer) -> dict:
        """Write ``reviewer``'s ``label`` for the item; returns the class's progress.

        Raises
        ------
        KeyError
            No such item.
        ConfigError
            A bad label or reviewer name (nothing written).
        """
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            raise ConfigError(f"an answer's id is a clip number, got {item_id!r}"[:120])
        if isinstance(reviewer, str):
            reviewer = reviewer.strip()  # the page trims names too: " ana " is ana
        item = self.item(item_id)
        if item is None:
            raise KeyError(item_id)
        write_review(self.run_url, {
            "clip": int(item["clip"]), "file": str(item["file"]), "start_time": float(item["start_time"]),
            "end_time": float(item["end_time"]), "detector": item["detector"], "class": item["class"],
            "score": float(item["score"]), "label": label, "reviewer": reviewer,
            "stratum": int(item["stratum"]), "stratum_size": int(item["stratum_size"]),
            "stratum_sampled": int(item["stratum_sampled"])}, self.storage_options)
        with self._lock:
            mine = self._answers.setdefault(reviewer, {})
            mine[int(item_id)] = label
            same = self.items[(self.items["detector"] == item["detector"]) & (self.items["class"] == item["class"])]
            answered = int(sum(1 for i in same["id"] if int(i) in mine))
        return {"id": int(item_id), "label": label, "answered": answered, "n": int(len(same))}

    # ---- media
    def audio(self, item_id: int) -> bytes:
        item = self.items.iloc[item_id]
        clip = self.media.audio(str(item["file"]), float(item["start_time"]), float(item["end_time"]))
        return wav_bytes(clip.samples, clip.sample_rate_hz)

    def spectrogram(self, item_id: int) -> bytes:
        item = self.items.iloc[item_id]
        return self.media.spectrogram(str(item["file"]), float(item["start_time"]), float(item["end_time"]))[0]

    # ---- calibration
    def calibrate(self, target_precision: float) -> dict:
        """Calibrate the run's reviewed classes (writes ``calibration.parquet``); rows and curves."""
        from pipelines.outputs.results import read_scores
        from pipelines.review.calibrate_run import CALIBRATION_FILE, calibrate_run, class_scores
        from pipelines.review.curves import class_curve

        table = calibrate_run(self.run_url, target_precision, self.storage_options)
        reviews = read_reviews(self.run_url, self.storage_options)
        reviews = reviews[reviews["label"].isin(["present", "absent"])]
        rows, scores = [], {}
        for row in table.drop(columns=["computed_utc"]).to_dict("records"):
            detector, class_name = row["detector"], row["class_name"]
            if detector not in scores:
                scores[detector] = read_scores(self.run_url, detector, self.storage_options)
            mine = reviews[(reviews["detector"] == detector) & (reviews["class"] == class_name)]
            curve = class_curve(row, mine, class_scores(scores[detector], detector, class_name))
            rows.append({**{k: _json_value(v) for k, v in row.items()}, "class": class_name, "curve": curve})
        return {"file": CALIBRATION_FILE, "classes": rows}


def _page() -> bytes:
    return importlib.resources.files("pipelines.review").joinpath("static/review.html").read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "opso-review"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may stay silent (or a body take to arrive) before it is closed

    @property
    def app(self) -> ReviewApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format, *args):
        logger.debug("review server: %s - %s", self.address_string(), format % args)

    # ---- responses
    def _send(self, status: int, body: bytes, content_type: str, extra=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # ---- checks
    def _authorised(self, query: dict) -> bool:
        given = self.headers.get("X-Opso-Token") or (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.server.token.encode())  # type: ignore[attr-defined]

    def _body(self) -> dict | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self._error(400, f"a JSON body of at most {MAX_BODY_BYTES} bytes is expected")
            return None
        try:
            body = json.loads(self.rfile.read(length))
        except TimeoutError:  # fewer bytes than Content-Length said, then silence
            self.close_connection = True
            self._error(408, "the request's body did not arrive")
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(400, "the body is not JSON")
            return None
        if not isinstance(body, dict):
            self._error(400, "the body must be a JSON object")
            return None
        return body

    # ---- routes
    def _route(self, method: str) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        if not self._authorised(query):
            self._error(403, "this page needs the token printed by `opso review` (open the address it printed)")
            return
        path = parts.path
        try:
            if method == "GET" and path == "/":
                self._send(200, _page(), "text/html; charset=utf-8",
                           [("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; "
                             "script-src 'unsafe-inline'; img-src 'self' data:; media-src 'self'")])
            elif method == "GET" and path == "/api/state":
                self._json(200, self.app.state((query.get("reviewer") or [""])[0]))
            elif method == "POST" and path == "/api/answer":
                body = self._body()
                if body is not None:
                    self._json(200, self.app.answer(body.get("id"), body.get("label"), body.get("reviewer")))
            elif method == "POST" and path == "/api/calibrate":
                body = self._body()
                if body is not None:
                    target = body.get("target_precision")
                    if not isinstance(target, int | float) or isinstance(target, bool):
                        self._error(400, "target_precision is a number between 0 and 1")
                    else:
                        self._json(200, self.app.calibrate(float(target)))
            elif method == "GET" and (match := _CLIP_ROUTE.match(path)):
                item_id = int(match[1])
                if self.app.item(item_id) is None:
                    self._error(404, f"no clip {item_id}")
                elif match[2] == "audio.wav":
                    self._send(200, self.app.audio(item_id), "audio/wav")
                else:
                    self._send(200, self.app.spectrogram(item_id), "image/png")
            elif path in _ROUTES or _CLIP_ROUTE.match(path):
                allowed = _ROUTES.get(path, "GET")
                self._send(405, json.dumps({"error": f"{path} takes {allowed}"}).encode(), "application/json",
                           [("Allow", allowed)])
            else:
                self._error(404, "not found")
        except KeyError:
            self._error(404, "no such clip")
        except OpsoError as exc:  # a bad answer, too few reviews, a file that cannot be read
            logger.warning("review server: %s %s: %s", method, path, exc)
            self._error(400 if isinstance(exc, ConfigError) else 502, str(exc))
        except (BrokenPipeError, ConnectionResetError):  # the browser went away mid-answer
            pass
        except Exception as exc:
            logger.exception("review server: %s %s failed", method, path)
            self._error(500, f"{type(exc).__name__}: {exc}")

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _not_allowed(self):
        self._route(self.command)  # the token first; then 405 on a known path, 404 elsewhere

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        """A browser that went away (Next pressed while the audio loaded) or a silent connection timed
        out is not an error of the server: logged at debug level, without a traceback on the terminal."""
        logger.debug("review server: connection from %s ended early", client_address, exc_info=True)


class ReviewServer:
    """The HTTP server of a :class:`ReviewApp`, bound to ``host:port`` (port 0: a free one).

    ``serve_forever()`` serves in the calling thread; ``start()`` in a background thread (tests,
    notebooks) until ``stop()``.
    """

    def __init__(self, app: ReviewApp, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.app = app
        self.token = token or new_token()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.app = app
        self._httpd.token = self.token
        self._thread = None

    @property
    def host(self) -> str:
        return self._httpd.server_address[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The page's address, token included."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}/?token={self.token}"

    def serve_forever(self) -> None:
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._httpd.server_close()

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="opso-review", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
