import matplotlib

matplotlib.use("Agg")

import pytest

import helpers
from helpers.report import MEDIAN, P25, P75, RUNS, SPEEDUP

T = helpers.Timing.from_times


@pytest.fixture
def timings():
    env = {"device": "cpu", "device_name": "Test CPU", "cpu_threads": 1, "torch": "x"}
    return {"base": T("base", [0.010, 0.010, 0.012, 0.020], env=env),
            "fast": T("fast", [0.004, 0.005, 0.005, 0.006], env=env),
            "slow": T("slow", [0.020, 0.020, 0.020], env=env)}


def test_speedup_is_baseline_median_over_variant_median(timings):
    table = helpers.speedup_table(timings, baseline="base")
    assert list(table.index) == ["base", "fast", "slow"]
    assert table.loc["base", SPEEDUP] == pytest.approx(1.0)
    assert table.loc["fast", SPEEDUP] == pytest.approx(0.011 / 0.005)
    assert table.loc["slow", SPEEDUP] == pytest.approx(0.011 / 0.020)
    assert table.loc["fast", MEDIAN] == pytest.approx(5.0)
    assert table.loc["slow", RUNS] == 3
    assert (table[P25] <= table[MEDIAN]).all() and (table[MEDIAN] <= table[P75]).all()
    assert table.attrs["baseline"] == "base" and table.attrs["env"]["device_name"] == "Test CPU"


def test_default_baseline_is_the_first_variant(timings):
    assert helpers.speedup_table(timings).attrs["baseline"] == "base"


def test_quality_sits_beside_speed_and_missing_figures_stay_empty(timings):
    quality = {"base": {"cosine mean": 1.0, "recall@1": 0.85}, "fast": {"cosine mean": 0.99}}
    table = helpers.speedup_table(timings, "base", quality)
    assert table.loc["fast", "cosine mean"] == pytest.approx(0.99)
    assert table["recall@1"].isna().tolist() == [False, True, True]


def test_bad_baseline_or_quality_rows_are_reported(timings):
    with pytest.raises(KeyError, match="nope"):
        helpers.speedup_table(timings, baseline="nope")
    with pytest.raises(KeyError, match="ghost"):
        helpers.speedup_table(timings, quality={"ghost": {"cosine mean": 1.0}})
    with pytest.raises(ValueError):
        helpers.speedup_table({})


def test_styled_table_renders_html_with_units_and_environment(timings):
    html = helpers.styled(helpers.speedup_table(timings, "base", {"fast": {"cosine mean": 0.98765}})).to_html()
    assert "2.20x" in html and "0.9877" in html and "Test CPU" in html and "n/a" in html


def test_chart_has_one_bar_and_error_bar_per_variant(timings):
    table = helpers.speedup_table(timings, "base", {"base": {"cosine mean": 1.0}})
    fig = helpers.plot_speedups(table, title="t")
    ax = fig.axes[0]
    assert len(ax.patches) == 3
    from matplotlib.container import ErrorbarContainer
    (errorbars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errorbars.lines[2][0].get_segments()) == 3
    labels = [t.get_text() for t in ax.texts]
    assert any("2.20x" in s for s in labels) and any("cosine mean 1.000" in s for s in labels)


def test_figures_are_saved_only_in_profiles_that_ask(tmp_path, monkeypatch, timings):
    monkeypatch.setattr(helpers.report, "images_dir", lambda: tmp_path)
    fig = helpers.plot_speedups(helpers.speedup_table(timings))
    assert helpers.save_figure(fig, "x.png", helpers.PROFILES["smoke"]) is None
    path = helpers.save_figure(fig, "x.png", helpers.PROFILES["full"])
    assert path == tmp_path / "x.png" and path.stat().st_size > 1000


def test_images_dir_is_the_repository_images_folder():
    from conftest import REPO
    assert helpers.report.images_dir() == REPO / "images"


def test_verdict_is_read_from_the_numbers(timings):
    table = helpers.speedup_table(timings, baseline="base", quality={"fast": {"cosine mean": 0.9912}})
    text = helpers.verdict(table, fact="this CPU has no bf16 instructions")
    assert "'fast' was fastest" in text and "2.20x" in text and "do not overlap" in text
    assert "'slow' (0.55x)" in text, "a variant slower than the baseline beyond the spread is named"
    assert "cosine mean: 0.9912" in text and text.endswith("this CPU has no bf16 instructions.")
    close = {"base": T("base", [0.010, 0.011, 0.012]), "other": T("other", [0.0098, 0.0105, 0.0118])}
    assert "does not show a real difference" in helpers.verdict(helpers.speedup_table(close))
    worse = {"base": T("base", [0.010, 0.010, 0.010]), "other": T("other", [0.030, 0.030, 0.030])}
    assert "no variant beat the baseline" in helpers.verdict(helpers.speedup_table(worse))
