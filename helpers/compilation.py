"""torch.compile facts a lab measures: a cold compile cache, and a second start in a fresh process.

Inductor (torch.compile's default backend) caches what it generates on disk, in
``$TORCHINDUCTOR_CACHE_DIR`` (default: a ``torchinductor_<user>`` folder in the temp dir).
A compile time measured against a cache left over from an earlier run is not a first
start.  :func:`use_fresh_compile_cache` points Inductor at an empty folder so the lab's
first compile is honestly cold; :func:`time_compile_in_new_process` then measures what a
*second start* costs (a new Python process, same cache): what a restarted server pays.

Before its first CPU compile in a cache folder, Inductor checks which vector instruction sets
(AVX2, AVX-512, VNNI, ...) this CPU and compiler can use: it builds a tiny library for each and
loads it in a child process, about 10 s on the course's 2-core boxes, and keeps the result in
that folder.  That check is a fact of the machine, not of the model, so :func:`seed_cpu_check`
runs it once per machine and torch version (in ``cpu_check_root()``) and copies its result into
each fresh folder: a "cold" compile then measures compiling the model.
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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
CPU_CHECK_MARKER = "course-cpu-check.json"
# Run in a child so the caller's process imports nothing of Inductor before it compiles.
_CPU_CHECK_PROGRAM = (
    "import json, time\n"
    "from torch._inductor import cpu_vec_isa\n"
    "start = time.perf_counter()\n"
    "isas = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]\n"
    "print(json.dumps({'isas': isas, 'seconds': time.perf_counter() - start}))\n"
)


@dataclass(frozen=True)
class CpuCheck:
    """Inductor's check of this CPU's vector instruction sets, as :func:`seed_cpu_check` found it."""

    isas: tuple[str, ...]   # the instruction sets Inductor can generate code for here, best first
    seconds: float          # what the check took when it ran (once per machine and torch version)
    ran_now: bool           # True: it ran in this call; False: an earlier run's result was copied
    folder: Path | None     # where the machine's result is kept (None: the check could not run)
    reason: str = ""        # why it could not run, when it could not

    def describe(self) -> str:
        if self.folder is None:
            return f"Inductor's CPU check could not run ahead ({self.reason}); the first compile includes it"
        when = "ran now" if self.ran_now else "ran once earlier on this machine"
        return (f"Inductor's check of this CPU's vector instructions ({', '.join(self.isas) or 'none usable'}): "
                f"{self.seconds:.1f} s, {when}; its result is copied into the fresh cache, so the cold "
                "compile below measures compiling the model, not checking the machine")


def _per_torch_version(name: str) -> Path:
    """``<course cache>/<name>/torch-<version>``: compiled artefacts are valid for one torch version."""
    from helpers.weights import cache_root
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return cache_root() / name / f"torch-{version}"


def cpu_check_root() -> Path:
    """Where the machine's CPU check is kept: the course's cache folder, per torch version."""
    return _per_torch_version("inductor-cpu-check")


def grading_compile_cache() -> Path:
    """The Inductor cache the batch grader keeps between runs, per torch version.

    Grading measures nothing, so a warm cache changes no grade; it only spares every regrade
    and every later batch the cold compiles of labs 03, 04 and 07.  Inductor's keys (graph,
    shapes, torch version, thread count, CPU instruction set) decide what is reused.
    """
    return _per_torch_version("grading-inductor-cache")


def seed_cpu_check(cache_dir: str | os.PathLike, *, timeout_s: float = 300) -> CpuCheck:
    """Copy Inductor's once-per-machine CPU check into ``cache_dir``, running it first if needed.

    Safe to call from several processes at once (Inductor locks each probe; the marker is
    written atomically).  A result that no longer matches (another compiler, say) is harmless:
    Inductor's keys would not find it and it would check again by itself.  If the check cannot
    run here (no C++ compiler), nothing is copied and the reason is returned.
    """
    root = cpu_check_root()
    marker = root / CPU_CHECK_MARKER
    ran_now = False
    if not marker.is_file():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return CpuCheck((), 0.0, False, None, f"cannot create {root}: {exc.strerror or exc}")
        env = dict(os.environ, **{CACHE_ENV: str(root)})
        try:
            run = subprocess.run([sys.executable, "-c", _CPU_CHECK_PROGRAM], env=env, capture_output=True,
                                 text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return CpuCheck((), 0.0, False, None, f"it did not finish within {timeout_s:.0f} s")
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        if run.returncode != 0 or not lines:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            return CpuCheck((), 0.0, False, None, f"exit code {run.returncode}: {tail[0]}")
        partial = marker.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(lines[-1] + "\n")
        os.replace(partial, marker)
        ran_now = True
    try:
        found = json.loads(marker.read_text())
        shutil.copytree(root, cache_dir, dirs_exist_ok=True,
                        ignore=lambda folder, names: [n for n in names if n == CPU_CHECK_MARKER or n.endswith(".tmp")])
    except (OSError, ValueError, KeyError) as exc:
        return CpuCheck((), 0.0, False, None, f"cannot use the kept result in {root}: {exc}")
    return CpuCheck(tuple(found["isas"]), float(found["seconds"]), ran_now, root)


def use_fresh_compile_cache(prefix: str = "course-inductor-cache-") -> Path:
    """Point Inductor's on-disk cache at a new empty folder (for this process and its children).

    The folder is removed when this process exits.  Follow with :func:`seed_cpu_check` so the
    first compile there does not also pay for checking the machine.
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
