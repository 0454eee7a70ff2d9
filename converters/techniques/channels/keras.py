"""Channel removal for Keras models: the same grouping as for PyTorch, on the functional layer graph.

The model's config is rewritten with fewer filters/units for each cut
producer and rebuilt, then every weight is copied over sliced: producers on
their output axis, BatchNorm and depthwise kernels on the channel axis,
consumers (Conv/Dense) on their input axis.  A Dense after Flatten sees each
channel once per spatial position (channels-last), so its rows are sliced in
that pattern.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import _tf
from ...errors import RecipeError
from ..base import PassRecord
from ...recipe import Recipe
from .grouping import ChannelGroup, channel_scores, keep_count, merge_groups

PRODUCERS = ("Conv1D", "Conv2D", "Dense")
PASS_THROUGH = ("Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Dropout", "SpatialDropout2D",
                "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
                "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding2D",
                "UpSampling2D")


def functional_graph(model, purpose: str) -> tuple[Any, dict]:
    """The model as a functional graph (a Sequential is wrapped; layers and weights are shared) and its
    config, which the graph rewrites edit and rebuild."""
    keras = _tf.keras()
    functional = keras.Model(model.inputs, model.outputs, name=model.name) \
        if isinstance(model, keras.Sequential) else model
    try:
        return functional, functional.get_config()
    except NotImplementedError:
        raise RecipeError(f"{purpose} needs a Sequential or functional Keras model (a subclassed model has no "
                          "layer graph to rewrite)") from None


def _graph(config: dict) -> tuple[dict[str, dict], dict[str, list[str]], dict[str, list[str]]]:
    """Layers by name, each layer's inbound layer names, and each layer's consumers."""
    layers = {entry["config"]["name"]: entry for entry in config["layers"]}
    inbound: dict[str, list[str]] = {name: [] for name in layers}
    users: dict[str, list[str]] = {name: [] for name in layers}
    for name, entry in layers.items():
        for node in entry.get("inbound_nodes", []):
            for ref in node if isinstance(node, list) else node.get("args", []):
                source = ref[0] if isinstance(ref, list) else None
                if source in layers:
                    inbound[name].append(source)
                    users[source].append(name)
    return layers, inbound, users


def _classify(entry: dict) -> str:
    kind = entry["class_name"]
    if kind in PRODUCERS and (kind == "Dense" or entry["config"].get("groups", 1) == 1):
        return "consumer"
    if kind == "BatchNormalization":
        return "slice"
    if kind == "DepthwiseConv2D" and entry["config"].get("depth_multiplier", 1) == 1:
        return "slice"
    if kind == "Flatten":
        return "flatten"
    if kind == "Add":
        return "add"
    return "pass" if kind in PASS_THROUGH else "block"


def remove_channels_keras(model, recipe: Recipe, example_inputs: tuple | None = None) -> tuple[Any, PassRecord]:
    """A thinner copy of a Sequential or functional tf_keras model, and what was removed."""
    keras = _tf.keras()
    functional, config = functional_graph(model, "channel removal")
    layers, inbound, users = _graph(config)
    outputs = {ref[0] for ref in config["output_layers"]}
    record = PassRecord("channels")
    owner: dict[str, str] = {}
    walks: dict[str, ChannelGroup] = {}
    for name, entry in layers.items():
        if entry["class_name"] not in PRODUCERS or _classify(entry) != "consumer":
            continue
        layer = functional.get_layer(name)
        plan = recipe.plan_for(name, entry["class_name"])
        channels = int(layer.get_weights()[0].shape[-1])
        group = ChannelGroup([name], channels, {(name, "out"): None})
        if plan is None or plan.channels is None:
            group.blocked = "not asked for by the recipe"
        walks[name] = group
        owner[name] = name
        frontier = [(user, 1) for user in users[name]]
        if name in outputs:
            group.blocked = group.blocked or "its channels reach the model's output"
        seen = set()
        while frontier:
            user, spatial = frontier.pop()
            if user in seen:
                continue
            seen.add(user)
            kind = _classify(layers[user])
            if kind == "consumer":
                group.slices[(user, f"in:{spatial}")] = None
                continue
            if kind == "block" or len(layers[user].get("inbound_nodes", [])) > 1:
                group.blocked = group.blocked or f"its channels reach {layers[user]['class_name']} {user}"
                continue
            if kind == "slice":
                group.slices[(user, "both")] = None
            if kind == "flatten":
                shape = functional.get_layer(user).input_shape
                spatial = spatial * int(np.prod(shape[1:-1]))
            owner.setdefault(user, name)
            if user in outputs:
                group.blocked = group.blocked or "its channels reach the model's output"
            frontier.extend((u, spatial) for u in users[user])
    joins = [[owner.get(source) for source in inbound[name]] for name, entry in layers.items()
             if entry["class_name"] == "Add"]
    groups = merge_groups(walks, joins, record)
    out_keep: dict[str, np.ndarray] = {}  # producer -> channels it keeps
    in_slices: list[tuple[str, str, np.ndarray]] = []  # (layer, how, channels) for followers and consumers
    for group in groups:
        settings = recipe.plan_for(group.producers[0], layers[group.producers[0]]["class_name"]).channels
        count = keep_count(group.channels, settings)
        if count >= group.channels:
            continue
        weights = [functional.get_layer(p).get_weights()[0].reshape(-1, group.channels).T for p in group.producers]
        scales = [functional.get_layer(target).get_weights()[0] for target, how in group.slices
                  if how == "both" and layers[target]["class_name"] == "BatchNormalization"
                  and layers[target]["config"].get("scale", True)]
        scores = channel_scores(weights, scales, settings.ranking, group.producers)
        chosen = np.sort(np.argsort(-scores, kind="stable")[:count])
        for producer in group.producers:
            out_keep[producer] = chosen
            record.layers[producer] = {"channels": group.channels, "kept": count, "ranking": settings.ranking,
                                       "joined_with": [p for p in group.producers if p != producer]}
        in_slices += [(target, how, chosen) for target, how in group.slices if how != "out"]
    if not record.layers:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(record.skipped.items())[:3]) or "no Conv/Dense layers"
        raise RecipeError(f"channel removal found no channels it can remove ({reasons})")
    for producer, chosen in out_keep.items():
        key = "units" if layers[producer]["class_name"] == "Dense" else "filters"
        layers[producer]["config"][key] = len(chosen)
    thinner = keras.Model.from_config(config)
    for layer in thinner.layers:
        weights = [w.copy() for w in functional.get_layer(layer.name).get_weights()]
        for target, how, chosen in in_slices:
            if target == layer.name:
                weights = _slice(layers[target]["class_name"], weights, how, chosen)
        if layer.name in out_keep:  # a producer: its output axis
            chosen = out_keep[layer.name]
            weights = [weights[0][..., chosen], *(w[chosen] for w in weights[1:])]
        if weights:
            layer.set_weights(weights)
    params_before, params_after = functional.count_params(), thinner.count_params()
    record.summary = {"params_before": params_before, "params_after": params_after,
                      "param_ratio": round(params_before / max(params_after, 1), 3)}
    return thinner, record


def _slice(kind: str, weights: list[np.ndarray], how: str, chosen: np.ndarray) -> list[np.ndarray]:
    if how == "both":  # BatchNorm (gamma, beta, mean, var) or depthwise (kernel h, w, C, 1 and bias)
        if kind == "DepthwiseConv2D":
            return [weights[0][:, :, chosen, :], *(w[chosen] for w in weights[1:])]
        return [w[chosen] for w in weights]
    spatial = int(how.split(":")[1])  # "in:S": consumer input, S positions per channel after a Flatten
    kernel = weights[0]
    channels = kernel.shape[-2] // spatial if kind != "Dense" else kernel.shape[0] // spatial
    rows = (np.arange(spatial)[:, None] * channels + chosen[None, :]).reshape(-1)
    kernel = kernel[rows] if kind == "Dense" else kernel[..., rows, :]
    return [kernel, *weights[1:]]
