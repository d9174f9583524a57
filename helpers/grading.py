"""Grading support: clean test cells, and a self-check students can run without nbgrader.

nbgrader gives a test cell zero points when it writes *anything* to stderr, even a
harmless warning or a progress bar.  :func:`quiet_stderr` wraps a test cell's work so
that such output cannot cost a student marks; what it held back is summarised on
stdout, so nothing is silently lost.

:func:`self_check` runs the visible test cells of the open notebook in the running
kernel and prints a pass/fail line for each, with the assertion's hint.  It works in
JupyterLab, Notebook 7, VS Code and Colab (where the nbgrader extension does not exist).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path


CELL_TIMEOUT_S = 120  # seconds a cell may run under nbgrader (autograde, Validate) before it is interrupted


def nbgrader_kernel_arguments() -> list[str]:
    """``c.Execute.extra_arguments`` for every kernel nbgrader starts: it runs the smoke profile unless
    ``LAB_PROFILE`` was set, however nbgrader was started (a command, JupyterLab's Validate button,
    the Formgrader), and shows no explorer widgets (``COURSE_NO_WIDGETS``, read by :func:`helpers.explore`):
    nbclient, which runs the notebook for nbgrader, can miss the reply to a cell that opened widget
    comms and wait out the whole cell timeout (jupyter/nbclient#312): 120 s lost right after the
    explorer's cell in 6 of 68 gradings run two at a time on the course's AVX-512 box (2026-12-07),
    for widgets nobody sees there. (tqdm's progress bars are widgets too; no stall followed one.) Students' own kernels are not touched. (nbgrader's default argument is kept.)"""
    return ["--HistoryManager.hist_file=:memory:",
            "--IPKernelApp.exec_lines=['import os; os.environ.setdefault(\"LAB_PROFILE\", \"smoke\"); "
            "os.environ.setdefault(\"COURSE_NO_WIDGETS\", \"1\")']"]


def configure_nbgrader_execution(c) -> None:
    """The execution settings of every nbgrader configuration of the course (the instructors' and the
    students' ``nbgrader_config.py``), kept in one place so *Validate* checks a lab the way grading
    runs it: the course kernel (:mod:`helpers.kernel`), :data:`CELL_TIMEOUT_S` per cell, then the
    cell is interrupted, and kernels that run the smoke profile (:func:`nbgrader_kernel_arguments`)."""
    from .kernel import register_course_kernel
    c.Execute.kernel_name = register_course_kernel()
    c.Execute.timeout = CELL_TIMEOUT_S
    c.Execute.interrupt_on_timeout = True
    c.Execute.extra_arguments = nbgrader_kernel_arguments()


def _stderr_handlers(stream) -> list[logging.StreamHandler]:
    """Logging handlers that hold a reference to ``stream`` (set when they were created)."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stream]


@contextlib.contextmanager
def quiet_stderr(report: bool = True):
    """Keep everything written to stderr inside the block out of the cell's output.

    Covers Python-level writes (``sys.stderr``, :mod:`warnings`, tqdm, logging handlers
    bound to stderr) and writes by C/C++ code to file descriptor 2.  With ``report``
    a one-line summary of what was held back is printed to stdout.  ``as kept`` gives a list
    that holds the held-back lines once the block has ended (to show the ones that matter).
    """
    kept: list[str] = []
    held = io.StringIO()
    original = sys.stderr
    swapped = _stderr_handlers(original)
    for handler in swapped:
        handler.setStream(held)
    fd_copy, fd_file = None, None
    try:
        original.flush()
        fd_file = tempfile.TemporaryFile(mode="w+b")
        fd_copy = os.dup(2)
        os.dup2(fd_file.fileno(), 2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (some embedded interpreters)
        fd_copy = None
    try:
        with warnings.catch_warnings():  # filters and showwarning are restored on exit
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: held.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            with contextlib.redirect_stderr(held):
                yield kept
    finally:
        for handler in swapped:
            handler.setStream(original)
        text = held.getvalue()
        if fd_copy is not None:
            os.dup2(fd_copy, 2)
            os.close(fd_copy)
            fd_file.seek(0)
            text += fd_file.read().decode("utf-8", errors="replace")
        if fd_file is not None:
            fd_file.close()
        lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
        kept.extend(lines)
        if report and lines:
            print(f"[quiet_stderr] held back {len(lines)} line(s) of stderr; first: {lines[0][:200]}")


# --- student self-check ----------------------------------------------------------------

@dataclass(frozen=True)
class CheckResult:
    grade_id: str
    points: float
    passed: bool
    message: str


def _find_open_notebook():
    """Return the open notebook as a dict, or None when it cannot be found."""
    try:  # Colab: ask the front end for the live notebook
        from google.colab import _message  # type: ignore
        reply = _message.blocking_request("get_ipynb", request="", timeout_sec=30)
        if reply and "ipynb" in reply:
            return reply["ipynb"]
    except Exception:  # noqa: BLE001 - not in Colab, or the request failed
        pass
    candidates = [os.environ.get("JPY_SESSION_NAME")]  # JupyterLab / Notebook 7 set this for kernels
    try:
        from IPython import get_ipython
        ip = get_ipython()
        if ip is not None:
            candidates.append(ip.user_ns.get("__vsc_ipynb_file__"))  # VS Code
    except ImportError:
        pass
    for cand in candidates:
        if not cand or not str(cand).endswith(".ipynb"):
            continue
        # JPY_SESSION_NAME may be relative to the server's root; the kernel runs in the notebook's folder
        for path in (Path(cand), Path.cwd() / Path(cand).name):
            if path.is_file():
                return json.loads(path.read_text(encoding="utf-8"))
    return None


def visible_test_cells(notebook: dict) -> list[tuple[str, float, str]]:
    """``(grade_id, points, source)`` of every autograded test cell in ``notebook``."""
    cells = []
    for cell in notebook.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") == "code" and meta.get("grade") and not meta.get("solution"):
            src = cell.get("source", "")
            cells.append((meta.get("grade_id", "?"), float(meta.get("points", 0)),
                          "".join(src) if isinstance(src, list) else src))
    return cells


def _hint(exc: BaseException) -> str:
    if isinstance(exc, NotImplementedError):
        return "the exercise above this test is not done yet (it still raises NotImplementedError)"
    if isinstance(exc, NameError):
        return f"{exc}: run the cells above this test first (Run > Run All Above Selected Cell)"
    if isinstance(exc, AssertionError):
        return str(exc) or "an assertion failed (no message)"
    return f"{type(exc).__name__}: {exc}"


def _run(source: str, namespace: dict | None) -> BaseException | None:
    try:
        from IPython import get_ipython
        ip = get_ipython()
    except ImportError:
        ip = None
    if ip is not None and namespace is None:
        from IPython.utils.capture import capture_output
        with capture_output():
            result = ip.run_cell(source, store_history=False, silent=True)
        return result.error_in_exec or result.error_before_exec
    try:
        exec(compile(source, "<test cell>", "exec"), namespace if namespace is not None else {})
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the student
        return exc
    return None


def self_check(notebook: str | os.PathLike | dict | None = None, namespace: dict | None = None) -> list[CheckResult]:
    """Run the visible tests of ``notebook`` (default: the open one) and print pass/fail per test.

    Run the whole notebook first: the tests use the names your cells define.  In JupyterLab
    the notebook is read from disk, so save it first; in Colab the live notebook is used.
    Hidden tests are not in your copy: passing here is necessary, not sufficient, for full marks.
    """
    if notebook is None:
        nb = _find_open_notebook()
        if nb is None:
            print("self_check: could not tell which notebook is open here. Pass its path, e.g. "
                  "helpers.self_check('01_eval_mode.ipynb').")
            return []
    elif isinstance(notebook, dict):
        nb = notebook
    else:
        path = Path(notebook)
        if not path.is_file():
            raise FileNotFoundError(f"self_check: no notebook at {path}")
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"self_check: {path} is not a valid notebook (JSON error: {exc})") from None
    results = []
    for grade_id, points, source in visible_test_cells(nb):
        with quiet_stderr(report=False):
            error = _run(source, namespace)
        results.append(CheckResult(grade_id, points, error is None, "" if error is None else _hint(error)))
    if not results:
        print("self_check: this notebook has no autograded test cells.")
        return results
    for r in results:
        mark = "PASS" if r.passed else "FAIL"  # plain letters: every font has them (an emoji font may be missing)
        line = f"{mark} {r.grade_id} ({r.points:g} pt)"
        print(line if r.passed else f"{line}: {r.message}")
    got = sum(r.points for r in results if r.passed)
    total = sum(r.points for r in results)
    print(f"Visible tests: {got:g} / {total:g} points. Hidden tests and written answers are graded separately.")
    return results
