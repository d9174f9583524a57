"""The results file the ``full`` profile writes, and the reference results page built from it.

``images/results.csv`` holds one row per lab, variant and machine: the measured median and
spread, the speedup against the lab's baseline in the same run, the quality figures beside
it, and the machine by CPU model and by the features that decide CPU results (avx2,
avx512f, avx512_vnni, avx512_bf16, amx). A lab's closing cell calls :func:`record_results`
with its summary table; in the ``smoke`` profile it writes nothing.

``images/README.md`` is the reference results page: ``python -m helpers.results`` renders
it from the file (a test checks that the two agree), grouped by machine, so a figure is
never quoted without the machine it came from.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

import pandas as pd

from .report import MEDIAN, P25, P75, SPEEDUP, images_dir

RESULTS_FILE = "results.csv"
PAGE_FILE = "README.md"
KEY = ["lab", "variant", "machine", "cpu_features", "device"]
COLUMNS = KEY + ["date", "profile", "model", "batch_size", "seq_len", "threads", "runs",
                 "median_ms", "p25_ms", "p75_ms", "speedup", "cosine_mean", "recall_at_1", "MRR",
                 "recall_vs_reference", "questions"]
# recall_vs_reference: the paired test's verdict (helpers.quality_figures); questions: how many
# question -> answer pairs the quality figures came from (rows before the 660-pair set have 120).
_QUALITY = {"cosine mean": "cosine_mean", "recall@1": "recall_at_1", "MRR": "MRR",
            "recall@1 vs reference": "recall_vs_reference"}


def results_path(folder: str | Path | None = None) -> Path:
    return Path(folder or images_dir()) / RESULTS_FILE


def read_results(path: str | Path | None = None) -> pd.DataFrame:
    """The results file as a table (empty, with the columns, when there is none yet)."""
    path = Path(path) if path is not None else results_path()
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path, dtype={"date": str})


def rows_from_table(lab: str, table: pd.DataFrame, profile, encoder, *, date: str | None = None,
                    questions: int | None = None) -> pd.DataFrame:
    """One results row per variant of a speedup table (:func:`helpers.speedup_table`).

    ``questions``: how many question -> answer pairs the quality figures came from, when the lab judged
    another set than the profile's (lab 12 keeps its training pairs out); by default the profile's."""
    from .quality import load_qa_pairs

    env = table.attrs.get("env", {})
    device = env.get("device", "cpu")
    if questions is None:
        questions = len(load_qa_pairs(getattr(profile, "eval_pairs", None)))
    rows = []
    for variant, row in table.iterrows():
        rec = {"lab": lab, "variant": str(variant), "machine": env.get("device_name", "?"),
               "cpu_features": env.get("cpu_features", ""), "device": device,
               "date": date or _dt.date.today().isoformat(), "profile": profile.name,
               "model": encoder.name, "batch_size": profile.batch_size, "seq_len": profile.seq_len,
               "threads": env.get("cpu_threads"), "runs": int(row.get("runs", 0)),
               "median_ms": row[MEDIAN], "p25_ms": row[P25], "p75_ms": row[P75], "speedup": row[SPEEDUP]}
        for column, name in _QUALITY.items():
            rec[name] = row[column] if column in table.columns else None
        rec["questions"] = questions if "recall@1" in table.columns else None
        rows.append(rec)
    return pd.DataFrame(rows, columns=COLUMNS)


def record_results(lab: str, table: pd.DataFrame, profile, encoder, *, folder: str | Path | None = None,
                   render: bool = True, questions: int | None = None) -> Path | None:
    """Add (or replace) this run's rows in the results file; only in a profile that saves figures.

    A row is replaced when the same lab, variant, machine, CPU features and device come again,
    so the file keeps the newest measurement per machine. ``render`` rewrites the page too.
    ``questions``: the number of Q&A pairs the quality came from, if not the profile's.
    Returns the file's path, or ``None`` when the profile records nothing (``smoke``).
    """
    if not profile.save_figures:
        return None
    path = results_path(folder)
    new = rows_from_table(lab, table, profile, encoder, questions=questions)
    old = read_results(path)
    if len(old):
        keys = set(map(tuple, new[KEY].astype(str).to_numpy()))
        old = old[[tuple(k) not in keys for k in old[KEY].astype(str).to_numpy()]]
        merged = pd.concat([old, new], ignore_index=True)
    else:
        merged = new
    merged = merged.sort_values(["machine", "cpu_features", "device", "lab"], kind="stable")
    merged["questions"] = pd.to_numeric(merged["questions"]).astype("Int64")  # a count, even beside empty cells
    path.parent.mkdir(parents=True, exist_ok=True)
    merged.to_csv(path, index=False, float_format="%.6g")
    if render:
        write_page(path)
    return path


def _fmt(value, pattern: str) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else pattern.format(value)


def render_page(results: pd.DataFrame) -> str:
    """The reference results page (Markdown) for a results table, grouped by machine, then lab."""
    lines = ["# Reference results", "",
             "Measured with each lab's `full` profile and written by `helpers.record_results` into "
             f"`{RESULTS_FILE}` beside this page; rebuilt with `uv run python -m helpers.results`. "
             "Every figure belongs to the machine it is listed under: CPU results depend on the "
             "instructions the CPU has (bf16 can be faster or several times slower than fp32; int8 "
             "gains depend on VNNI), so compare your own run with the machine closest to yours.", ""]
    if not len(results):
        lines += ["No results recorded yet: run a lab with `LAB_PROFILE=full`.", ""]
        return "\n".join(lines)
    for (machine, features, device), group in results.groupby(["machine", "cpu_features", "device"], sort=True):
        dates = sorted(set(group["date"].astype(str)))
        span = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
        lines += [f"## {machine} ({device}; {features})", "", f"Measured {span}.", ""]
        for lab, rows in group.groupby("lab", sort=True):
            first = rows.iloc[0]
            lines += [f"### {lab}", "",
                      f"{first['model']}, batch {first['batch_size']} x {first['seq_len']} tokens, "
                      f"{first['threads']} thread(s), {first['runs']} interleaved runs, profile `{first['profile']}`"
                      + (f"; quality on {int(first['questions'])} question-answer pairs" if pd.notna(first.get("questions")) else "")
                      + ".", "",
                      "| variant | median (ms) | p25-p75 (ms) | speedup | cosine mean | recall@1 | MRR | recall@1 vs reference |",
                      "|---|---|---|---|---|---|---|---|"]
            for _, r in rows.iterrows():
                lines.append(f"| {r['variant']} | {_fmt(r['median_ms'], '{:.2f}')} | "
                             f"{_fmt(r['p25_ms'], '{:.2f}')}-{_fmt(r['p75_ms'], '{:.2f}')} | "
                             f"{_fmt(r['speedup'], '{:.2f}x')} | {_fmt(r['cosine_mean'], '{:.4f}')} | "
                             f"{_fmt(r['recall_at_1'], '{:.3f}')} | {_fmt(r['MRR'], '{:.3f}')} | "
                             f"{_fmt(r.get('recall_vs_reference'), '{}')} |")
            lines.append("")
    return "\n".join(lines)


def write_page(results_file: str | Path | None = None) -> Path:
    """Render the page for ``results_file`` (default: the course's) next to it."""
    path = Path(results_file) if results_file is not None else results_path()
    page = path.parent / PAGE_FILE
    page.write_text(render_page(read_results(path)), encoding="utf-8")
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.results",
                                     description="Rebuild the reference results page from the results file.")
    parser.add_argument("--file", type=Path, default=None, help=f"results file (default: images/{RESULTS_FILE})")
    args = parser.parse_args(argv)
    print(f"wrote {write_page(args.file)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
