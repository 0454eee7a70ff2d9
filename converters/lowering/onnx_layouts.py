"""Input and output layouts of onnx2tf's Keras model against the ONNX source.

onnx2tf makes tensors of rank 3-5 channel-last and records which outputs it
transposed, but its record is wrong for some graphs (a rank-3 Relu), and some
graphs convert correctly only in its own layout.  Here layouts are decided from
shapes and, where shapes cannot tell, from one probe run against onnxruntime.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def channel_last_perm(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1)


def output_layouts(model, flags: dict[str, bool], route: Any) -> dict[str, bool]:
    """Which Keras outputs are channel-last: by their shapes against the source's (``route.output_shapes``),
    and where both layouts have the same shape (a (4, 2, 2) output) by the probe run's values; onnx2tf's
    ``flags`` only where the source's shape is unknown."""
    layouts, values = {}, None
    for index, (name, tensor) in enumerate(zip(route.output_names, model.outputs)):
        shape, source = tuple(tensor.shape), route.output_shapes.get(name)
        if source is None or not 3 <= len(source) <= 5:
            layouts[name] = bool(flags.get(name))
            continue
        perm = channel_last_perm(len(source))
        last = tuple(source[i] for i in perm)
        if shape != source or shape != last:
            layouts[name] = shape == last
            continue
        if values is None:
            values = probe_outputs(model, route)
        reference = route.probe[1][name]
        layouts[name] = bool(np.abs(values[index] - reference.transpose(perm)).max()
                             < np.abs(values[index] - reference).max())
    return layouts


def probe_outputs(model, route: Any) -> list[np.ndarray]:
    """The Keras model's outputs on the probe inputs, given in the route's .tflite layout."""
    feeds = route.probe[0]
    inputs = [route.to_tflite_layout(n, feeds[n]) for n in model.input_names]
    values = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    return [np.asarray(v) for v in (values if isinstance(values, (list, tuple)) else [values])]


def matches_probe(model, layouts: dict[str, bool], route: Any, tolerance: float) -> bool:
    """Whether every output reproduces the source's on the probe run, within ``tolerance`` of its scale
    (True when there was no probe run: nothing to tell the layouts apart)."""
    if not route.probe[1]:
        return True
    try:
        values = probe_outputs(model, route)
    except Exception:  # noqa: BLE001 - a model that cannot even run on the probe does not match
        return False
    for name, got in zip(route.output_names, values):
        reference = route.probe[1][name]
        if layouts.get(name):
            reference = reference.transpose(channel_last_perm(reference.ndim))
        if got.shape != reference.shape or not np.abs(got - reference).max(initial=0.0) <= \
                tolerance * np.abs(reference).max(initial=0.0) + 1e-5:
            return False
    return True


def inputs_in_source_layout(model, specs: list, names: list[str]):
    """The model behind a transpose for each input in ``names`` that onnx2tf made channel-last, so the
    .tflite takes them in the source layout."""
    from .. import _tf

    keras = _tf.keras()
    by_name = {s.name: s for s in specs}
    changed = False
    new_inputs, fed = [], []
    for name, tensor in zip(model.input_names, model.inputs):
        spec = by_name.get(name)
        shape = tuple(tensor.shape)
        if spec is not None and name in names and shape != spec.shape and \
                shape == tuple(spec.shape[i] for i in channel_last_perm(len(spec.shape))):
            source = keras.Input(shape=spec.shape[1:], batch_size=spec.shape[0], name=name, dtype=tensor.dtype)
            new_inputs.append(source)
            fed.append(keras.layers.Permute((*range(2, len(spec.shape)), 1), name=f"{name}_to_channels_last")(source))
            changed = True
        else:
            source = keras.Input(shape=shape[1:], batch_size=shape[0], name=name, dtype=tensor.dtype)
            new_inputs.append(source)
            fed.append(source)
    if not changed:
        return model
    outputs = model(fed if len(fed) > 1 else fed[0])
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return keras.Model(new_inputs, [keras.layers.Identity(name=n)(o) for n, o in zip(model.output_names, outputs)])


def outputs_channel_first(model, channel_last: dict[str, bool], names: list[str]):
    """Transpose the outputs ``channel_last`` names back to the source layout (--keep-nchw, or a model with
    no image input), and name every output as the source does (onnx2tf names a Split's outputs after its
    layer: output_3, output_3_1...)."""
    from .. import _tf

    keras = _tf.keras()
    if not any(channel_last.get(n) for n in names) and list(model.output_names) == list(names):
        return model
    outputs = []
    for name, tensor in zip(names, model.outputs):
        for layer in model.layers:  # free the name for the layer that now produces the output
            if layer.name == name:
                layer._name = f"{name}_channels_last"
        if channel_last.get(name) and 3 <= len(tensor.shape) <= 5:
            rank = len(tensor.shape)
            tensor = keras.layers.Permute((rank - 1, *range(1, rank - 1)), name=name)(tensor)
        else:
            tensor = keras.layers.Identity(name=name)(tensor)
        outputs.append(tensor)
    return keras.Model(model.inputs, outputs)
