"""Vocabularies and TPM id keys ship as SavedModel asset files: no id in saved_model.pb, the
same ids as training, tokens a vocabulary line cannot hold refused, the training tables back."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from ecdctr.data.datasets import parse_batch
from ecdctr.data.rows import RowParser, to_example
from ecdctr.models.ctr_model import ModelConfig, build_model
from ecdctr.serving.export import OUTPUT_KEY, stage_saved_model
from ecdctr.serving.vocab_assets import string_lookups, vocabulary_assets
from ecdctr.spec.feature_spec import load_spec

SPEC = load_spec("features/default.yaml")
# ids a vocabulary file holds as they are: tab, a carriage return inside, Unicode separators
ODD = ["u\tA", "u\rB", "u\u2028C", "u\x85D", "u \x0bE", "ü-F"]
USERS = [f"user-{i}" for i in range(5)] + ODD
ITEMS = ["item-0", "item-1", "item\t2"]


def _rows(users):
    return [{"request_id": str(i), "ts": 1, "click": i % 2, "user_id": u, "item_id": ITEMS[i % 3],
             "scenario": "s1", "position": "p0", "user_segment": "g1", "price": 3.0 + i,
             "category": "c1", "hist_categories": ["c1", "c\t2"][: i % 3]}
            for i, u in enumerate(users)]


def _examples(users):
    parser = RowParser(SPEC)
    return [to_example(SPEC, parser.parse(r)).SerializeToString() for r in _rows(users)]


def _model(users=USERS, seed=0):
    features, _ = parse_batch(SPEC, tf.constant(_examples(users)))
    vocabs = {f.name: ["s1", "p0", "g1", "c1", "c\t2"] for f in SPEC.features if f.uses_vocab}
    vocabs.update(user_id=users, item_id=ITEMS)
    rng = np.random.default_rng(seed)
    snapshots = [{"user_id": (users[k:], rng.normal(size=(len(users) - k, 4)).astype("float32")),
                  "item_id": (ITEMS, rng.normal(size=(len(ITEMS), 4)).astype("float32")),
                  "category": (["c1"], rng.normal(size=(1, 4)).astype("float32"))}
                 for k in (0, 2)]  # two snapshots: the export merges the aggregator's tables
    return build_model(SPEC.features, vocabs, {}, ModelConfig(hidden=(8, 4), seed=seed), features,
                       tpm_tables=snapshots, initial_ctr=0.3, domains=["s1|p0|g1"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model()
    return model, stage_saved_model(model, SPEC, str(tmp_path_factory.mktemp("export") / "actr"))


def test_saved_model_pb_holds_no_id_and_assets_hold_every_vocabulary(exported):
    _, path = exported
    graph = open(os.path.join(path, "saved_model.pb"), "rb").read()
    assert not [t for t in USERS + ITEMS if t.encode() in graph]
    assets = {name: open(os.path.join(path, "assets", name), "rb").read()
              for name in os.listdir(os.path.join(path, "assets"))}
    users = [body for name, body in assets.items() if name.startswith("lookup_user_id-")]
    assert users == ["".join(u + "\n" for u in USERS).encode()]  # line i: the token of id i
    tpm = [name for name in assets if name.startswith("tpm_lookup_")]
    assert len(tpm) == 3  # the merged TPM table's id keys: user_id, item_id, category


def test_the_export_maps_every_id_as_training_did(exported):
    model, path = exported
    users = USERS + ["never-seen", "u\tA\t", "user-1 "]
    examples = tf.constant(_examples(users))
    features, _ = parse_batch(SPEC, examples)
    served = tf.saved_model.load(path).signatures["serving_default"](examples=examples)
    np.testing.assert_allclose(served[OUTPUT_KEY].numpy(),
                               model(features, training=False).numpy().ravel(), atol=1e-6)
    assert len(set(served[OUTPUT_KEY].numpy().round(6))) > len(USERS) // 2  # ids matter


def test_the_training_tables_are_back_after_the_export(exported):
    model, _ = exported
    for lookup in string_lookups(model):
        keys, _ = lookup.lookup_table.export()
        assert not hasattr(lookup.lookup_table._initializer, "_filename")  # in-memory again


@pytest.mark.parametrize("token", ["", "u\nX", "uX\r"])
def test_a_token_a_vocabulary_line_cannot_hold_is_refused_by_name(tmp_path, token):
    model = _model(USERS + [token])
    with pytest.raises(ValueError, match=r"lookup 'lookup_user_id'.*token 12 .*Fix:"):
        stage_saved_model(model, SPEC, str(tmp_path / "actr"))
    before = model.encoder.lookups["user_id"](tf.constant([token])).numpy()
    assert before.tolist() == [len(USERS) + 1]  # training's table put back, still in use


def test_two_exports_in_one_process_keep_their_own_vocabularies(tmp_path):
    """A file table's shared resource is named after its file: the hash in the asset name keeps
    two vocabularies apart, as TF Serving holding two versions needs."""
    first, second = _model(["a", "b", "c"]), _model(["c", "b", "a"])
    paths = [stage_saved_model(m, SPEC, str(tmp_path / name))
             for m, name in ((first, "one"), (second, "two"))]
    examples = tf.constant(_examples(["a", "b", "c", "d"]))
    features, _ = parse_batch(SPEC, examples)
    for model, path in zip((first, second), paths, strict=True):
        served = tf.saved_model.load(path).signatures["serving_default"](examples=examples)
        np.testing.assert_allclose(served[OUTPUT_KEY].numpy(),
                                   model(features, training=False).numpy().ravel(), atol=1e-6)


def test_a_plain_layer_saves_its_lookup_as_an_asset(tmp_path):
    lookup = keras.layers.StringLookup(vocabulary=["x", "y\tz"], num_oov_indices=1, name="ids")
    serve = tf.function(lambda ids: {"ids": lookup(ids)}, input_signature=[tf.TensorSpec([None], tf.string)])
    with vocabulary_assets(lookup) as assets:
        tf.saved_model.save(lookup, str(tmp_path), signatures=serve.get_concrete_function())
    assert list(assets.values()) == [2] and os.listdir(tmp_path / "assets") == list(assets)
    loaded = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    assert loaded(tf.constant(["y\tz", "x", "y"]))["ids"].numpy().tolist() == [2, 1, 0]


def _tracked_values(layer):
    """Every value Keras visits when it gathers a layer's variables (Layer._flatten_modules:
    the tracked layers, and the items of tracked lists and dicts)."""
    seen, queue, values = set(), list(layer._self_tracked_trackables), []
    while queue:
        value = queue.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        values.append(value)
        if isinstance(value, tf.__internal__.tracking.TrackableDataStructure):
            queue.extend(value._values)
        elif isinstance(value, tf.Module):
            queue.extend(getattr(value, "_self_tracked_trackables", []))
    return values


def test_no_vocabulary_is_walked_when_variables_are_gathered():
    """A vocabulary held in a tracked list is walked id by id whenever the model's variables
    are gathered (~1,000 times in one export: 170 CPU seconds at 1M ids); the encoder, the TPM
    lookups and the aggregator hold theirs untracked."""
    model = _model()
    assert len(string_lookups(model)) >= 4  # the feature lookups and the TPM aggregator's
    walked = [v for v in _tracked_values(model) if isinstance(v, str | bytes)]
    assert not set(walked) & {*USERS, *ITEMS} and len(walked) < 3 * len(SPEC.features)  # names
    assert model.encoder.vocabs["user_id"] == USERS  # still there to read
