"""``python install.py --models``: fetch the pack's model files (nodes/model_files.py) into the folders the
loaders read. Run by the user only; standard library only (urllib), so it runs before ComfyUI does.

Each file is downloaded to ``<name>.part`` (resumed with an HTTP Range request when one is there), checked
against the table's size and sha256, and only then renamed to its final name. A file already present and
passing the check is skipped. An unpinned file (no sha256 in the table) is checked by size and its sha256 is
written next to it as ``<name>.sha256`` on first download, and checked against that record afterwards.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("PuLID-Flux install")

HERE = Path(__file__).absolute().parent  # absolute(), not resolve(): keep a symlinked custom_nodes/ entry
CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "comfyui-pulid-flux-id install.py"


def load_table():
    """nodes/model_files.py loaded by path (nodes/__init__.py, which needs ComfyUI, is not run)."""
    spec = importlib.util.spec_from_file_location("pulid_flux_model_files", HERE / "nodes" / "model_files.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class FetchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------- folders
def comfyui_root(explicit: str | None) -> Path | None:
    """--comfyui, else the ComfyUI this pack sits in (``<ComfyUI>/custom_nodes/<pack>/``)."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    return HERE.parent.parent if HERE.parent.name == "custom_nodes" else None


def _read_yaml(path: Path) -> dict:
    try:
        import yaml  # ComfyUI's own requirement (PyYAML); only needed when a yaml file exists
    except ImportError as e:
        raise FetchError(f"{path} needs PyYAML to be read: run this with ComfyUI's Python, or pass --models-dir") from e
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def model_folders(root: Path, yaml_files: list[Path]) -> dict[str, list[str]]:
    """folder key -> folders, in the order ComfyUI + the pack search them (utils/extra_config.py semantics:
    base_path relative to the yaml, multi-line values, is_default puts a folder first; ComfyUI's own keys list
    models/<key> first, the pack's keys (registered after the yaml is read) list it last)."""
    extra: dict[str, list[str]] = {}
    for path in yaml_files:
        for section in _read_yaml(path).values():
            if not isinstance(section, dict):
                continue
            section = dict(section)
            base = section.pop("base_path", None)
            is_default = bool(section.pop("is_default", False))
            if base:
                base = os.path.expandvars(os.path.expanduser(base))
                base = base if os.path.isabs(base) else os.path.join(path.parent, base)
            for key, value in section.items():
                key = {"unet": "diffusion_models", "clip": "text_encoders"}.get(key, key)
                for line in str(value).split("\n"):
                    if line:
                        full = os.path.normpath(os.path.join(base or path.parent, line))
                        lst = extra.setdefault(key, [])
                        if full not in lst:
                            lst.insert(0, full) if is_default else lst.append(full)
    out = {}
    for key in {"pulid", "insightface", "facexlib", "clip_vision", "text_encoders"} | set(extra):
        default = os.path.join(root, "models", key)
        own = key in ("pulid", "insightface", "facexlib")
        paths = list(extra.get(key, []))
        out[key] = (paths + [default] if own else [default] + paths) if default not in paths else paths
    return out


@dataclass
class Target:
    file: object  # model_files.ModelFile
    dest: Path  # where it is written
    present: Path | None  # an existing copy the loaders find (checked), or None


def targets(files, *, root: Path | None, models_dir: Path | None, folder: Path | None,
            yaml_files: list[Path]) -> list[Target]:
    out = []
    folders = model_folders(root, yaml_files) if root and not models_dir else {}
    for f in files:
        key, _, sub = f.directory.partition("/")
        if folder:
            candidates = [folder]
        elif models_dir:
            candidates = [models_dir / f.directory]
        else:
            candidates = [Path(p) / sub if sub else Path(p) for p in folders[key]]
        present = next((c / f.name for c in candidates if (c / f.name).is_file()), None)
        out.append(Target(f, candidates[0] / f.name, present))
    return out


# ------------------------------------------------------------------------------------------- checking
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def problem(path: Path, f) -> str | None:
    """Why ``path`` is not the table's file ``f`` (size, then sha256 or the recorded hash), or None."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        return f"size {size} bytes, expected {f.size}"
    record = Path(str(path) + ".sha256") if path.suffix != ".part" else None
    want = f.sha256 or (record.read_text().split()[0] if record and record.is_file() else None)
    if want is not None and (got := sha256_of(path)) != want:
        return f"sha256 {got}, expected {want}"
    return None


# ------------------------------------------------------------------------------------------- download
class Progress:
    """One line per file on stderr: name, bar, percent, MB."""

    def __init__(self, name: str, total: int | None, done: int):
        self.name, self.total, self.done, self.last = name, total, done, 0.0

    def update(self, n: int, final: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        mb = f"{self.done / 1e6:.1f}" + (f"/{self.total / 1e6:.1f} MB" if self.total else " MB")
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = f"[{'#' * int(30 * frac):<30}] {100 * frac:3.0f}% "
        else:
            bar = ""
        sys.stderr.write(f"\r  {self.name} {bar}{mb}" + ("\n" if final else ""))
        sys.stderr.flush()


def download(url: str, part: Path, f) -> None:
    """``url`` into ``part``, resuming from its current length with an HTTP Range request."""
    have = part.stat().st_size if part.exists() else 0
    if f.size is not None and have > f.size:
        part.unlink()
        have = 0
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the .part is complete (it is checked next)
            return
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from e
    with resp:
        resume = have and resp.status == 206
        if have and not resume:
            log.info("%s: the server does not resume (HTTP %s); starting again", f.name, resp.status)
        length = resp.headers.get("Content-Length")
        sent = (int(length) + (have if resume else 0)) if length else f.size  # the length this response makes
        bar = Progress(f.name, f.size or sent, have if resume else 0)
        with open(part, "ab" if resume else "wb") as out:
            try:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
                    if f.size is not None and bar.done > f.size:
                        break
            except (OSError, http.client.HTTPException):  # a dropped connection: reset, IncompleteRead
                pass
        bar.update(0, final=True)
    if f.size is not None and bar.done > f.size:
        part.unlink()
        raise FetchError(f"{url} sends more than the expected {f.size} bytes; nothing was kept")
    if sent is not None and bar.done < sent:
        raise FetchError(f"{url}: interrupted after {bar.done} of {sent} bytes; run the command again to resume "
                         f"from {part}")


def fetch_one(t: Target, base_url: str | None) -> None:
    f = t.file
    url = f"{base_url.rstrip('/')}/{f.name}" if base_url else f.url
    t.dest.parent.mkdir(parents=True, exist_ok=True)
    part = t.dest.with_name(t.dest.name + ".part")
    download(url, part, f)
    why = problem(part, f) if part.exists() else "nothing was downloaded"
    if why:
        part.unlink(missing_ok=True)
        raise FetchError(f"{f.name} from {url} refused: {why}. Nothing was kept; check the URL / mirror and run "
                         "the command again")
    if f.sha256 is None:  # unpinned: record its hash now, check against it from now on
        digest = sha256_of(part)
        Path(str(t.dest) + ".sha256").write_text(f"{digest}  {f.name}\n")
        log.info("%s is unpinned: its sha256 %s is recorded in %s.sha256", f.name, digest, t.dest.name)
    os.replace(part, t.dest)
    log.info("%s: checked and placed in %s", f.name, t.dest.parent)


def run(files, *, root: Path | None, models_dir: Path | None = None, folder: Path | None = None,
        yaml_files: list[Path] = (), base_url: str | None = None, dry_run: bool = False,
        accept_non_commercial: bool = False, accept_flag: str = "") -> int:
    """Fetch ``files``; returns the exit code (0: every file in place and checked)."""
    if root is None and models_dir is None and folder is None:
        raise FetchError("cannot tell where ComfyUI is: pass --comfyui <ComfyUI folder> or --models-dir <models folder>")
    plan = targets(files, root=root, models_dir=models_dir, folder=folder, yaml_files=list(yaml_files))
    failed, refused = [], []
    for t in plan:
        f = t.file
        size = f"{f.size / 1e6:.1f} MB" if f.size else "size unknown"
        pin = f"sha256 {f.sha256[:12]}..." if f.sha256 else "unpinned (checked by size, hash recorded)"
        log.info("%s (%s, %s) -- licence: %s", f.name, size, pin, f.licence)
        if t.present is not None:
            why = problem(t.present, f)
            if why is None:
                log.info("  present and checked: %s", t.present)
                continue
            log.warning("  %s fails its check (%s): fetching it again into %s", t.present, why, t.dest.parent)
        if f.non_commercial and not accept_non_commercial:
            log.warning("  NOT fetched: this file is for NON-COMMERCIAL use only; add %s to accept that and fetch it",
                        accept_flag)
            refused.append(f.name)
            continue
        url = f"{base_url.rstrip('/')}/{f.name}" if base_url else f.url
        if dry_run:
            part = t.dest.with_name(t.dest.name + ".part")
            resume = f" (resuming {part.stat().st_size} bytes of {part.name})" if part.exists() else ""
            log.info("  would fetch %s -> %s%s", url, t.dest, resume)
            continue
        log.info("  fetching %s -> %s", url, t.dest.parent)
        try:
            fetch_one(t, base_url)
        except FetchError as e:
            log.error("  %s", e)
            failed.append(f.name)
    if refused:
        log.warning("not fetched without %s: %s", accept_flag, ", ".join(refused))
    if failed:
        log.error("failed: %s", ", ".join(failed))
    return 1 if failed else (2 if refused else 0)
