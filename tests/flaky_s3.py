"""An HTTP proxy in front of the test S3 server that can make object reads fail as a busy
object store does: 503 SlowDown answers and connections reset without an answer.

Passes everything through until told otherwise; `fail_first(n)` fails the first n GETs of
each object key, `take_down(key)` fails every GET of that key until `heal()`.
"""
from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


class FlakyProxy:
    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.first_failures = 0
        self.down: set[str] = set()
        self.reads: Counter = Counter()  # object GETs seen per key
        self.failed = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail_first(self, n: int) -> None:
        with self.lock:
            self.first_failures, self.reads = n, Counter()

    def take_down(self, key: str) -> None:
        with self.lock:
            self.down.add(key)

    def heal(self) -> None:
        with self.lock:
            self.first_failures, self.down = 0, set()

    def close(self) -> None:
        self.server.shutdown()

    def _should_fail(self, method: str, path: str) -> bool:
        key = path.split("?", 1)[0].lstrip("/")
        if method != "GET" or "/" not in key or "?" in path:  # only object reads, not listings
            return False
        with self.lock:
            self.reads[key] += 1
            fail = key in self.down or self.reads[key] <= self.first_failures
            self.failed += fail
            return fail

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" not in self.headers.get("Transfer-Encoding", ""):
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = []
                while True:  # HTTP/1.1 chunked upload: size line, data, CRLF; 0 ends it
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()

            def _forward(self) -> None:
                body = self._body()
                if proxy._should_fail(self.command, self.path):
                    if proxy.failed % 2:  # alternate the two faults a busy store shows
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(SLOW_DOWN)))
                        self.end_headers()
                        self.wfile.write(SLOW_DOWN)
                    else:
                        self.close_connection = True
                        self.connection.close()  # reset: no answer at all
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "expect")}
                if body:
                    headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                # a HEAD answer's length is the object's, not its (empty) body's
                self.send_header("Content-Length", answer.getheader("Content-Length", "0")
                                 if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
