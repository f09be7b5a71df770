"""The project's seeding works on Python 3.12 and draws what tf_keras's own draws on 3.11."""

import ecdctr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tf_keras.src import backend

from ecdctr.seeding import set_random_seed


def _dense_kernel() -> np.ndarray:
    return keras.layers.Dense(3)(tf.ones((1, 2))).numpy()


def test_tf_keras_float_bounds_draw_python_311_integers():
    set_random_seed(7)
    assert backend._SEED_GENERATOR.generator.randint(1, 1e9) == random.Random(7).randint(1, 10**9)
    set_random_seed(7)
    first = _dense_kernel()  # an unseeded initializer: raised TypeError on 3.12 before
    set_random_seed(7)
    np.testing.assert_array_equal(_dense_kernel(), first)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="tf_keras's own seeding fails on 3.12")
def test_the_same_weights_as_tf_keras_seeding():
    keras.utils.set_random_seed(3)
    expected = _dense_kernel()
    set_random_seed(3)
    np.testing.assert_array_equal(_dense_kernel(), expected)


def test_no_code_seeds_through_tf_keras_directly():
    """keras.utils.set_random_seed fails on 3.12 with the pinned tf_keras: ecdctr.seeding's only."""
    root = Path(__file__).resolve().parent.parent
    callers = [str(p.relative_to(root)) for folder in ("ecdctr", "pipelines", "benchmarks", "tests")
               for p in sorted((root / folder).rglob("*.py"))
               if p.name not in ("test_seeding.py", "seeding.py")
               and "utils.set_random_seed(" in p.read_text()]
    assert callers == [], f"use ecdctr.seeding.set_random_seed in {callers}"
