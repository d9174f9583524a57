"""Shared fixtures. Tests assert behaviour, never speed: CI machines have 2 noisy cores."""

from __future__ import annotations

import os
import sys
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


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
