"""Speedup tables and charts: one look for the whole course, speed always beside quality.

A table is a plain :class:`pandas.DataFrame` (easy to test and to save); :func:`styled`
formats it for Jupyter, and :func:`plot_speedups` draws medians with their interquartile
range as error bars.  Speedup is always *baseline median / variant median*, measured in
the same run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # annotations only: the results page and its explorer need no torch
    from .timing import Timing

MEDIAN, P25, P75, MIN, RUNS, SPEEDUP = "median (ms)", "p25 (ms)", "p75 (ms)", "min (ms)", "runs", "speedup (x)"
TIME_COLUMNS = (MEDIAN, P25, P75, MIN, RUNS, SPEEDUP)


def speedup(baseline: Timing, variant: Timing) -> float:
    """How many times faster ``variant`` is than ``baseline`` (ratio of medians)."""
    return baseline.median / variant.median


def speedup_table(timings: Mapping[str, Timing], baseline: str | None = None,
                  quality: Mapping[str, Mapping[str, float]] | pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per variant: median, interquartile range, min, runs, speedup, then quality columns.

    ``baseline`` names the row the speedups are relative to (default: the first).
    ``quality`` maps variant -> {figure name: value}, e.g. cosine to fp32 or recall@1;
    a variant without a figure gets an empty cell, never a made-up one.
    """
    if not timings:
        raise ValueError("speedup_table() needs at least one timing")
    names = list(timings)
    baseline = names[0] if baseline is None else baseline
    if baseline not in timings:
        raise KeyError(f"baseline {baseline!r} is not one of the measured variants {names}")
    base = timings[baseline]
    rows = {n: {MEDIAN: t.median_ms, P25: t.p25_ms, P75: t.p75_ms, MIN: t.min_ms,
                RUNS: t.runs, SPEEDUP: speedup(base, t)} for n, t in timings.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "variant"
    if quality is not None:
        qual = quality if isinstance(quality, pd.DataFrame) else pd.DataFrame.from_dict(dict(quality), orient="index")
        extra = sorted(set(qual.index) - set(names))
        if extra:
            raise KeyError(f"quality figures given for variants that were not timed: {extra}")
        table = table.join(qual, how="left")
    table.attrs["baseline"] = baseline
    table.attrs["env"] = dict(base.env)
    return table


def quality_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in TIME_COLUMNS]


def environment_caption(table: pd.DataFrame) -> str:
    env = table.attrs.get("env", {})
    if not env:
        return ""
    features = f" [{env['cpu_features']}]" if env.get("cpu_features") else ""
    return (f"{env.get('device_name', '?')}{features} ({env.get('device', '?')}), {env.get('cpu_threads')} CPU thread(s), "
            f"torch {env.get('torch', '?')}; speedup vs '{table.attrs.get('baseline')}' in the same run")


def _overlaps(table: pd.DataFrame, a: str, b: str) -> bool:
    """Whether two variants' p25-p75 ranges overlap (then the run does not show they differ)."""
    return not (table.loc[a, P75] < table.loc[b, P25] or table.loc[b, P75] < table.loc[a, P25])


def verdict(table: pd.DataFrame, *, fact: str | None = None, quality: str | None = "cosine mean") -> str:
    """What this run's table says, in words: read from its numbers, so it holds on every machine.

    Names the fastest variant and its speedup over the baseline, says whether the difference is
    larger than the spread (p25-p75 ranges apart) or not, names variants that were *slower*
    than the baseline beyond the spread, quotes the fastest variant's ``quality`` column, and
    ends with ``fact`` (the hardware fact that explains the result, e.g. ``helpers.cpu_bf16().reason``).
    """
    baseline = table.attrs.get("baseline", table.index[0])
    env = table.attrs.get("env", {})
    where = f"{env.get('device_name', 'this machine')}, {env.get('cpu_threads', '?')} thread(s)"
    fastest = table[MEDIAN].idxmin()
    base_ms = table.loc[baseline, MEDIAN]
    parts = []
    if fastest == baseline:
        parts.append(f"On this run ({where}) no variant beat the baseline '{baseline}' ({base_ms:.2f} ms).")
    else:
        ratio = base_ms / table.loc[fastest, MEDIAN]
        real = ("the p25-p75 ranges overlap, so this run does not show a real difference"
                if _overlaps(table, fastest, baseline) else "outside the spread (the p25-p75 ranges do not overlap)")
        parts.append(f"On this run ({where}) '{fastest}' was fastest: {table.loc[fastest, MEDIAN]:.2f} ms against "
                     f"{base_ms:.2f} ms for '{baseline}', {ratio:.2f}x; {real}.")
        ties = [n for n in table.index if n not in (fastest, baseline) and _overlaps(table, n, fastest)]
        if ties:
            parts.append("Within the spread of the fastest: " + ", ".join(f"'{n}'" for n in ties) + ".")
    slower = [n for n in table.index if n != baseline and table.loc[n, MEDIAN] > base_ms
              and not _overlaps(table, n, baseline)]
    if slower:
        parts.append("Slower than the baseline beyond the spread: "
                     + ", ".join(f"'{n}' ({table.loc[n, SPEEDUP]:.2f}x)" for n in slower) + ".")
    if quality and quality in table.columns and pd.notna(table.loc[fastest, quality]):
        parts.append(f"Its {quality}: {table.loc[fastest, quality]:.4f}.")
    if fact:
        parts.append(fact.rstrip(".") + ".")
    return " ".join(parts)


def styled(table: pd.DataFrame):
    """The table formatted for a notebook (a pandas Styler): units, 2-3 significant digits, caption."""
    formats = {MEDIAN: "{:.2f}", P25: "{:.2f}", P75: "{:.2f}", MIN: "{:.2f}", RUNS: "{:d}", SPEEDUP: "{:.2f}x"}
    for col in quality_columns(table):
        if pd.api.types.is_float_dtype(table[col]):
            formats[col] = "{:.4f}"
    return (table.style.format({k: v for k, v in formats.items() if k in table.columns}, na_rep="n/a")
            .set_caption(environment_caption(table)))


def plot_speedups(table: pd.DataFrame, title: str | None = None, ax=None, quality: list[str] | None = None):
    """Horizontal bars of median time with p25-p75 error bars; each bar labelled with its speedup
    and the table's quality figures (``quality`` picks the columns; default: cosine mean and
    recall@1 where present, else the first quality column)."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(table) + 1.6))
    else:
        fig = ax.figure
    names = list(table.index)[::-1]
    med = table.loc[names, MEDIAN].to_numpy()
    err = [med - table.loc[names, P25].to_numpy(), table.loc[names, P75].to_numpy() - med]
    baseline = table.attrs.get("baseline")
    colors = ["#9e9e9e" if n == baseline else "#1f77b4" for n in names]
    ax.barh(names, med, xerr=err, color=colors, capsize=4, error_kw={"elinewidth": 1.2})
    qcols = quality_columns(table)
    if quality is None:
        quality = [c for c in ("cosine mean", "recall@1") if c in qcols] or qcols[:1]
    for y, name in enumerate(names):
        label = f"{table.loc[name, SPEEDUP]:.2f}x"
        for qcol in quality:
            if pd.notna(table.loc[name, qcol]):
                label += f"  |  {qcol} {table.loc[name, qcol]:.3f}"
        ax.text(med[y] + err[1][y], y, "  " + label, va="center", fontsize=9)
    ax.set_xlabel("median time per call (ms); bars show p25-p75")
    ax.set_xlim(0, max(med + err[1]) * (1.7 + 0.45 * len(quality)))
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title or "Median time per call (lower is better)")
    caption = environment_caption(table)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def images_dir() -> Path:
    """``images/`` of the course repository when running from a checkout, else ``./images``."""
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists() and (repo / "helpers").is_dir():
        return repo / "images"
    return Path.cwd() / "images"


def save_figure(fig, filename: str, profile=None) -> Path | None:
    """Save ``fig`` as ``images/<filename>`` if ``profile`` says so (``full``); return the path or None."""
    if profile is not None and not profile.save_figures:
        return None
    out = images_dir() / filename
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    return out
