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
import os
import sys
from pathlib import Path


def die_with_parent() -> None:
    """On Linux, end this process when the grader that started it dies (``COURSE_GRADER_PID``).

    A Dask worker killed in the middle of a submission would otherwise leave this process, and the
    kernel it runs, grading on for nobody while the task is retried elsewhere; the kernel watches
    this process and ends with it. Elsewhere a no-op.
    """
    parent = os.environ.get("COURSE_GRADER_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # it died before the line above took effect
        os._exit(1)


def _result(outcome: dict) -> dict:
    return {"success": bool(outcome.get("success")), "log": outcome.get("log") or "",
            "error": outcome.get("error") or ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.grade_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("lab", help="the assignment (lab) id")
    parser.add_argument("student", help="the student id in this scratch course")
    parser.add_argument("--cell-timeout", type=int, default=120, help="seconds a cell may run (default: 120)")
    args = parser.parse_args(argv)
    die_with_parent()

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
