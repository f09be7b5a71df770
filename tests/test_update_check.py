"""The A-CTR's validated update: the paired check of an update against where it started, and
the starting weights put back when it validates worse (pipelines/update_check.py)."""

import numpy as np
import pytest
import tensorflow as tf

from ecdctr.data.datasets import make_dataset, parse_batch
from ecdctr.data.rows import RowParser, to_example
from ecdctr.models.ctr_model import ModelConfig, build_model
from ecdctr.spec.feature_spec import load_spec
from ecdctr.training.loop import fit
from pipelines.update_check import kept_if_not_worse, verdict

SPEC = load_spec("features/default.yaml")


def test_the_update_check_compares_paired_aucs():
    rng = np.random.default_rng(0)
    labels = (rng.random(4000) < 0.1).astype(np.int64)
    good = np.clip(0.1 + 0.1 * labels + 0.05 * rng.standard_normal(4000), 0.001, 0.999)
    assert verdict(labels, good, 1 - good)["kept"] == "previous"
    same = verdict(labels, good, good)
    assert same["kept"] == "update" and same["auc_difference"] == 0
    better = verdict(labels, 1 - good, good)
    assert better["kept"] == "update" and better["ci"][0] > 0
    assert better["auc_updated"] == pytest.approx(1 - better["auc_start"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model that learned a clear signal (clicks on the pricey items), and its rows."""
    parser = RowParser(SPEC)
    rows = [{"request_id": str(i), "ts": 1, "click": int(i % 4 == 0), "user_id": f"u{i % 7}",
             "item_id": f"i{i % 4}", "scenario": "s1", "position": "p0", "user_segment": "g1",
             "price": 9.0 if i % 4 == 0 else 1.0 + (i % 3)} for i in range(400)]
    examples = [to_example(SPEC, parser.parse(r)).SerializeToString() for r in rows]
    path = str(tmp_path_factory.mktemp("update") / "part-00000.tfrecord.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for example in examples:
            writer.write(example)
    features, _ = parse_batch(SPEC, tf.constant(examples[:8]))
    vocabs = {f.name: [f"u{k}" for k in range(7)] + [f"i{k}" for k in range(4)] + ["s1", "p0", "g1"]
              for f in SPEC.features if f.uses_vocab}
    model = build_model(SPEC.features, vocabs, {}, ModelConfig(hidden=(8,), learning_rate=0.01),
                        features, initial_ctr=0.25, domains=["s1|p0|g1"])
    fit(model, make_dataset(SPEC, [path], 50, shuffle=True, preprocess=model.preprocess,
                            rows=len(rows)), 8, 50, "actr")
    return model, make_dataset(SPEC, [path], 100)


def test_an_update_that_validates_worse_is_undone_and_says_so(trained, logged):
    """A fit that turns the ranking round is worse beyond noise: the starting weights come
    back, the log says so; a fit that changes nothing is a tie, and a tie keeps the update."""
    model, held = trained
    before = [w.copy() for w in model.get_weights()]
    output = model.logit.kernel

    def flip() -> dict:
        output.assign(-output)
        return {"epochs_run": 1}
    check = kept_if_not_worse(model, SPEC, held, flip, "actr")["update_check"]
    assert check["auc_start"] > 0.9 and check["auc_updated"] < 0.1 and check["clicks"] == 100
    assert check["kept"] == "previous" and check["ci"][1] < 0
    for restored, value in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(restored, value)
    assert "the update validates worse than the model it starts from" in logged.text
    tie = kept_if_not_worse(model, SPEC, held, lambda: {}, "actr")["update_check"]
    assert tie["kept"] == "update" and tie["auc_difference"] == 0
