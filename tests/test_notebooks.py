"""Every solution notebook runs headless with papermill in the smoke profile, and autogrades as it should.

These run whole notebooks (tens of seconds each): marked `notebook`; deselect with -m "not notebook".
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import papermill
import pytest

from conftest import LABS, REPO, venv_env
from notebook_tools import auto_points, load, nbgrader, release_notebook, solution_notebook, source, autograded_cells
from wrong_answers import WRONG_ANSWERS

pytestmark = pytest.mark.notebook


@pytest.mark.parametrize("lab", LABS)
def test_solution_runs_headless_in_the_smoke_profile(lab, tmp_path):
    out = tmp_path / f"{lab}.executed.ipynb"
    # the files beside the notebook (lab 07's serving/), as a student's folder has them
    shutil.copytree(REPO / "solutions" / lab, tmp_path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.ipynb", "__pycache__", ".ipynb_checkpoints"))
    start = time.perf_counter()
    papermill.execute_notebook(str(REPO / "solutions" / lab / f"{lab}.ipynb"), str(out),
                               parameters={"LAB_PROFILE": "smoke"}, cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False)
    elapsed = time.perf_counter() - start
    print(f"{lab}: executed in {elapsed:.1f} s (smoke profile)")
    nb = load(out)
    outputs = [(c, o) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for _, o in outputs if o["output_type"] == "error"]
    text = "".join(source({"source": o.get("text", "")}) for _, o in outputs if o["output_type"] == "stream")
    assert "profile 'smoke'" in text and "Model that ran:" in text
    for cell in autograded_cells(nb):  # nbgrader scores a test cell 0 if it writes to stderr
        assert not [o for o in cell.get("outputs", []) if o.get("name") == "stderr"], nbgrader(cell)["grade_id"]
    assert not list(tmp_path.glob("images/*.png")), "the smoke profile must not write figures"


# --- autograding golden tests -------------------------------------------------------------

STUDENTS = ("solution", "untouched", "wrong", "edited")


def _submit(course: Path, student: str, lab: str, nb: dict) -> None:
    folder = course / "submitted" / student / lab
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{lab}.ipynb").write_text(json.dumps(nb), encoding="utf-8")


def _edit_first_test_cell(nb: dict) -> dict:
    cell = autograded_cells(nb)[0]
    cell["source"] = "assert True\nprint('all tests passed')"
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A throwaway course: generate each lab, submit four versions of it, autograde them all once."""
    course = tmp_path_factory.mktemp("course")
    shutil.copytree(REPO / "solutions", course / "solutions")
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    env = venv_env(LAB_PROFILE="smoke")

    def nbgrader_cmd(*args):
        run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                             capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run

    scores = {}
    for lab in LABS:
        nbgrader_cmd("generate_assignment", lab, "--force")
        release = load(course / "labs" / lab / f"{lab}.ipynb")
        assert release == release_notebook(lab), "generation in a fresh course differs from labs/"
        _submit(course, "solution", lab, solution_notebook(lab))
        _submit(course, "untouched", lab, release)
        _submit(course, "wrong", lab, WRONG_ANSWERS[lab](solution_notebook(lab)))
        _submit(course, "edited", lab, _edit_first_test_cell(load(course / "labs" / lab / f"{lab}.ipynb")))
        start = time.perf_counter()
        nbgrader_cmd("autograde", lab, "--force")
        print(f"{lab}: autograded {len(STUDENTS)} submissions in {time.perf_counter() - start:.1f} s")

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for lab in LABS:
            for student in STUDENTS:
                sub = gb.find_submission(lab, student)
                scores[lab, student] = {g.name: (g.auto_score, g.max_score, g.needs_manual_grade)
                                        for g in sub.notebooks[0].grades}
    return scores


def _auto_total(grades: dict) -> float:
    return sum(auto or 0.0 for auto, _, _ in grades.values())


def _test_ids(lab: str) -> set:
    return {nbgrader(c)["grade_id"] for c in autograded_cells(solution_notebook(lab))}


@pytest.mark.parametrize("lab", LABS)
def test_solution_gets_full_automatic_marks(graded, lab):
    grades = graded[lab, "solution"]
    assert _auto_total(grades) == pytest.approx(auto_points(solution_notebook(lab)))
    manual = [g for g, (_, _, needs) in grades.items() if needs]
    assert manual and not set(manual) & _test_ids(lab), "written answers wait for a person; tests do not"


@pytest.mark.parametrize("lab", LABS)
def test_untouched_release_gets_zero(graded, lab):
    assert _auto_total(graded[lab, "untouched"]) == 0.0


@pytest.mark.parametrize("lab", LABS)
def test_plausible_wrong_answer_gets_partial_marks(graded, lab):
    got = _auto_total(graded[lab, "wrong"])
    assert 0.0 < got < auto_points(solution_notebook(lab))


@pytest.mark.parametrize("lab", LABS)
def test_edited_locked_test_cell_is_restored_and_does_not_help(graded, lab):
    first_test = nbgrader(autograded_cells(solution_notebook(lab))[0])["grade_id"]
    assert graded[lab, "edited"][first_test][0] == 0.0
    assert _auto_total(graded[lab, "edited"]) == _auto_total(graded[lab, "untouched"])
