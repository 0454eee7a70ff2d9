"""Lazy TensorFlow loading with legacy Keras (tf_keras), which tfmot requires.

TensorFlow is imported on first use, never at package import, so that
``sdk --help`` and error paths stay fast.  The SDK names tf_keras explicitly
everywhere (``keras()``) and Keras 3 only to read Keras 3 models (``keras3()``),
so it works whether ``tf.keras`` is tf_keras or Keras 3 in the user's process:
the user never sets TF_USE_LEGACY_KERAS.
"""

from __future__ import annotations

import os
from types import ModuleType


def tensorflow() -> ModuleType:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # must precede the first TF import
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def keras() -> ModuleType:
    tensorflow()
    import tf_keras

    return tf_keras


def keras3() -> ModuleType:
    """Keras 3 (``import keras``), beside tf_keras in the same process, to read Keras 3 models."""
    tensorflow()
    import keras

    return keras


def tfmot() -> ModuleType:
    tensorflow()
    import tensorflow_model_optimization as mot

    return mot


def prune_registry():
    """tfmot's table of prunable layers and weights (not in its public API, but the source of truth)."""
    tfmot()
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry as registry

    return registry.PruneRegistry


def clustering_registry():
    """tfmot's table of clusterable layers and weights."""
    tfmot()
    from tensorflow_model_optimization.python.core.clustering.keras import clustering_registry as registry

    return registry.ClusteringRegistry
