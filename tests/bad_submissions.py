"""Bad (and oddly named) submissions, with the grade each must get.

Each fixture writes one file into a collected-submissions folder, laid out as an LMS or
Colab download would be, and says what the batch grader must report for it: the status,
the automatic score (2.0 automatic points, 1.0 manual), and a phrase of the reason.

They are built from a lab with lab 01's layout (cell ids, points, hidden tests, a written
answer): lab 01 itself for the fast collect/repair tests, and the two-second stand-in course
in ``tests/fixture_course`` (``fx01_speedups``, ``fx02_other``) for grading the whole batch,
since the defences are the same for every lab and a real lab costs seconds per submission.
Every real lab is graded on its own (solution, release, wrong answer) in test_notebooks.py.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO
from notebook_tools import release_notebook, solution_notebook, source

LAB = "01_eval_mode"
OTHER_LAB = "02_torch_compile"
FIXTURE_COURSE = REPO / "tests" / "fixture_course"
FIXTURE_LAB, FIXTURE_OTHER_LAB = "fx01_speedups", "fx02_other"
FULL = 2.0  # automatic points of lab 01 and of the stand-in


@dataclass(frozen=True)
class Expected:
    student: str
    status: str             # graded / failed / not graded
    score: float | tuple    # exact automatic score, or (low, high) exclusive bounds
    reason: str = ""        # a phrase the grade row's reason must contain ("" = no reason required)


def _cell(nb: dict, cell_id: str) -> dict:
    return next(c for c in nb["cells"] if c.get("id") == cell_id)


def _edit(nb: dict, cell_id: str, old: str, new: str) -> dict:
    cell = _cell(nb, cell_id)
    text = source(cell)
    assert old in text, f"fixture is stale: {old!r} not in {cell_id}"
    cell["source"] = text.replace(old, new)
    return nb


def correct_submission(lab: str = LAB, course: Path = REPO) -> dict:
    """What a student who solved every exercise hands in: the release, with the solution code typed in."""
    nb, sol = release_notebook(lab, course), solution_notebook(lab, course)
    answers = {c["id"]: c for c in sol["cells"]}
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and cell["cell_type"] == "code":
            cell["source"] = source(answers[cell["id"]])
        elif meta.get("solution"):  # a written answer: the student writes something for a person to grade
            cell["source"] = "**Your answer:** my measurements show that the optimized variant is faster."
    return nb


def _write(root: Path, rel: str, nb_or_text) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    data = nb_or_text if isinstance(nb_or_text, str) else json.dumps(nb_or_text)
    path.write_text(data, encoding="utf-8")


SPEEDUPS = "    base = timings[baseline].median\n"


def build(root: Path, course: Path = REPO, lab: str = LAB, other_lab: str = OTHER_LAB) -> list[Expected]:
    """Write every fixture of ``lab`` (in ``course``) under ``root``; return what the grader must say about each."""
    sol, rel = correct_submission(lab, course), release_notebook(lab, course)
    expected = []

    def add(student, rel_path, nb_or_text, status, score, reason=""):
        _write(root, rel_path, nb_or_text)
        if "(1)" in rel_path:  # a second download is the newer file
            os.utime(root / rel_path, (time.time() + 60, time.time() + 60))
        expected.append(Expected(student, status, score, reason))

    add("good", f"good/Copy of {lab}.ipynb", sol, "graded", FULL)
    add("syntax_error", f"syntax_error/{lab}.ipynb",
        _edit(copy.deepcopy(sol), "ex13-speedups", "def speedups(timings, baseline):", "def speedups(timings, baseline)"),
        "graded", (0.0, FULL), "SyntaxError")
    add("infinite_loop", f"infinite_loop/{lab}.ipynb",
        _edit(copy.deepcopy(sol), "ex13-speedups", "def speedups(timings, baseline):",
              "while True:  # never ends: the cell is stopped after the time limit\n    pass\n\n\n"
              "def speedups(timings, baseline):"),
        "graded", (0.0, FULL), "interrupted")
    add("kills_kernel", f"kills_kernel/{lab}.ipynb",
        _edit(copy.deepcopy(sol), "ex13-speedups", "# Step 1:", "import os\nos._exit(1)\n# Step 1:"),
        "failed", 0.0, "killed its kernel (the Python process running it exited), so no cell after that point "
                       "could be graded (graded twice: it died both times)")
    deleted = copy.deepcopy(sol)
    deleted["cells"] = [c for c in deleted["cells"] if c.get("id") != "test-ex11-tokenize"]
    add("deleted_test", f"deleted_test/{lab}.ipynb", deleted, "graded", FULL, "deleted")
    edited = copy.deepcopy(rel)
    _cell(edited, "test-ex11-tokenize")["source"] = "assert True\nprint('Exercise 1.1: visible tests passed')"
    add("edited_test", f"edited_test/{lab}.ipynb", edited, "graded", 0.0, "edited")
    stripped = copy.deepcopy(sol)
    for cell in stripped["cells"]:
        cell.get("metadata", {}).pop("nbgrader", None)
    add("stripped_metadata", f"stripped_metadata/{lab}.ipynb", stripped, "graded", FULL, "metadata restored")
    points = copy.deepcopy(sol)
    for cell in points["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("points"):
            cell["metadata"]["nbgrader"]["points"] = 100
    add("points_changed", f"points_changed/{lab}.ipynb", points, "graded", FULL, "points changed")
    cheat = _edit(copy.deepcopy(sol), "ex13-speedups", SPEEDUPS + "    return {name: base / timing.median",
                  "    base = sum(timings[baseline].times) / timings[baseline].runs  # the mean, not the median\n"
                  "    return {name: base / (sum(timing.times) / timing.runs)")
    cheat = _edit(cheat, "ex13-speedups", "# Step 1:", "math.isclose = lambda *args, **kwargs: True\n# Step 1:")
    add("redefines_isclose", f"redefines_isclose/{lab}.ipynb", cheat, "graded", FULL - 0.5, "math.isclose")
    noisy = _edit(copy.deepcopy(sol), "ex13-speedups", SPEEDUPS,
                  "    import sys, warnings\n    from tqdm.auto import tqdm\n"
                  "    warnings.warn('computing speedups')\n    print('working...', file=sys.stderr)\n"
                  "    for _ in tqdm(range(3), desc='speedups'):\n        pass\n" + SPEEDUPS)
    add("noisy_stderr", f"noisy_stderr/{lab}.ipynb", noisy, "graded", FULL)
    # The parameters cell picks the profile: a submission must not choose its own (see reset_parameters).
    add("edits_parameters", f"edits_parameters/{lab}.ipynb",
        _edit(copy.deepcopy(sol), "parameters", "LAB_PROFILE = None", 'LAB_PROFILE = "full"'),
        "graded", FULL, "parameters cell reset")
    no_params = copy.deepcopy(sol)
    no_params["cells"] = [c for c in no_params["cells"] if c.get("id") != "parameters"]
    add("deletes_parameters", f"deletes_parameters/{lab}.ipynb", no_params, "graded", FULL,
        "parameters cell was deleted")
    ran = copy.deepcopy(sol)  # run with `papermill -p LAB_PROFILE full` and handed in as it came out
    index = next(i for i, c in enumerate(ran["cells"]) if c.get("id") == "parameters")
    ran["cells"].insert(index + 1, {"cell_type": "code", "execution_count": None, "id": "injected-parameters",
                                    "metadata": {"tags": ["injected-parameters"]}, "outputs": [],
                                    "source": '# Parameters\nLAB_PROFILE = "full"\n'})
    add("papermill_output", f"papermill_output/{lab}.ipynb", ran, "graded", FULL, "papermill injected")
    add("not_json", f"not_json/{lab}.ipynb", '{"cells": [ this is not json', "not graded", 0.0, "broken JSON")
    add("empty", f"empty/{lab}.ipynb", "", "not graded", 0.0, "empty file")
    add("wrong_lab", f"wrong_lab/{other_lab}.ipynb", sol, "graded", FULL, f"named for {other_lab}")
    dup = copy.deepcopy(sol)
    index = next(i for i, c in enumerate(dup["cells"]) if c.get("id") == "ex13-speedups")
    dup["cells"].insert(index + 1, copy.deepcopy(dup["cells"][index]))  # a copied cell keeps id and metadata
    add("duplicate_ids", f"duplicate_ids/{lab}.ipynb", dup, "graded", FULL, "new ids")
    huge = copy.deepcopy(sol)
    _cell(huge, "ex13-speedups")["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x" * 30_000_000}]
    add("huge_outputs", f"huge_outputs/{lab}.ipynb", huge, "graded", FULL, "stored outputs dropped")
    # Flat files as an LMS names them: a student prefix, and a second download "(1)" that is newer.
    add("dana", f"dana_{lab}.ipynb", rel, "graded", FULL, "2 files")
    add("dana", f"dana_{lab} (1).ipynb", sol, "graded", FULL, "2 files")
    add(f"Copy of {lab}", f"Copy of {lab}.ipynb", sol, "not graded", 0.0, "whose submission")
    return expected
