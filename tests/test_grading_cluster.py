"""The batch grader on Dask distributed: a real scheduler and two workers on localhost, faults included.

The cluster is the one an instructor would start by hand (``dask scheduler``, ``dask worker``
with their nannies), here on localhost and on the two-second stand-in lab
(``tests/fixture_course``). The faults are real: a worker process killed with SIGKILL in the
middle of a submission, a submission whose notebook kills every worker that grades it, a driver
interrupted with Ctrl-C and run again.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from bad_submissions import FIXTURE_LAB, correct_submission
from conftest import REPO, venv_env
from helpers import batch_grading
from notebook_tools import source
from test_batch_grading import fixture_course  # noqa: F401 - the stand-in course, releases generated

ALLOWED_FAILURES = 1  # the scheduler gives up on a task after its worker died twice


def _write(root: Path, student: str, nb: dict) -> None:
    (root / student).mkdir(parents=True, exist_ok=True)
    (root / student / f"{FIXTURE_LAB}.ipynb").write_text(json.dumps(nb), encoding="utf-8")


def _kills_its_worker(nb: dict) -> dict:
    """A submission whose first exercise ends the process grading it: the kernel's parent is
    helpers.grade_runner, whose parent is the Dask worker (as an out-of-memory kill would)."""
    bad = copy.deepcopy(nb)
    cell = next(c for c in bad["cells"] if c["id"] == "ex11-tokenize")
    cell["source"] = ("import os, signal, psutil\n"
                      "os.kill(psutil.Process(os.getppid()).ppid(), signal.SIGKILL)\n" + source(cell))
    return bad


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker`` processes (each with its nanny, which restarts a
    worker that dies), one task slot each; yields the scheduler file and the nannies' processes."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    dask = str(Path(sys.executable).parent / "dask")
    env = venv_env(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=str(ALLOWED_FAILURES))
    logs = [open(folder / f"{name}.log", "w") for name in ("scheduler", "worker1", "worker2")]
    procs = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard"], stdout=logs[0], stderr=subprocess.STDOUT, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file():
            assert time.monotonic() < deadline and procs[0].poll() is None, (folder / "scheduler.log").read_text()
            time.sleep(0.2)
        for i in (1, 2):
            procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                           "--name", f"w{i}", "--no-dashboard", "--host", "127.0.0.1",
                                           "--local-directory", str(folder / f"w{i}")],
                                          stdout=logs[i], stderr=subprocess.STDOUT, env=env))
        from distributed import Client
        with Client(scheduler_file=str(scheduler_file), timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        yield scheduler_file, procs[1:]
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def _grading_runners(nannies) -> list[tuple[psutil.Process, psutil.Process]]:
    """(worker, helpers.grade_runner) pairs: the workers under our nannies that are grading right now."""
    found = []
    for nanny in nannies:
        for worker in psutil.Process(nanny.pid).children():
            for child in worker.children():
                try:
                    if "helpers.grade_runner" in " ".join(child.cmdline()):
                        found.append((worker, child))
                except psutil.NoSuchProcess:
                    continue
    return found


def _has_kernel(runner: psutil.Process) -> bool:
    try:
        return bool(runner.children())
    except psutil.Error:
        return False


def _cwd(proc: psutil.Process) -> str:
    try:
        return Path(proc.cwd()).name  # a submission's scratch course: <student>-<lab>-<random>
    except psutil.Error:
        return ""


@pytest.mark.notebook
def test_a_worker_killed_mid_submission_loses_no_grade_and_duplicates_none(cluster, fixture_course, tmp_path):
    scheduler_file, nannies = cluster
    root, out = tmp_path / "collected", tmp_path / "out"
    good = correct_submission(FIXTURE_LAB, fixture_course)
    students = ["ann", "ben", "cy", "slow"]
    for student in students[:-1]:
        _write(root, student, good)
    slow = copy.deepcopy(good)  # the one whose worker is killed: orphaned, it would grade on for seconds
    cell = next(c for c in slow["cells"] if c["id"] == "ex12-variants")
    cell["source"] = "import time\ntime.sleep(8)\n" + source(cell)
    _write(root, "slow", slow)
    lines: list[str] = []
    result: dict = {}

    def drive():
        try:
            result["rows"] = batch_grading.grade_folder(root, fixture_course, out, scheduler=str(scheduler_file),
                                                        cell_timeout=20, progress=lines.append)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    driver = threading.Thread(target=drive, daemon=True)  # a driver that never ends must not keep pytest from exiting
    driver.start()
    victim = runner = None
    deadline = time.monotonic() + 120
    while victim is None and driver.is_alive() and time.monotonic() < deadline:
        busy = [(w, r) for w, r in _grading_runners(nannies) if _cwd(r).startswith(f"slow-{FIXTURE_LAB}-")]
        if busy and _has_kernel(busy[0][1]):
            victim, runner = busy[0]
            time.sleep(1.5)  # into the slow cell, where the grading process writes nothing
            os.kill(victim.pid, signal.SIGKILL)  # the worker, in the middle of a submission
            try:  # orphaned, it would run its 8 s cell to the end; it must end with its worker
                runner.wait(timeout=3)
                orphaned = False
            except psutil.TimeoutExpired:
                orphaned = True
        time.sleep(0.05)
    driver.join(timeout=300)
    assert not driver.is_alive(), "the batch did not finish after a worker was killed"
    assert "error" not in result, result.get("error")
    assert victim is not None, "no worker was seen grading: nothing was killed"
    assert not orphaned, "the killed worker's grading process went on grading for nobody (it must end with its worker)"
    rows = batch_grading.read_csv(out / "grades.csv")
    assert sorted(r["student"] for r in rows) == students, "every submission has exactly one row"
    assert all(r["status"] == "graded" and float(r["auto_score"]) == 2.0 for r in rows), [(r["student"], r["status"], r["reason"]) for r in rows]
    assert len(list((out / ".graded").glob("*.json"))) == len(students)
    cells = batch_grading.read_csv(out / "grades_by_cell.csv")
    assert len(cells) == len({(c["student"], c["grade_id"]) for c in cells}), "a per-cell row written twice"


@pytest.mark.notebook
def test_a_submission_that_kills_every_worker_fails_with_its_reason_and_the_batch_finishes(
        cluster, fixture_course, tmp_path):
    scheduler_file, _ = cluster
    root, out = tmp_path / "collected", tmp_path / "out"
    good = correct_submission(FIXTURE_LAB, fixture_course)
    # Graded beside it, after it (files are taken in name order): a dead worker must not be counted
    # against a submission that was only waiting on it.
    others = ["ann", "ben", "cy", "dee"]
    for student in others:
        _write(root, student, good)
    _write(root, "aaron", _kills_its_worker(good))
    code = batch_grading.main([str(root), "--course", str(fixture_course), "--out", str(out),
                               "--scheduler", str(scheduler_file), "--cell-timeout", "20"])
    assert code == 1, "a failed submission makes the exit status 1"
    rows = {r["student"]: r for r in batch_grading.read_csv(out / "grades.csv")}
    for student in others:
        assert rows[student]["status"] == "graded" and float(rows[student]["auto_score"]) == 2.0, rows[student]
    assert rows["aaron"]["status"] == "failed", rows["aaron"]
    assert f"every worker that graded it died ({ALLOWED_FAILURES + 1} tries" in rows["aaron"]["reason"], rows["aaron"]


@pytest.mark.notebook
def test_an_interrupted_run_run_again_grades_only_what_is_left(fixture_course, tmp_path):
    """The default local cluster, the documented command in its own process, Ctrl-C once a grade is in."""
    root, out = tmp_path / "collected", tmp_path / "out"
    good = correct_submission(FIXTURE_LAB, fixture_course)
    students = ["ann", "ben", "cy", "dee", "eve"]
    for student in students:
        _write(root, student, good)
    command = [sys.executable, "-m", "helpers.batch_grading", str(root), "--course", str(fixture_course),
               "--out", str(out), "--jobs", "1", "--cell-timeout", "20"]
    # Ctrl-C's default in the grader even where this test was started with SIGINT ignored (a shell's background
    # job): Python leaves an inherited SIG_IGN alone, and the grader would then never see the interruption.
    first = subprocess.Popen(command, cwd=REPO, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not list((out / ".graded").glob("*.json")):
        assert first.poll() is None and time.monotonic() < deadline, "no grade was recorded before the interruption"
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "run the same command again" in err
    done = len(list((out / ".graded").glob("*.json")))
    assert 1 <= done < len(students), f"{done} graded before Ctrl-C: nothing left for the second run to do"
    second = subprocess.run(command, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{done} kept from an earlier run" in second.stdout and f"grading {len(students) - done} on" in second.stdout
    graded_now = [ln for ln in second.stdout.splitlines() if ln.startswith("  ") and ": 2.0/2.0" in ln]
    assert len(graded_now) == len(students) - done, second.stdout
    rows = batch_grading.read_csv(out / "grades.csv")
    assert sorted(r["student"] for r in rows) == students
    assert all(r["status"] == "graded" and float(r["auto_score"]) == 2.0 for r in rows), [(r["student"], r["status"], r["reason"]) for r in rows]


_RELEASE = threading.Event()


def _waits_for_release(sub, blob, options):
    """A grading task that runs until the test lets it go (module-level: Dask pickles tasks by reference)."""
    return _RELEASE.wait(60)


def test_a_cluster_left_with_no_worker_ends_the_run_and_says_so(monkeypatch):
    """Every worker gone and none restarted: the driver stops waiting (it would wait for ever) and says why."""
    from types import SimpleNamespace

    from distributed import Client, LocalCluster

    from helpers import grading_cluster

    _RELEASE.clear()
    monkeypatch.setattr(grading_cluster, "grade_task", _waits_for_release)
    results: list = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as local, \
            Client(local) as client:
        threading.Timer(1.0, local.scale, args=(0,)).start()  # the only worker leaves while its task runs
        start = time.monotonic()
        try:
            with pytest.raises(RuntimeError, match=r"no worker for 2 s with 1 submission\(s\) waiting"):
                grading_cluster.run(client, [SimpleNamespace(lab="lab", student="ann")], {},
                                    grading_cluster.Options(cell_timeout=5, timeout=10, threads=1),
                                    lambda *args: results.append(args), no_worker_s=2)
        finally:
            _RELEASE.set()
        assert time.monotonic() - start < 30, "the driver waited long after the cluster had no worker"
    assert results == [], "a submission that never ran has no result to report"


def test_the_resume_key_changes_with_what_decides_a_grade_and_nothing_else():
    from helpers.submissions import Submission
    nb = {"cells": [{"cell_type": "code", "source": "x = 1"}]}
    sub = Submission(path=Path("a/01.ipynb"), student="ann", lab="01_eval_mode", notebook=nb)
    key = batch_grading.resume_key(sub, "source-1", 120)
    assert key == batch_grading.resume_key(copy.deepcopy(sub), "source-1", 120), "same submission, same key"
    moved = Submission(path=Path("elsewhere/ann_01.ipynb"), student="ann", lab="01_eval_mode", notebook=nb)
    assert batch_grading.resume_key(moved, "source-1", 120) == key, "where the file lay does not decide a grade"
    edited = copy.deepcopy(sub)
    edited.notebook["cells"][0]["source"] = "x = 2"
    late = copy.deepcopy(sub)
    late.notes.append("late by 2 h")
    others = [batch_grading.resume_key(edited, "source-1", 120), batch_grading.resume_key(sub, "source-2", 120),
              batch_grading.resume_key(sub, "source-1", 60), batch_grading.resume_key(late, "source-1", 120)]
    assert len(set(others + [key])) == 5, "the notebook, the lab's tests, the time limit and the notes all count"


@pytest.mark.parametrize("given, says", [
    ("missing.json", "no scheduler file there"),
    ("bad.json", "not a Dask scheduler file"),
    ("empty.json", "names no address"),
    ("localhost:8786", "neither a scheduler file nor an address"),
])
def test_a_wrong_scheduler_is_named_at_once(tmp_path, monkeypatch, given, says):
    from helpers import grading_cluster
    (tmp_path / "bad.json").write_text("{ not json", encoding="utf-8")
    (tmp_path / "empty.json").write_text(json.dumps({"type": "Scheduler"}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match=says), grading_cluster.open_client(given, 1):
        pass


def test_a_kept_grade_needs_its_own_files_unchanged(tmp_path):
    """Another version of the same submission graded since overwrote the feedback: the record is stale."""
    out = tmp_path / "out"
    feedback = out / "feedback" / "ann" / "lab.html"
    feedback.parent.mkdir(parents=True)
    feedback.write_bytes(b"version 1")
    record = {"row": {"status": "graded"}, "cells": [],
              "files": {"feedback/ann/lab.html": batch_grading._sha(b"version 1")}}
    (out / batch_grading.RESUME_DIR).mkdir()
    (out / batch_grading.RESUME_DIR / "k.json").write_text(json.dumps(record), encoding="utf-8")
    assert batch_grading._kept(out, "k") == record
    feedback.write_bytes(b"version 2")
    assert batch_grading._kept(out, "k") is None
    feedback.unlink()
    assert batch_grading._kept(out, "k") is None


@pytest.mark.notebook
def test_a_broken_new_file_leaves_no_old_feedback_and_a_kept_grade_keeps_its_manual_marks(fixture_course, tmp_path):
    root, out = tmp_path / "collected", tmp_path / "out"
    good = correct_submission(FIXTURE_LAB, fixture_course)
    for student in ("ann", "ben"):
        _write(root, student, good)
    args = [str(root), "--course", str(fixture_course), "--out", str(out), "--jobs", "2", "--cell-timeout", "20"]
    assert batch_grading.main(args) == 0
    table = batch_grading.read_csv(out / "grades.csv")
    for row in table:  # a person's mark typed in since (helpers.manual_marks writes these columns)
        row["manual_score"], row["total"] = "1.0", "3.0"
    batch_grading.write_csv(out / "grades.csv", batch_grading.COLUMNS, table)
    (root / "ben" / f"{FIXTURE_LAB}.ipynb").write_text("{ not json", encoding="utf-8")
    assert batch_grading.main(args) == 0
    rows = {r["student"]: r for r in batch_grading.read_csv(out / "grades.csv")}
    assert rows["ann"]["status"] == "graded" and rows["ann"]["manual_score"] == "1.0", rows["ann"]
    assert rows["ben"]["status"] == "not graded", rows["ben"]
    assert (out / "feedback" / "ann" / f"{FIXTURE_LAB}.html").is_file()
    assert not (out / "feedback" / "ben" / f"{FIXTURE_LAB}.html").exists(), "the old grade's feedback was left"
