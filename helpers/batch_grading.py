"""Grade a folder of collected submissions: one command, a grades table, feedback, a summary.

    uv run python -m helpers.batch_grading SUBMISSIONS_FOLDER [--out grading] [--jobs N]

From the course folder (the one with ``solutions/``, ``labs/`` and ``nbgrader_config.py``):

1. :mod:`helpers.submissions` finds every notebook, decides whose and which lab it is,
   repairs what can honestly be repaired, and names what cannot be graded.
2. Each gradable submission is autograded by nbgrader (smoke profile), and its feedback
   written, by one process (:mod:`helpers.grade_runner`) in its **own**
   scratch course with its own gradebook, so any number run in parallel without two
   processes ever writing one SQLite file.  A cell that runs past ``--cell-timeout`` is
   interrupted and scored as an error; a whole submission past ``--timeout`` is stopped.
3. The results go to ``<out>/grades.csv`` (one row per student and lab, with the reason
   for anything unusual), ``<out>/grades_by_cell.csv``, ``<out>/feedback/<student>/<lab>.html``
   (hidden tests and mark schemes removed, see :mod:`helpers.feedback`) and
   ``<out>/autograded/<student>/<lab>.ipynb`` for the instructor.

Where it runs: each submission is a task on Dask distributed (:mod:`helpers.grading_cluster`):
``--jobs N`` local worker processes by default (no set-up), or a cluster with ``--scheduler
tcp://host:8786`` (or a scheduler file, or ``DASK_SCHEDULER_ADDRESS``). Results come back here,
and only this process writes under ``--out``. A worker that dies mid-submission has its task run
again elsewhere; a submission that kills every worker that tries it ends ``failed``, with why.

Resuming: every graded submission leaves a record under ``<out>/.graded`` named by a hash of what
decides its grade (:func:`resume_key`); the same command run again after an interruption keeps
those whose files are unchanged and grades the rest. ``--fresh`` grades everything again.

Regrading: ``--student ID`` grades only that student's files. A run into an ``--out`` that
already holds tables **merges**: its rows replace the rows of the same (student, lab), every
other row is kept, and the regraded submissions' old feedback and notebooks are replaced (or
removed) as their new results arrive.

Exit status: 0 when every gradable submission was graded; 1 when one failed (the kernel died,
a time limit, nbgrader itself) or nothing was found to grade; 2 for a wrong command line.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from .submissions import (Submission, apply_deadline, collect, is_test_cell, read_roster, redefinitions,
                          release_notebooks, repair)

COLUMNS = ["student", "lab", "status", "auto_score", "auto_max", "manual_max", "needs_manual_grading",
           "manual_score", "total", "file", "reason", "figures", "seconds"]  # manual_score, total: helpers.manual_marks
CELL_COLUMNS = ["student", "lab", "grade_id", "score", "max_score", "needs_manual_grade"]


def safe_id(student: str) -> str:
    """A student id nbgrader accepts (letters, digits, '.', '_', '-'); the original stays in the table."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", student).strip("_.") or "student"


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if "ERROR" in ln or "Error" in ln or "error:" in ln]
    return (lines[-1] if lines else log.strip().splitlines()[-1] if log.strip() else "no output")[:300]


def _runner_result(ran: subprocess.CompletedProcess) -> dict:
    """The JSON line helpers.grade_runner prints last, or ``{}`` when it printed none (it crashed)."""
    for line in reversed(ran.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {}


FIGURES_MARK = "Figures (not marks):"


def _kernel_died(log: str) -> bool:
    """Whether nbgrader's log says the kernel running the notebook died."""
    return "DeadKernelError" in log or "kernel died" in log.lower()


def _figures(nb: dict) -> str:
    """What test cells printed after ``Figures (not marks):``: measurements taken in the grader's run
    (lab 10's p95 under load), reported beside the score and never part of it."""
    found = []
    for cell in nb.get("cells", []):
        if not is_test_cell(cell):
            continue
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            if out.get("name") == "stdout" and FIGURES_MARK in text:
                label = cell["metadata"]["nbgrader"].get("grade_id", "?")
                found += [f"{label}: {line.split(FIGURES_MARK, 1)[1].strip()}" for line in text.splitlines() if FIGURES_MARK in line]
    return "; ".join(found)


def _cell_errors(nb: dict) -> list[str]:
    found = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                label = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") or cell.get("id", "?")
                found.append(f"{label} ({out.get('ename', 'Error')})")
                break
    return found


def _env(threads: int, compile_cache: Path | None = None) -> dict:
    """Environment for nbgrader and its kernels: smoke profile, offline, a fixed number of CPU threads.

    ``compile_cache``: one Inductor cache for every submission, kept between runs
    (``helpers.compilation.grading_compile_cache``), so a lab's compiled graphs are built once
    per machine, not once per student or per regrade (a lab that measures a cold compile points
    Inductor at a fresh folder of its own, ``helpers.compilation.use_fresh_compile_cache``).
    """
    env = dict(os.environ, LAB_PROFILE="smoke", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONWARNINGS="ignore", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    if compile_cache is not None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _gradebook_schema_version() -> str:
    """The alembic revision a new nbgrader gradebook is stamped with, read in this process.

    nbgrader finds it by running ``alembic heads`` in a subprocess each time it creates a gradebook
    (about 3 s: a Python start and the imports); the revision is in nbgrader's own migration scripts.
    """
    import nbgrader
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    config = Config()
    config.set_main_option("script_location", str(Path(nbgrader.__file__).parent / "alembic"))
    return ScriptDirectory.from_config(config).get_current_head()


def lab_template(course: Path, work: Path, lab: str) -> Path:
    """A scratch course with ``lab`` generated once (its release and gradebook), copied for every submission.

    Generated in this process with nbgrader's API (the batch grader imports nbgrader anyway), which
    saves starting Python and nbgrader again and the gradebook's ``alembic heads`` subprocess: about
    4 s of every batch run, per lab.
    """
    from unittest import mock

    import nbgrader.api
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader
    template = work / f"template-{lab}"
    shutil.copytree(course / "solutions" / lab, template / "solutions" / lab)
    shutil.copy(course / "nbgrader_config.py", template / "nbgrader_config.py")
    config = PyFileConfigLoader("nbgrader_config.py", path=str(template)).load_config()
    version = _gradebook_schema_version()
    with mock.patch.object(nbgrader.api, "get_alembic_version", lambda: version):
        made = NbGraderAPI(config=config).generate_assignment(lab, force=True, create=True)
    if not made.get("success"):
        raise RuntimeError(f"could not prepare {lab} for grading: {_last_error((made.get('log') or '') + (made.get('error') or ''))}")
    return template


def _scratch_course(template: Path, work: Path, sub: Submission) -> tuple[Path, str]:
    sid = safe_id(sub.student)
    scratch = Path(tempfile.mkdtemp(prefix=f"{sid}-{sub.lab}-", dir=work))
    shutil.copytree(template, scratch, dirs_exist_ok=True)
    target = scratch / "submitted" / sid / sub.lab / f"{sub.lab}.ipynb"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(sub.notebook), encoding="utf-8")
    return scratch, sid


def grade_one(sub: Submission, template: Path | None, work: Path, *, cell_timeout: int, timeout: int,
              threads: int, compile_cache: Path | None = None) -> tuple[dict, list[dict], dict[str, bytes]]:
    """Autograde one submission in a copy of its lab's template, under ``work``.

    Returns its grades-table row, its per-cell rows, and its files for the output folder
    ({``autograded/<id>/<lab>.ipynb``: bytes, ``feedback/<id>/<lab>.html``: bytes}): it writes
    nothing else, so it can run on any machine and the driver alone writes the results.
    """
    start = time.perf_counter()
    row = {"student": sub.student, "lab": sub.lab, "file": str(sub.path.name if sub.path else ""),
           "auto_score": 0.0, "auto_max": "", "manual_max": "", "needs_manual_grading": "", "status": "not graded",
           "reason": "; ".join(sub.notes)}
    if not sub.gradable:
        row["reason"] = "; ".join([sub.problem or "not gradable"] + sub.notes)
        row["seconds"] = 0.0
        return row, [], {}
    if template is None:
        row.update(status="failed", reason="; ".join(["the lab could not be prepared for grading"] + sub.notes),
                   seconds=0.0)
        return row, [], {}
    flagged = redefinitions(sub.notebook)
    env = _env(threads, compile_cache)
    scratch, sid = _scratch_course(template, work, sub)
    notes = list(sub.notes)
    cells: list[dict] = []
    files: dict[str, bytes] = {}
    env["COURSE_GRADER_PID"] = str(os.getpid())  # helpers.grade_runner ends itself if this process dies
    try:
        autograded = scratch / "autograded" / sid / sub.lab / f"{sub.lab}.ipynb"
        for attempt in (1, 2):
            left = timeout - (time.perf_counter() - start)
            try:  # autograde and feedback in one process (helpers.grade_runner), under one time limit
                ran = subprocess.run([sys.executable, "-m", "helpers.grade_runner", sub.lab, sid,
                                      "--cell-timeout", str(int(cell_timeout))], cwd=scratch, env=env, text=True,
                                     capture_output=True, timeout=max(1.0, left))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"grading took longer than {timeout} s and was stopped (a very slow or stuck "
                                   f"notebook; each cell may run {cell_timeout} s)") from None
            result = _runner_result(ran)
            step = result.get("autograde") or {}
            log = ran.stdout + ran.stderr + step.get("log", "") + step.get("error", "")
            if step.get("success") and autograded.is_file() and "failed to autograde" not in log.lower():
                break
            if not _kernel_died(log):
                raise RuntimeError(f"nbgrader could not autograde it: {_last_error(log)}")
            # A kernel can also die for reasons outside the notebook (a port another process took
            # between being chosen and bound, a neighbour's memory spike): grade once more, and
            # blame the notebook only when its kernel dies again.
            elapsed = time.perf_counter() - start
            if attempt == 2 or timeout - elapsed < elapsed:  # no time left for a second try
                raise RuntimeError("the notebook killed its kernel (the Python process running it exited), "
                                   "so no cell after that point could be graded"
                                   + (" (graded twice: it died both times)" if attempt == 2 else ""))
        from nbgrader.api import Gradebook
        with Gradebook(f"sqlite:///{scratch / 'gradebook.db'}") as gb:
            notebook = gb.find_submission(sub.lab, sid).notebooks[0]
            for g in notebook.grades:
                cells.append({"student": sub.student, "lab": sub.lab, "grade_id": g.name,
                              "score": g.auto_score if g.auto_score is not None else "",
                              "max_score": g.max_score, "needs_manual_grade": bool(g.needs_manual_grade)})
        release = json.loads((template / "labs" / sub.lab / f"{sub.lab}.ipynb").read_text(encoding="utf-8"))
        # The release's test cells, so a test cell the student deleted still counts as a test.
        tests = {c["metadata"]["nbgrader"]["grade_id"] for c in release["cells"] if is_test_cell(c)}
        auto = [c for c in cells if c["grade_id"] in tests]
        answers = [c for c in cells if c["grade_id"] not in tests]
        waiting = [c["grade_id"] for c in answers if c["needs_manual_grade"]]
        blank = [c["grade_id"] for c in answers if not c["needs_manual_grade"]]
        row.update(status="graded", auto_score=round(sum(float(c["score"] or 0) for c in auto), 3),
                   auto_max=round(sum(c["max_score"] for c in auto), 3),
                   manual_max=round(sum(c["max_score"] for c in answers), 3), needs_manual_grading=" ".join(waiting))
        if blank:
            notes.append("written answer(s) left as released, scored 0: " + ", ".join(blank))
        graded_nb = json.loads(autograded.read_text(encoding="utf-8"))
        row["figures"] = _figures(graded_nb)
        errors = _cell_errors(graded_nb)
        if errors:
            notes.append("cells that raised an error: " + ", ".join(errors))
        if "Timeout" in log or "timed out" in log.lower():
            notes.append(f"a cell ran past the {cell_timeout} s limit and was interrupted")
        if flagged:
            notes.append("for a person to check: solution code rebinds " + ", ".join(sorted(set(flagged))))
            row["needs_manual_grading"] = (row["needs_manual_grading"] + " redefinitions").strip()
        files[f"autograded/{sid}/{sub.lab}.ipynb"] = autograded.read_bytes()
        fed = result.get("feedback") or {}
        html = scratch / "feedback" / sid / sub.lab / f"{sub.lab}.html"
        if fed.get("success") and html.is_file():
            files[f"feedback/{sid}/{sub.lab}.html"] = html.read_bytes()
        else:
            notes.append(f"feedback could not be generated: {_last_error(fed.get('log', '') + fed.get('error', ''))}")
    except RuntimeError as exc:
        row.update(status="failed", auto_score=0.0)
        notes.insert(0, str(exc))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    row["reason"] = "; ".join(notes)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row, cells, files


def _missing_rows(rows: list[dict], labs: list[str], students: list[str] | None = None) -> list[dict]:
    """A row for every student (of ``rows``, or ``students``: the roster) and lab of the whole batch
    (``labs``) with no submission at all."""
    students = sorted(set(students) if students is not None else {r["student"] for r in rows})
    have = {(r["student"], r["lab"]) for r in rows}
    return [{"student": s, "lab": lab, "status": "missing", "auto_score": 0.0, "auto_max": "", "manual_max": "",
             "needs_manual_grading": "", "file": "", "reason": "no submission for this lab in the folder",
             "seconds": 0.0} for s in students for lab in labs if (s, lab) not in have]


RESUME_DIR = ".graded"  # under --out: one record per submission graded, named by its content hash
GRADER_VERSION = "2"    # part of every resume key: raise it when a change to grading changes grades


def lab_digest(course: Path, lab: str) -> str:
    """A hash of what a lab is graded against: every file of ``solutions/<lab>/`` (the tests, the
    points, the data beside them) and the course's ``nbgrader_config.py``."""
    digest = hashlib.sha256(GRADER_VERSION.encode())
    folder = course / "solutions" / lab
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(folder).parts))
    for path in files + [course / "nbgrader_config.py"]:
        digest.update(str(path.relative_to(course)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def resume_key(sub: Submission, source_digest: str, cell_timeout: int, timeout: int = 900) -> str:
    """What decides a grade, hashed: the lab (:func:`lab_digest`), the submission as repaired, its
    notes (deadline, roster) and the time limits. A run that finds a record under this key keeps
    it instead of grading the same thing again; change any of these and it regrades."""
    text = json.dumps([sub.lab, sub.student, source_digest, cell_timeout, timeout, sub.notes, sub.notebook],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _kept(out: Path, key: str) -> dict | None:
    """The record an earlier run left for ``key``, if the files it wrote are still there unchanged
    (a later grade of another version of the same submission overwrites them)."""
    path = out / RESUME_DIR / f"{key}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
        intact = all(_sha((out / name).read_bytes()) == sha for name, sha in files.items())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    return record if intact else None


def _worth_keeping(row: dict) -> bool:
    """A grade the next run may keep: graded, no cell stopped by the time limit (which a busy
    machine can cause), and its feedback written. Anything else is tried again."""
    reason = row.get("reason", "")
    return row["status"] == "graded" and "limit and was interrupted" not in reason \
        and "feedback could not be generated" not in reason


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _clear(out: Path, sub: Submission) -> None:
    """Remove the feedback and notebook an earlier run wrote for this student and lab."""
    for old in (out / "feedback" / safe_id(sub.student) / f"{sub.lab}.html",
                out / "autograded" / safe_id(sub.student) / f"{sub.lab}.ipynb"):
        old.unlink(missing_ok=True)


def grade_folder(submissions: Path, course: Path, out: Path, *, jobs: int = 1, cell_timeout: int = 120,
                 timeout: int = 900, scheduler: str | None = None, student: str | None = None,
                 roster: list[str] | None = None, deadline: datetime | None = None, fresh: bool = False,
                 progress=print) -> list[dict]:
    """Grade everything under ``submissions`` (or one ``student``'s files); write the tables and
    feedback under ``out``, merged with what an earlier run left there; return this run's rows.

    The grading itself runs as Dask tasks (:mod:`helpers.grading_cluster`): on ``jobs`` local
    worker processes, or on the cluster at ``scheduler``. Only this process writes under ``out``:
    each result's files as it arrives (an earlier run's files for that submission are removed at
    that moment, not before), with a record under ``out/.graded`` keyed by :func:`resume_key`, and
    the tables at the end. An interrupted run, run again, keeps what was graded (unless ``fresh``)
    and grades the rest; the tables keep their earlier rows for what is kept (manual marks included).
    ``roster``: every student of the class, so one who sent nothing at all is listed ``missing`` for
    every lab, and a file from someone not on it is flagged. ``deadline``: late submissions are noted
    (and graded: the penalty is the instructor's call).
    """
    from . import grading_cluster
    course, out = Path(course).resolve(), Path(out).resolve()
    releases = release_notebooks(course)
    subs = [repair(s, releases[s.lab]) if s.gradable else s for s in collect(Path(submissions), releases)]
    if deadline is not None:
        apply_deadline(subs, deadline)
    if roster is not None:
        for sub in subs:
            if sub.student not in roster:
                sub.notes.append(f"'{sub.student}' is not on the roster: check whose file this is")
    students = sorted({s.student for s in subs} | set(roster or []))
    all_labs = sorted({s.lab for s in subs if s.lab != "unknown"})
    if student is not None:
        if student not in students:
            raise LookupError(f"no submission of student {student!r} under {submissions} "
                              f"(students found: {', '.join(students[:10]) or 'none'}"
                              f"{', ...' if len(students) > 10 else ''})")
        subs = [s for s in subs if s.student == student]
    out.mkdir(parents=True, exist_ok=True)
    rows, cells, todo, keys, kept = [], [], [], {}, set()
    digests = {lab: lab_digest(course, lab) for lab in {s.lab for s in subs if s.gradable}}
    gradable = {(s.student, s.lab) for s in subs if s.gradable}
    for sub in subs:
        if not sub.gradable:
            if (sub.student, sub.lab) not in gradable:  # a broken new file: the old grade's feedback must go
                _clear(out, sub)
            rows.append(grade_one(sub, None, out, cell_timeout=cell_timeout, timeout=timeout, threads=1)[0])
            continue
        keys[id(sub)] = key = resume_key(sub, digests[sub.lab], cell_timeout, timeout)
        record = None if fresh else _kept(out, key)
        if record is not None:
            rows.append(record["row"])
            cells += record["cells"]
            kept.add((sub.student, sub.lab))
            continue
        todo.append(sub)
    scheduler = grading_cluster.scheduler_address(scheduler)
    where = f"the Dask cluster at {scheduler}" if scheduler else f"{jobs} local worker process(es)"
    progress(f"{len(subs)} submission(s) found under {submissions}"
             + (f"; {len(kept)} kept from an earlier run into {out} (unchanged)" if kept else "")
             + (f"; grading {len(todo)} on {where}" if todo else "; nothing left to grade"))

    def arrived(sub: Submission, row: dict, cell_rows: list[dict], files: dict[str, bytes]) -> None:
        _clear(out, sub)  # only now: a run that never got this far leaves the earlier grade's files
        for name, data in files.items():
            _write_atomically(out / name, data)
        if _worth_keeping(row):
            record = {"row": row, "cells": cell_rows, "files": {name: _sha(data) for name, data in files.items()}}
            _write_atomically(out / RESUME_DIR / f"{keys[id(sub)]}.json", json.dumps(record).encode())
        rows.append(row)
        cells.extend(cell_rows)
        score = f"{row['auto_score']}/{row['auto_max']}" if row["status"] == "graded" else row["status"]
        progress(f"  {row['student']} / {row['lab']}: {score}" + (f"  ({row['reason']})" if row["reason"] else ""))

    with tempfile.TemporaryDirectory(prefix="batch-grading-") as work:
        templates = {}
        for lab in sorted({s.lab for s in todo}):
            try:
                templates[lab] = grading_cluster.template_blob(lab_template(course, Path(work), lab))
            except RuntimeError as exc:
                progress(f"  {exc}")
        for sub in [s for s in todo if s.lab not in templates]:
            arrived(sub, grade_one(sub, None, Path(work), cell_timeout=cell_timeout, timeout=timeout, threads=1)[0],
                    [], {})
        todo = [s for s in todo if s.lab in templates]
        if todo:
            from dask.system import CPU_COUNT  # the cores this process may use (affinity, cgroup limits)
            threads = None if scheduler else max(1, CPU_COUNT // max(1, jobs))
            options = grading_cluster.Options(cell_timeout=cell_timeout, timeout=timeout, threads=threads)
            with grading_cluster.open_client(scheduler, jobs, progress=progress) as client:
                grading_cluster.run(client, todo, templates, options, arrived)
    if student is None:
        rows += _missing_rows(rows, all_labs, None if roster is None else roster + [r["student"] for r in rows])
    rows.sort(key=lambda r: (r["student"], r["lab"]))
    graded = {(r["student"], r["lab"]): r["status"] for r in rows}
    _merge_csv(out / "grades.csv", COLUMNS, rows, graded, prefer_earlier=kept)
    all_cells = _merge_csv(out / "grades_by_cell.csv", CELL_COLUMNS, cells, graded, prefer_earlier=kept)
    from .manual_marks import write_template  # one row per written answer waiting for a person
    write_template(out, all_cells)
    return rows


def _replaces(earlier: dict, graded: dict) -> bool:
    """Whether this run replaces an earlier row: same (student, lab), unless this run only says
    "missing" (no file in this folder) for a submission an earlier run graded."""
    status = graded.get((earlier["student"], earlier["lab"]))
    return status is not None and status != "missing"


def _merge_csv(path: Path, columns: list[str], rows: list[dict], graded: dict,
               prefer_earlier: set = frozenset()) -> list[dict]:
    """Write ``rows`` to ``path``, keeping every earlier row there whose (student, lab) this run did
    not grade again (``graded``: {(student, lab): this run's status}); return what was written.
    ``prefer_earlier``: (student, lab) whose grade this run kept unchanged: the earlier rows stay
    as they are (with any manual marks typed into them since), when there are any."""
    kept = []
    if path.is_file():
        earlier = read_csv(path)
        if earlier and set(earlier[0]) != set(columns):
            raise RuntimeError(f"{path} has other columns than this grader writes: use a new --out")
        prefer_earlier = {k for k in prefer_earlier if any((r["student"], r["lab"]) == k for r in earlier)}
        kept = [r for r in earlier if not _replaces(r, graded) or (r["student"], r["lab"]) in prefer_earlier]
        rows = [r for r in rows if (r["student"], r["lab"]) not in prefer_earlier]
        known = {(r["student"], r["lab"]) for r in kept}
        rows = [r for r in rows if not (r.get("status") == "missing" and (r["student"], r["lab"]) in known)]
    merged = sorted(kept + rows, key=lambda r: (r["student"], r["lab"]))
    write_csv(path, columns, merged)
    return merged


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV file with a header (a spreadsheet's byte-order mark is ignored)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def summary(rows: list[dict]) -> str:
    """Graded, failed (with reasons), not gradable, missing, and how many wait for a person."""
    by = {k: [r for r in rows if r["status"] == k] for k in ("graded", "failed", "not graded", "missing")}
    manual = [r for r in rows if r["needs_manual_grading"]]
    lines = [f"graded: {len(by['graded'])}, failed: {len(by['failed'])}, not gradable: {len(by['not graded'])}, "
             f"missing: {len(by['missing'])}; waiting for manual grading: {len(manual)}"]
    for r in by["failed"] + by["not graded"]:
        lines.append(f"  {r['status']}: {r['student']} / {r['lab']} ({r['file']}): {r['reason']}")
    return "\n".join(lines)


def _deadline(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--deadline takes a date and time like 2027-01-15T23:59, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.batch_grading", description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", type=Path, help="folder of collected submissions (any layout, see docs)")
    parser.add_argument("--course", type=Path, default=Path.cwd(), help="course folder, the one with nbgrader_config.py (default: here)")
    parser.add_argument("--out", type=Path, default=Path("grading"), help="where tables and feedback go; an earlier run there is merged, not overwritten (default: grading)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="local worker processes, one submission each at a time (default: half the cores); "
                             "not used with --scheduler, where the cluster's workers decide")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="grade on the Dask cluster at ADDRESS (tcp://host:8786, or a scheduler file "
                             "*.json) instead of local workers; default: $DASK_SCHEDULER_ADDRESS if set")
    parser.add_argument("--cell-timeout", type=int, default=120, help="seconds a cell may run before it is stopped (default: 120)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one submission may take in all (default: 900)")
    parser.add_argument("--fresh", action="store_true",
                        help="grade every submission again, even those an earlier run into --out graded unchanged")
    parser.add_argument("--roster", type=Path, default=None,
                        help="CSV of the class (a 'student' column, or the first): lists students who sent "
                             "nothing and flags files from anyone not on it (default: none)")
    parser.add_argument("--deadline", type=_deadline, default=None,
                        help="e.g. 2027-01-15T23:59 (local time) or 2027-01-15T23:59+00:00: notes late "
                             "submissions, from nbgrader's timestamp.txt, the LMS's name or the file's time")
    parser.add_argument("--student", default=None,
                        help="grade only this student's files and merge them into --out: a regrade (default: everyone)")
    args = parser.parse_args(argv)
    if not (args.course / "nbgrader_config.py").is_file():
        parser.error(f"{args.course} is not the course folder (no nbgrader_config.py): pass --course")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.jobs is not None and (args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")):
        parser.error("--jobs starts local workers; with --scheduler (or DASK_SCHEDULER_ADDRESS) the cluster's "
                     "workers grade: leave --jobs out")
    jobs = args.jobs or max(1, (os.cpu_count() or 2) // 2)
    if not args.submissions.is_dir():
        parser.error(f"submissions folder {args.submissions} does not exist")
    start = time.perf_counter()
    try:
        roster = read_roster(args.roster) if args.roster is not None else None
        rows = grade_folder(args.submissions, args.course, args.out, jobs=jobs,
                            cell_timeout=args.cell_timeout, timeout=args.timeout, scheduler=args.scheduler, fresh=args.fresh,
                            student=args.student, roster=roster, deadline=args.deadline)
    except (LookupError, FileNotFoundError, RuntimeError, ValueError, OSError) as exc:
        print(f"batch_grading: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"batch_grading: interrupted. What was graded is kept under {args.out / RESUME_DIR}: run the "
              "same command again to grade the rest.", file=sys.stderr)
        return 130
    print(summary(rows))
    print(f"wrote {args.out / 'grades.csv'}, {args.out / 'grades_by_cell.csv'} and feedback under "
          f"{args.out / 'feedback'} in {time.perf_counter() - start:.0f} s")
    if not any(r["status"] != "missing" for r in rows):
        print(f"batch_grading: error: no submission found under {args.submissions}", file=sys.stderr)
        return 1
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
