"""Bad (and oddly named) submissions, generated from the real lab 01 notebooks, with the grade each must get.

Each fixture writes one file into a collected-submissions folder, laid out as an LMS or
Colab download would be, and says what the batch grader must report for it: the status,
the automatic score (lab 01 has 2.0 automatic points, 1.0 manual), and a phrase of the
reason. Lab 01 is used because it grades fastest; the defences are the same for every lab.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from notebook_tools import release_notebook, solution_notebook, source

LAB = "01_eval_mode"
FULL = 2.0  # lab 01's automatic points


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


def correct_submission(lab: str = LAB) -> dict:
    """What a student who solved every exercise hands in: the release, with the solution code typed in."""
    nb, sol = release_notebook(lab), solution_notebook(lab)
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


def build(root: Path) -> list[Expected]:
    """Write every fixture under ``root``; return what the grader must say about each."""
    sol, rel = correct_submission(), release_notebook(LAB)
    expected = []

    def add(student, rel_path, nb_or_text, status, score, reason=""):
        _write(root, rel_path, nb_or_text)
        if "(1)" in rel_path:  # a second download is the newer file
            os.utime(root / rel_path, (time.time() + 60, time.time() + 60))
        expected.append(Expected(student, status, score, reason))

    add("good", "good/Copy of 01_eval_mode.ipynb", sol, "graded", FULL)
    add("syntax_error", "syntax_error/01_eval_mode.ipynb",
        _edit(copy.deepcopy(sol), "ex13-speedups", "def speedups(timings, baseline):", "def speedups(timings, baseline)"),
        "graded", (0.0, FULL), "SyntaxError")
    add("infinite_loop", "infinite_loop/01_eval_mode.ipynb",
        _edit(copy.deepcopy(sol), "ex13-speedups", "def speedups(timings, baseline):",
              "while True:  # never ends: the cell is stopped after the time limit\n    pass\n\n\n"
              "def speedups(timings, baseline):"),
        "graded", (0.0, FULL), "interrupted")
    add("kills_kernel", "kills_kernel/01_eval_mode.ipynb",
        _edit(copy.deepcopy(sol), "ex13-speedups", "# Step 1:", "import os\nos._exit(1)\n# Step 1:"),
        "failed", 0.0, "kernel")
    deleted = copy.deepcopy(sol)
    deleted["cells"] = [c for c in deleted["cells"] if c.get("id") != "test-ex11-tokenize"]
    add("deleted_test", "deleted_test/01_eval_mode.ipynb", deleted, "graded", FULL, "deleted")
    edited = copy.deepcopy(rel)
    _cell(edited, "test-ex11-tokenize")["source"] = "assert True\nprint('Exercise 1.1: visible tests passed')"
    add("edited_test", "edited_test/01_eval_mode.ipynb", edited, "graded", 0.0, "edited")
    stripped = copy.deepcopy(sol)
    for cell in stripped["cells"]:
        cell.get("metadata", {}).pop("nbgrader", None)
    add("stripped_metadata", "stripped_metadata/01_eval_mode.ipynb", stripped, "graded", FULL, "metadata restored")
    points = copy.deepcopy(sol)
    for cell in points["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("points"):
            cell["metadata"]["nbgrader"]["points"] = 100
    add("points_changed", "points_changed/01_eval_mode.ipynb", points, "graded", FULL, "points changed")
    cheat = _edit(copy.deepcopy(sol), "ex13-speedups", SPEEDUPS + "    return {name: base / timing.median",
                  "    base = sum(timings[baseline].times) / timings[baseline].runs  # the mean, not the median\n"
                  "    return {name: base / (sum(timing.times) / timing.runs)")
    cheat = _edit(cheat, "ex13-speedups", "# Step 1:", "math.isclose = lambda *args, **kwargs: True\n# Step 1:")
    add("redefines_isclose", "redefines_isclose/01_eval_mode.ipynb", cheat, "graded", FULL - 0.5, "math.isclose")
    noisy = _edit(copy.deepcopy(sol), "ex13-speedups", SPEEDUPS,
                  "    import sys, warnings\n    from tqdm.auto import tqdm\n"
                  "    warnings.warn('computing speedups')\n    print('working...', file=sys.stderr)\n"
                  "    for _ in tqdm(range(3), desc='speedups'):\n        pass\n" + SPEEDUPS)
    add("noisy_stderr", "noisy_stderr/01_eval_mode.ipynb", noisy, "graded", FULL)
    add("not_json", "not_json/01_eval_mode.ipynb", '{"cells": [ this is not json', "not graded", 0.0, "broken JSON")
    add("empty", "empty/01_eval_mode.ipynb", "", "not graded", 0.0, "empty file")
    add("wrong_lab", "wrong_lab/02_torch_compile.ipynb", sol, "graded", FULL, "named for 02_torch_compile")
    dup = copy.deepcopy(sol)
    index = next(i for i, c in enumerate(dup["cells"]) if c.get("id") == "ex13-speedups")
    dup["cells"].insert(index + 1, copy.deepcopy(dup["cells"][index]))  # a copied cell keeps id and metadata
    add("duplicate_ids", "duplicate_ids/01_eval_mode.ipynb", dup, "graded", FULL, "new ids")
    huge = copy.deepcopy(sol)
    _cell(huge, "ex13-speedups")["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x" * 30_000_000}]
    add("huge_outputs", "huge_outputs/01_eval_mode.ipynb", huge, "graded", FULL, "stored outputs dropped")
    # Flat files as an LMS names them: a student prefix, and a second download "(1)" that is newer.
    add("dana", "dana_01_eval_mode.ipynb", rel, "graded", FULL, "2 files")
    add("dana", "dana_01_eval_mode (1).ipynb", sol, "graded", FULL, "2 files")
    add("Copy of 01_eval_mode", "Copy of 01_eval_mode.ipynb", sol, "not graded", 0.0, "whose submission")
    return expected
