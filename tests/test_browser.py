"""The results explorer in a real JupyterLab, in a real browser: its widgets render and redraw the chart.

Playwright drives Debian's ``chromium`` (``apt-get install chromium``; ``playwright install`` cannot
download browsers on the course's machines), found on PATH or at ``$COURSE_CHROMIUM``. Without a
browser the test is skipped with that reason. ``$COURSE_ARTIFACTS``, if set, receives a screenshot.
"""

from __future__ import annotations

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


@pytest.fixture
def lab_server(tmp_path):
    """JupyterLab on localhost serving a one-cell notebook that opens the explorer on lab 03's results."""
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "id": "explore", "metadata": {},
                           "outputs": [], "source": ['import helpers\n',
                                                     'reference_view = helpers.explore(lab="03_quantization")']}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "explore.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
                               "--ServerApp.ip=127.0.0.1", "--allow-root", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
                               "jupyterlab.NeverCheckForUpdate"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-2000:])
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


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
                shot = Path(os.environ.get("COURSE_ARTIFACTS") or tmp_path) / "explorer-failed.png"
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
            shot = Path(os.environ.get("COURSE_ARTIFACTS") or tmp_path) / "explorer-in-jupyterlab.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
