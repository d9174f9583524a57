"""Explore the course's results file with widgets: machine, lab, variants and metric, table and chart.

The reference results (``images/results.csv``, one row per lab, variant and machine) are a table a
person wants to slice: "this lab, on the box like mine, speedup against quality". ``explore()``
shows the chosen slice as a table and a bar chart and, where a notebook front end can draw
widgets (JupyterLab, Colab), dropdowns and checkboxes above them that redraw both.

Headless runs (papermill, autograding) get the same table and chart as ordinary outputs first: the
widgets add to them, they never replace them, and nothing is written to stderr.
:func:`results_view` is the pure part (filter, table, chart) and what the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# What a person can plot, by the results file's column, and its axis label.
METRICS = {"median_ms": "median (ms), p25-p75 bars", "speedup": "speedup over the lab's baseline",
           "cosine_mean": "cosine to the reference", "recall_at_1": "recall@1", "MRR": "MRR"}


def machine_of(row) -> str:
    """One label per machine: its CPU (or GPU) model, the device, and the CPU features that decide results."""
    features = row["cpu_features"] if isinstance(row["cpu_features"], str) and row["cpu_features"] else "no CPU flags"
    return f"{row['machine']} ({row['device']}; {features})"


def _with_machines(results: pd.DataFrame) -> pd.DataFrame:
    if "machine kind" in results.columns:
        return results
    table = results.copy()
    table["machine kind"] = [machine_of(r) for _, r in table.iterrows()] if len(table) else []
    return table


def _latest_run(rows: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The newest date among ``rows`` and its rows: figures from different days do not mix."""
    dates = rows["date"].astype(str)
    latest = dates.max()
    return latest, rows[dates == latest]


@dataclass
class View:
    """One slice of the results: its rows, the table a person reads, and the chart."""

    rows: pd.DataFrame
    table: pd.DataFrame
    figure: object
    title: str


def results_view(results: pd.DataFrame, *, lab: str, machine: str | None = None, metric: str = "median_ms",
                 variants: list[str] | None = None) -> View:
    """Rows of ``lab`` on ``machine`` (a :func:`machine_of` label; default: the first that ran the lab),
    the chosen ``variants`` (default: all), as a table and a horizontal bar chart of ``metric``."""
    import matplotlib.pyplot as plt

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: choose one of {list(METRICS)}")
    table = _with_machines(results)
    labs = sorted(table["lab"].unique()) if len(table) else []
    if lab not in labs:
        raise ValueError(f"no results for lab {lab!r} in this file; it has {labs or 'none'} "
                         f"(run that lab with LAB_PROFILE=full to record some)")
    of_lab = table[table["lab"] == lab]
    machines = list(dict.fromkeys(of_lab["machine kind"]))
    machine = machine or machines[0]
    if machine not in machines:
        raise ValueError(f"lab {lab!r} has no results from {machine!r}; it has {machines}")
    latest, rows = _latest_run(of_lab[of_lab["machine kind"] == machine])
    known = list(rows["variant"])
    chosen = known if variants is None else [v for v in known if v in set(variants)]
    rows = rows.set_index("variant").loc[chosen].reset_index()
    columns = ["variant", "median_ms", "p25_ms", "p75_ms", "speedup", "cosine_mean", "recall_at_1",
               "recall_vs_reference"]
    shown = rows[[c for c in columns if c in rows.columns]].set_index("variant")
    shown = shown.dropna(axis=1, how="all").round({"median_ms": 2, "p25_ms": 2, "p75_ms": 2, "speedup": 2,
                                                    "cosine_mean": 4, "recall_at_1": 3})
    label = METRICS[metric]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * max(len(rows), 2) + 1.4))
    values = pd.to_numeric(rows[metric], errors="coerce")
    if metric == "median_ms":
        errors = [values - rows["p25_ms"], rows["p75_ms"] - values]
        ax.barh(rows["variant"], values, xerr=errors, color="#4C72B0", capsize=3)
    else:
        ax.barh(rows["variant"], values, color="#4C72B0")
    ax.invert_yaxis()
    ax.set_xlabel(label)
    first = rows.iloc[0] if len(rows) else None
    title = (f"{lab} on {machine}, {latest}" + (f"\n{first['model']}, batch {first['batch_size']} x "
                                                  f"{first['seq_len']}, {first['threads']} thread(s)"
                                                  if first is not None else ""))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    plt.close(fig)  # shown on request (display), not twice by the inline backend
    return View(rows=rows, table=shown, figure=fig, title=title)


def load(path=None) -> pd.DataFrame:
    """The course's results file (``images/results.csv``), or the one at ``path``."""
    from .results import read_results
    return read_results(path)


class Explorer:
    """The widgets and the view they show; :meth:`show` redraws (called by every control's change)."""

    def __init__(self, results: pd.DataFrame, lab: str, metric: str = "median_ms"):
        import ipywidgets as w

        self.results = _with_machines(results)
        labs = sorted(self.results["lab"].unique())
        self.lab = w.Dropdown(options=labs, value=lab, description="lab")
        self.machine = w.Dropdown(description="machine", layout=w.Layout(width="95%"))
        self.metric = w.Dropdown(options=[(label, column) for column, label in METRICS.items()], value=metric, description="metric")
        self.variants = w.SelectMultiple(description="variants", rows=6, layout=w.Layout(width="95%"))
        self.output = w.Output()
        self._updating = False
        self._machines_for(lab)
        for control in (self.lab, self.machine, self.metric, self.variants):
            control.observe(self._changed, names="value")
        self.widget = w.VBox([w.HBox([self.lab, self.metric]), self.machine, self.variants, self.output])
        self.show()

    def _machines_for(self, lab: str) -> None:
        kinds = list(dict.fromkeys(self.results.loc[self.results["lab"] == lab, "machine kind"]))
        self.machine.options = kinds
        self.machine.value = kinds[0]
        self._variants_for(lab, kinds[0])

    def _variants_for(self, lab: str, machine: str) -> None:
        _, rows = _latest_run(self.results[(self.results["lab"] == lab) & (self.results["machine kind"] == machine)])
        names = list(rows["variant"])
        self.variants.options = names
        self.variants.value = tuple(names)

    def _changed(self, change) -> None:
        if self._updating:  # a control this method itself is resetting
            return
        self._updating = True
        try:
            if change["owner"] is self.lab:
                self._machines_for(self.lab.value)
            elif change["owner"] is self.machine:
                self._variants_for(self.lab.value, self.machine.value)
        finally:
            self._updating = False
        self.show()

    def show(self) -> None:
        from IPython.display import display
        self.view = results_view(self.results, lab=self.lab.value,
                                 machine=self.machine.value, metric=self.metric.value,
                                 variants=list(self.variants.value))
        self.output.clear_output(wait=True)
        with self.output:
            display(self.view.table)
            display(self.view.figure)


def explore(results: pd.DataFrame | None = None, *, lab: str, metric: str = "median_ms", widgets: bool | None = None):
    """Show ``lab``'s reference results: the table and chart of its first machine as plain outputs, then
    (``widgets``, where ipywidgets is installed) the controls to choose machine, variants and metric.

    Returns the :class:`Explorer` (or ``None`` without widgets). A lab with no recorded results gets
    one line saying so, not an error: a course checkout may have none yet. ``widgets=None`` shows them
    unless ``$COURSE_NO_WIDGETS`` is set, as it is in every kernel nbgrader starts: nobody sees them
    there, and its notebook runner can stall on them (see ``helpers.grading.nbgrader_kernel_arguments``).
    """
    import os

    from IPython.display import display

    if widgets is None:
        widgets = not os.environ.get("COURSE_NO_WIDGETS", "").strip()

    if results is None:
        from .results import results_path
        where, results = results_path(), load()
    else:
        where = "these results"
    if not len(results) or lab not in set(results["lab"]):
        print(f"No reference results for {lab} in {where} yet (a full-profile run of the lab records them).")
        return None
    view = results_view(results, lab=lab, metric=metric)
    print(f"Reference results: {view.title.splitlines()[0]}")
    display(view.table)
    display(view.figure)
    if not widgets:
        return None
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        print("(ipywidgets is not installed: the table and chart above are the whole view)")
        return None
    explorer = Explorer(results, lab, metric)
    display(explorer.widget)
    return explorer
