"""torch.compile helpers: a fresh cache folder, sizes on disk, and a clear error from the probe."""

import os

import pytest

from helpers import compilation


def test_fresh_compile_cache_is_an_empty_folder_named_in_the_environment(monkeypatch):
    monkeypatch.delenv(compilation.CACHE_ENV, raising=False)
    path = compilation.use_fresh_compile_cache()
    try:
        assert os.environ[compilation.CACHE_ENV] == str(path)
        assert path.is_dir() and not any(path.iterdir())
        assert compilation.use_fresh_compile_cache() != path, "each call gives a new folder"
    finally:
        monkeypatch.delenv(compilation.CACHE_ENV, raising=False)


def test_folder_mib_adds_up_files_below_a_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"\0" * 2**20)
    (tmp_path / "y.bin").write_bytes(b"\0" * 2**19)
    assert compilation.folder_mib(tmp_path) == pytest.approx(1.5)
    assert compilation.folder_mib(tmp_path / "missing") == 0.0


def test_probe_failure_is_a_clear_error_not_a_hang(tmp_path):
    with pytest.raises(RuntimeError, match="compile probe failed.*non-empty string"):
        compilation.time_compile_in_new_process("", batch_size=1, seq_len=8, cache_dir=tmp_path, timeout_s=120)


def test_fresh_compile_cache_is_removed_when_the_process_exits(tmp_path):
    import subprocess
    import sys
    code = "from helpers.compilation import use_fresh_compile_cache; print(use_fresh_compile_cache())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    path = run.stdout.strip().splitlines()[-1]
    assert path and not os.path.exists(path)
