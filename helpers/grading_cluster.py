"""The batch grader's per-submission work as tasks on Dask distributed: this machine by default, any cluster by address.

:mod:`helpers.batch_grading` decides *what* to grade and alone writes the tables and files; this
module decides *where*. Each submission is one task, :func:`grade_task`, run on a Dask worker:

* **One machine, no set-up** (the default): a ``LocalCluster`` of ``--jobs`` worker processes,
  one submission at a time each, started and stopped by the grader.
* **A cluster**: ``--scheduler tcp://host:8786`` (or a scheduler file, or Dask's own
  ``DASK_SCHEDULER_ADDRESS``) sends the same run to workers started with ``dask worker``, by
  dask-jobqueue on Slurm/PBS/SGE or by dask-kubernetes. A worker needs the course's environment
  (``uv sync``: the ``helpers`` package, nbgrader, torch), nothing else: the lab's prepared
  scratch course travels to it as bytes, and results come back to the driver as data.

Faults are Dask's to handle, and are reported, never lost: a worker that dies in the middle of a
submission (killed, out of memory) has its task run again on another worker; a submission whose
every try kills its worker ends as ``failed`` after the scheduler's ``allowed-failures`` retries
(``KilledWorker``), with the reason, and the batch goes on.

Why Dask and not Ray: both run a local cluster and connect to a real one by address, and either
would do for tasks this coarse (tens of seconds each, kilobytes in and out). Dask is pure Python
(dask and distributed: 2.5 MB of wheels, against 79 MB for Ray 2.60's one CPython 3.11 Linux
wheel, PyPI, 2026-12-07), and it reaches the clusters universities teach on, Slurm and PBS, through
dask-jobqueue, and Kubernetes through dask-kubernetes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tarfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .submissions import Submission

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"  # Dask's own variable: dask.config's "scheduler-address"


@dataclass(frozen=True)
class Options:
    """How each submission is graded (the same on every worker)."""
    cell_timeout: int
    timeout: int
    threads: int | None  # CPU threads per submission; None: the worker's cores over its task slots


# --- the driver's side ----------------------------------------------------------------------------

def scheduler_address(given: str | None) -> str | None:
    """``--scheduler`` if given, else Dask's ``DASK_SCHEDULER_ADDRESS``; None: a local cluster."""
    import dask
    return given or dask.config.get("scheduler-address", None) or None


@contextlib.contextmanager
def open_client(scheduler: str | None, jobs: int) -> Iterator:
    """A Dask client: to ``scheduler`` (``tcp://host:port``, or a scheduler file ``*.json``), or to a
    local cluster of ``jobs`` worker processes, one task slot each, closed on exit.

    A local cluster queues tasks on its scheduler (``worker-saturation`` 1.0), so a worker holds only
    the submission it runs: when one dies, no other submission is counted against it.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        path = Path(scheduler)
        try:
            client = Client(scheduler_file=str(path), timeout="30s") if scheduler.endswith(".json") \
                else Client(scheduler, timeout="30s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise RuntimeError(f"could not reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}), \
            LocalCluster(n_workers=max(1, jobs), threads_per_worker=1, processes=True, dashboard_address=":0",
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def template_blob(template: Path) -> bytes:
    """A lab's prepared scratch course (release, gradebook, config) as a gzipped tar, for the workers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(template, arcname=".")
    return buffer.getvalue()


def run(client, subs: list[Submission], templates: dict[str, bytes], options: Options,
        on_result: Callable[[Submission, dict, list[dict], dict[str, bytes]], None]) -> None:
    """Grade ``subs`` as Dask tasks; call ``on_result(sub, row, cells, files)`` in the driver as each ends.

    ``templates``: {lab: :func:`template_blob`}, sent once to the cluster. A task that failed
    (every worker that tried it died, or the task itself raised) still calls ``on_result``, with a
    ``failed`` row and its reason: nothing submitted is dropped.
    """
    from distributed import KilledWorker, as_completed

    if not subs:
        return
    # Each template is a task holding its bytes, not scattered data: a task's result that is lost
    # with a worker is made again from its spec, where scattered data would be gone for good.
    shared = {lab: client.submit(bytes, blob, key=f"template-{lab}-{hashlib.sha256(blob).hexdigest()[:12]}")
              for lab, blob in templates.items()}
    futures = {}
    for sub in subs:
        key = f"grade-{sub.lab}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', sub.student)}-{uuid.uuid4().hex[:8]}"
        futures[client.submit(grade_task, sub, shared.get(sub.lab), options, key=key, pure=False)] = sub
    for future in as_completed(futures):
        sub = futures.pop(future)
        try:
            row, cells, files = future.result()
        except KilledWorker as exc:
            on_result(sub, _failed(sub, f"every worker that graded it died ({exc.allowed_failures + 1} tries, the "
                                        "last on " f"{exc.last_worker.address}): the notebook may end or exhaust "
                                        "the process running it; not tried again"), [], {})
        except Exception as exc:  # noqa: BLE001 - a bug in the grader must not lose the other submissions
            on_result(sub, _failed(sub, f"the grading task raised {type(exc).__name__}: {exc}"), [], {})
        else:
            on_result(sub, row, cells, files)
        future.release()


def _failed(sub: Submission, reason: str) -> dict:
    return {"student": sub.student, "lab": sub.lab, "file": str(sub.path.name if sub.path else ""),
            "status": "failed", "auto_score": 0.0, "auto_max": "", "manual_max": "", "needs_manual_grading": "",
            "reason": "; ".join([reason] + list(sub.notes)), "seconds": 0.0}


# --- a worker's side ------------------------------------------------------------------------------

_LOCK = threading.Lock()
_PREPARED: dict[str, Path] = {}


def _worker_folder() -> Path:
    """This worker's own scratch folder (Dask removes it when the worker closes)."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):  # not on a Dask worker: a plain call, e.g. from a test
        import tempfile
        return Path(tempfile.mkdtemp(prefix="course-grading-"))
    return Path(worker.local_directory)


def _prepared(key: str, make: Callable[[Path], None]) -> Path:
    """A folder under this worker's scratch made once per process (tasks may share a worker's threads)."""
    with _LOCK:
        if key not in _PREPARED:
            folder = _worker_folder() / key
            if not folder.is_dir():
                partial = folder.with_name(folder.name + ".partial")
                partial.mkdir(parents=True, exist_ok=True)
                make(partial)
                partial.rename(folder)
            _PREPARED[key] = folder
        return _PREPARED[key]


def _template(lab: str, blob: bytes) -> Path:
    def unpack(into: Path) -> None:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            try:
                tar.extractall(into, filter="data")  # plain files and folders under `into`, nothing else
            except TypeError:  # a Python before the extraction filters (3.10.11, 3.11.3 and older)
                tar.extractall(into)
    return _prepared(f"template-{lab}-{hashlib.sha256(blob).hexdigest()[:12]}", unpack)


def _compile_cache() -> Path:
    """This machine's grading Inductor cache, its CPU check seeded once per worker process."""
    from .compilation import grading_compile_cache, seed_cpu_check
    with _LOCK:
        if "compile-cache" not in _PREPARED:
            if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
                cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
            else:
                cache = grading_compile_cache()
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                except OSError:  # no writable course cache on this machine: one for this worker only
                    cache = _worker_folder() / "inductor-cache"
                    cache.mkdir(parents=True, exist_ok=True)
                seed_cpu_check(cache)
            _PREPARED["compile-cache"] = cache
        return _PREPARED["compile-cache"]


def _threads(options: Options) -> int:
    if options.threads:
        return options.threads
    try:
        from distributed import get_worker
        slots = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        slots = 1
    return max(1, (os.cpu_count() or 1) // max(1, slots))


def grade_task(sub: Submission, blob: bytes | None, options: Options) -> tuple[dict, list[dict], dict[str, bytes]]:
    """One submission, graded on the worker this runs on: its row, per-cell rows and files (see
    :func:`helpers.batch_grading.grade_one`). Writes nothing outside this worker's scratch folder."""
    from .batch_grading import grade_one
    template = _template(sub.lab, blob) if blob is not None else None
    work = _worker_folder() / "scratch"
    work.mkdir(parents=True, exist_ok=True)
    return grade_one(sub, template, work, cell_timeout=options.cell_timeout, timeout=options.timeout,
                     threads=_threads(options), compile_cache=_compile_cache())
