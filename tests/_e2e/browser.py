"""Headless Chromium driven over the Chrome DevTools Protocol (a websocket; aiohttp is a ComfyUI requirement).

``Browser(path, profile_dir)`` starts ``chromium --headless=new`` with a DevTools port; ``browser.page()``
gives a ``Page`` with synchronous ``goto``, ``js`` (evaluates an expression, awaiting promises, returning
JSON values) and ``screenshot``. Stopped by its PID in ``close()``. Used by tests/test_frontend.py and
tests/_e2e/make_workflows.py.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .server import free_port

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    env = os.environ.get("PULID_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class Page:
    def __init__(self, loop: asyncio.AbstractEventLoop, ws_url: str):
        self._loop, self._ids = loop, itertools.count(1)
        self._session = self._ws = None
        self._run(self._connect(ws_url))
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    async def _connect(self, ws_url: str) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=0)

    async def _call(self, method: str, params: dict, timeout: float):
        i = next(self._ids)
        await self._ws.send_json({"id": i, "method": method, "params": params})
        while True:
            msg = await self._ws.receive_json(timeout=timeout)
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def call(self, method: str, timeout: float = 120, **params):
        return self._run(self._call(method, params, timeout))

    def js(self, expression: str, timeout: float = 120):
        r = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                      returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError("page script failed: " + json.dumps(r["exceptionDetails"])[:2000])
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str, poll: float = 0.25):
        t0 = time.perf_counter()
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{what}: not after {timeout:.0f} s")
            time.sleep(poll)

    def goto(self, url: str, width: int = 1600, height: int = 1000) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)

    def screenshot(self, path: Path, clip: dict | None = None) -> None:
        """The page, or the ``clip`` rectangle ({x, y, width, height} in CSS pixels)."""
        extra = {"clip": {**clip, "scale": 1}} if clip else {}
        data = self.call("Page.captureScreenshot", format="png", **extra)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        async def go():
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()

        self._run(go())


class Browser:
    def __init__(self, binary: str, profile_dir: Path):
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={profile_dir}", "--remote-debugging-address=127.0.0.1",
             f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def page(self, timeout: float = 30) -> Page:
        import aiohttp

        async def pages():
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.port}/json/list") as r:
                return [p for p in await r.json() if p.get("type") == "page"]

        t0 = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            try:
                found = self._loop.run_until_complete(pages())
                if found:
                    return Page(self._loop, found[0]["webSocketDebuggerUrl"])
            except (aiohttp.ClientError, OSError):
                pass
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("chromium DevTools not reachable")
            time.sleep(0.3)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._loop.close()
