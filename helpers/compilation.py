"""torch.compile facts a lab measures: a cold compile cache, and a second start in a fresh process.

Inductor (torch.compile's default backend) caches what it generates on disk, in
``$TORCHINDUCTOR_CACHE_DIR`` (default: a ``torchinductor_<user>`` folder in the temp dir).
A compile time measured against a cache left over from an earlier run is not a first
start.  :func:`use_fresh_compile_cache` points Inductor at an empty folder so the lab's
first compile is honestly cold; :func:`time_compile_in_new_process` then measures what a
*second start* costs (a new Python process, same cache): what a restarted server pays.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_fresh_compile_cache(prefix: str = "course-inductor-cache-") -> Path:
    """Point Inductor's on-disk cache at a new empty folder (for this process and its children).

    The folder is removed when this process exits.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ[CACHE_ENV] = str(path)
    return path


def folder_mib(path: str | os.PathLike) -> float:
    """Total size of the files under ``path`` in MiB (0 if it does not exist)."""
    root = Path(path)
    if not root.exists():
        return 0.0
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20


def time_compile_in_new_process(model_name: str, *, batch_size: int, seq_len: int,
                                cache_dir: str | os.PathLike | None = None, threads: int | None = None,
                                timeout_s: float = 600) -> dict:
    """Start a new Python process that loads ``model_name``, compiles it and runs it once.

    Returns the probe's own timings (``startup_s``: interpreter and imports, ``load_s``,
    ``first_call_s``: compile plus the first forward, ``steady_ms``) and ``process_s``, process
    start to exit as seen from here.  ``cache_dir`` is the Inductor cache the new process uses (default: this process's).
    """
    env = dict(os.environ)
    if cache_dir is not None:
        env[CACHE_ENV] = str(cache_dir)
    args = [sys.executable, "-m", "helpers.compile_probe", "--model", model_name,
            "--batch-size", str(batch_size), "--seq-len", str(seq_len)]
    if threads is not None:
        args += ["--threads", str(threads)]
    start = time.perf_counter()
    env["COURSE_PROBE_SPAWNED_AT"] = repr(time.time())
    try:
        run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the compile probe did not finish within {timeout_s:.0f} s") from None
    elapsed = time.perf_counter() - start
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or not lines:
        tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
        raise RuntimeError("the compile probe failed (exit code %d): %s" % (run.returncode, " | ".join(tail)))
    result = json.loads(lines[-1])
    result["process_s"] = elapsed
    return result
