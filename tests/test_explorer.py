"""The results explorer: the pure view (filter, table, chart), clear errors, and widgets that redraw it."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers import explorer
from helpers.results import COLUMNS


def _results():
    rows = []
    for machine, features, date, fast in (("AMD EPYC", "avx2 avx512f", "2026-12-02", 10.0),
                                          ("AMD EPYC", "avx2", "2026-12-03", 30.0)):
        for variant, factor in (("fp32", 1.0), ("int8", 0.5), ("bf16", 2.0)):
            rec = dict.fromkeys(COLUMNS)
            rec.update(lab="03_quantization", variant=variant, machine=machine, cpu_features=features, device="cpu",
                       date=date, profile="full", model="m", batch_size=1, seq_len=128, threads=2, runs=100,
                       median_ms=fast * factor, p25_ms=fast * factor * 0.9, p75_ms=fast * factor * 1.1,
                       speedup=1 / factor, cosine_mean=1.0 if variant == "fp32" else 0.99)
            rows.append(rec)
    old = dict(rows[0], date="2026-11-01", median_ms=99.0)  # an older run on the first machine: not mixed in
    return pd.DataFrame(rows + [old], columns=COLUMNS)


def test_the_view_shows_one_machine_and_its_latest_run():
    results = _results()
    view = explorer.results_view(results, lab="03_quantization")
    assert list(view.table.index) == ["fp32", "int8", "bf16"]
    assert view.table.loc["fp32", "median_ms"] == 10.0  # 2026-12-02, not the older 99 ms
    assert "AMD EPYC (cpu; avx2 avx512f)" in view.title
    second = explorer.machine_of(results.iloc[3])
    other = explorer.results_view(results, lab="03_quantization", machine=second, metric="speedup",
                                  variants=["int8", "fp32"])
    assert list(other.table.index) == ["fp32", "int8"] and other.table.loc["fp32", "median_ms"] == 30.0
    assert other.figure.axes[0].get_xlabel().startswith("speedup")


def test_bad_choices_get_clear_errors():
    results = _results()
    with pytest.raises(ValueError, match="no results for lab '99_none'"):
        explorer.results_view(results, lab="99_none")
    with pytest.raises(ValueError, match="unknown metric"):
        explorer.results_view(results, lab="03_quantization", metric="speed")
    with pytest.raises(ValueError, match="has no results from"):
        explorer.results_view(results, lab="03_quantization", machine="a laptop")


def test_the_widgets_redraw_the_view_when_a_control_changes():
    pytest.importorskip("ipywidgets")
    results = _results()
    ui = explorer.Explorer(results, "03_quantization")
    assert ui.view.table.loc["fp32", "median_ms"] == 10.0 and len(ui.machine.options) == 2
    ui.machine.value = ui.machine.options[1]
    assert ui.view.table.loc["fp32", "median_ms"] == 30.0 and set(ui.variants.value) == {"fp32", "int8", "bf16"}
    ui.variants.value = ("int8",)
    assert list(ui.view.table.index) == ["int8"]
    ui.metric.value = "cosine_mean"
    assert ui.view.figure.axes[0].get_xlabel() == "cosine to the reference"


def test_explore_prints_the_static_view_first_and_says_when_a_lab_has_no_results(capsys):
    results = _results()
    assert explorer.explore(results, lab="05_reduced_precision") is None
    assert "No reference results for 05_reduced_precision" in capsys.readouterr().out
    assert explorer.explore(results, lab="03_quantization", widgets=False) is None
    out = capsys.readouterr().out
    assert "Reference results: 03_quantization on AMD EPYC" in out and "fp32" in out


def test_the_course_results_file_opens_in_the_explorer():
    results = explorer.load()
    for lab in sorted(set(results["lab"])):
        view = explorer.results_view(results, lab=lab)
        assert len(view.table) >= 1 and view.table["median_ms"].notna().all()


def test_no_widgets_in_the_kernels_nbgrader_starts(monkeypatch, capsys):
    """nbclient can miss a cell's reply after widget comms and wait out the cell timeout (jupyter/nbclient#312):
    grading kernels set COURSE_NO_WIDGETS, and the explorer then shows the static view only."""
    from helpers.grading import nbgrader_kernel_arguments
    results = explorer.load()
    lab = sorted(set(results["lab"]))[0]
    assert any("COURSE_NO_WIDGETS" in arg for arg in nbgrader_kernel_arguments())
    monkeypatch.setenv("COURSE_NO_WIDGETS", "1")
    assert explorer.explore(results, lab=lab) is None
    assert "Reference results" in capsys.readouterr().out
