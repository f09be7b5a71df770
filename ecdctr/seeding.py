"""The one seeding call of the project's models: tf_keras's, made to work on Python 3.12.

tf_keras 2.17 (pinned with TensorFlow 2.17) draws each unseeded initializer's seed with
`random.Random.randint(1, 1e9)` once `keras.utils.set_random_seed` has run. Python 3.11
converts the float bound to an integer; Python 3.12 refuses it (TypeError: 'float' object
cannot be interpreted as an integer), so no model could be built. `set_random_seed` installs
a generator that converts the bounds itself: the same draws on both versions."""

from __future__ import annotations

import random

import tf_keras as keras
from tf_keras.src import backend


class _IntegerBoundsRandom(random.Random):
    """random.Random whose randint takes integral float bounds, as Python 3.11's did."""

    def randint(self, a: float, b: float) -> int:
        return super().randint(int(a), int(b))


def set_random_seed(seed: int) -> None:
    """keras.utils.set_random_seed (Python's, NumPy's and TensorFlow's seeds), with tf_keras's
    seed generator working on Python 3.11 and 3.12 alike."""
    keras.utils.set_random_seed(seed)
    backend._SEED_GENERATOR.generator = _IntegerBoundsRandom(seed)  # noqa: SLF001  (see module doc)
