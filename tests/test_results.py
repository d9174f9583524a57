"""The results file the full profile writes, and the reference results page built from it."""

import pytest

import helpers
from conftest import REPO
from helpers import results

T = helpers.Timing.from_times


class _Encoder:
    name = "test-model"


def _table(device_name, features, scale=1.0):
    env = {"device": "cpu", "device_name": device_name, "cpu_features": features, "cpu_threads": 1, "torch": "x"}
    timings = {"fp32": T("fp32", [0.010 * scale] * 3, env=env), "int8": T("int8", [0.005 * scale] * 3, env=env)}
    return helpers.speedup_table(timings, quality={
        "fp32": {"cosine mean": 1.0, "recall@1": 0.82, "MRR": 0.86, helpers.REFERENCE_CHANGE: "reference"},
        "int8": {"cosine mean": 0.99, "recall@1": 0.8, "MRR": 0.85,
                 helpers.REFERENCE_CHANGE: "-2.0 pts [-3.1, -0.9], p=0.001"}})


def test_smoke_records_nothing_and_full_records_one_row_per_variant(tmp_path):
    table = _table("CPU A", "avx2")
    assert helpers.record_results("01_lab", table, helpers.PROFILES["smoke"], _Encoder(), folder=tmp_path) is None
    assert not (tmp_path / results.RESULTS_FILE).exists()
    full = helpers.get_profile("full")
    path = helpers.record_results("01_lab", table, full, _Encoder(), folder=tmp_path)
    rows = results.read_results(path)
    assert list(rows["variant"]) == ["fp32", "int8"] and set(rows["machine"]) == {"CPU A"}
    assert rows.loc[rows["variant"] == "int8", "speedup"].item() == pytest.approx(2.0)
    int8 = rows[rows["variant"] == "int8"].iloc[0]
    assert int8["recall_vs_reference"] == "-2.0 pts [-3.1, -0.9], p=0.001", "the paired verdict is kept"
    assert int8["questions"] == len(helpers.load_qa_pairs()), "how many pairs the quality came from"
    assert (tmp_path / results.PAGE_FILE).read_text(encoding="utf-8") == results.render_page(rows)
    held_out = helpers.record_results("12_lab", table, full, _Encoder(), folder=tmp_path, questions=440)
    assert set(results.read_results(held_out).query("lab == '12_lab'")["questions"]) == {440}, \
        "a lab that judged its own set of pairs says how many"


def test_a_new_run_replaces_its_own_rows_and_keeps_other_machines(tmp_path):
    full = helpers.get_profile("full")
    helpers.record_results("01_lab", _table("CPU A", "avx2"), full, _Encoder(), folder=tmp_path)
    helpers.record_results("01_lab", _table("CPU B", "avx2 avx512f avx512_bf16"), full, _Encoder(), folder=tmp_path)
    helpers.record_results("01_lab", _table("CPU A", "avx2", scale=2.0), full, _Encoder(), folder=tmp_path)
    rows = results.read_results(tmp_path / results.RESULTS_FILE)
    assert len(rows) == 4
    a = rows[(rows["machine"] == "CPU A") & (rows["variant"] == "fp32")]
    assert a["median_ms"].item() == pytest.approx(20.0), "the newer run of the same machine replaced the older"
    page = (tmp_path / results.PAGE_FILE).read_text(encoding="utf-8")
    assert "## CPU A (cpu; avx2)" in page and "## CPU B (cpu; avx2 avx512f avx512_bf16)" in page


def test_the_course_page_agrees_with_the_course_results_file():
    """images/README.md is rendered from images/results.csv: rebuild it with `python -m helpers.results`."""
    path = REPO / "images" / results.RESULTS_FILE
    assert path.is_file(), "the full profile's results file is committed with the figures"
    rows = results.read_results(path)
    assert set(results.COLUMNS) <= set(rows.columns)
    assert len(rows) and rows["machine"].notna().all() and (rows["cpu_features"].astype(str).str.len() > 0).all(), (
        "every row names its machine by CPU model and features")
    page = (REPO / "images" / results.PAGE_FILE).read_text(encoding="utf-8")
    assert page == results.render_page(rows), "images/README.md is stale: run `uv run python -m helpers.results`"
