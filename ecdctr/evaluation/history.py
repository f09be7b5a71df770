"""The served model watched over time: each day's out-of-time figures of the version that was
serving, read from the daily reports, as a table, JSON, TensorBoard scalars and a PNG."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from absl import logging

from ecdctr.io import storage
from ecdctr.io.jsonio import DamagedFile, read_json_object

SERVED = "served"  # the daily report's key for the serving version's figures on the new day
# The series every day has (others the report carries are listed after them, when numeric).
HEADLINE = ("auc", "gauc", "logloss", "calibration_ratio", "clicks", "rows")
_REPORT_NAME = 15  # len("YYYY-MM-DD.json")


def _report_date(name: str) -> dt.date | None:
    if len(name) != _REPORT_NAME or not name.endswith(".json"):
        return None
    try:
        return dt.date.fromisoformat(name[:10])
    except ValueError:
        return None


def _served_entry(path: str) -> dict | None:
    """The report's served-model figures, or None (with a warning naming the file) when the
    report cannot be read, is not a JSON object or has none."""
    try:
        report = read_json_object(path)
    except (OSError, DamagedFile) as e:
        logging.warning("%s; left out of the history", " ".join(str(e).split())[:300])
        return None
    served = report.get(SERVED)
    return served if isinstance(served, dict) else None


def served_series(work: str, start: dt.date | None = None, end: dt.date | None = None
                  ) -> list[dict]:
    """One row a day, oldest first: the date, the serving version and its figures on that day's
    traffic, from <work>/reports/<date>.json (days without such figures are left out)."""
    folder = storage.join(work, "reports")
    if not storage.isdir(folder):
        return []
    rows = []
    for name in sorted(storage.listdir(folder)):
        date = _report_date(name)
        if date is None or (start and date < start) or (end and date > end):
            continue
        served = _served_entry(storage.join(folder, name))
        if served is not None:
            rows.append({"date": date.isoformat(), **served})
    return rows


def metric_names(rows: Sequence[dict]) -> list[str]:
    """The numeric series the rows hold: the headline ones first, then the others by name."""
    numeric = {k for row in rows for k, v in row.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    return [k for k in HEADLINE if k in numeric] + sorted(numeric - set(HEADLINE))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return "-" if value is None else str(value)


def text_table(rows: Sequence[dict]) -> str:
    """The series as an aligned text table, a day a line."""
    columns = ["date", "version", *(n for n in metric_names(rows) if n != "version")]
    cells = [columns] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
                     for line in cells)


def write_tensorboard(rows: Sequence[dict], folder: str) -> str:
    """One scalar per metric, step = the day's ordinal (days since 0001-01-01), under
    `folder` (local or a URI); returns the folder."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(folder)
    with writer.as_default():
        for row in rows:
            step = dt.date.fromisoformat(row["date"]).toordinal()
            for name in metric_names([row]):
                tf.summary.scalar(f"served/{name}", float(row[name]), step=step)
    writer.close()
    return folder


def write_png(rows: Sequence[dict], path: str,
              names: Sequence[str] = ("auc", "gauc", "logloss", "calibration_ratio")) -> str:
    """A panel per metric (days on the x axis), with the 95% interval shaded where the rows
    carry `<metric>_ci`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dates = [dt.date.fromisoformat(row["date"]) for row in rows]
    panels = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if any(isinstance(v, int | float) for v in values):
            panels[name] = (values, [row.get(f"{name}_ci") for row in rows])
    fig, axes = plt.subplots(max(len(panels), 1), 1, figsize=(9, 2.2 * max(len(panels), 1) + 0.6),
                             sharex=True, squeeze=False)
    for ax, (name, (values, intervals)) in zip(axes[:, 0], panels.items(), strict=False):
        points = [(d, v) for d, v in zip(dates, values, strict=True) if isinstance(v, int | float)]
        ax.plot([d for d, _ in points], [v for _, v in points], marker="o", markersize=3)
        bands = [(d, ci) for d, ci in zip(dates, intervals, strict=True)
                 if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci]
        if bands:
            ax.fill_between([d for d, _ in bands], [ci[0] for _, ci in bands],
                            [ci[1] for _, ci in bands], alpha=0.25, label="95% interval")
            ax.legend(loc="best", fontsize="small")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("served model, out of time, day by day")
    fig.autofmt_xdate()
    fig.tight_layout()
    with storage.open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
