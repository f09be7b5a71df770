"""One implementation of every training step: the daily job and the `ecdctr` ablation train the
same model; each transfer key does what it says; checkpoints rebuild from their folder alone;
the training recipe keeps its best epoch."""

import dataclasses
import datetime as dt
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from ecdctr.cli.main import main
from ecdctr.config import Windows, load_config
from ecdctr.data.datasets import example_batch, held_out_counts
from ecdctr.data.vocab import traffic
from ecdctr.spec.feature_spec import load_spec
from ecdctr.training.checkpoint import Snapshot, describe, is_current, load_checkpoint
from ecdctr.training.loop import BestEpoch
from pipelines import daily, steps
from pipelines.ablations import Ablations
from pipelines.daily import run_daily
from pipelines.held_out import evaluation_share
from pipelines.snapshots import choose_snapshots, readable_snapshots, tpm_window

START = dt.date(2026, 1, 1)
DATE = dt.date(2026, 1, 9)
SPEC = os.path.abspath("features/default.yaml")
SPEC_OBJECT = load_spec(SPEC)


@pytest.fixture(scope="module")
def job(small_world, tmp_path_factory):
    """The daily job of DATE on a fresh work folder (export left out for speed), on conftest's
    small world linked in as root/logs, in the old scheme (windows.actr_through_date false):
    the A-CTR learns from the ad days before DATE, as the `ecdctr` ablation it is compared
    with does."""
    root = tmp_path_factory.mktemp("steps")
    (root / "logs").symlink_to(small_world, target_is_directory=True)
    path = root / "config.yaml"
    path.write_text(f"spec: {SPEC}\nlogs: logs\nwork: work\nexport: export\n"
                    "windows: {tpm_days: 30, cpm_days: 4, actr_days: 4, actr_through_date: false}\n"
                    "transfer: {tpm_snapshots: 3}\n"
                    "model: {hidden: [16, 8], multi_domain: adasparse}\n"
                    "tpm: {hidden: [8], batch_size: 256, max_epochs: 2}\n"
                    "cpm: {batch_size: 256, max_epochs: 2}\n"
                    # a tenth of 4 ad days of 80 rows holds about one click: hold out half
                    "actr: {batch_size: 128, max_epochs: 2, validation_share: 0.5}\n")
    config = load_config(str(path))
    patch = pytest.MonkeyPatch()
    patch.setattr(daily.DailyJob, "export", lambda self, entry, _: entry.update(status="skipped"))
    try:
        report = run_daily(config, DATE)
    finally:
        patch.undo()
    assert report["status"] == "ok", report
    return root, config, report


def _weights(model: keras.Model) -> dict[str, np.ndarray]:
    prefix = model.name + "/"
    return {v.name.removeprefix(prefix): v.numpy() for v in model.variables}


def test_ecdctr_ablation_trains_the_daily_jobs_model(job):
    root, config, _ = job
    shipped = load_checkpoint(str(root / "work" / "models" / "actr" / DATE.isoformat()))
    model, _ = Ablations(config, load_checkpoint(shipped.folder).spec, DATE).train("ecdctr", 0)
    ours, theirs = _weights(model), _weights(shipped.model)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, atol=1e-5, err_msg=name)


def test_checkpoint_rebuilds_from_its_folder_alone(job, tmp_path):
    root, _, _ = job
    folder = tmp_path / "actr"
    shutil.copytree(root / "work" / "models" / "actr" / DATE.isoformat(), folder)
    original = load_checkpoint(str(root / "work" / "models" / "actr" / DATE.isoformat()))
    moved = shutil.move(str(root / "work"), str(tmp_path / "elsewhere"))  # no data to read
    try:
        rebuilt = load_checkpoint(str(folder))
        batch = example_batch(rebuilt.spec)
        np.testing.assert_allclose(rebuilt.model(batch).numpy(), original.model(batch).numpy(),
                                   atol=1e-6)
        assert rebuilt.meta["kind"] == "actr" and rebuilt.meta["tpm_snapshots"]
        assert [s.sha256 for s in rebuilt.snapshots] == [
            s["sha256"] for s in rebuilt.meta["tpm_snapshots"]]  # the tables came back whole
    finally:
        shutil.move(moved, str(root / "work"))


def test_inspect_says_what_a_model_folder_is(job, capsys):
    root, _, report = job
    folder = root / "work" / "models" / "actr" / DATE.isoformat()
    text = describe(str(folder))
    train = report["steps"]["actr"]["train"]
    assert "kind:              actr" in text
    assert f"chosen epoch:      {train['chosen_epoch']} of {train['epochs_run']} run" in text
    held = train["validation_days"]
    assert (f"2026-01-05 .. 2026-01-08 (validation: 50% of the requests of {held[0]} .. "
            f"{held[-1]}, {train['validation_clicks']:,} clicks)") in text
    assert str(root / "work" / "models" / "cpm") in text  # its parent
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # the command in-process (test_logs runs the process)
        main(["inspect", str(folder)])
    assert done.value.code == 0 and "metrics actr on ad 2026-01-09:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        main(["inspect", str(root)])
    assert bad.value.code == 2 and "not a model folder" in capsys.readouterr().err


def test_every_fit_trains_through_its_newest_day_and_validates_on_its_held_out_share(job):
    root, config, report = job
    work = str(root / "work")
    for step, source, first, last, share in (("tpm", "natural", "2026-01-01", "2026-01-04", 0.1),
                                             ("cpm", "natural", "2026-01-05", "2026-01-08", 0.1),
                                             ("actr", "ad", "2026-01-05", "2026-01-08", 0.5)):
        train = report["steps"][step]["train"]
        assert train["train_days"] == [first, last], step  # the newest day is learned from too
        held = [(source, dt.date.fromisoformat(d)) for d in train["validation_days"]]
        assert held and train["validation_days"][-1] == last and train["validation_share"] == share
        counts = [held_out_counts(SPEC_OBJECT, steps.partition_files(work, s, [d]), share)
                  for s, d in held]
        rows, clicks = sum(r for r, _ in counts), sum(c for _, c in counts)
        assert (train["validation_rows"], train["validation_clicks"]) == (rows, clicks), step
        window = [(source, d) for d in steps.built_days(work, source, dt.date.fromisoformat(first),
                                                        dt.date.fromisoformat(last) + dt.timedelta(1))]
        # the held-out rows are never trained on: each epoch reads the window less them
        assert train["rows_read"] == (traffic(work, window)[0] - rows) * train["epochs_run"], step
        assert 1 <= train["chosen_epoch"] <= train["epochs_run"]
        assert len(train["validation_auc"]) == train["epochs_run"]


def test_the_old_scheme_trains_on_the_days_before_D_and_judges_on_all_of_D(job):
    root, config, report = job
    actr = report["steps"]["actr"]
    assert not config.windows.actr_through_date and "evaluation" not in actr
    assert actr["trained_days"][-1] == "2026-01-08" and actr["train"]["train_days"][1] == "2026-01-08"
    meta = load_checkpoint(str(root / "work" / "models" / "actr" / DATE.isoformat())).meta
    assert meta["learned_through"] == "2026-01-08" and meta["evaluation"] is None
    assert actr["metrics"]["actr"]["rows"] == traffic(config.work, [("ad", DATE)])[0]


def test_the_daily_report_and_tensorboard_carry_the_achieved_sparsity(job):
    root, _, report = job
    for name in ("actr", "cpm"):  # both AdaSparse: per layer, overall and per domain-size bin
        sparsity = report["steps"]["actr"]["metrics"][name]["sparsity"]
        assert len(sparsity["layers"]) == 2 and all(0 <= s <= 1 for s in sparsity["layers"])
        assert len(sparsity["bins"]) == 5
    board = root / "work" / "tensorboard" / "actr" / DATE.isoformat()
    tags = {v.tag for path in board.iterdir() if path.is_file()
            for e in tf.compat.v1.train.summary_iterator(str(path)) for v in e.summary.value}
    assert {"sparsity_evaluated/layer_0", "sparsity_evaluated/bin_1/layer_1"} <= tags


def _logit(p):
    return float(np.log(p / (1 - p)))


def _request_ids(work, side, date):
    """The request ids of the ad rows of date that a side of a request-id split reads."""
    files = steps.partition_files(work, "ad", [date])
    description = {SPEC_OBJECT.request_id: tf.io.FixedLenFeature([], tf.string)}
    return [i.decode() for batch in side.records(files, shuffle=False, seed=0).batch(512)
            for i in tf.io.parse_example(batch, description)[SPEC_OBJECT.request_id].numpy()]


def test_the_evaluation_share_of_D_is_never_trained_on(job, monkeypatch):
    """The A-CTR of D learns through D less D's evaluation share (the top hash buckets): neither
    the fit, nor its validation, nor the BatchNorm re-estimation, nor an update reads those
    rows, and the prior shift takes the CTR without them."""
    root, config, _ = job
    work = config.work
    cpm = load_checkpoint(str(next((root / "work" / "models" / "cpm").iterdir())))
    days = steps.window_days(work, "ad", DATE + dt.timedelta(days=1), 4)
    assert days[-1] == DATE
    evaluation = evaluation_share(SPEC_OBJECT, work, ("ad", DATE), 0.4)
    assert 0 < evaluation.rows < traffic(work, [("ad", DATE)])[0]
    read: list[int] = []
    recalibrate = steps.recalibrate_batchnorm
    monkeypatch.setattr(steps, "recalibrate_batchnorm", lambda model, ds, **kw: (
        read.append(sum(int(tf.size(labels)) for _, labels in ds)), recalibrate(model, ds, **kw))[1])
    trained = steps.derive_actr(cpm, SPEC_OBJECT, work, days,
                                dataclasses.replace(config.actr, max_epochs=1), config.transfer,
                                evaluation=evaluation)
    train = trained.meta["train"]
    assert trained.meta["learned_through"] == DATE.isoformat()
    assert train["validation_days"][-1] == DATE.isoformat()  # D's bottom buckets validate
    parts = [("ad", d) for d in days]
    learned = traffic(work, parts)[0] - train["validation_rows"] - evaluation.rows
    assert train["evaluation_rows"] == evaluation.rows
    assert train["rows_read"] == learned * train["epochs_run"]
    assert read == [learned, learned]  # BatchNorm re-estimated before and after the fit
    # the three sides of D's split: disjoint, together all of D
    validation = steps.choose_validation(SPEC_OBJECT, work, parts, config.actr.validation_share,
                                         config.actr.validation_min_clicks)
    judged = set(_request_ids(work, steps.split(SPEC_OBJECT, work, True, evaluation), DATE))
    validated = set(_request_ids(work, steps.split(SPEC_OBJECT, work, True, validation), DATE))
    trained_on = _request_ids(work, steps.split(SPEC_OBJECT, work, False, validation, evaluation),
                              DATE)
    assert len(judged) == evaluation.rows and not judged & (validated | set(trained_on))
    assert len(judged) + len(validated) + len(trained_on) == traffic(work, [("ad", DATE)])[0]
    rows, ctr = traffic(work, parts)
    learned_ctr = (rows * ctr - evaluation.clicks) / (rows - evaluation.rows)
    assert trained.meta["prior_shift"] == pytest.approx(
        _logit(learned_ctr) - _logit(cpm.meta["ctr"]), abs=1e-6)
    updated = steps.update_actr(trained, SPEC_OBJECT, work, [DATE], config.actr,
                                evaluation=evaluation)
    assert updated.meta["train"]["rows_read"] == (
        (traffic(work, [("ad", DATE)])[0] - evaluation.rows) * updated.meta["train"]["epochs_run"])


def test_a_validated_update_holds_out_its_share_and_grows_back_into_earlier_days(job):
    """transfer.validate_update: the update validates on the bottom share of the new day's
    requests (grown back into the earlier days to the click minimum), never trains on them,
    stops early on them, and records the paired check against where it started."""
    root, config, _ = job
    work = config.work
    actr = load_checkpoint(str(root / "work" / "models" / "actr" / DATE.isoformat()))
    assert actr.meta["learned_through"] == (DATE - dt.timedelta(days=1)).isoformat()
    earlier = steps.window_days(work, "ad", DATE, 4)
    updated = steps.update_actr(actr, SPEC_OBJECT, work, [DATE], config.actr, validate=True,
                                earlier=earlier)
    train, check = updated.meta["train"], updated.meta["train"]["update_check"]
    assert train["validation_days"][-1] == DATE.isoformat() and len(train["validation_days"]) > 1
    new_rows, new_clicks = held_out_counts(SPEC_OBJECT, steps.partition_files(work, "ad", [DATE]),
                                           config.actr.validation_share)
    assert new_clicks < config.actr.validation_min_clicks  # hence the earlier days
    assert train["rows_read"] == (traffic(work, [("ad", DATE)])[0] - new_rows) * train["epochs_run"]
    assert len(train["validation_auc"]) == train["epochs_run"] <= config.actr.max_epochs
    assert (check["rows"], check["clicks"]) == (train["validation_rows"], train["validation_clicks"])
    assert check["kept"] == "update" and check["ci"][0] <= check["auc_difference"] <= check["ci"][1]
    assert updated.meta["learned_through"] == DATE.isoformat()


def test_an_update_kept_out_leaves_the_lineage_as_it_was(job):
    """When the update check keeps the previous model (tests/test_update_check.py), update_actr
    keeps its lineage (learned_through, rows, window): the next update trains on the day again."""
    root, config, _ = job
    actr = load_checkpoint(str(root / "work" / "models" / "actr" / DATE.isoformat()))
    undone = {"rows_read": 10, "epochs_run": 1, "chosen_epoch": 1,
              "update_check": {"kept": "previous"}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "validated_update", lambda *args, **kwargs: dict(undone))
        kept = steps.update_actr(actr, SPEC_OBJECT, config.work, [DATE], config.actr, validate=True)
    assert kept.meta["learned_through"] == actr.meta["learned_through"]
    assert kept.meta["rows"] == actr.meta["rows"] and kept.meta["window"] == actr.meta["window"]
    assert kept.meta["train"]["update_check"]["kept"] == "previous"


def test_validation_grows_back_from_the_newest_day_to_the_click_minimum(job):
    root, _, _ = job
    work = str(root / "work")
    days = steps.built_days(work, "natural", dt.date(2026, 1, 5), DATE)
    parts = [("natural", d) for d in days]
    counts = {d: held_out_counts(SPEC_OBJECT, steps.partition_files(work, "natural", [d]), 0.3)
              for d in days}
    newest, second = days[-1], days[-2]
    one = steps.choose_validation(SPEC_OBJECT, work, parts, 0.3, counts[newest][1])
    assert one.days == (("natural", newest),) and (one.rows, one.clicks) == counts[newest]
    two = steps.choose_validation(SPEC_OBJECT, work, parts, 0.3, counts[newest][1] + 1)
    assert two.days == (("natural", second), ("natural", newest))
    assert two.clicks == counts[newest][1] + counts[second][1] > counts[newest][1]
    assert len(steps.choose_validation(SPEC_OBJECT, work, parts, 0.3, 10**9).days) == 4
    assert steps.choose_validation(SPEC_OBJECT, work, parts, 0.0, 1) is None  # share 0: none


@pytest.mark.parametrize("options, reset, reestimated, shifted, affine", [
    ({}, True, True, True, False),
    ({"reset_batchnorm": False}, False, False, True, False),
    ({"reset_batchnorm_affine": True}, True, True, True, True),
    ({"shift_output_prior": False}, True, True, False, False),
])
def test_each_transfer_key_does_what_it_says(job, options, reset, reestimated, shifted, affine,
                                             logged):
    root, config, _ = job
    cpm = load_checkpoint(str(next((root / "work" / "models" / "cpm").iterdir())))
    transfer = dataclasses.replace(config.transfer, **options)
    cfg = dataclasses.replace(config.actr, max_epochs=1)
    days = steps.window_days(config.work, "ad", DATE, 4)
    logged.clear()
    trained = steps.derive_actr(cpm, cpm.spec, config.work, days, cfg, transfer)
    lines = logged.messages
    counts = trained.meta["transfer"]["variables"]
    assert (counts["reset"] > 0) == reset
    assert any("BatchNorm statistics re-estimated" in x for x in lines) == reestimated
    assert (trained.meta["prior_shift"] != 0) == shifted
    assert any("output bias shifted" in x for x in lines) == shifted
    assert any("scale/offset reset" in x for x in lines) == affine


def test_a_numeric_feature_added_since_the_cpm_takes_its_statistics_from_the_ad_days(job, tmp_path):
    """A z-score feature added to the spec after the CPM trained: the A-CTR is derived (its
    statistics from its own ad days) instead of failing every day until a new CPM lands."""
    root, config, _ = job
    cpm = load_checkpoint(str(next((root / "work" / "models" / "cpm").iterdir())))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(open(SPEC).read().replace(
        "features:\n", "features:\n  ctr7: {kind: numeric, normalize: zscore}\n", 1))
    spec = load_spec(str(spec_file))
    assert "ctr7" in {f.name for f in spec.features} and "ctr7" not in cpm.meta["numeric_stats"]
    days = steps.window_days(config.work, "ad", DATE, 2)
    trained = steps.derive_actr(cpm, spec, config.work, days,
                                dataclasses.replace(config.actr, max_epochs=1), config.transfer)
    assert trained.meta["numeric_stats"]["ctr7"] == [0.0, 1.0]  # no such column in these logs
    assert trained.meta["numeric_stats"]["price"] == cpm.meta["numeric_stats"]["price"]


def test_snapshots_a_spec_change_left_behind_are_left_out_with_a_log_line(job, tmp_path, logged):
    """An entity feature renamed or resized: the old snapshots are left out (logged) and the
    CPM and A-CTR go on with those they can read, instead of failing until they age out."""
    root, config, _ = job
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(open(SPEC).read().replace("  user_id:\n", "  uid:\n    column: user_id\n", 1)
                         .replace("group_by: user_id", "group_by: uid"))
    renamed = load_spec(str(spec_file))
    old = Snapshot("2025-12", {"user_id": (["a"], np.ones((1, 16), "float32")),
                               "item_id": (["b"], np.ones((1, 16), "float32"))})
    new = Snapshot("2026-01", {"uid": (["a"], np.ones((1, 16), "float32")),
                               "item_id": (["b"], np.ones((1, 16), "float32"))})
    wide = Snapshot("2026-02", {"uid": (["a"], np.ones((1, 8), "float32")),
                                "item_id": (["b"], np.ones((1, 16), "float32"))})
    logged.clear()
    assert readable_snapshots([old, new], renamed) == [new]
    assert logged.messages == [
        "TPM snapshot 2025-12 left out: it holds a table keyed by 'user_id', a feature the spec "
        "no longer has (the spec changed since it trained; it leaves the choice as newer "
        "snapshots arrive)"]
    assert readable_snapshots([new, wide], renamed) == [wide]  # newest wins
    cpm = load_checkpoint(str(next((root / "work" / "models" / "cpm").iterdir())))
    assert cpm.snapshots  # all keyed by user_id: none readable with the renamed spec
    logged.clear()
    trained = steps.derive_actr(cpm, renamed, config.work, steps.window_days(config.work, "ad", DATE, 2),
                                dataclasses.replace(config.actr, max_epochs=1), config.transfer)
    assert trained.snapshots == [] and trained.model.tpm is None
    assert sum("left out" in line for line in logged.messages) == len(cpm.snapshots)


def test_tpm_window_and_snapshot_choice():
    w = Windows(tpm_days=10, cpm_days=5, actr_days=3)
    assert tpm_window(DATE, w, historical=True) == (dt.date(2025, 12, 25), dt.date(2026, 1, 4))
    assert tpm_window(DATE, w, historical=False) == (dt.date(2025, 12, 30), DATE)
    snapshots = [("2025-11", {"window": ["2025-05-01", "2025-10-31"]}),
                 ("2025-12", {"window": ["2025-06-01", "2025-11-30"]}),
                 ("2026-01", {"window": ["2025-07-01", "2025-12-31"]})]
    cpm_first = dt.date(2025, 12, 10)
    assert choose_snapshots(snapshots, cpm_first, 3, True) == ["2025-11", "2025-12"]
    assert choose_snapshots(snapshots, cpm_first, 1, True) == ["2025-12"]
    assert choose_snapshots(snapshots, cpm_first, 3, False) == ["2025-11", "2025-12", "2026-01"]
    assert choose_snapshots(snapshots, cpm_first, 0, False) == []


def test_historical_snapshots_and_tpm_warm_start_in_the_daily_job(job):
    root, _, report = job
    tpm = report["steps"]["tpm"]
    cpm = load_checkpoint(str(next((root / "work" / "models" / "cpm").iterdir())))
    snapshot = cpm.meta["tpm_snapshots"][0]["name"]
    window = load_checkpoint(str(root / "work" / "tpm" / snapshot)).meta["window"]
    assert window[1] < cpm.meta["window"][0]  # out of sample for the CPM's rows
    assert tpm["warm_start"] is None  # the first snapshot has none to start from


def test_tpm_warm_starts_from_its_parent(job):
    root, config, _ = job
    parent = load_checkpoint(str(root / "work" / "tpm" / "2026-01"))
    days = steps.built_days(config.work, "natural", START, dt.date(2026, 1, 3))
    cfg = dataclasses.replace(config.tpm, max_epochs=1, learning_rate=1e-9)
    trained = steps.train_tpm(parent.spec, config.work, days, cfg, parent)
    assert trained.meta["parent"] == parent.folder
    user = parent.spec.entities["user"].name
    keys, rows = steps.tpm_tables(trained)[user]
    parent_keys, parent_rows = steps.tpm_tables(steps.Trained(parent.model, parent.spec, {}, {}))[user]
    index = {k: i for i, k in enumerate(parent_keys)}
    shared = [k for k in keys if k in index][:20]
    assert shared  # ids of both windows keep (almost: a 1e-9 learning rate) their parent's vectors
    np.testing.assert_allclose(rows[[keys.index(k) for k in shared]],
                               parent_rows[[index[k] for k in shared]], atol=1e-4)


def test_no_tpm_snapshots_means_no_tpm_features(job):
    _, config, _ = job
    trained = steps.train_ctr(load_spec(SPEC), config.work, [("ad", DATE - dt.timedelta(days=1))],
                              dataclasses.replace(config.cpm, max_epochs=1))
    assert trained.model.tpm is None and trained.meta["train"]["validation_days"] == []


def test_best_epoch_stops_after_patience_and_restores_the_best_weights():
    model = keras.Sequential([keras.layers.Dense(1)])
    model.build((None, 2))
    best = BestEpoch(patience=2, name="t")
    best.set_model(model)
    kernel = model.layers[0].kernel
    for epoch, auc in enumerate([0.6, 0.7, 0.65, 0.64]):
        kernel.assign(tf.fill(kernel.shape, float(epoch)))
        model.stop_training = False
        best.on_epoch_end(epoch, {"val_auc": auc})
    assert model.stop_training and best.best_epoch == 2
    best.on_train_end()
    assert np.all(kernel.numpy() == 1.0)  # epoch 2's weights


def test_a_model_folder_of_the_older_format_is_refused_with_the_fix(job, tmp_path):
    root, _, _ = job
    folder = tmp_path / "old"
    shutil.copytree(root / "work" / "models" / "cpm" / "2026-01-05", folder)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["kind"], meta["model_name"]
    meta["tpm_snapshots"] = ["2026-01"]
    (folder / "meta.json").write_text(json.dumps(meta))
    assert not is_current(meta)
    for read in (load_checkpoint, describe):
        with pytest.raises(ValueError, match="older|before model folders described.*delete it"):
            read(str(folder))
