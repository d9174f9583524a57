"""Every solution notebook runs in the smoke profile and autogrades as it should.

One nbgrader course per lab, built once by the lab's test item and graded with three submissions:

* ``solution``: the solution, made *noisy* (every solution cell and every function it defines
  also writes to stderr, as a progress bar or a warning would): it must get full automatic
  marks, and its executed notebook is also the headless run checked below (no errors, the
  profile and model lines printed, no stderr in any test cell, no figures written);
* ``release``: the untouched student version with its first test cell edited to pass
  (``assert True``): locked test cells are restored from the source, so it gets zero;
* ``wrong``: one plausible mistake (tests/wrong_answers.py): some marks, not all.

These run whole notebooks (seconds each): marked `notebook`; deselect with -m "not notebook".
Each lab is **one** test item that grades once and then makes the four checks below, so xdist
can never grade a lab twice on two workers. (It did: ``--dist loadgroup`` stopped grouping
silently under pytest 9.2's structured node IDs, pytest-dev/pytest-xdist#1386, and every lab
was graded up to three times.) The labs run two at a time, one thread each; every failed
check is reported, not only the first. Each lab's cost is reported at the end of the run.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LABS, REPO, record_cost, venv_env
from helpers.compilation import seed_cpu_check
from notebook_tools import autograded_cells, auto_points, load, nbgrader, noisy, release_notebook, solution_notebook, source
from wrong_answers import WRONG_ANSWERS

pytestmark = pytest.mark.notebook

STUDENTS = ("solution", "release", "wrong")


def _submit(course: Path, student: str, lab: str, nb: dict) -> None:
    folder = course / "submitted" / student / lab
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{lab}.ipynb").write_text(json.dumps(nb), encoding="utf-8")


def _edit_first_test_cell(nb: dict) -> dict:
    cell = autograded_cells(nb)[0]
    cell["source"] = "assert True\nprint('all tests passed')"
    return nb


def _grade(lab: str, tmp_path_factory) -> dict:
    """A throwaway course for one lab: generate it, submit three versions, autograde them (timed).

    Called once per lab, by the lab's single test item (see the module docstring).
    """
    course = tmp_path_factory.mktemp(f"course-{lab}")
    shutil.copytree(REPO / "solutions" / lab, course / "solutions" / lab)
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    # one Inductor cache per worker, shared by the submissions (lab 02 measures a cold one of its own)
    compile_cache = tmp_path_factory.getbasetemp() / "inductor-cache"
    seed_cpu_check(compile_cache)  # Inductor's check of the machine, once per machine, as graders get it
    env = venv_env(LAB_PROFILE="smoke", TORCHINDUCTOR_CACHE_DIR=str(compile_cache))

    def nbgrader_cmd(*args):
        run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run

    nbgrader_cmd("generate_assignment", lab, "--force")
    release = load(course / "labs" / lab / f"{lab}.ipynb")
    assert release == release_notebook(lab), "generation in a fresh course differs from labs/"
    _submit(course, "solution", lab, noisy(solution_notebook(lab)))
    _submit(course, "release", lab, _edit_first_test_cell(release_notebook(lab)))
    _submit(course, "wrong", lab, WRONG_ANSWERS[lab](solution_notebook(lab)))
    start = time.time()
    nbgrader_cmd("autograde", lab, "--force")  # one nbgrader start for the three (it grades them in name order)
    done = {s: (course / "autograded" / s / lab / f"{lab}.ipynb").stat().st_mtime for s in STUDENTS}
    ends = sorted(done.items(), key=lambda item: item[1])
    costs, previous = {}, start
    for student, end in ends:  # each one's cost: from the previous one's end (the first: from nbgrader's start)
        costs[f"autograde {student} (s)"] = round(end - previous, 1)
        previous = end
    record_cost(lab, costs)

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {student: {g.name: (g.auto_score, g.max_score, g.needs_manual_grade)
                            for g in gb.find_submission(lab, student).notebooks[0].grades}
                  for student in STUDENTS}
    executed = load(course / "autograded" / "solution" / lab / f"{lab}.ipynb")
    return {"lab": lab, "scores": scores, "executed": executed, "course": course}


def _auto_total(grades: dict) -> float:
    return sum(auto or 0.0 for auto, _, _ in grades.values())


def check_solution_runs_cleanly_in_the_smoke_profile(graded):
    nb = graded["executed"]
    outputs = [(c, o) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    errors = [(nbgrader(c).get("grade_id") or c.get("id"), o.get("ename")) for c, o in outputs
              if o["output_type"] == "error"]
    assert not errors, f"cells raised: {errors}"
    text = "".join(source({"source": o.get("text", "")}) for _, o in outputs
                   if o["output_type"] == "stream" and o.get("name") == "stdout")
    assert "profile 'smoke'" in text and "Model that ran:" in text
    for cell in autograded_cells(nb):  # nbgrader scores a test cell 0 if it writes to stderr
        assert not [o for o in cell.get("outputs", []) if o.get("name") == "stderr"], nbgrader(cell)["grade_id"]
    noise = [o for c, o in outputs if o.get("name") == "stderr" and "stderr from" in source({"source": o.get("text", "")})]
    assert noise, "the noisy solution's own cells should show their stderr lines (the fixture is not noisy)"
    assert not list(graded["course"].rglob("images/*.png")), "the smoke profile must not write figures"


def check_noisy_solution_gets_full_automatic_marks(graded):
    lab, grades = graded["lab"], graded["scores"]["solution"]
    assert _auto_total(grades) == pytest.approx(auto_points(solution_notebook(lab))), {
        g: a for g, (a, m, _) in grades.items() if a != m}
    tests = {nbgrader(c)["grade_id"] for c in autograded_cells(solution_notebook(lab))}
    manual = [g for g, (_, _, needs) in grades.items() if needs]
    assert manual and not set(manual) & tests, "written answers wait for a person; tests do not"


def check_release_with_an_edited_test_cell_gets_zero(graded):
    lab, grades = graded["lab"], graded["scores"]["release"]
    first_test = nbgrader(autograded_cells(solution_notebook(lab))[0])["grade_id"]
    assert grades[first_test][0] == 0.0, "the edited test cell must be restored from the source"
    assert _auto_total(grades) == 0.0


def check_plausible_wrong_answer_gets_partial_marks(graded):
    lab = graded["lab"]
    got = _auto_total(graded["scores"]["wrong"])
    assert 0.0 < got < auto_points(solution_notebook(lab))


CHECKS = (check_solution_runs_cleanly_in_the_smoke_profile, check_noisy_solution_gets_full_automatic_marks,
          check_release_with_an_edited_test_cell_gets_zero, check_plausible_wrong_answer_gets_partial_marks)


@pytest.mark.parametrize("lab", LABS)
def test_lab_runs_and_autogrades_as_it_should(lab, tmp_path_factory):
    """Grade the lab's three submissions once, then run every check on them; report all that fail."""
    graded = _grade(lab, tmp_path_factory)
    failed = []
    for check in CHECKS:
        try:
            check(graded)
        except AssertionError as error:
            failed.append(f"{check.__name__.removeprefix('check_')}: {error}")
    assert not failed, f"{lab}:\n" + "\n".join(failed)


def test_noisy_fixture_really_writes_to_stderr_everywhere():
    """The noisy transform (not a lab): every solution code cell and every def in it gets a stderr line."""
    nb = {"cells": [{"cell_type": "code", "metadata": {"nbgrader": {"solution": True}},
                     "source": "def f(x):\n    # doc\n    return x\n\nclass A:\n    def g(self, y=(1, 2)) -> int:\n        return 1\n"}]}
    text = source(noisy(nb)["cells"][0])
    namespace = {}
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        exec(text, namespace)
        namespace["f"](1)
        namespace["A"]().g()
    assert err.getvalue().count("stderr from") == 3, err.getvalue()
