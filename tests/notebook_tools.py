"""Reading nbgrader notebooks in tests: cells by role, and the text of their marked regions."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from conftest import REPO


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def solution_notebook(lab: str, course: Path = REPO) -> dict:
    return load(course / "solutions" / lab / f"{lab}.ipynb")


def release_notebook(lab: str, course: Path = REPO) -> dict:
    return load(course / "labs" / lab / f"{lab}.ipynb")


def autograded_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code" and nbgrader(c).get("grade") and not nbgrader(c).get("solution")]


def auto_points(nb: dict) -> float:
    return sum(float(nbgrader(c).get("points", 0)) for c in autograded_cells(nb))


def total_points(nb: dict) -> float:
    return sum(float(nbgrader(c).get("points", 0)) for c in nb["cells"] if nbgrader(c).get("grade"))


def region_lines(nb: dict, begin: str, end: str) -> tuple[set[str], set[str]]:
    """(lines inside begin/end regions, lines outside them), stripped, over all cells."""
    inside, outside = set(), set()
    for cell in nb["cells"]:
        within = False
        for line in source(cell).splitlines():
            if begin in line:
                within = True
            elif end in line:
                within = False
            elif line.strip():
                (inside if within else outside).add(line.strip())
    return inside, outside


_DEF = re.compile(r"^(?P<indent>[ \t]*)def (?P<name>\w+)\(.*\)[^:]*:[ \t]*(#.*)?$")


def noisy(nb: dict) -> dict:
    """``nb`` with every solution code cell, and every one-line ``def`` in it, writing a line to stderr.

    What a correct submission that prints a progress bar or a warning looks like to nbgrader:
    it must still get full marks (test cells hold back stderr with ``helpers.quiet_stderr``).
    """
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or not nbgrader(cell).get("solution"):
            continue
        lines = source(cell).split("\n")
        out = ["print('stderr from a solution cell', file=__import__('sys').stderr)"]
        for i, line in enumerate(lines):
            out.append(line)
            match = _DEF.match(line)
            if not match:
                continue
            body = next((ln for ln in lines[i + 1:] if ln.strip()), "")
            indent = body[: len(body) - len(body.lstrip())]
            if len(indent) > len(match["indent"]):
                out.append(f"{indent}print('stderr from {match['name']}()', file=__import__('sys').stderr)")
        cell["source"] = "\n".join(out)
    return nb
