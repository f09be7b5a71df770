"""ecdctr: a training pipeline for ad CTR models that transfers knowledge from natural traffic."""

import os

# TFRS refuses Keras 3; the whole project uses tf_keras, which needs this set before
# TensorFlow is first imported. setdefault keeps an explicit user choice visible.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's native logs: errors only, unless the user chose (the CLI's --verbosity may
# lower it for its own process before TensorFlow loads; see ecdctr.cli.logs).
USER_TF_CPP_MIN_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
