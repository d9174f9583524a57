import json
import logging
import os
import sys
import warnings

import nbformat
import pytest

import helpers
from helpers.grading import visible_test_cells


def test_quiet_stderr_holds_back_every_kind_of_stderr(capfd):
    log = logging.getLogger("course-test")
    handler = logging.StreamHandler(sys.stderr)
    log.addHandler(handler)
    try:
        with helpers.quiet_stderr() as kept:
            print("python-level", file=sys.stderr)
            warnings.warn("a harmless warning")
            log.warning("a logged warning")
            os.write(2, b"written by C code to fd 2\n")
            print("normal output")
    finally:
        log.removeHandler(handler)
    out, err = capfd.readouterr()
    assert err == ""
    assert "normal output" in out
    held = int(out.split("held back ")[1].split(" line")[0])
    assert held >= 4  # the four writes above, none of them lost silently (a warning takes two lines)
    assert len(kept) == held and "python-level" in kept and "written by C code to fd 2" in kept
    assert any("a logged warning" in line for line in kept)


def test_quiet_stderr_restores_stderr_and_propagates_failures(capfd):
    with pytest.raises(AssertionError, match="wrong"):
        with helpers.quiet_stderr(report=False):
            print("noise", file=sys.stderr)
            assert False, "wrong"
    print("after", file=sys.stderr)
    os.write(2, b"fd after\n")
    out, err = capfd.readouterr()
    assert "after" in err and "fd after" in err and "noise" not in err and out == ""


def _notebook(tmp_path, sources):
    nb = nbformat.v4.new_notebook()
    for i, (src, meta) in enumerate(sources):
        cell = nbformat.v4.new_code_cell(src)
        if meta:
            cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": f"t{i}",
                                         "points": 1, "locked": True, "schema_version": 3}
        nb.cells.append(cell)
    path = tmp_path / "lab.ipynb"
    nbformat.write(nb, path)
    return path


def test_self_check_reports_each_visible_test_with_a_hint(tmp_path, capsys):
    path = _notebook(tmp_path, [
        ("x = 1", False),
        ("assert x == 1, 'x should be 1'", True),
        ("assert x == 2, 'x should be 2: set it in the cell above'", True),
        ("assert y == 3", True),
    ])
    results = helpers.self_check(path, namespace={"x": 1})
    assert [r.passed for r in results] == [True, False, False]
    assert "set it in the cell above" in results[1].message
    assert "run the cells above" in results[2].message
    out = capsys.readouterr().out
    assert "PASS t1" in out and "FAIL t2" in out and "Visible tests: 1 / 3 points" in out


def test_self_check_says_when_an_exercise_is_not_done(tmp_path):
    path = _notebook(tmp_path, [("def f():\n    raise NotImplementedError()", False), ("f()", True)])
    ns = {}
    exec("def f():\n    raise NotImplementedError()", ns)
    (result,) = helpers.self_check(path, namespace=ns)
    assert not result.passed and "not done yet" in result.message


def test_self_check_bad_input(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        helpers.self_check(tmp_path / "missing.ipynb")
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid notebook"):
        helpers.self_check(broken)
    assert helpers.self_check({"cells": []}) == []
    assert "no autograded test cells" in capsys.readouterr().out


def test_self_check_without_a_known_notebook_explains(monkeypatch, capsys):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert helpers.self_check() == []
    assert "Pass its path" in capsys.readouterr().out


def test_visible_test_cells_of_the_released_labs():
    from conftest import LABS, REPO
    for lab in LABS:
        nb = json.loads((REPO / "labs" / lab / f"{lab}.ipynb").read_text())
        cells = visible_test_cells(nb)
        assert cells, f"{lab} has no autograded test cells"
        assert all("BEGIN HIDDEN TESTS" not in src for _, _, src in cells)


def test_self_check_finds_the_open_notebook_from_the_jupyter_session(tmp_path, monkeypatch, capsys):
    _notebook(tmp_path, [("assert 1 + 1 == 2", True)])  # written as lab.ipynb
    monkeypatch.chdir(tmp_path)  # the kernel runs in the notebook's folder
    monkeypatch.setenv("JPY_SESSION_NAME", "course/labs/lab.ipynb")  # relative to the server root
    (result,) = helpers.self_check()  # found the notebook: one visible test ran
    assert result.passed and result.grade_id == "t0"


def test_kernels_nbgrader_starts_run_smoke_however_nbgrader_was_started(monkeypatch):
    """JupyterLab's Validate button and the Formgrader load nbgrader_config.py with sys.argv = jupyter-lab:
    their kernels must still run the smoke profile (students' own kernels are not touched)."""
    import nbformat
    from nbgrader.preprocessors import Execute
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    from conftest import REPO
    monkeypatch.delenv("LAB_PROFILE", raising=False)
    monkeypatch.setattr("sys.argv", ["jupyter-lab"])
    loader = PyFileConfigLoader("nbgrader_config.py", path=str(REPO))
    config = loader.load_config()
    import os
    assert "LAB_PROFILE" not in os.environ, "loading the config must not change this process's profile"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os; print(os.environ.get('LAB_PROFILE'))")])
    out, _ = Execute(config=Config(config)).preprocess(nb, {})
    assert out.cells[0].outputs[0]["text"].strip() == "smoke"


def test_nbgrader_runs_this_interpreter_even_when_a_user_python3_kernel_points_elsewhere(monkeypatch, tmp_path):
    """A user-level `python3` kernelspec for another Python (no torch there) must not be used."""
    import json
    import sys

    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbgrader.preprocessors import Execute
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    from conftest import REPO
    bogus = tmp_path / "data" / "kernels" / "python3"
    bogus.mkdir(parents=True)
    (bogus / "kernel.json").write_text(json.dumps({"argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f",
                                                            "{connection_file}"], "display_name": "x", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))  # searched first: it shadows every other python3
    monkeypatch.setattr("sys.argv", ["nbgrader", "autograde"])
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == "/nonexistent/python"
    config = PyFileConfigLoader("nbgrader_config.py", path=str(REPO)).load_config()
    name = config.Execute.kernel_name
    assert KernelSpecManager().get_kernel_spec(name).argv[0] == sys.executable
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    out, _ = Execute(config=Config(config)).preprocess(nb, {})
    assert out.cells[0].outputs[0]["text"].strip() == sys.executable
