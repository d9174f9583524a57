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
import json
import logging
import os
import re
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .submissions import Submission



NO_WORKER_LIMIT_S = 300  # a cluster with no worker this long, while submissions wait, ends the run
POLL_S = 0.5  # how often the driver looks for ended tasks and for workers


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


def _address(scheduler: str) -> str:
    """The address in ``scheduler``: itself (``tcp://host:8786``), or what a scheduler file names."""
    path = Path(scheduler)
    if path.suffix == ".json" or path.is_file():
        try:
            address = json.loads(path.read_text(encoding="utf-8")).get("address")
        except FileNotFoundError:
            raise RuntimeError(f"--scheduler {scheduler}: no scheduler file there") from None
        except (OSError, ValueError, AttributeError) as exc:
            raise RuntimeError(f"--scheduler {scheduler}: not a Dask scheduler file ({exc})") from None
        if not isinstance(address, str) or not address:
            raise RuntimeError(f"--scheduler {scheduler}: the scheduler file names no address")
        return address
    if "://" not in scheduler:
        raise RuntimeError(f"--scheduler {scheduler!r} is neither a scheduler file nor an address like "
                           "tcp://host:8786")
    return scheduler


@contextlib.contextmanager
def open_client(scheduler: str | None, jobs: int, progress: Callable[[str], None] = print,
                wait_for_workers_s: float = 120) -> Iterator:
    """A Dask client: to ``scheduler`` (``tcp://host:port``, or a scheduler file), or to a local
    cluster of ``jobs`` worker processes, one task slot each; closed on exit. A cluster that has no
    worker after ``wait_for_workers_s`` is an error, not a silent wait."""
    from distributed import Client, LocalCluster
    from distributed import TimeoutError as DaskTimeout

    if not scheduler:
        with LocalCluster(n_workers=max(1, jobs), threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
        return
    address = _address(scheduler)
    try:
        client = Client(address, timeout="30s")
    except Exception as exc:  # noqa: BLE001 - OSError, timeouts (asyncio's on 3.10), a version mismatch
        raise RuntimeError(f"could not reach the Dask scheduler at {address}: {type(exc).__name__}: {exc}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=wait_for_workers_s)
        except (TimeoutError, DaskTimeout):  # the same class from Python 3.11 on, asyncio's before
            raise RuntimeError(f"the Dask scheduler at {address} has had no worker for {wait_for_workers_s:.0f} s: "
                               "start some (dask worker ...)") from None
        slots = sum(client.nthreads().values())
        progress(f"  the Dask cluster at {address}: {len(client.nthreads())} worker(s), {slots} task slot(s)")
        yield client


def template_blob(template: Path) -> bytes:
    """A lab's prepared scratch course (release, gradebook, config) as a gzipped tar, for the workers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(template, arcname=".")
    return buffer.getvalue()


def run(client, subs: list[Submission], templates: dict[str, bytes], options: Options,
        on_result: Callable[[Submission, dict, list[dict], dict[str, bytes]], None],
        no_worker_s: float = NO_WORKER_LIMIT_S) -> None:
    """Grade ``subs`` as Dask tasks; call ``on_result(sub, row, cells, files)`` in the driver as each ends.

    At most as many tasks as the cluster has task slots are out at a time, the next sent as one
    ends: a worker then holds only the submission it runs, so when it dies (killed, out of memory)
    only that submission is counted against it, and one that kills its worker every time cannot take
    the others down with it. Each task carries its lab's template (:func:`template_blob`, tens of
    KB) and depends on nothing. A task that failed (every worker that tried it died, or the task
    itself raised) still calls ``on_result``, with a ``failed`` row and its reason. Losing the
    scheduler is an error for the whole run (what was graded is kept for the next one), and so is a
    cluster left with no worker for ``no_worker_s`` seconds (every worker gone and none restarted):
    the tasks would wait for one for ever.
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed

    waiting = list(reversed(subs))
    futures: dict = {}

    def send() -> None:
        sub = waiting.pop()
        key = f"grade-{sub.lab}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', sub.student)}-{uuid.uuid4().hex[:8]}"
        future = client.submit(grade_task, sub, templates.get(sub.lab), options, key=key, pure=False)
        futures[future] = sub
        return future

    slots = max(1, sum(client.nthreads().values()))
    running = as_completed([send() for _ in range(min(slots, len(waiting)))])
    seen_worker = time.monotonic()
    while not running.is_empty():
        if not running.has_ready():  # nothing ended yet: is anyone still there to run the tasks?
            if _has_workers(client):
                seen_worker = time.monotonic()
            elif time.monotonic() - seen_worker > no_worker_s:
                raise RuntimeError(f"the Dask cluster has had no worker for {no_worker_s:.0f} s with {len(futures)} "
                                   "submission(s) waiting: start workers (dask worker ...) and run the same command "
                                   "again: what was graded is kept")
            time.sleep(POLL_S)
            continue
        future = next(running)
        sub = futures.pop(future)
        try:
            row, cells, files = future.result()
        except KilledWorker as exc:
            on_result(sub, _failed(sub, f"every worker that graded it died ({exc.allowed_failures + 1} tries, the "
                                        "last on " f"{exc.last_worker.address}): the notebook may end or exhaust "
                                        "the process running it; not tried again"), [], {})
        except CancelledError:
            raise RuntimeError("lost the Dask scheduler (or it cancelled the work) in the middle of the run; "
                               "run the same command again: what was graded is kept") from None
        except Exception as exc:  # noqa: BLE001 - a bug in the grader must not lose the other submissions
            on_result(sub, _failed(sub, f"the grading task raised {type(exc).__name__}: {exc}"), [], {})
        else:
            on_result(sub, row, cells, files)
        future.release()
        slots = max(1, sum(client.nthreads().values()))  # a cluster may grow or shrink as it runs
        while waiting and len(futures) < slots:
            running.add(send())


def _has_workers(client) -> bool:
    """Whether the scheduler has a worker now; False while it cannot be asked. A lost scheduler
    ends the run when Dask cancels the tasks (2 s in trials on localhost; over a minute in one run
    under load), else through the no-worker limit of :func:`run`."""
    try:
        return bool(client.nthreads())
    except Exception:  # noqa: BLE001 - OSError (CommClosedError), timeouts: the connection is down
        return False


def _failed(sub: Submission, reason: str) -> dict:
    return {"student": sub.student, "lab": sub.lab, "file": str(sub.path.name if sub.path else ""),
            "status": "failed", "auto_score": 0.0, "auto_max": "", "manual_max": "", "needs_manual_grading": "",
            "reason": "; ".join([reason] + list(sub.notes)), "seconds": 0.0}


# --- a worker's side ------------------------------------------------------------------------------

_LOCK = threading.Lock()
_PREPARED: dict[str, Path] = {}


_TEMPLATES_KEPT = 24  # a long-lived worker keeps this many unpacked templates, the oldest removed first


def _worker_folder() -> Path:
    """This worker's own scratch folder (Dask removes it when the worker closes); outside a worker
    (a plain call, e.g. from a test), one temporary folder for this process, removed at its exit."""
    try:
        from distributed import get_worker
        return Path(get_worker().local_directory)
    except (ImportError, ValueError):
        if "folder" not in _PREPARED:
            import atexit
            import shutil
            import tempfile
            _PREPARED["folder"] = Path(tempfile.mkdtemp(prefix="course-grading-"))
            atexit.register(shutil.rmtree, _PREPARED["folder"], True)
        return _PREPARED["folder"]


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
            templates = [k for k in _PREPARED if k.startswith("template-")]
            for old in templates[:-_TEMPLATES_KEPT]:  # a run's templates differ from the last run's
                import shutil
                shutil.rmtree(_PREPARED.pop(old), ignore_errors=True)
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
    from dask.system import CPU_COUNT  # the cores this process may use (affinity, cgroup limits)
    return max(1, CPU_COUNT // max(1, slots))


def grade_task(sub: Submission, blob: bytes | None, options: Options) -> tuple[dict, list[dict], dict[str, bytes]]:
    """One submission, graded on the worker this runs on: its row, per-cell rows and files (see
    :func:`helpers.batch_grading.grade_one`). Writes nothing outside this worker's scratch folder."""
    from .batch_grading import grade_one
    template = _template(sub.lab, blob) if blob is not None else None
    work = _worker_folder() / "scratch"
    work.mkdir(parents=True, exist_ok=True)
    return grade_one(sub, template, work, cell_timeout=options.cell_timeout, timeout=options.timeout,
                     threads=_threads(options), compile_cache=_compile_cache())
