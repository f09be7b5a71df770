"""Tests of the tower contract: every tower kind and its serving form is a Tower."""

import dataclasses

import numpy as np
import tensorflow as tf
from conftest import feature_batch

from ecdctr.models.ctr_model import ModelConfig, build_model, serving_form
from ecdctr.models.tower import Tower
from ecdctr.spec.feature_spec import load_spec

SPEC = load_spec("features/default.yaml")
CONFIG = ModelConfig(hidden=(8, 4), batch_size=16)


def _batch(n=16):
    return feature_batch(SPEC, n)


VOCABS = {f.name: [f"v{i}" for i in range(5)] for f in SPEC.features if f.uses_vocab}


def test_every_tower_kind_and_its_serving_form_follow_the_tower_contract():
    expected = {"none": ("Mlp", "FoldedMlp"), "adasparse": ("AdaSparseMlp", "AdaSparseServingMlp"),
                "star": ("StarMlp", "StarMlp"), "apg": ("ApgMlp", "ApgMlp")}
    for multi_domain, (training_form, serving_tower) in expected.items():
        config = dataclasses.replace(CONFIG, multi_domain=multi_domain, apg_rank=4)
        model = build_model(SPEC.features, VOCABS, {}, config, _batch())
        tower = model.mlp
        assert isinstance(tower, Tower) and type(tower).__name__ == training_form
        x, e_d, index, _ = model.tower_inputs(_batch(4), with_index=True)
        extra = tower.extra_logit(x, e_d, index, training=False)
        assert (extra is None) == (multi_domain != "star")  # only STAR adds an auxiliary logit
        before = model(_batch(), training=False).numpy()
        with serving_form(model) as serving:
            assert isinstance(serving.mlp, Tower) and type(serving.mlp).__name__ == serving_tower
            assert serving.mlp.for_serving() is serving.mlp  # a serving form serves as it is
            np.testing.assert_allclose(serving(_batch(), training=False).numpy(), before,
                                       atol=1e-5)
        assert model.mlp is tower


def test_a_tower_without_schedules_or_extra_logit_gets_the_base_defaults():
    class Identity(Tower):
        def call(self, x, domain_embedding=None, domain_index=None, training=None):
            return x

    tower = Identity()
    tower.plan_schedule(10)  # no schedule: nothing to set
    x = tf.ones([2, 3])
    assert tower.extra_logit(x, None, None) is None and tower.for_serving() is tower
    assert not tower.reads_domain_key and not tower.has_sparse_path
