"""The trained MPNet-base joined from its PyPI parts: hash checked, joined once, refused when wrong.

The archive tests build a small split zip of their own (a few kB, a known hash), so they exercise
the joining, the check and the refusal without the 405 MB parts; the real parts are loaded by
tests/test_models.py (CI installs them with the reference-weights group).
"""

import hashlib
import io
import zipfile

import pytest

import helpers
from helpers import weights


@pytest.fixture()
def split_archive(tmp_path, monkeypatch):
    """A model-folder zip split into three pieces, installed as if by three packages."""
    payload = b"weights!" * 5000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("tiny-model/config.json", '{"model_type": "toy"}')
        archive.writestr("tiny-model/model.safetensors", payload)
        archive.writestr("tiny-model/1_Pooling/config.json", "{}")
        archive.writestr("tiny-model/desktop.ini", "junk")
    data = buffer.getvalue()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    pieces = []
    for i in range(3):
        piece = tmp_path / "site" / f"toy.zip.{i + 1:03d}"
        piece.parent.mkdir(exist_ok=True)
        piece.write_bytes(data[cut[i]: cut[i + 1]])
        pieces.append(piece)
    monkeypatch.setattr(weights, "part_files", lambda packages=None: list(pieces))
    return pieces, hashlib.sha256(payload).hexdigest()


def test_pieces_are_joined_once_into_a_folder_that_loads(split_archive, tmp_path):
    _, sha = split_archive
    folder = weights.mpnet_dir(cache=tmp_path / "cache", expected_sha256=sha, progress=False)
    assert (folder / "config.json").read_text() == '{"model_type": "toy"}'
    assert (folder / "model.safetensors").read_bytes() == b"weights!" * 5000
    assert (folder / "1_Pooling" / "config.json").is_file() and not (folder / "desktop.ini").exists()
    stamp = (folder / "verified.json").stat().st_mtime_ns
    again = weights.mpnet_dir(cache=tmp_path / "cache", expected_sha256=sha, progress=False)
    assert again == folder and (folder / "verified.json").stat().st_mtime_ns == stamp  # not joined twice


def test_a_wrong_hash_is_refused_and_nothing_is_left(split_archive, tmp_path):
    with pytest.raises(helpers.WeightsError, match="refusing to use it"):
        weights.mpnet_dir(cache=tmp_path / "cache", expected_sha256="0" * 64, progress=False)
    assert not (tmp_path / "cache").exists() and not list(tmp_path.glob("cache.partial-*"))


def test_a_changed_weights_file_is_checked_again(split_archive, tmp_path):
    _, sha = split_archive
    folder = weights.mpnet_dir(cache=tmp_path / "cache", expected_sha256=sha, progress=False)
    (folder / "model.safetensors").write_bytes(b"tampered")
    weights.mpnet_dir(cache=tmp_path / "cache", expected_sha256=sha, progress=False)
    assert (folder / "model.safetensors").read_bytes() == b"weights!" * 5000  # re-joined from the parts


def test_missing_parts_name_the_packages_and_the_command():
    with pytest.raises(helpers.WeightsError, match=r"missing: no-such-course-part-1.*uv sync"):
        weights.part_files(("no-such-course-part-1", "no-such-course-part-2"))


def test_the_installed_parts_are_the_expected_five():
    """CI installs the reference-weights group, so the real pieces are there, in order."""
    pieces = weights.part_files()
    assert [p.name for p in pieces] == [f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]
    assert sum(p.stat().st_size for p in pieces) > 400e6
