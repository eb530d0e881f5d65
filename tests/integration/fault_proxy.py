"""A fault-injecting HTTP proxy for the S3 tests: in front of the local S3 server (moto), it forwards
every request, or per a policy answers 503, never answers (a stalled request), or drops the connection.

    proxy = FaultProxy("http://127.0.0.1:5000").start()
    proxy.policy = lambda method, path: "hang" if method == "PUT" and "/file/1" in path else "pass"
    ... storage_options = {"client_kwargs": {"endpoint_url": proxy.url}, ...}
    proxy.stop()

``proxy.seen`` lists ``(method, path, action)`` of every request, for the test's assertions.
"""

from __future__ import annotations

import http.client
import http.server
import socketserver
import threading
import time
import urllib.parse

__all__ = ["FaultProxy"]

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "expect"}


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FaultProxy:
    """See the module docstring; ``policy(method, path) -> "pass" | "503" | "hang" | "drop"``."""

    def __init__(self, upstream: str):
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.policy = lambda method, path: "pass"
        self.seen: list[tuple[str, str, str]] = []
        self._released = threading.Event()  # set at stop(): hung requests end
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                action = proxy.policy(self.command, self.path)
                proxy.seen.append((self.command, self.path, action))
                if action == "hang":  # read nothing more, answer nothing, until the client gives up
                    proxy._released.wait(600)
                    self.close_connection = True
                    return
                body = self._body()
                if action == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if action == "503":
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                               b"<Message>injected fault</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def count(self, action: str) -> int:
        return sum(1 for _, _, a in self.seen if a == action)

    @staticmethod
    def outage_after(start_s: float, duration_s: float):
        """A policy that answers 503 to everything from ``start_s`` to ``start_s + duration_s`` (monotonic)."""

        def policy(method, path):
            now = time.monotonic()
            return "503" if start_s <= now < start_s + duration_s else "pass"

        return policy
