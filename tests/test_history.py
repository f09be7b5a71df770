"""Tests for the served model's history (ecdctr/evaluation/history.py, `ecdctr history`)."""

import json

import tensorflow as tf

from ecdctr.evaluation import history


def _report(folder, date, served):
    body = {"date": date, "status": "ok"}
    if served is not None:
        body[history.SERVED] = served
    (folder / f"{date}.json").write_text(json.dumps(body))


def _reports(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    _report(reports, "2026-03-02", {"version": 2, "auc": 0.71, "auc_ci": [0.69, 0.73],
                                    "gauc": 0.66, "logloss": 0.41, "clicks": 90, "rows": 2000})
    _report(reports, "2026-03-01", {"version": 1, "auc": 0.70, "gauc": 0.65, "logloss": 0.42,
                                    "clicks": 80, "rows": 1900})
    _report(reports, "2026-03-03", None)  # no serving version yet that day: left out
    (reports / "2026-03-04.json").write_text("[1, 2]")  # not an object: warned, left out
    (reports / "2026-03-05.json").write_text("")  # empty: warned, left out
    (reports / "notes.txt").write_text("not a report")
    return tmp_path


def test_the_series_is_read_from_the_reports_oldest_first_and_damaged_ones_are_named(tmp_path, caplog):
    work = _reports(tmp_path)
    rows = history.served_series(str(work))
    assert [r["date"] for r in rows] == ["2026-03-01", "2026-03-02"]
    assert [r["version"] for r in rows] == [1, 2]
    assert history.metric_names(rows)[:5] == ["auc", "gauc", "logloss", "clicks", "rows"]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "2026-03-04.json: damaged (a JSON list, not an object)" in warned
    assert "2026-03-05.json: damaged (empty)" in warned
    assert history.served_series(str(work), start=history.dt.date(2026, 3, 2))[0]["version"] == 2
    assert history.served_series(str(tmp_path / "nowhere")) == []


def test_the_table_has_a_line_a_day(tmp_path):
    table = history.text_table(history.served_series(str(_reports(tmp_path)))).splitlines()
    assert table[0].split()[:4] == ["date", "version", "auc", "gauc"]
    assert table[1].split()[:3] == ["2026-03-01", "1", "0.7000"]
    assert table[0].split().count("version") == 1  # a number, but said once, as the second column
    assert len(table) == 3


def test_tensorboard_gets_one_scalar_per_metric_with_the_day_as_step(tmp_path):
    rows = history.served_series(str(_reports(tmp_path)))
    folder = history.write_tensorboard(rows, str(tmp_path / "board"))
    seen = {}
    for event_file in tf.io.gfile.glob(f"{folder}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            for value in event.summary.value:
                seen[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    day = history.dt.date(2026, 3, 2).toordinal()
    assert abs(seen[("served/auc", day)] - 0.71) < 1e-6
    assert abs(seen[("served/logloss", day - 1)] - 0.42) < 1e-6
    assert ("served/version", day) in seen


def test_the_png_is_a_picture(tmp_path):
    rows = history.served_series(str(_reports(tmp_path)))
    path = history.write_png(rows, str(tmp_path / "served.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
