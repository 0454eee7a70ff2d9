"""Open the nested models of a tf_keras model into one flat Functional model, so that every technique and every
per-layer setting reaches their layers.

tfmot wraps the layers of flat models only (a nested model is one layer to it), and the SDK's own graph
rewrites (channels, low-rank) read one model's layer graph; a ``keras.applications`` base nested in a
classifier would otherwise be compressed as nothing or as one block. The flat model calls the same layers
in the same order (same ops in the .tflite), with a nested model's ``training`` argument passed on to its
layers. Layers keep their names; a nested layer whose name another layer also has is renamed
``outer_inner`` (its path ``outer/inner`` still names it in a recipe). A nested model called more than once
(shared weights) or without a layer graph stays one layer, with a note.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .. import _tf
from ..layer_paths import LayerPaths


def is_nested_model(layer: Any) -> bool:
    """A Functional/Sequential model used as a layer, with a layer graph that can be opened."""
    return hasattr(layer, "layers") and bool(getattr(layer, "_is_graph_network", False))


def open_nested(model, recipe, notes: list[str]):
    """(the model with its nested models opened, ``recipe`` naming layers by their place in them).

    ``model`` is the SDK's own copy (its layers are reused); the recipe's ``to_dict`` stays the user's."""
    tf = _tf.tensorflow()
    calls = Counter(node.layer.name for nodes in model._nodes_by_depth.values() for node in nodes)
    openable = {layer.name for layer in model.layers if is_nested_model(layer) and calls[layer.name] == 1}
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.name not in openable:
            why = "it is called more than once (shared weights)" if calls[layer.name] > 1 else "it has no layer graph"
            notes.append(f"nested model {layer.name!r} kept as one layer: {why}; per-layer settings and "
                         "compression do not reach inside it")
    if not openable:
        return model, recipe.with_layer_paths(LayerPaths({layer.name: (layer.name,) for layer in model.layers}))
    paths = _rename_collisions(_collect(model, (), openable))
    tfk = _tf.keras()
    inputs = [tfk.Input(type_spec=tensor.type_spec, name=tensor._keras_history.layer.name) for tensor in model.inputs]
    outputs = _run(model, inputs, openable, tf, top=True)
    flat = tfk.Model(inputs, tf.nest.pack_sequence_as(model._nested_outputs, outputs), name=model.name)
    fresh = tfk.models.clone_model(flat)  # new layers, each called once: no node shared with the nested model
    fresh.set_weights(flat.get_weights())
    opened = sorted(openable)
    notes.append(f"nested model(s) {', '.join(opened)} opened into one flat model "
                 f"({len(fresh.layers)} layers): every technique and per-layer setting reaches their layers")
    return fresh, recipe.with_layer_paths(LayerPaths({layer.name: paths.get(layer.name, (layer.name,))
                                                      for layer in fresh.layers}))


def _collect(model, within: tuple[str, ...], openable: set[str] | None) -> list[tuple[Any, tuple[str, ...]]]:
    """(layer, path) for each layer that ends up in the flat model (the input layers of nested models vanish)."""
    found = []
    for layer in model.layers:
        if (openable is None or layer.name in openable) and is_nested_model(layer):
            found += _collect(layer, (*within, layer.name), None)
        elif not (within and type(layer).__name__ == "InputLayer"):
            found.append((layer, (*within, layer.name)))
    return found


def _rename_collisions(layers: list[tuple[Any, tuple[str, ...]]]) -> dict[str, tuple[str, ...]]:
    """Rename every nested layer whose name is not unique to ``outer_inner``; {name in the flat model: path}."""
    counts = Counter(path[-1] for _, path in layers)
    taken = {path[-1] for _, path in layers if len(path) == 1}
    paths = {}
    for layer, path in layers:
        name = path[-1]
        if len(path) > 1 and counts[name] > 1:
            name = "_".join(path)
            while name in taken:
                name += "_"
            layer._name = name  # the SDK's own copy: the user's model is never touched
        taken.add(name)
        paths[name] = path
    return paths


def _run(model, inputs: list, openable: set[str] | None, tf, top: bool = False, training: Any = None) -> list:
    """``model``'s graph called on ``inputs``, nested models opened (as tf_keras's Functional runs it)."""
    values = _Reuse((str(id(x)), y) for x, y in zip(model.inputs, inputs))
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args, kwargs = node.map_arguments(values)
            layer = node.layer
            if (openable is None or layer.name in openable) and is_nested_model(layer):
                inner_training = kwargs.get("training", training)
                given = args[0] if args else kwargs.get("inputs")
                outputs = _run(layer, tf.nest.flatten(given), None, tf, training=inner_training)
            else:
                if training is not None and getattr(layer, "_expects_training_arg", False) \
                        and kwargs.get("training") is None:
                    kwargs = {**kwargs, "training": training}
                outputs = tf.nest.flatten(layer(*args, **kwargs))
            for x_id, y in zip(node.flat_output_ids, outputs):
                values[x_id] = y
    return [values[str(id(x))].pop() for x in model.outputs]


class _Reuse(dict):
    """tensor id -> tensor, read as tf_keras's ``Node.map_arguments`` reads its table (a list it pops from),
    without running out: a tensor may feed any number of layers."""

    def __getitem__(self, key):
        return [dict.__getitem__(self, key)]
