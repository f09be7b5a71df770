"""Tests for AdaSparse's compacted serving form: per domain, pruned neurons removed."""

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import ecdctr.models.adasparse_compact

# isort: split
import numpy as np
import pytest
import tensorflow as tf
from towers import train_tower

from ecdctr.models.adasparse import FORMS, PLACEMENTS, AdaSparseConfig, AdaSparseMlp
from ecdctr.models.adasparse_compact import CompactedAdaSparseMlp, compacted
from ecdctr.seeding import set_random_seed

RNG = np.random.default_rng(0)
X = tf.constant(RNG.normal(size=(64, 12)).astype("float32"))
Y = tf.constant((RNG.random((64, 1)) < 0.5).astype("float32"))
HEAD = tf.constant(RNG.normal(size=(8, 1)).astype("float32"))
TABLES = [RNG.normal(size=(3, 2)).astype("float32"), RNG.normal(size=(5, 2)).astype("float32")]
FIRST, SECOND = RNG.integers(0, 3, 64), RNG.integers(0, 5, 64)


def _domains(first: np.ndarray, second: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    """(domain embedding, domain key as FeatureEncoder.domain_key makes it) of these ids."""
    e_d = np.concatenate([TABLES[0][first], TABLES[1][second]], axis=1)
    return tf.constant(e_d), tf.constant(first * 5 + second, tf.int64)


def _trained(form: str, placement: str, export_form: str = "compacted") -> AdaSparseMlp:
    set_random_seed(0)
    tower = AdaSparseMlp((16, 8), AdaSparseConfig(form=form, placement=placement, ramp_steps=3,
                                                  pruner_input="domain", export_form=export_form))
    e_d, _ = _domains(FIRST, SECOND)
    train_tower(tower, X, e_d, Y, HEAD, 5, 0.5)
    return tower


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("form", FORMS)
def test_the_compacted_form_predicts_as_the_training_tower_row_by_row(form, placement):
    tower = _trained(form, placement)
    serving = tower.for_serving(domain_tables=TABLES)
    assert isinstance(serving, CompactedAdaSparseMlp)
    call = tf.function(lambda x, e, k: serving(x, domain_embedding=e, domain_index=k))
    for first, second in ((FIRST, SECOND), (np.full(64, 2), np.full(64, 3)),
                          (np.full(1, 1), np.full(1, 0)), (FIRST[:2], SECOND[:2])):
        e_d, key = _domains(first, second)  # mixed, one domain, one row, two rows
        x = X[:len(first)]
        expected = tower(x, domain_embedding=e_d, training=False).numpy()
        np.testing.assert_allclose(call(x, e_d, key).numpy(), expected, rtol=1e-5, atol=1e-5)
    for domain in range(15):  # every domain alone, through its compacted MLP
        e_d, key = _domains(np.full(64, domain // 5), np.full(64, domain % 5))
        expected = tower(X, domain_embedding=e_d, training=False).numpy()
        np.testing.assert_allclose(call(X, e_d, key).numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(serving.one_domain(X, tf.constant(domain, tf.int64)).numpy(),
                                   expected, rtol=1e-5, atol=1e-5)
    empty = call(X[:0], *_domains(FIRST[:0], SECOND[:0]))
    assert empty.shape == (0, 8)
    with pytest.raises(ValueError, match="pass domain_index"):
        serving(X, domain_embedding=_domains(FIRST, SECOND)[0])


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_pruned_neurons_are_removed_from_each_domains_weights(placement):
    tower = _trained("binarization", placement)
    serving = tower.for_serving(domain_tables=TABLES)
    masks = tower.masks(X, _domains(np.full(64, 1), np.full(64, 2))[0])
    kept = [int(m[0].numpy().sum()) for m in masks]  # domain key 1 * 5 + 2 = 7
    hidden = kept[1] if placement == "input" else kept[0]  # pruned neurons of layer 0's output
    assert hidden < 16
    assert serving.shapes.numpy()[7].tolist() == [[12, hidden], [hidden, 8]]
    call = tf.function(lambda x, e, k: serving(x, domain_embedding=e, domain_index=k))
    graph = call.get_concrete_function(X, *_domains(FIRST, SECOND)).graph
    ops = [op.type for op in graph.get_operations()]
    assert ops.count("If") + ops.count("StatelessIf") == 1


def test_the_tabulated_form_stays_unless_asked_or_when_too_large(monkeypatch):
    tables = _trained("fusion", "input", "tables").for_serving(domain_tables=TABLES)
    assert tables.reads_domain_key and not isinstance(tables, CompactedAdaSparseMlp)
    tower = _trained("fusion", "input")
    monkeypatch.setattr(ecdctr.models.adasparse_compact, "MAX_COMPACT_BYTES", 100)
    assert compacted(tables) is tables
    untabulated = tower.for_serving()  # no domain tables: factors from a matmul on e_d
    assert compacted(untabulated) is untabulated
    with pytest.raises(ValueError, match="AdaSparseConfig.export_form must be one of"):
        AdaSparseConfig(export_form="sparse")
