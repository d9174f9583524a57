"""Shared fixtures. Tests assert behaviour, never speed: CI machines have 2 noisy cores."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LABS = sorted(p.name for p in (REPO / "solutions").iterdir() if (p / f"{p.name}.ipynb").is_file())
# For a focused run while writing a lab: COURSE_LABS=06_onnx_runtime,07_deployment uv run pytest ...
# (CI never sets it; the test that every lab has a release then checks only those labs.)
if os.environ.get("COURSE_LABS"):
    LABS = [lab for lab in LABS if lab in os.environ["COURSE_LABS"].split(",")]

# Decide "offline" at once in tests instead of probing the network in every test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def venv_env(**extra: str) -> dict:
    """Environment for subprocesses: the running interpreter's bin/ first (nbgrader calls `alembic`)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def minilm():
    """The trained fallback encoder (from the PyPI package), loaded once per test session."""
    import helpers
    return helpers.load_encoder(helpers.FALLBACK_MODEL, verbose=False)


# --- what each lab costs: recorded by the notebook tests, printed at the end of the run ------------

RUN_ID_ENV = "COURSE_TEST_RUN_ID"


def pytest_configure(config):
    os.environ.setdefault(RUN_ID_ENV, uuid.uuid4().hex[:12])  # the controller's; xdist workers inherit it


def _costs_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"course-test-costs-{os.environ[RUN_ID_ENV]}"


def record_cost(lab: str, figures: dict) -> None:
    """Note seconds spent on ``lab`` (any worker process); the run's last lines show them as a table."""
    folder = _costs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{lab}.{os.getpid()}.json"  # one file per process: two workers never write one file
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(json.dumps({**old, **figures}), encoding="utf-8")


def bytecode_is_compiled() -> bool:
    """False where Python may not write .pyc files and the installed torch has none (see README, Set-up)."""
    import importlib.util

    import torch
    return not sys.dont_write_bytecode or Path(importlib.util.cache_from_source(torch.__file__)).is_file()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):
        return  # a worker: the controller prints the table
    if not bytecode_is_compiled():
        terminalreporter.write_line(
            "NOTE: PYTHONDONTWRITEBYTECODE is set and torch has no .pyc files: every kernel, grader and probe "
            "recompiles torch's and transformers' sources (~6 s each). Install with `uv sync --locked --compile-bytecode`.")
    folder = _costs_dir()
    rows: dict[str, dict] = {}
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        rows.setdefault(p.name.split(".")[0], {}).update(json.loads(p.read_text(encoding="utf-8")))
    rows = dict(sorted(rows.items()))
    if not rows:
        return
    columns = sorted({c for figures in rows.values() for c in figures})
    width = max(len(lab) for lab in rows)
    terminalreporter.section("cost per lab (seconds, this run; smoke profile, 1 thread, 2 labs at a time)")
    terminalreporter.write_line(" | ".join([f"{'lab':<{width}}"] + columns))
    for lab, figures in rows.items():
        terminalreporter.write_line(" | ".join([f"{lab:<{width}}"] + [f"{figures.get(c, ''):>{len(c)}}" for c in columns]))
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Run the whole-notebook tests first (two workers then finish the quick tests in their
    shadow), and skip the GPU tests with a reason where there is no CUDA GPU."""
    items.sort(key=lambda item: item.get_closest_marker("notebook") is None)
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
