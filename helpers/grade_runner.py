"""``python -m helpers.grade_runner LAB STUDENT``: autograde one submission, then write its feedback.

Run by :mod:`helpers.batch_grading` in a submission's scratch course (the working directory,
with its ``nbgrader_config.py``). Both steps go through nbgrader's own API in this one process,
so a submission pays for starting Python and importing nbgrader once instead of twice (about
4 s of the 5 s that ``nbgrader generate_feedback`` takes on its own). The batch grader keeps
running it as a separate process with a time limit, so a submission that hangs or crashes
cannot take the grader down with it.

Prints one JSON line: ``{"autograde": {...}, "feedback": {...}}``, each with nbgrader's
``success``, ``log`` and ``error``; the feedback step is skipped (``null``) when autograding failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _result(outcome: dict) -> dict:
    return {"success": bool(outcome.get("success")), "log": outcome.get("log") or "",
            "error": outcome.get("error") or ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.grade_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("lab", help="the assignment (lab) id")
    parser.add_argument("student", help="the student id in this scratch course")
    parser.add_argument("--cell-timeout", type=int, default=120, help="seconds a cell may run (default: 120)")
    args = parser.parse_args(argv)

    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(Path.cwd())).load_config()
    config.Execute.timeout = int(args.cell_timeout)
    api = NbGraderAPI(config=config)
    graded = _result(api.autograde(args.lab, args.student, force=True, create=True))
    feedback = _result(api.generate_feedback(args.lab, args.student, force=True)) if graded["success"] else None
    print(json.dumps({"autograde": graded, "feedback": feedback}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
