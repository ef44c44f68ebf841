"""Start a real ComfyUI server on 127.0.0.1 with a throw-away base directory, and talk to it over HTTP.

``ComfyServer`` runs ``main.py --cpu`` with its own ``--base-directory`` (custom_nodes/, input/, output/,
user/), its own sqlite ``--database-url`` (the default DB ignores --base-directory) and an
``--extra-model-paths-config`` YAML; packs are symlinked into the temporary ``custom_nodes/``. It is
stopped by its PID (SIGINT, then SIGTERM/SIGKILL) in ``stop()``, which callers put in a ``finally``.

The client side uses aiohttp (a ComfyUI requirement): ``run_prompt`` POSTs an API prompt, follows
``/ws`` until the prompt finishes, and reads ``/history``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PACK_DIR_NAME = "comfyui-pulid-flux-id"  # the folder name the pack gets in custom_nodes/


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_extra_model_paths(path: Path, sections: dict[str, dict[str, str]]) -> None:
    """extra_model_paths.yaml (utils/extra_config.py): section -> {base_path, folder_name: relative path}."""
    lines = []
    for name, entries in sections.items():
        lines.append(f"{name}:")
        lines += [f"    {key}: {value}" for key, value in entries.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class PromptResult:
    prompt_id: str | None
    status: str  # "success" | "error" | "rejected" | "timeout" | "interrupted"
    messages: list[tuple[str, dict]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds since POST, one per message
    error: dict | None = None  # execution_error data, or the /prompt 400 body
    history: dict = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def cached_nodes(self) -> set[str]:
        return {n for t, d in self.messages if t == "execution_cached" for n in d.get("nodes", [])}

    @property
    def executed_nodes(self) -> set[str]:
        return {d["node"] for t, d in self.messages if t == "executing" and d.get("node") is not None}

    def node_seconds(self) -> dict[str, float]:
        """Wall time per executed node id, from consecutive 'executing' messages."""
        out, current, start = {}, None, 0.0
        for (typ, data), t in zip(self.messages, self.times):
            if typ in ("executing", "execution_success", "execution_error"):
                if current is not None:
                    out[current] = round(t - start, 2)
                current, start = (data.get("node") if typ == "executing" else None), t
        return out

    @property
    def images(self) -> list[dict]:
        return [im for out in self.history.get("outputs", {}).values() for im in out.get("images", [])]


class ComfyServer:
    def __init__(self, comfy_root: Path, python: str, base: Path, *, model_paths: dict[str, dict[str, str]],
                 packs: dict[str, Path] | None = None, port: int | None = None, extra_args: list[str] | None = None):
        self.comfy_root, self.python, self.base = Path(comfy_root), python, Path(base)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for d in ("custom_nodes", "input", "output", "user", "temp", "models"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        for name, src in (packs or {}).items():
            link = self.base / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(Path(src).resolve(), target_is_directory=True)
        self.yaml = self.base / "extra_model_paths.yaml"
        write_extra_model_paths(self.yaml, model_paths)
        self.log_path = self.base / "server.log"
        self.cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                    "--disable-auto-launch", "--base-directory", str(self.base),
                    "--extra-model-paths-config", str(self.yaml),
                    "--database-url", "sqlite:///" + str(self.base / "user" / "comfyui.db"), *(extra_args or [])]
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    # ------------------------------------------------------------------ process
    def start(self, timeout: float = 180.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1")
        env.pop("PYTHONPATH", None)
        self._log = open(self.log_path, "w")  # closed in stop()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, cwd=self.comfy_root, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during startup:\n{self.tail()}")
            try:
                status, _ = self.get("/system_stats", timeout=2)
                if status == 200:
                    self.startup_s = time.perf_counter() - t0
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # main.py exits cleanly on KeyboardInterrupt
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def tail(self, n: int = 80) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-n:])
        except OSError:
            return ""

    def __enter__(self) -> ComfyServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP
    def get(self, path: str, params: dict | None = None, timeout: float = 60) -> tuple[int, object]:
        return asyncio.run(self._request("GET", path, params=params, timeout=timeout))

    def get_json(self, path: str, params: dict | None = None) -> object:
        status, body = self.get(path, params)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body!r:.500}")
        return body

    def post_json(self, path: str, body: dict) -> tuple[int, object]:
        return asyncio.run(self._request("POST", path, json_body=body))

    def upload_image(self, data: bytes, name: str, subfolder: str = "") -> dict:
        async def go():
            import aiohttp

            form = aiohttp.FormData()
            form.add_field("image", data, filename=name, content_type="image/png")
            form.add_field("overwrite", "true")
            if subfolder:
                form.add_field("subfolder", subfolder)
            async with aiohttp.ClientSession() as s, s.post(self.url + "/upload/image", data=form) as r:
                if r.status != 200:
                    raise RuntimeError(f"/upload/image -> {r.status}: {await r.text()}")
                return await r.json()

        return asyncio.run(go())

    def view(self, image: dict) -> bytes:
        params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                  "type": image.get("type", "output")}
        status, body = asyncio.run(self._request("GET", "/view", params=params, raw=True))
        if status != 200:
            raise RuntimeError(f"/view {params} -> {status}")
        return body

    async def _request(self, method, path, *, params=None, json_body=None, raw=False, timeout=60):
        import aiohttp

        t = aiohttp.ClientTimeout(total=timeout)
        try:
            async with aiohttp.ClientSession(timeout=t) as s, s.request(method, self.url + path, params=params,
                                                                        json=json_body) as r:
                data = await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise OSError(f"{method} {path}: {e!r}") from e
        if raw:
            return r.status, data
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data.decode(errors="replace")

    # ------------------------------------------------------------------ prompts
    def run_prompt(self, prompt: dict, timeout: float = 600, extra_data: dict | None = None) -> PromptResult:
        return asyncio.run(self._run_prompt(prompt, timeout, extra_data or {}))

    async def _run_prompt(self, prompt: dict, timeout: float, extra_data: dict) -> PromptResult:
        import aiohttp

        client_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"{self.url}/ws?clientId={client_id}", max_msg_size=0) as ws:
                body = {"prompt": prompt, "client_id": client_id, "extra_data": extra_data}
                async with s.post(self.url + "/prompt", json=body) as r:
                    answer = await r.json()
                if r.status != 200:
                    return PromptResult(None, "rejected", error=answer, wall_s=time.perf_counter() - t0)
                res = PromptResult(answer["prompt_id"], "timeout")
                while res.status == "timeout":
                    left = timeout - (time.perf_counter() - t0)
                    if left <= 0:
                        break
                    try:
                        msg = await ws.receive(timeout=left)
                    except asyncio.TimeoutError:
                        break
                    if msg.type == aiohttp.WSMsgType.BINARY:  # previews
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        res.status, res.error = "error", {"exception_message": f"websocket closed ({msg.type})"}
                        break
                    m = json.loads(msg.data)
                    typ, data = m.get("type"), m.get("data") or {}
                    if data.get("prompt_id") not in (None, res.prompt_id):
                        continue
                    res.messages.append((typ, data))
                    res.times.append(time.perf_counter() - t0)
                    if typ == "execution_success":
                        res.status = "success"
                    elif typ == "execution_error":
                        res.status, res.error = "error", data
                    elif typ == "execution_interrupted":
                        res.status = "interrupted"
            # /history can lag the last websocket message a little
            for _ in range(100):
                async with s.get(f"{self.url}/history/{res.prompt_id}") as r:
                    hist = await r.json()
                if res.prompt_id in hist:
                    res.history = hist[res.prompt_id]
                    break
                await asyncio.sleep(0.05)
        res.wall_s = time.perf_counter() - t0
        return res
