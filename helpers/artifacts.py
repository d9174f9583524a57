"""An on-disk cache of optimized model artifacts, keyed by everything that makes one invalid (lab 09).

An optimized artifact (an ONNX file, a quantized file, torch.compile's cache) is only valid for
the weights, settings, library versions and machine it was built for. :func:`cache_key` hashes
all of them, so a change to any one gives a new key and the old entry is simply never found;
:func:`fingerprint` collects them.

:class:`ArtifactCache` stores each entry as a folder ``<root>/<key>/`` with a ``manifest.json``
that lists every file's size and SHA-256 and the inputs of the key. An entry is written in a
private temporary folder and renamed into place only when complete (a rename within one file
system is atomic), so a reader never sees half an entry, and of two writers building the same
key at once one wins and the other's copy is thrown away. An entry whose manifest is missing,
unreadable, for another key, or whose files do not match it (truncated, edited, deleted) is
removed and rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1
STALE_TEMP_S = 3600.0  # a temporary folder older than this belongs to a writer that died: removed


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(folder: str | Path) -> str:
    """SHA-256 over every file under ``folder`` (names and contents, in name order): the model's identity."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no model folder at {folder}")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def environment_facts(device: str = "cpu", threads: int | None = None) -> dict:
    """What an artifact depends on besides the weights and settings: the device and its capability,
    the CPU's features, the thread count and the versions of every library that builds or runs one."""
    from importlib import metadata

    import torch

    from .hardware import compute_capability, cpu_flags_text, device_name

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cap = compute_capability(device) if str(device).startswith("cuda") else None
    return {"device": str(device), "device_name": device_name(device),
            "capability": f"{cap[0]}.{cap[1]}" if cap else None, "cpu_features": cpu_flags_text(),
            "machine": platform.machine(), "threads": int(threads if threads is not None else torch.get_num_threads()),
            "python": platform.python_version(), "torch": torch.__version__,
            **{name: version(name) for name in ("onnxruntime", "onnxruntime-gpu", "onnx", "transformers",
                                                "torchao", "torch-tensorrt", "sentence-transformers",
                                                "optimum", "optimum-onnx", "optimum-intel", "openvino", "nncf",
                                                "datasets")}}


def fingerprint(weights: str, backend: str, settings: Mapping, environment: Mapping) -> dict:
    """Every input of a cache key, as one JSON-able dict."""
    return {"format": FORMAT, "weights": str(weights), "backend": str(backend), "settings": dict(settings),
            "environment": dict(environment)}


def cache_key(weights: str, backend: str, settings: Mapping, environment: Mapping) -> str:
    """SHA-256 of the canonical JSON of :func:`fingerprint` (sorted keys, so dict order never matters)."""
    text = json.dumps(fingerprint(weights, backend, settings, environment), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Entry:
    """A usable cache entry: its folder, the manifest's ``info`` and whether this call built it."""

    key: str
    path: Path
    info: dict
    built: bool
    build_s: float | None = None


class ArtifactCache:
    """``cache.get_or_build(key, build, inputs=...)``: the entry for ``key``, built once and then reused.

    ``build(folder) -> info`` writes the artifact's files into ``folder`` (an empty temporary
    folder) and returns a JSON-able dict kept in the manifest. ``force=True`` rebuilds even a
    valid entry. :attr:`problems` keeps why entries were thrown away (for reports and tests).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.problems: list[str] = []

    def path(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"a cache key is a lowercase hex digest, got {key!r}")
        return self.root / key

    def check(self, key: str, inputs: Mapping | None = None) -> str | None:
        """None when the entry for ``key`` is complete and intact, else what is wrong with it."""
        folder = self.path(key)
        if not folder.is_dir():
            return "absent"
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"manifest unreadable ({type(exc).__name__})"
        if manifest.get("key") != key or manifest.get("format") != FORMAT:
            return "manifest is for another key or format"
        if inputs is not None and json.dumps(manifest.get("inputs"), sort_keys=True, default=str) != \
                json.dumps(dict(inputs), sort_keys=True, default=str):
            return "built from other inputs"
        for name, (size, digest) in manifest.get("files", {}).items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
            if file_sha256(path) != digest:
                return f"{name} does not match its checksum"
        return None

    def get(self, key: str, inputs: Mapping | None = None) -> Entry | None:
        """The valid entry for ``key``, or None; an invalid one is removed (and the reason kept)."""
        problem = self.check(key, inputs)
        if problem is None:
            manifest = json.loads((self.path(key) / MANIFEST).read_text(encoding="utf-8"))
            return Entry(key, self.path(key), manifest.get("info", {}), built=False, build_s=manifest.get("build_s"))
        if problem != "absent":
            self.problems.append(f"{key[:12]}: {problem}: rebuilt")
            self._remove(self.path(key))
        return None

    def get_or_build(self, key: str, build: Callable[[Path], dict | None], *, inputs: Mapping | None = None,
                     force: bool = False) -> Entry:
        self._sweep_temporaries()
        if not force:
            entry = self.get(key, inputs)
            if entry is not None:
                return entry
        temp = self.root / f".tmp-{key[:12]}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        try:
            start = time.perf_counter()
            info = build(temp) or {}
            build_s = time.perf_counter() - start
            files = {p.relative_to(temp).as_posix(): (p.stat().st_size, file_sha256(p))
                     for p in sorted(temp.rglob("*")) if p.is_file()}
            manifest = {"format": FORMAT, "key": key, "inputs": dict(inputs) if inputs is not None else None,
                        "files": files, "info": info, "build_s": build_s, "created": time.time()}
            (temp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str), encoding="utf-8")
            final = self.path(key)
            if force and final.exists():
                self._remove(final)
            try:
                os.rename(temp, final)  # atomic; fails if another writer put a complete entry there first
            except OSError:
                self._remove(temp)
                entry = self.get(key, inputs)
                if entry is None:
                    raise RuntimeError(f"another writer holds {final} and it is not a valid entry") from None
                return entry
            return Entry(key, final, info, built=True, build_s=build_s)
        except BaseException:
            self._remove(temp)
            raise

    def clear(self) -> None:
        for child in self.root.iterdir():
            self._remove(child)

    def _sweep_temporaries(self) -> None:
        now = time.time()
        for child in self.root.glob(".tmp-*"):
            try:
                if now - child.stat().st_mtime > STALE_TEMP_S:
                    self._remove(child)
            except OSError:
                pass

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir():
            # rename first, so a half-deleted folder never sits under a valid key
            trash = path.with_name(f".tmp-trash-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(path, trash)
            except OSError:
                trash = path
            shutil.rmtree(trash, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)


def default_cache_dir() -> Path:
    """``$EMBED_CACHE_DIR``, else ``$XDG_CACHE_HOME/inference-course/artifacts`` (``~/.cache/...``)."""
    if os.environ.get("EMBED_CACHE_DIR", "").strip():
        return Path(os.environ["EMBED_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "") or Path.home() / ".cache")
    return base / "inference-course" / "artifacts"
