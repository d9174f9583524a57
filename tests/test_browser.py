"""The course in a real JupyterLab, in a real browser: the student's path (a released lab, a solved copy,
nbgrader's Validate, the self-check), the instructor's Formgrader, and the results explorer's widgets.

Playwright drives Debian's ``chromium`` (``apt-get install chromium``; ``playwright install`` cannot
download browsers on the course's machines), found on PATH or at ``$COURSE_CHROMIUM``. Without a
browser the tests are skipped with that reason. Screenshots go to ``$COURSE_ARTIFACTS``, else
``test-artifacts/`` (the student's path) or the test's temporary folder (the explorer).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = os.environ.get("COURSE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.notebook,
              pytest.mark.skipif(not CHROMIUM, reason="no chromium on PATH (apt-get install chromium) "
                                                      "or at $COURSE_CHROMIUM: the browser test needs one")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, logs: Path, **env_extra: str):
    """JupyterLab on a free localhost port with a token, serving ``root``; yields its base URL and
    token; stops it on exit (it shuts its kernels down, and a kernel also ends when its server does). ``expose_app_in_browser`` lets a test run
    JupyterLab's own commands (Run All) instead of hunting for menu items."""
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(logs / "config"), JUPYTER_RUNTIME_DIR=str(logs / "rt"),
               JUPYTERLAB_SETTINGS_DIR=str(logs / "settings"), **env_extra)
    news = logs / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false"}), encoding="utf-8")  # no news prompt over the page
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / "lab.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                               "--ServerApp.ip=127.0.0.1", "--allow-root", "--LabApp.news_url=",
                               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                               "--LabApp.expose_app_in_browser=True"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("JupyterLab did not start:\n" + (logs / "lab.log").read_text()[-2000:])
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def lab_server(tmp_path):
    """JupyterLab on localhost serving a one-cell notebook that opens the explorer on lab 03's results."""
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "id": "explore", "metadata": {},
                           "outputs": [], "source": ['import helpers\n',
                                                     'reference_view = helpers.explore(lab="03_quantization")']}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "explore.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    with jupyterlab(tmp_path, tmp_path / "server") as (base, token):
        yield f"{base}/lab/tree/explore.ipynb?token={token}"


def test_the_explorer_renders_and_its_controls_redraw_the_chart(lab_server, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(lab_server)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            # Run the cell; a key press sent before the kernel is connected is dropped, so try again
            # until its prompt shows that it runs ([*]) or ran ([1]).
            started = "() => /\\[(\\*|\\d+)\\]/.test(document.querySelector('.jp-Cell .jp-InputPrompt').textContent)"
            for _ in range(6):
                page.locator(".jp-Cell .cm-content").first.click()
                page.keyboard.press("Control+Enter")
                try:
                    page.wait_for_function(started, timeout=15_000)
                    break
                except PlaywrightTimeout:
                    continue
            try:
                page.wait_for_selector(".jp-OutputArea .widget-dropdown select", timeout=180_000)
            except PlaywrightTimeout:
                shot = _artifacts(tmp_path) / "explorer-failed.png"
                page.screenshot(path=str(shot), full_page=True)
                raise AssertionError(f"the explorer's widgets did not render (screenshot: {shot})") from None
            dropdowns = page.locator(".jp-OutputArea .widget-dropdown select")
            assert dropdowns.count() == 3  # lab, metric, machine
            charts = page.locator(".jp-OutputArea img")
            assert charts.count() == 2  # the static chart, and the one inside the widgets' output
            before = charts.nth(1).get_attribute("src")
            dropdowns.nth(1).select_option(label="speedup over the lab's baseline")
            page.wait_for_function(
                "before => { const imgs = document.querySelectorAll('.jp-OutputArea img');"
                " return imgs.length === 2 && imgs[1].src !== before; }", arg=before, timeout=120_000)
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
            shot = _artifacts(tmp_path) / "explorer-in-jupyterlab.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


# --- the student's path: a released lab, a solved copy, Validate, the self-check, the Formgrader -------

STUDENT_LAB = "01_eval_mode"  # the cheapest lab to run whole (about 15-30 s in the smoke profile)


def _artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $COURSE_ARTIFACTS, else test-artifacts/ in the repository (git ignores it)."""
    folder = Path(os.environ.get("COURSE_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def course_copy(tmp_path):
    """A course folder as an instructor has it (config, source, release) with a solved copy of lab 01
    beside its release, as a student who finished it would have."""
    from bad_submissions import correct_submission
    course = tmp_path / "course"
    for part in ("solutions", "labs"):
        shutil.copytree(REPO / part / STUDENT_LAB, course / part / STUDENT_LAB)
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    solved = course / "labs" / STUDENT_LAB / f"{STUDENT_LAB}_solved.ipynb"
    solved.write_text(json.dumps(correct_submission(STUDENT_LAB)), encoding="utf-8")
    return course


RUN_ALL_DONE = """() => {
    const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    if (!nb || !nb.content || !nb.sessionContext.session || nb.sessionContext.session.kernel.status !== 'idle') return false;
    return !Array.from(document.querySelectorAll('.jp-InputPrompt')).some(p => p.textContent.includes('*'));
}"""

CELLS = """() => window.jupyterapp.shell.currentWidget.content.widgets.map(c => ({
    id: c.model.id, type: c.model.type,
    count: c.model.type === 'code' ? c.model.executionCount : null,
    errors: c.model.type === 'code' ? c.model.outputs.toJSON().filter(o => o.output_type === 'error').map(o => o.ename) : [],
}))"""


def _open(browser, base: str, token: str, workspace: str, path: str):
    """A notebook in a page of its own (its own JupyterLab workspace), its kernel started and idle."""
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(f"{base}/lab/workspaces/{workspace}/tree/{path}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=30_000)
    return page


def _run_all(page, timeout_s: float) -> list[dict]:
    """JupyterLab's Run All, then the cells' state once the kernel is idle and nothing is queued.
    A request sent before the kernel is connected is dropped, so it is sent again until a prompt
    shows that a cell runs ([*]) or ran ([1])."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    for _ in range(6):
        # Started, not awaited: the command's promise settles only when every cell has run, and
        # page.evaluate has no time limit of its own (a promise that never settles hung CI).
        page.evaluate("() => { void window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        try:
            page.wait_for_function("() => Array.from(document.querySelectorAll('.jp-InputPrompt'))"
                                   ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))", timeout=15_000)
            break
        except PlaywrightTimeout:
            continue
    # JupyterLab may send the cells one after another: between two of them the kernel is idle and
    # no prompt shows [*] for a moment. Done is that state holding, with the same cells, 2 s apart.
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        page.wait_for_function(RUN_ALL_DONE, timeout=max(1.0, deadline - time.monotonic()) * 1000, polling=500)
        cells = page.evaluate(CELLS)
        if cells == previous:
            return cells
        if time.monotonic() > deadline:
            raise AssertionError(f"Run All did not settle within {timeout_s:.0f} s")
        previous = cells
        page.wait_for_timeout(2000)


def test_a_student_runs_validates_and_self_checks_a_lab_and_the_instructor_opens_the_formgrader(course_copy, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    shots = _artifacts(tmp_path)
    release = json.loads((course_copy / "labs" / STUDENT_LAB / f"{STUDENT_LAB}.ipynb").read_text(encoding="utf-8"))
    first_exercise = next(c["id"] for c in release["cells"]
                          if c.get("metadata", {}).get("nbgrader", {}).get("solution") and c["cell_type"] == "code")
    first_test = next(c["id"] for c in release["cells"]
                      if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c["cell_type"] == "code")
    env = {"LAB_PROFILE": "smoke", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with jupyterlab(course_copy, tmp_path / "server", **env) as (base, token), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            # 1. The release, Run All: it stops at the first exercise, whose stub raises.
            page = _open(browser, base, token, "release", f"labs/{STUDENT_LAB}/{STUDENT_LAB}.ipynb")
            try:
                page.wait_for_selector(".validate-button", timeout=15_000)
            except PlaywrightTimeout:
                page.screenshot(path=str(shots / "student-no-validate-button.png"), full_page=True)
                pytest.fail("nbgrader's Validate button is not in the notebook's toolbar: the nbgrader "
                            "JupyterLab extension is missing or disabled (jupyter labextension list)")
            cells = _run_all(page, timeout_s=240)
            ids = [c["id"] for c in cells]
            raised = [c for c in cells if c["errors"]]
            assert raised, "Run All on the release raised nothing: the first exercise's stub must stop it"
            stop = ids.index(raised[0]["id"])  # the stub itself, or the cell that first calls it
            assert ids.index(first_exercise) <= stop < ids.index(first_test), f"Run All on the release: {raised[:2]}"
            assert raised[0]["errors"] == ["NotImplementedError"], raised[0]
            assert not [c["id"] for c in cells[stop + 1:] if c["type"] == "code" and c["count"]], "cells ran past the stop"
            page.screenshot(path=str(shots / "student-release-run-all.png"), full_page=False)
            page.close()

            # 2. The solved copy: Validate (nbgrader runs it in a kernel of its own) says it passes.
            page = _open(browser, base, token, "solved", f"labs/{STUDENT_LAB}/{STUDENT_LAB}_solved.ipynb")
            page.locator(".validate-button").first.click()
            try:
                page.wait_for_selector(".jp-Dialog .validation-success, .jp-Dialog .validation-failed, "
                                       ".jp-Dialog-header", timeout=300_000)
            except PlaywrightTimeout:
                page.screenshot(path=str(shots / "student-validate-timeout.png"), full_page=True)
                raise AssertionError("Validate showed no result within 300 s") from None
            page.wait_for_timeout(300)
            verdict = page.locator(".jp-Dialog").inner_text()
            page.screenshot(path=str(shots / "student-validate.png"), full_page=False)
            assert "Success! Your notebook passes all the tests." in verdict, f"Validate on the solution said:\n{verdict[:1500]}"
            page.locator(".jp-Dialog .jp-mod-accept").first.click()

            # 3. Run All on the solved copy, then read the self-check's lines as the student sees them.
            cells = _run_all(page, timeout_s=300)
            assert not [c for c in cells if c["errors"]], [c for c in cells if c["errors"]]
            check = page.locator(".jp-Cell").last.locator(".jp-OutputArea-output").inner_text()
            lines = [ln for ln in check.splitlines() if ln.strip()]
            tests = [c["metadata"]["nbgrader"]["grade_id"] for c in release["cells"]
                     if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c["cell_type"] == "code"]
            for grade_id in tests:
                assert any(ln.startswith(f"PASS {grade_id} (") for ln in lines), (grade_id, lines)
            total = next(ln for ln in lines if ln.startswith("Visible tests:"))
            got, of = total.split(":")[1].split("points")[0].split("/")
            assert float(got) == float(of) > 0, total
            page.locator(".jp-Cell").last.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "student-self-check.png"), full_page=False)
            page.close()

            # 4. The instructor's Formgrader lists the lab.
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/formgrader?token={token}")
            page.wait_for_selector(f"table >> text={STUDENT_LAB}", timeout=60_000)  # its row under Manage Assignments
            page.screenshot(path=str(shots / "instructor-formgrader.png"), full_page=True)
        finally:
            browser.close()
