"""Custom Keras 3 layers inside the tf_keras copy: carried over as they are, computed by Keras 3.

A custom class (or a Lambda) has no tf_keras twin, but on the TensorFlow backend its ``call`` is
TensorFlow code, so a thin tf_keras layer can hold it and call it.  A layer with weights is held as
a private copy (the user's model is never modified) whose variables are tracked as fixed weights:
the compression passes leave layers they do not know alone and fine-tuning keeps them fixed, so
only the layers around it are compressed.
"""

from __future__ import annotations

import functools

from .. import _tf
from ..errors import SourceModelError, first_line


@functools.lru_cache(maxsize=None)
def custom_layer_class():
    """The tf_keras layer class that hosts a Keras 3 layer (made on first use: tf_keras loads lazily)."""
    tfk = _tf.keras()

    class Keras3Custom(tfk.layers.Layer):
        """Calls a private copy of a custom Keras 3 layer; its variables are tracked as fixed weights."""

        def __init__(self, keras3_layer, **kwargs):
            super().__init__(**kwargs)
            inner = private_copy(keras3_layer)
            object.__setattr__(self, "inner", inner)  # not tracked by tf_keras: its variables are, below
            self.held = [v.value for v in inner.weights]
            self.trainable = False

        def call(self, inputs, *args, **kwargs):
            return self.inner(inputs, *args, **kwargs)

        def get_config(self) -> dict:
            return {**super().get_config(), "keras3_layer": self.inner}  # in memory only (cloning)

    return Keras3Custom


def private_copy(layer):
    """A copy of a Keras 3 layer with its own variables (a layer without weights has no state to copy)."""
    if not layer.weights:
        return layer
    copy = type(layer).from_config(layer.get_config())
    if not copy.built:
        copy.build_from_config(layer.get_build_config())
    copy.set_weights(layer.get_weights())
    return copy


def host_custom_layer(live):
    """A tf_keras layer computing the Keras 3 layer ``live`` with a copy of its weights."""
    cls = type(live).__name__
    if not live.built:
        raise SourceModelError(f"custom Keras 3 layer {live.name!r} ({cls}) is not built; call the model on "
                               "data once (or implement build(input_shape)) before converting")
    try:
        return custom_layer_class()(live, name=live.name)
    except Exception as exc:  # a custom class may raise anything from its config or build
        raise SourceModelError(
            f"custom Keras 3 layer {live.name!r} ({cls}) cannot be copied: {first_line(exc, 200)}; give it a "
            "get_config() that returns every constructor argument, or export the model to ONNX") from None
