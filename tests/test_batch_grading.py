"""Instructor workflow: collecting odd submissions, repairing them honestly, feedback without secrets, the bundle.

The fast tests check each piece on its own. The `notebook`-marked tests grade the whole
bad-submission batch (tests/bad_submissions.py) with the one documented command, on the
two-second stand-in lab of tests/fixture_course, and check the grade row of every case; and
grade one correct submission of a real lab (01) the same way, feedback included, timed.
"""

import copy
import json
import subprocess
import zipfile

import nbformat
import pytest

from bad_submissions import FIXTURE_COURSE, FIXTURE_LAB, FIXTURE_OTHER_LAB, LAB, build, correct_submission
from conftest import REPO
from helpers import batch_grading
from helpers.feedback import HideHiddenTests, strip_region
from helpers.student_bundle import PLACEHOLDER, build_bundle, bundle_files, check_bundle
from helpers.submissions import (collect, lab_from_name, redefinitions, release_notebooks, repair,
                                 student_from_flat_name)
from notebook_tools import solution_notebook, source

LABS = ["01_eval_mode", "02_torch_compile"]


@pytest.mark.parametrize("stem, lab, student", [
    ("Copy of 01_eval_mode", "01_eval_mode", ""),
    ("01_eval_mode (1)", "01_eval_mode", ""),
    ("alice_01_eval_mode (2)", "01_eval_mode", "alice"),
    ("smithjane_12345_67890_02_torch_compile", "02_torch_compile", "smithjane_12345_67890"),
    ("Bob Lee - 01-eval-mode", "01_eval_mode", "Bob Lee"),
])
def test_flat_file_names_give_the_lab_and_the_student(stem, lab, student):
    assert lab_from_name(stem, LABS) == lab
    assert student_from_flat_name(stem, lab) == student


@pytest.fixture(scope="module")
def releases():
    return release_notebooks(REPO)


@pytest.fixture(scope="module")
def collected(tmp_path_factory, releases):
    root = tmp_path_factory.mktemp("submissions")
    expected = build(root)
    subs = {s.student: s for s in collect(root, releases)}
    return subs, expected


def test_collect_gives_every_file_a_row_and_names_what_cannot_be_graded(collected):
    subs, expected = collected
    assert set(subs) == {e.student for e in expected}
    assert "empty file" in subs["empty"].problem
    assert "broken JSON" in subs["not_json"].problem
    assert "whose submission" in subs["Copy of 01_eval_mode"].problem
    assert subs["wrong_lab"].lab == LAB and "named for 02_torch_compile" in subs["wrong_lab"].notes[0]
    assert subs["dana"].path.name == "dana_01_eval_mode (1).ipynb" and "2 files" in subs["dana"].notes[0]
    assert all(subs[s].gradable for s in ("good", "stripped_metadata", "duplicate_ids", "kills_kernel"))


def test_a_correct_submission_needs_no_repair(releases):
    sub = collect_one(correct_submission(), releases)
    assert sub.notes == [] and sub.gradable


def collect_one(nb, releases, tmp_name="student"):
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / tmp_name / f"{LAB}.ipynb"
        path.parent.mkdir()
        path.write_text(json.dumps(nb), encoding="utf-8")
        (sub,) = collect(Path(tmp), releases)
        return repair(sub, releases[LAB])


def _meta(nb, cell_id):
    return next(c for c in nb["cells"] if c["id"] == cell_id)["metadata"].get("nbgrader", {})


def test_repair_restores_metadata_and_points_from_the_release(releases):
    nb = correct_submission()
    for cell in nb["cells"]:
        cell["metadata"].pop("nbgrader", None)
    sub = collect_one(nb, releases)
    assert _meta(sub.notebook, "test-ex11-tokenize")["points"] == 0.5
    assert _meta(sub.notebook, "test-ex11-tokenize")["locked"] is True
    assert any("metadata restored" in n for n in sub.notes)
    nb = correct_submission()
    next(c for c in nb["cells"] if c["id"] == "test-ex13-speedups")["metadata"]["nbgrader"]["points"] = 50
    sub = collect_one(nb, releases)
    assert _meta(sub.notebook, "test-ex13-speedups")["points"] == 0.5
    assert any("(50 -> 0.5)" in n for n in sub.notes)


def test_repair_renumbers_copied_cells_and_drops_stored_outputs(releases):
    nb = correct_submission()
    i = next(i for i, c in enumerate(nb["cells"]) if c["id"] == "ex13-speedups")
    nb["cells"].insert(i + 1, copy.deepcopy(nb["cells"][i]))
    nb["cells"][i]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "y" * 2_000_000}]
    sub = collect_one(nb, releases)
    ids = [c["id"] for c in sub.notebook["cells"]]
    assert len(ids) == len(set(ids))
    graded = [c for c in sub.notebook["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "ex13-speedups"]
    assert len(graded) == 1, "a copied graded cell must not be graded twice"
    assert all(not c.get("outputs") for c in sub.notebook["cells"] if c["cell_type"] == "code")
    assert any("new ids" in n for n in sub.notes) and any("MB of stored outputs" in n for n in sub.notes)
    nbformat.validate(nbformat.from_dict(sub.notebook))


def test_repair_notes_deleted_and_edited_test_cells(releases):
    nb = correct_submission()
    nb["cells"] = [c for c in nb["cells"] if c["id"] != "test-ex11-tokenize"]
    next(c for c in nb["cells"] if c["id"] == "test-ex12-modes")["source"] = "assert True"
    sub = collect_one(nb, releases)
    assert any("deleted" in n and "test-ex11-tokenize" in n for n in sub.notes)
    assert any("edited" in n and "test-ex12-modes" in n for n in sub.notes)


def test_repair_puts_the_released_parameters_cell_back(releases):
    released = source(next(c for c in releases[LAB]["cells"] if c["id"] == "parameters"))
    nb = correct_submission()
    cell = next(c for c in nb["cells"] if c["id"] == "parameters")
    cell["source"] = source(cell).replace("N_RUNS = None", "N_RUNS = 1000").replace("LAB_PROFILE = None",
                                                                                     'LAB_PROFILE = "full"')
    sub = collect_one(nb, releases)
    assert source(next(c for c in sub.notebook["cells"] if c["id"] == "parameters")) == released
    (note,) = [n for n in sub.notes if "parameters" in n]
    assert "LAB_PROFILE = \"full\"" in note and "N_RUNS = 1000" in note, note
    nb = correct_submission()
    order = [c["id"] for c in nb["cells"]]
    nb["cells"] = [c for c in nb["cells"] if c["id"] != "parameters"]
    sub = collect_one(nb, releases)
    assert [c["id"] for c in sub.notebook["cells"]] == order, "put back where the release has it"
    assert any("parameters cell was deleted" in n for n in sub.notes)


def test_redefinitions_of_library_and_builtin_names_are_flagged():
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "math.isclose = lambda *a, **k: True\nx = 1\n"},
                    {"cell_type": "code", "metadata": {}, "source": "def f():\n    len = 3\n    return len\n"},
                    {"cell_type": "code", "metadata": {}, "source": "torch.allclose=lambda *a: True\nif a == b: pass"}]}
    assert redefinitions(nb) == ["math.isclose =", "len =", "torch.allclose="]


def test_feedback_hides_hidden_tests_their_tracebacks_and_mark_schemes():
    sol = solution_notebook(LAB)
    nb = nbformat.reads(json.dumps(sol), as_version=4)
    test = next(c for c in nb.cells if c.id == "test-ex13-speedups")
    test.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="use the median",
                                           traceback=["Traceback ...", "    assert _sf['fast'] ...", "AssertionError"])]
    out, _ = HideHiddenTests()(nb, {})  # called as nbconvert calls it: it must be enabled by default
    text = json.dumps(out)
    assert "BEGIN HIDDEN TESTS" not in text and "_Timing.from_times" not in text
    assert "BEGIN SOLUTION" not in text and "Model answer (for graders" not in text
    assert next(c for c in out.cells if c.id == "test-ex13-speedups").outputs[0]["traceback"] == [
        "AssertionError: use the median"]
    assert "Visible tests for Exercise 1.3" in text, "the visible tests stay"


def test_strip_region_keeps_what_is_outside():
    text = "a\n    ### BEGIN HIDDEN TESTS\n    secret\n    ### END HIDDEN TESTS\nb"
    assert strip_region(text, "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS", "# hidden") == "a\n    # hidden\nb"


def test_student_bundle_has_the_labs_and_helpers_and_no_instructor_material(tmp_path):
    url = "https://github.com/some-school/inference-labs-2027@term-1"
    path = build_bundle(REPO, tmp_path / "bundle.zip", course_repo=url)
    archive = zipfile.ZipFile(path)
    names = set(archive.namelist())
    assert {f"labs/{lab}/{lab}.ipynb" for lab in LABS} <= names
    assert "helpers/__init__.py" in names and "uv.lock" in names and "helpers/data/qa_pairs.jsonl" in names
    assert not [n for n in names if n.startswith(("solutions/", "tests/", ".ci/")) or "batch_grading" in n]
    assert check_bundle(path, REPO) == []
    readme = archive.read("README.md").decode()
    assert readme == (REPO / "labs" / "README.md").read_text(encoding="utf-8"), "the students' README, not this one"
    assert "pytest" not in readme and "batch_grading" not in readme and "--compile-bytecode" in readme
    for lab in LABS:
        text = archive.read(f"labs/{lab}/{lab}.ipynb").decode()
        assert url in text and PLACEHOLDER not in text, f"{lab}: the course repository is set in the bundle"


def test_student_bundle_refuses_a_placeholder_or_the_instructors_own_repository(tmp_path, capsys):
    from helpers import student_bundle
    assert student_bundle.main(["--course", str(REPO), "--out", str(tmp_path / "b.zip"),
                                "--course-repo", PLACEHOLDER]) == 1
    assert "placeholder" in capsys.readouterr().err
    course = tmp_path / "course"  # a course folder whose origin is the URL given
    course.mkdir()
    subprocess.run(["git", "init", "-q", str(course)], check=True)
    subprocess.run(["git", "-C", str(course), "remote", "add", "origin", "git@github.com:prof/course.git"], check=True)
    with pytest.raises(ValueError, match="own origin"):
        student_bundle.check_course_repo("https://github.com/Prof/course@v2", course)
    assert student_bundle.check_course_repo("https://github.com/prof/course-students", course)
    with pytest.raises(SystemExit):  # neither --course-repo nor --no-colab: argparse says which is needed
        student_bundle.main(["--course", str(REPO), "--out", str(tmp_path / "b.zip")])
    assert "--course-repo" in capsys.readouterr().err


def test_bundle_check_catches_a_leaked_solution(tmp_path):
    leaky = tmp_path / "leaky.zip"
    with zipfile.ZipFile(leaky, "w") as archive:
        for rel in bundle_files(REPO):
            if rel.name != f"{LAB}.ipynb":
                archive.write(REPO / rel, rel.as_posix())
        archive.writestr(f"labs/{LAB}/{LAB}.ipynb", json.dumps(solution_notebook(LAB)))
    problems = check_bundle(leaky, REPO)
    assert any("BEGIN SOLUTION" in p for p in problems) and any("solution lines" in p for p in problems)


def test_the_command_refuses_a_missing_folder_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit):
        batch_grading.main([str(tmp_path / "nope"), "--course", str(REPO)])
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fixture_course(tmp_path_factory):
    """The two-lab stand-in course (tests/fixture_course) with its releases generated and the real config."""
    import shutil
    import subprocess
    import sys

    from conftest import venv_env
    course = tmp_path_factory.mktemp("fixture-course")
    shutil.copytree(FIXTURE_COURSE / "solutions", course / "solutions")
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    for lab in (FIXTURE_LAB, FIXTURE_OTHER_LAB):
        run = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", lab, "--force", "--no-db"],
                             cwd=course, env=venv_env(), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
    return course


@pytest.mark.notebook
def test_every_bad_submission_gets_a_grade_row_with_its_reason(tmp_path, fixture_course):
    """The issue's list, graded in one batch with the documented command (2 jobs, 5 s per cell),
    on the stand-in lab: the same defences as a real lab, at a fraction of the cost."""
    root = tmp_path / "collected"
    expected = {e.student: e for e in build(root, fixture_course, FIXTURE_LAB, FIXTURE_OTHER_LAB)}
    out = tmp_path / "out"
    code = batch_grading.main([str(root), "--course", str(fixture_course), "--out", str(out), "--jobs", "2",
                               "--cell-timeout", "5"])
    assert code == 1, "one submission killed its kernel and failed: the command must say so in its exit status"
    import csv
    rows = {r["student"]: r for r in csv.DictReader(open(out / "grades.csv", encoding="utf-8"))}
    assert set(rows) == set(expected)
    for student, exp in expected.items():
        row = rows[student]
        assert row["status"] == exp.status, (student, row)
        score = float(row["auto_score"])
        if isinstance(exp.score, tuple):
            assert exp.score[0] < score < exp.score[1], (student, row)
        else:
            assert score == pytest.approx(exp.score), (student, row)
        assert exp.reason in row["reason"], (student, exp.reason, row["reason"])
        if exp.status == "graded":
            assert float(row["auto_max"]) == 2.0 and float(row["manual_max"]) == 1.0, (student, row)
    assert rows["good"]["reason"] == "", "a clean submission needs no remark"
    assert rows["good"]["needs_manual_grading"] == "ex14-answer"
    assert "redefinitions" in rows["redefines_isclose"]["needs_manual_grading"]
    html = (out / "feedback" / "good" / f"{FIXTURE_LAB}.html").read_text(encoding="utf-8")
    assert "Visible tests for Exercise 1.3" in html
    assert "BEGIN HIDDEN TESTS" not in html and "use the median, not the mean" not in html and "Model answer" not in html
    assert (out / "autograded" / "good" / f"{FIXTURE_LAB}.ipynb").is_file()


@pytest.mark.notebook
def test_one_real_lab_grades_through_the_batch_command(tmp_path):
    """The instructor's one command on a real lab (lab 01, a correct submission), feedback included: timed."""
    import time

    from conftest import record_cost
    root = tmp_path / "collected"
    path = root / "alice" / f"{LAB}.ipynb"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(correct_submission()), encoding="utf-8")
    start = time.perf_counter()
    code = batch_grading.main([str(root), "--course", str(REPO), "--out", str(tmp_path / "out"), "--jobs", "1"])
    record_cost(LAB, {"batch-grade 1 submission (s)": round(time.perf_counter() - start, 1)})
    assert code == 0
    import csv
    (row,) = list(csv.DictReader(open(tmp_path / "out" / "grades.csv", encoding="utf-8")))
    assert row["status"] == "graded" and float(row["auto_score"]) == 2.0, row
    assert (tmp_path / "out" / "feedback" / "alice" / f"{LAB}.html").is_file()


@pytest.mark.notebook
def test_plain_nbgrader_autograde_puts_the_parameters_cell_back(tmp_path, fixture_course):
    """Without the batch route's repair: nbgrader itself restores the read-only parameters cell,
    so a submission that chose LAB_PROFILE = "full" is still graded in smoke (the stand-in lab's
    setup cell fails every test in any other profile)."""
    import shutil
    import subprocess
    import sys

    from nbgrader.api import Gradebook

    from conftest import venv_env
    course = tmp_path / "course"
    shutil.copytree(fixture_course / "solutions", course / "solutions")
    shutil.copy(fixture_course / "nbgrader_config.py", course / "nbgrader_config.py")
    env = venv_env()
    env.pop("LAB_PROFILE", None)  # nbgrader_config.py alone must choose the smoke profile

    def nbgrader(*args):
        run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    nbgrader("generate_assignment", FIXTURE_LAB, "--force")
    nb = correct_submission(FIXTURE_LAB, fixture_course)
    cell = next(c for c in nb["cells"] if c["id"] == "parameters")
    cell["source"] = source(cell).replace("LAB_PROFILE = None", 'LAB_PROFILE = "full"')
    target = course / "submitted" / "bob" / FIXTURE_LAB / f"{FIXTURE_LAB}.ipynb"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(nb), encoding="utf-8")
    nbgrader("autograde", FIXTURE_LAB, "--student", "bob", "--force")
    graded = json.loads((course / "autograded" / "bob" / FIXTURE_LAB / f"{FIXTURE_LAB}.ipynb").read_text(encoding="utf-8"))
    params = source(next(c for c in graded["cells"] if c["id"] == "parameters"))
    assert "LAB_PROFILE = None" in params, params
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        score = gradebook.find_submission(FIXTURE_LAB, "bob").score
    assert score == pytest.approx(2.0), f"graded {score}: the submission's own parameters were used"


def test_the_command_exits_non_zero_when_it_finds_nothing_or_an_unknown_student(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert batch_grading.main([str(tmp_path / "empty"), "--course", str(REPO), "--out", str(tmp_path / "o")]) == 1
    assert "no submission found" in capsys.readouterr().err
    (tmp_path / "one" / "ann").mkdir(parents=True)
    (tmp_path / "one" / "ann" / f"{LAB}.ipynb").write_text("{ not json", encoding="utf-8")
    assert batch_grading.main([str(tmp_path / "one"), "--course", str(REPO), "--out", str(tmp_path / "o"),
                               "--student", "zoe"]) == 1
    err = capsys.readouterr().err
    assert "no submission of student 'zoe'" in err and "ann" in err and "Traceback" not in err


def _grade_rows(path):
    return batch_grading.read_csv(path)


def _run_into(root, out, *extra):
    batch_grading.main([str(root), "--course", str(REPO), "--out", str(out), *extra])
    return out / "grades.csv"


@pytest.mark.notebook
def test_regrading_one_student_keeps_the_other_rows_and_no_stale_feedback(tmp_path, fixture_course):
    root, out = tmp_path / "collected", tmp_path / "out"
    good = correct_submission(FIXTURE_LAB, fixture_course)
    for student in ("ann", "ben"):
        (root / student).mkdir(parents=True)
        (root / student / f"{FIXTURE_LAB}.ipynb").write_text(json.dumps(good), encoding="utf-8")
    args = [str(root), "--course", str(fixture_course), "--out", str(out), "--jobs", "2", "--cell-timeout", "5"]
    assert batch_grading.main(args) == 0
    first = {r["student"]: r for r in _grade_rows(out / "grades.csv")}
    first_cells = [r for r in _grade_rows(out / "grades_by_cell.csv") if r["student"] == "ann"]
    broken = copy.deepcopy(good)  # ben hands in a new version that kills its kernel: no feedback this time
    cell = next(c for c in broken["cells"] if c["id"] == "ex13-speedups")
    cell["source"] = "import os\nos._exit(1)\n" + source(cell)
    (root / "ben" / f"{FIXTURE_LAB}.ipynb").write_text(json.dumps(broken), encoding="utf-8")
    assert batch_grading.main(args + ["--student", "ben"]) == 1, "ben's regrade failed: exit status 1"
    rows = {r["student"]: r for r in _grade_rows(out / "grades.csv")}
    assert set(rows) == {"ann", "ben"} and len(_grade_rows(out / "grades.csv")) == 2
    assert rows["ann"] == first["ann"], "the other student's row is kept as it was"
    assert rows["ben"]["status"] == "failed" and float(rows["ben"]["auto_score"]) == 0.0
    cells = _grade_rows(out / "grades_by_cell.csv")
    assert [r for r in cells if r["student"] == "ann"] == first_cells
    assert not [r for r in cells if r["student"] == "ben"], "ben's old per-cell scores are gone"
    assert (out / "feedback" / "ann" / f"{FIXTURE_LAB}.html").is_file()
    assert not (out / "feedback" / "ben" / f"{FIXTURE_LAB}.html").exists(), "no stale feedback for a regrade"


@pytest.mark.parametrize("name, student, attempt, late, when", [
    ("smithjohn_12345_678910_01_eval_mode", "smithjohn", 0, False, None),
    ("smithjohn_LATE_12345_678910_01_eval_mode-2", "smithjohn", 2, True, None),
    ("John Smith_123456_assignsubmission_file_", "John Smith", 0, False, None),  # a Moodle folder
    ("Lab 01_jsmith_attempt_2027-01-15-23-58-10_01_eval_mode", "jsmith", 0, False, "2027-01-15T23:58:10"),
    ("alice_01_eval_mode", None, 0, False, None),  # not an LMS name: the flat-name rules apply
])
def test_lms_download_names_give_the_student_attempt_and_time(name, student, attempt, late, when):
    from datetime import datetime

    from helpers.submissions import parse_lms_name
    parsed = parse_lms_name(name)
    if student is None:
        assert parsed is None
        return
    assert (parsed.student, parsed.attempt, parsed.late) == (student, attempt, late)
    assert parsed.submitted_at == (datetime.fromisoformat(when) if when else None)


def test_canvas_resubmissions_and_nbgrader_timestamps_decide_newest_and_late(tmp_path, releases):
    import os
    from datetime import datetime

    from helpers.submissions import apply_deadline
    good = json.dumps(correct_submission())
    root = tmp_path / "canvas"
    root.mkdir()
    first, second = root / f"smithjohn_12345_678910_{LAB}.ipynb", root / f"smithjohn_LATE_12345_678911_{LAB}-1.ipynb"
    first.write_text(good, encoding="utf-8")
    second.write_text(good, encoding="utf-8")
    os.utime(second, (1e9, 1e9))  # the download made the resubmission look older: the "-1" still wins
    (sub,) = collect(root, releases)
    assert sub.student == "smithjohn" and sub.path == second and "highest resubmission number" in sub.notes[0]
    apply_deadline([sub], datetime(2030, 1, 1))
    assert any("the LMS marked it late" in n for n in sub.notes)
    exchange = tmp_path / "exchange"  # nbgrader's collect layout: submitted/<student>/<lab>/ + timestamp.txt
    (exchange / "ann" / LAB).mkdir(parents=True)
    (exchange / "ann" / LAB / f"{LAB}.ipynb").write_text(good, encoding="utf-8")
    (exchange / "ann" / LAB / "timestamp.txt").write_text("2027-01-16 01:30:00.000000 UTC", encoding="utf-8")
    (sub,) = collect(exchange, releases)
    apply_deadline([sub], datetime.fromisoformat("2027-01-15T23:30:00+00:00"))
    assert sub.student == "ann" and any("late by 2.0 h (from nbgrader's timestamp.txt)" in n for n in sub.notes)
    (sub,) = collect(exchange, releases)
    apply_deadline([sub], datetime.fromisoformat("2027-01-16T02:00:00+00:00"))
    assert not any("late" in n for n in sub.notes)


def test_a_roster_lists_who_sent_nothing_and_flags_strangers(tmp_path):
    root = tmp_path / "collected"
    for student in ("ann", "zed"):
        (root / student).mkdir(parents=True)
        (root / student / f"{LAB}.ipynb").write_text("{ not json", encoding="utf-8")  # nothing to run
    roster = tmp_path / "roster.csv"
    roster.write_text("name,student\nAnn A,ann\nBen B,ben\n", encoding="utf-8")
    code = batch_grading.main([str(root), "--course", str(REPO), "--out", str(tmp_path / "out"),
                               "--roster", str(roster), "--deadline", "2027-01-15T23:59"])
    assert code == 0
    rows = {(r["student"], r["lab"]): r for r in _grade_rows(tmp_path / "out" / "grades.csv")}
    assert rows[("ben", LAB)]["status"] == "missing", "on the roster, sent nothing"
    assert "not on the roster" in rows[("zed", LAB)]["reason"]
    assert "not on the roster" not in rows[("ann", LAB)]["reason"]
    bad = tmp_path / "bad.csv"
    bad.write_text("", encoding="utf-8")
    assert batch_grading.main([str(root), "--course", str(REPO), "--out", str(tmp_path / "o2"), "--roster", str(bad)]) == 1


@pytest.mark.notebook
def test_written_answer_marks_go_into_the_grades_and_feedback(tmp_path, fixture_course, capsys):
    from helpers import manual_marks
    root, out = tmp_path / "collected", tmp_path / "out"
    good = correct_submission(FIXTURE_LAB, fixture_course)
    for student in ("ann", "ben"):
        (root / student).mkdir(parents=True)
        (root / student / f"{FIXTURE_LAB}.ipynb").write_text(json.dumps(good), encoding="utf-8")
    assert batch_grading.main([str(root), "--course", str(fixture_course), "--out", str(out), "--jobs", "2"]) == 0
    marks = _grade_rows(out / "manual_marks.csv")
    assert [(r["student"], r["grade_id"], r["max_score"], r["score"]) for r in marks] == [
        ("ann", "ex14-answer", "1.0", ""), ("ben", "ex14-answer", "1.0", "")]
    bad = tmp_path / "bad.csv"
    bad.write_text("student,lab,grade_id,score\nann,fx01_speedups,ex14-answer,5\nzoe,fx01_speedups,ex14-answer,1\n",
                   encoding="utf-8")
    before = (out / "grades.csv").read_bytes()
    assert manual_marks.main([str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "line 2: score 5 is outside 0..1" in err and "line 3: no answer" in err and "nothing applied" in err
    assert (out / "grades.csv").read_bytes() == before
    marks[0].update(score="0.5", comment="Right idea; <cite> the spread.")
    filled = out / "manual_marks.csv"
    batch_grading.write_csv(filled, list(marks[0]), marks)
    assert manual_marks.main([str(filled), "--out", str(out)]) == 0
    once = (out / "grades.csv").read_bytes()
    assert manual_marks.main([str(filled), "--out", str(out)]) == 0
    assert (out / "grades.csv").read_bytes() == once, "applying the same marks twice gives the same table"
    rows = {r["student"]: r for r in _grade_rows(out / "grades.csv")}
    assert rows["ann"]["manual_score"] == "0.5" and float(rows["ann"]["total"]) == 2.5
    assert rows["ann"]["needs_manual_grading"] == "" and rows["ben"]["needs_manual_grading"] == "ex14-answer"
    page = (out / "feedback" / "ann" / f"{FIXTURE_LAB}.html").read_text(encoding="utf-8")
    assert page.count("Written answers, graded by a person") == 1 and "&lt;cite&gt; the spread" in page
    assert "Written answers, graded by a person" not in (out / "feedback" / "ben" / f"{FIXTURE_LAB}.html").read_text()


@pytest.mark.notebook
def test_validate_in_the_student_bundle_runs_the_smoke_profile_with_gradings_time_limit(tmp_path):
    """Students start JupyterLab in the unzipped bundle: its nbgrader_config.py must make Validate
    run smoke (else a lab runs in full with nbgrader's 30 s per cell and a correct one fails)."""
    import sys

    import nbformat

    from conftest import venv_env
    bundle = zipfile.ZipFile(build_bundle(REPO, tmp_path / "b.zip", course_repo="https://example.org/labs"))
    bundle.extractall(tmp_path / "student")
    check = nbformat.v4.new_code_cell("import os\nassert os.environ.get('LAB_PROFILE') == 'smoke', os.environ.get('LAB_PROFILE')\n"
                                      "print('graded in smoke')")
    check.metadata["nbgrader"] = {"grade": True, "grade_id": "t-profile", "locked": True, "points": 1,
                                  "schema_version": 3, "solution": False, "task": False}
    nb = nbformat.v4.new_notebook(cells=[check])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    env = venv_env()
    env.pop("LAB_PROFILE", None)
    for folder, expected in ((tmp_path / "student", "Success"), (tmp_path / "elsewhere", "failed")):
        folder.mkdir(exist_ok=True)
        nbformat.write(nb, folder / "lab.ipynb")
        run = subprocess.run([sys.executable, "-m", "nbgrader", "validate", "lab.ipynb"], cwd=folder, env=env,
                             capture_output=True, text=True, timeout=300)
        assert expected in run.stdout, (folder.name, run.stdout[-1500:], run.stderr[-1500:])


def test_the_gradebook_schema_version_read_in_process_is_nbgraders_own():
    """The batch grader stamps new gradebooks without nbgrader's `alembic heads` subprocess (3 s each)."""
    from nbgrader.api import get_alembic_version
    assert batch_grading._gradebook_schema_version() == get_alembic_version()


def test_figures_printed_by_test_cells_reach_the_grades_table_and_nothing_else_does():
    def cell(grade_id, text, test=True):
        meta = {"nbgrader": {"grade": test, "grade_id": grade_id, "locked": test, "solution": not test,
                             "points": 1.0 if test else None, "schema_version": 3}}
        return {"cell_type": "code", "metadata": meta, "source": "",
                "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]}
    nb = {"cells": [cell("test-a", "Exercise: passed. Figures (not marks): p95 41 ms, 120 req/s\n"),
                    cell("answer", "Figures (not marks): a student's own print", test=False),
                    cell("test-b", "passed\n")]}
    assert batch_grading._figures(nb) == "test-a: p95 41 ms, 120 req/s"
    assert "figures" in batch_grading.COLUMNS
