"""A local HTTP file server for the model-fetch tests: 127.0.0.1, a free port, a daemon thread, bounded.

Serves ``files`` ({name: bytes}) at ``/<name>`` with HTTP Range support (206 / 416); ``cut`` ({name: n})
drops the connection after n bytes on the first request for that name (an interrupted download).
Every request is recorded as (name, Range header or None, bytes sent).
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def serving(files: dict[str, bytes], cut: dict[str, int] | None = None):
    cut = dict(cut or {})
    log: list[tuple[str, str | None, int]] = []

    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # a stuck client cannot hold a handler thread forever

        def do_GET(self):  # noqa: N802 - http.server's name
            name = self.path.lstrip("/")
            data = files.get(name)
            rng = self.headers.get("Range")
            if data is None:
                log.append((name, rng, 0))
                self.send_error(404)
                return
            start = 0
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-", rng)
                start = int(m.group(1)) if m else 0
                if start >= len(data):
                    log.append((name, rng, 0))
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            body = data[start:]
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            n = cut.pop(name, None)
            sent = body if n is None else body[:n]
            self.wfile.write(sent)
            log.append((name, rng, len(sent)))
            if n is not None:
                self.close_connection = True

        def log_message(self, *args):  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
