"""The GPU reference run's dry run: every code path that needs no CUDA runs, and its files are written."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tests"))
import gpu_reference_run as gpu_run  # noqa: E402


def test_the_dry_run_runs_every_section_and_writes_the_results_file(tmp_path):
    ran = subprocess.run([sys.executable, str(REPO / "tests" / "gpu_reference_run.py"), "--dry-run", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_reference.json").read_text())
    assert set(report["sections"]) == set(gpu_run.SECTIONS)
    assert all(s["status"] == "ok" and s["wall_s"] >= 0 for s in report["sections"].values()), report["sections"]
    model = report["sections"]["model"]["result"]
    assert model["GFLOP per forward"] > 0 and {"fp32", "bf16"} <= set(model["variants"])
    peaks = report["sections"]["peaks"]["result"]["peaks"]
    for name, v in model["variants"].items():  # figures consistent with the measured peak (not a speed claim:
        peak = peaks[name]["TFLOP/s"] * 1e12   # on a shared CPU a tiny matmul's "peak" can sit below the model)
        flops = model["GFLOP per forward"] * 1e9
        assert v["MFU"] == pytest.approx(flops / (v["median_ms"] / 1e3) / peak)
        assert v["floor_ms"] == pytest.approx(1e3 * flops / peak)
        assert v["below floor"] == (v["median_ms"] < v["floor_ms"])
    assert set(report["sections"]["compiled"]["result"]["timings"]) == {"eager", "compile default"}
    from helpers.results import COLUMNS
    rows = pd.read_csv(tmp_path / "results.csv")
    assert list(rows.columns) == COLUMNS and (rows["lab"] == "gpu_reference").all() and len(rows) >= 4
    assert (rows["median_ms"] > 0).all()


def test_a_section_past_its_cap_or_failing_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    def slow(run, out):
        time.sleep(5)

    def broken(run, out):
        raise ValueError("no such kernel")

    def fine(run, out):
        return {"figure": 1}
    monkeypatch.setattr(gpu_run, "SECTIONS", {"peaks": slow, "model": broken, "graphs": fine})
    class TinyRun:  # what main() and results_rows() read, with a short cap for the slow section
        def __init__(self, dry):
            self.dry, self.device, self.full, self.runs = True, "cpu", {"batch": 1, "seq": 8}, 1
            self.caps = {"peaks": 0.5, "model": 5, "graphs": 5}
    monkeypatch.setattr(gpu_run, "Run", TinyRun)
    assert gpu_run.main(["--dry-run", "--out", str(tmp_path)]) == 1
    sections = json.loads((tmp_path / "gpu_reference.json").read_text())["sections"]
    assert sections["peaks"]["status"] == "over its cap" and sections["peaks"]["wall_s"] < 3
    assert sections["model"]["status"] == "failed" and "no such kernel" in sections["model"]["error"]
    assert sections["graphs"]["status"] == "ok" and sections["graphs"]["result"] == {"figure": 1}


def test_datasheet_lookup_names_the_device_or_nothing():
    assert gpu_run.datasheet_for("NVIDIA H200")["bf16"] == pytest.approx(989.4)
    assert gpu_run.datasheet_for("Tesla T4")["fp32"] == pytest.approx(8.1)
    assert gpu_run.datasheet_for("AMD EPYC") == {}
