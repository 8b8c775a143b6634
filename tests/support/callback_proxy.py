"""A proxy in front of the API's callback endpoints that can fail, or hold the answer back.

It counts callbacks, not requests: a batch (POST /callbacks) counts each of its callbacks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class CallbackProxy:
    """Forwards to the API; `mode` "fail" answers 500, "hold" forwards then keeps the answer,
    "hold_before" keeps the callback before the API sees it, then drops it (answers 502)."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.mode = "pass"
        self.forwarded_callbacks = 0
        self.refused_callbacks = 0
        self.dropped_callbacks = 0
        self.callback_paths: list[str] = []  # the path of each callback request, in order
        self.held = threading.Event()  # set once a callback was forwarded and is being held
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _relay(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                is_callback = self.path.endswith(("/callback", "/callbacks"))
                count = _callbacks_in(self.path, body)
                if is_callback:
                    proxy.callback_paths.append(self.path)
                if is_callback and proxy.mode == "fail":
                    proxy.refused_callbacks += count
                    self._answer(500, b'{"status":"error","msg":"injected failure"}')
                    return
                if is_callback and proxy.mode == "hold_before":
                    proxy.held.set()
                    proxy.release.wait(60)
                    proxy.dropped_callbacks += count
                    self._answer(502, b'{"status":"error","msg":"dropped on the way"}')
                    return
                upstream = httpx.request(
                    method,
                    proxy.target + self.path,
                    content=body,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                    timeout=30,
                )
                if is_callback:
                    proxy.forwarded_callbacks += count
                    if proxy.mode == "hold":
                        proxy.held.set()
                        proxy.release.wait(60)
                self._answer(upstream.status_code, upstream.content)

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the child that asked is gone

            def do_POST(self) -> None:
                self._relay("POST")

            def do_GET(self) -> None:
                self._relay("GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def _callbacks_in(path: str, body: bytes) -> int:
    """How many callbacks a request carries."""
    if path.endswith("/callbacks"):
        return len(json.loads(body)["callbacks"])
    return 1


@contextmanager
def callback_proxy(target: str) -> Iterator[CallbackProxy]:
    proxy = CallbackProxy(target)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.release.set()
        proxy.server.shutdown()
        proxy.server.server_close()
