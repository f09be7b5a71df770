"""SavedModel export for TF Serving: `serving_default` takes serialized tf.train.Example strings."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

import tensorflow as tf
import tf_keras as keras

from ecdctr.data import feature_description, features_by_name
from ecdctr.spec import Spec

OUTPUT_KEY = "click_probability"
INPUT_KEY = "examples"
SPEC_FILE = "spec.yaml"  # in assets.extra/: lets clients build Examples without the repo


def serving_function(model: keras.Model, spec: Spec) -> tf.types.experimental.ConcreteFunction:
    """The predict signature: serialized Examples [B] -> {click_probability: [B]}; missing
    features take the spec's defaults, unseen ids go to the OOV row."""
    description = feature_description(spec, with_label=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    def serve(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(examples, description)
        probs = model(features_by_name(spec, parsed), training=False)
        return {OUTPUT_KEY: tf.reshape(probs, [-1])}

    return serve.get_concrete_function()


def versions(base: str) -> list[int]:
    """Published integer versions under base, ascending."""
    if not tf.io.gfile.isdir(base):
        return []
    return sorted(int(d.rstrip("/")) for d in tf.io.gfile.listdir(base) if d.rstrip("/").isdigit())


def export_saved_model(model: keras.Model, spec: Spec, base: str,
                       log: Callable[[str], None] = print) -> str:
    """Writes the SavedModel to a temporary folder, then renames it to base/<next version>,
    so TF Serving never sees half a version. Returns the version's path."""
    os.makedirs(base, exist_ok=True)
    version = max([*versions(base), 0]) + 1
    staging = os.path.join(base, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    tf.saved_model.save(model, staging, signatures={"serving_default": serving_function(model, spec)})
    extra = os.path.join(staging, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    shutil.copyfile(spec.path, os.path.join(extra, SPEC_FILE))
    final = os.path.join(base, str(version))
    os.rename(staging, final)
    log(f"exported SavedModel version {version} to {final} in {time.perf_counter() - started:.1f}s")
    return final
