"""Student feedback that shows results, not the hidden tests or the mark scheme.

nbgrader's ``generate_feedback`` renders the *autograded* notebook, into which autograding
has put the hidden tests back, and the tracebacks of failed tests quote their source lines.
By design it shows both (nbgrader issue #917).  :class:`HideHiddenTests` runs before the
HTML export (see ``nbgrader_config.py``) and:

* removes every ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` region from test cells;
* shortens each error in a test cell to its last line (``AssertionError: <the hint>``),
  so a traceback cannot quote a hidden line;
* removes ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` regions wherever they are left
  (a mark scheme in a written-answer cell the student never replaced).
"""

from __future__ import annotations

from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

from .submissions import is_test_cell

HIDDEN = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
SOLUTION = ("### BEGIN SOLUTION", "### END SOLUTION")


def strip_region(source: str, begin: str, end: str, replacement: str | None = None) -> str:
    """``source`` without the lines from ``begin`` to ``end`` (inclusive); ``replacement`` marks the spot."""
    if isinstance(source, list):  # nbformat on disk may split a source into lines
        source = "".join(source)
    kept, inside = [], False
    for line in source.split("\n"):
        if begin in line:
            inside = True
            if replacement is not None:
                kept.append(line[: len(line) - len(line.lstrip())] + replacement)
            continue
        if inside:
            if end in line:
                inside = False
            continue
        kept.append(line)
    return "\n".join(kept)


class HideHiddenTests(Preprocessor):
    """Feedback preprocessor: hidden tests, their tracebacks and any mark scheme are left out."""

    enabled = Bool(True, help="nbconvert runs a preprocessor only when enabled").tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        cell.source = strip_region(cell.source, *HIDDEN, "# (hidden tests ran here; their code is not shown)")
        cell.source = strip_region(cell.source, *SOLUTION, "(model answer not shown)"
                                   if cell.cell_type == "markdown" else "# (model solution not shown)")
        if cell.cell_type == "code" and is_test_cell(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources
