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


FAKE_CHECK = (
    "import json, os, pathlib\n"
    "root = pathlib.Path(os.environ['TORCHINDUCTOR_CACHE_DIR'])\n"
    "(root / 'ab').mkdir(exist_ok=True)\n"
    "(root / 'ab' / 'probe.so.load_ok').write_text('')\n"
    "print(json.dumps({'isas': ['avx2'], 'seconds': 1.5}))\n"
)


def test_cpu_check_runs_once_per_machine_and_is_copied_into_each_fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "course-cache"))
    monkeypatch.setattr(compilation, "_CPU_CHECK_PROGRAM", FAKE_CHECK)
    first = compilation.seed_cpu_check(tmp_path / "one")
    assert first.ran_now and first.isas == ("avx2",) and first.seconds == 1.5
    assert (tmp_path / "one" / "ab" / "probe.so.load_ok").is_file(), "the check's result is copied in"
    assert not (tmp_path / "one" / compilation.CPU_CHECK_MARKER).exists(), "the course's marker stays behind"
    monkeypatch.setattr(compilation, "_CPU_CHECK_PROGRAM", "raise SystemExit('must not run again')")
    second = compilation.seed_cpu_check(tmp_path / "two")
    assert not second.ran_now and second.seconds == 1.5 and "ran once earlier" in second.describe()
    assert (tmp_path / "two" / "ab" / "probe.so.load_ok").is_file()


def test_a_cpu_check_that_cannot_run_says_why_and_copies_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "course-cache"))
    monkeypatch.setattr(compilation, "_CPU_CHECK_PROGRAM", "import sys; sys.exit('no C++ compiler here')")
    check = compilation.seed_cpu_check(tmp_path / "fresh")
    assert check.folder is None and "exit code 1" in check.reason and "no C++ compiler" in check.reason
    assert "could not run ahead" in check.describe()
    assert not (tmp_path / "fresh").exists()
    assert not (compilation.cpu_check_root() / compilation.CPU_CHECK_MARKER).exists(), "a failed check is not kept"


def test_inductor_finds_the_seeded_check_and_builds_nothing(tmp_path):
    """The real check: after seeding, Inductor's own check in a new process adds no file to the cache."""
    import subprocess
    import sys
    check = compilation.seed_cpu_check(tmp_path)
    if check.folder is None:
        pytest.skip(check.describe())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.suffix in (".so", ".cpp", ".load_ok"))
    code = "from torch._inductor import cpu_vec_isa; print([str(i) for i in cpu_vec_isa.valid_vec_isa_list()])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, **{compilation.CACHE_ENV: str(tmp_path)}))
    assert run.returncode == 0, run.stderr[-2000:]
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.suffix in (".so", ".cpp", ".load_ok"))
    assert before and after == before, "Inductor built its probes again: the seed did not match its keys"
    assert run.stdout.strip().splitlines()[-1] == str(list(check.isas))
