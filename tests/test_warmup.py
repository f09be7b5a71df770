"""Synthetic TF Serving warmup requests: no user or request id of the logs in the export."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import recorded

from ecdctr.data.datasets import example_batch
from ecdctr.data.rows import RowParser, to_example
from ecdctr.models.ctr_model import ModelConfig, build_model
from ecdctr.serving.export import (
    MAX_SAFE_VOCAB,
    OUTPUT_KEY,
    WARMUP_BATCH_SIZES,
    WARMUP_FILE,
    publish,
    read_warmup,
    safe_vocab_tokens,
    stage_saved_model,
    warmup_examples,
)
from ecdctr.serving.gate import GateConfig, infra_gate
from ecdctr.spec.feature_spec import load_spec, parse_spec

SPEC = load_spec("features/default.yaml")
USERS = ["user-secret-1234", "user-secret-5678", "user-secret-9012"]
ITEMS = ["item-secret-42", "item-secret-43"]
REQUESTS = [f"req-secret-{i:04d}" for i in range(40)]
DOMAINS = ["scenario-1|position-0|user_segment-2", "scenario-0|position-2|user_segment-1"]


def _vocabs():
    vocabs = {f.name: [f"{f.name}-{i}" for i in range(3)] for f in SPEC.features if f.uses_vocab}
    vocabs.update(user_id=USERS, item_id=ITEMS)
    return vocabs


def _rows():
    """Held-out rows as the logs have them: distinctive user, item and request ids."""
    return [{"request_id": rid, "ts": 1, "click": i % 2, "user_id": USERS[i % 3],
             "item_id": ITEMS[i % 2], "gender": "gender-1", "scenario": "scenario-1",
             "position": "position-0", "user_segment": "user_segment-2", "price": 3.0 + i,
             "hist_categories": ["hist_categories-0"][: i % 2]} for i, rid in enumerate(REQUESTS)]


def _model(seed=0):
    config = ModelConfig(hidden=(8, 4), multi_domain="adasparse", seed=seed)
    return build_model(SPEC.features, _vocabs(), {"price": (30.0, 12.0)}, config,
                       example_batch(SPEC), initial_ctr=0.3, domains=DOMAINS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A published export; the real held-out rows only time the pruned path, as in daily."""
    base = str(tmp_path_factory.mktemp("export") / "actr")
    parser = RowParser(SPEC)
    held_out = [to_example(SPEC, parser.parse(r)).SerializeToString() for r in _rows()]
    model = _model()
    with recorded() as records:
        staging = stage_saved_model(model, SPEC, base, held_out)
    assert any(f"on {len(held_out)} rows" in r.getMessage() for r in records)  # timed on the real rows
    return model, publish(staging, base)


def _files(folder):
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            yield os.path.relpath(path, folder), open(path, "rb").read()


def test_no_request_id_anywhere_and_no_user_or_item_id_in_assets_extra(exported):
    _, path = exported
    files = dict(_files(path))
    assert {"saved_model.pb", f"assets.extra/{WARMUP_FILE}", "assets.extra/spec.yaml"} <= set(files)
    for name, body in files.items():
        found = [r for r in REQUESTS if r.encode() in body]
        assert not found, f"request ids {found[:3]} in {name}"
        if name.startswith("assets.extra/"):
            found = [i for i in USERS + ITEMS if i.encode() in body]
            assert not found, f"ids {found} in {name}"
    # The finding docs/serving.md states: the vocabularies of the id features are files in
    # assets/, so the model itself holds the ids of its vocabulary (not the graph, not the variables).
    assert all(any(u.encode() in body for name, body in files.items() if name.startswith("assets/"))
               for u in USERS)
    assert not any(u.encode() in files["saved_model.pb"] for u in USERS)
    assert not any(u.encode() in body for name, body in files.items() for u in USERS
                   if name.startswith("variables/"))


def test_warmup_requests_are_prediction_logs_the_signature_answers(exported):
    model, path = exported
    records = read_warmup(os.path.join(path, "assets.extra", WARMUP_FILE))
    requests = [r.predict_log.request for r in records]
    batches = [list(tf.make_ndarray(r.inputs["examples"])) for r in requests]
    assert [len(b) for b in batches] == list(WARMUP_BATCH_SIZES) * 4
    assert all(r.model_spec.signature_name == "serving_default" for r in requests)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    for batch in batches:
        probs = serve(examples=tf.constant(batch))[OUTPUT_KEY].numpy()
        assert probs.shape == (len(batch),) and ((probs > 0) & (probs < 1)).all()
    assert np.unique(probs.round(6)).size > 100  # the rows differ: the gate compares something
    synthetic = warmup_examples(model, SPEC)
    assert synthetic == warmup_examples(model, SPEC)  # seeded: reproducible exports
    assert {e for b in batches for e in b} == set(synthetic)
    columns = {f.column for f in SPEC.features}
    values, lengths = set(), set()
    for serialized in synthetic:
        feature = tf.train.Example.FromString(serialized).features.feature
        assert set(feature) == columns  # every feature, no request id / label / timestamp
        lengths.add(len(feature["hist_categories"].bytes_list.value))
        values |= {v.decode() for f in feature.values() for v in f.bytes_list.value}
    assert lengths == {0, 1, 2, 3}
    assert not values & set(USERS + ITEMS)  # ids: synthetic tokens only (the OOV path)
    assert {"gender-0", "scenario-1", "position-0", "hist_categories-2"} <= values
    assert any(v.startswith("warmup-oov-") for v in values)


def test_infra_gate_passes_the_exported_model_and_rejects_another(exported):
    model, path = exported
    reasons, details = infra_gate(model, SPEC, path, GateConfig())
    assert reasons == [] and details["warmup_requests"] == 16 and details["max_abs_diff"] <= 1e-5
    reasons, details = infra_gate(_model(seed=7), SPEC, path, GateConfig())
    assert reasons and "differ from training" in reasons[0] and details["max_abs_diff"] > 1e-5


def test_safe_vocab_tokens_leaves_out_ids_and_large_vocabularies():
    spec = parse_spec({"label": "click", "timestamp": "ts", "group_by": "account", "features": {
        "user_id": {"kind": "categorical", "vocab": {}, "dim": 4, "tpm": True, "entity": "user"},
        "shop": {"kind": "categorical", "vocab": {}, "dim": 4, "tpm": True},
        "account": {"kind": "categorical", "vocab": {}, "dim": 4},
        "user_hashed": {"column": "user_id", "kind": "categorical", "hash_buckets": 10, "dim": 4},
        "query": {"kind": "categorical", "vocab": {}, "dim": 4},
        "gender": {"kind": "categorical", "vocab": {}, "dim": 4},
        "price": {"kind": "numeric"}}})
    vocabs = {"user_id": ["u-1", "m"], "shop": ["s-1"], "account": ["a-1"],
              "query": [f"q{i}" for i in range(MAX_SAFE_VOCAB + 1)], "gender": ["m", "f", "s-1"]}
    assert safe_vocab_tokens(spec, vocabs) == {
        "user_id": [], "shop": [], "account": [], "query": [], "gender": ["f"]}
