"""Structured channel pruning that removes channels, so int8 inference really does less work.

The PyTorch module is traced with torch.fx (shapes propagated from the
example input).  From every Conv/Linear that produces channels, the pass
follows the channels through whatever keeps them apart (BatchNorm,
activations, pooling, depthwise convolutions, spatial means) to the layers
that consume them (Conv/Linear inputs).  Residual adds join the producers on
both sides into one group that must keep the same channels; anything that
mixes or reshapes channels (concatenation, attention products, reshapes, the
model's outputs) leaves that group untouched, with the reason recorded.
Each group keeps its highest-ranked channels (L2 or L1 norm of the filters,
or the BatchNorm scale) and every member is sliced to match.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import numpy as np

from ...errors import RecipeError, first_line
from ..base import PassRecord
from .grouping import ChannelGroup, channel_scores, keep_count, merge_groups
from ...recipe import Recipe

ELEMENTWISE_MODULES = ("ReLU", "ReLU6", "LeakyReLU", "Hardswish", "Hardsigmoid", "SiLU", "GELU", "Sigmoid", "Tanh",
                       "Identity", "Dropout", "Dropout2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
                       "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Upsample")
ELEMENTWISE_FUNCTIONS = ("relu", "relu6", "hardswish", "silu", "gelu", "sigmoid", "tanh", "leaky_relu", "max_pool2d",
                         "avg_pool2d", "adaptive_avg_pool2d", "max_pool1d", "avg_pool1d", "interpolate", "dropout",
                         "contiguous", "clone")
ADD_TARGETS = (operator.add, operator.iadd, "add")



def _module_kind(module) -> str:
    import torch.nn as nn

    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups == 1:
            return "conv"
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise"
        return "grouped"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "batchnorm"
    return "elementwise" if type(module).__name__ in ELEMENTWISE_MODULES else "other"


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _channels(node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else None


def _keeps_channels(node, modules) -> tuple[str, str | None]:
    """How ``node`` treats the channel axis of the input it gets: (kind, module target or None)."""
    if node.op == "call_module":
        kind = _module_kind(modules[node.target])
        if kind in ("conv", "linear"):
            return "consumer", node.target
        if kind in ("batchnorm", "depthwise"):
            return "slice", node.target
        return ("pass", None) if kind == "elementwise" else ("block", f"module {type(modules[node.target]).__name__}")
    if node.op in ("call_function", "call_method"):
        name = _name(node.target)
        if node.target in ADD_TARGETS or name == "add":
            return "add", None
        if name in ELEMENTWISE_FUNCTIONS:
            return "pass", None
        if name in ("mean", "sum", "amax", "flatten") and _reduces_space_only(node, name):
            return "pass", None
        return "block", f"{name}"
    return "block", "the model's output" if node.op == "output" else node.op


def _reduces_space_only(node, name: str) -> bool:
    """A spatial mean/sum/max, or a flatten of (N, C, 1, 1): the channel axis stays axis 1."""
    meta = node.args[0].meta.get("tensor_meta") if node.args and hasattr(node.args[0], "meta") else None
    if meta is None:
        return False
    rank = len(meta.shape)
    if name == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1 and all(int(d) == 1 for d in meta.shape[2:])
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    return bool(dims) and all(d % rank >= 2 for d in dims)


def _trace(model, example_inputs: tuple):
    import torch.fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        graph_module = torch.fx.symbolic_trace(model)
        ShapeProp(graph_module).propagate(*example_inputs)
    except Exception as exc:  # data-dependent control flow and the like
        raise RecipeError(f"channel removal needs a model torch.fx can trace; tracing failed: "
                          f"{first_line(exc, 200)}") from None
    return graph_module


def _groups(graph_module, recipe: Recipe, record: PassRecord) -> list[ChannelGroup]:
    modules = dict(graph_module.named_modules())
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    owner: dict[Any, str] = {}  # node -> producer whose channels it carries
    walks: dict[str, ChannelGroup] = {}
    for node in graph_module.graph.nodes:
        if node.op != "call_module" or _module_kind(modules[node.target]) not in ("conv", "linear"):
            continue
        module = modules[node.target]
        plan = recipe.plan_for(node.target, type(module).__name__)
        group = ChannelGroup([node.target], _channels(node) or 0, {(node.target, "out"): None})
        if plan is None or plan.channels is None:
            group.blocked = "not asked for by the recipe"
        elif calls[node.target] > 1:
            group.blocked = "the module is called more than once"
        walks[node.target] = group
        owner[node] = node.target
        frontier = list(node.users)
        seen = set()
        while frontier:
            user = frontier.pop()
            if user in seen:
                continue
            seen.add(user)
            kind, target = _keeps_channels(user, modules)
            if kind == "consumer":
                group.slices[(target, "in")] = None
                continue
            if kind == "block":
                group.blocked = group.blocked or f"its channels reach {target}"
                continue
            if kind == "slice":
                if calls[target] > 1:
                    group.blocked = group.blocked or f"{target} is called more than once"
                group.slices[(target, "both")] = None
            owner.setdefault(user, node.target)
            frontier.extend(user.users)
    joins = []
    for node in graph_module.graph.nodes:
        if _keeps_channels(node, modules)[0] == "add":
            operands = [a for a in node.args if hasattr(a, "op")]
            if len(operands) >= 2:  # adding a constant keeps channels apart
                joins.append([owner.get(a) for a in operands])
    return merge_groups(walks, joins, record)


def _scores(group: ChannelGroup, modules, ranking: str) -> np.ndarray:
    weights = [modules[name].weight.detach().double().reshape(group.channels, -1).numpy() for name in group.producers]
    scales = [modules[m].weight.detach().double().numpy() for m, how in group.slices
              if how == "both" and _module_kind(modules[m]) == "batchnorm"]
    return channel_scores(weights, scales, ranking, group.producers)


def _slice(module, how: str, keep) -> None:
    import torch

    index = torch.as_tensor(keep, dtype=torch.long)
    kind = _module_kind(module)
    with torch.no_grad():
        if kind == "batchnorm":
            for attribute in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(module, attribute)
                if tensor is not None:
                    setattr(module, attribute, type(tensor)(tensor.index_select(0, index)) if isinstance(
                        tensor, torch.nn.Parameter) else tensor.index_select(0, index))
            module.num_features = len(keep)
            return
        if how in ("out", "both"):
            module.weight = torch.nn.Parameter(module.weight.index_select(0, index))
            if module.bias is not None:
                module.bias = torch.nn.Parameter(module.bias.index_select(0, index))
        if how == "in":
            module.weight = torch.nn.Parameter(module.weight.index_select(1, index))
    if kind == "linear":
        module.out_features, module.in_features = module.weight.shape
    elif kind == "depthwise":
        module.in_channels = module.out_channels = module.groups = len(keep)
    else:
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups


def count_macs_and_params(model, example_inputs: tuple) -> tuple[int, int]:
    """Multiply-accumulates of Conv/Linear layers on the example input, and the model's parameter count."""
    import torch
    import torch.nn as nn

    macs = [0]

    def hook(module, _inputs, output):
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            per_output = module.in_channels // module.groups * int(np.prod(module.kernel_size))
            macs[0] += output.numel() * per_output
        else:
            macs[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d,
                                                                                         nn.Linear))]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return macs[0], sum(p.numel() for p in model.parameters())


def remove_channels(module, recipe: Recipe, example_inputs: tuple | None = None) -> tuple[Any, PassRecord]:
    """A copy of ``module`` with each prunable channel group cut to the recipe's fraction."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        raise RecipeError("channel removal rewrites layers, which a TorchScript file does not allow; give the "
                          "nn.Module (or a package.module:factory source)")
    model = copy.deepcopy(module).eval()
    record = PassRecord("channels")
    macs_before, params_before = count_macs_and_params(model, example_inputs)
    graph_module = _trace(model, example_inputs)
    modules = dict(graph_module.named_modules())
    settings = recipe.channels
    for group in _groups(graph_module, recipe, record):
        group_settings = recipe.plan_for(group.producers[0], type(modules[group.producers[0]]).__name__).channels
        keep = keep_count(group.channels, group_settings)
        if keep >= group.channels:
            for name in group.producers:
                record.skipped[name] = f"{group.channels} channels: nothing to remove at this fraction"
            continue
        chosen = np.sort(np.argsort(-_scores(group, modules, group_settings.ranking), kind="stable")[:keep])
        for target, how in group.slices:
            _slice(model.get_submodule(target), how, chosen)
        for name in group.producers:
            record.layers[name] = {"channels": group.channels, "kept": keep, "ranking": group_settings.ranking,
                                   "joined_with": [p for p in group.producers if p != name]}
    if not record.layers:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(record.skipped.items())[:3]) or "no Conv/Linear layers"
        raise RecipeError(f"channel removal found no channels it can remove ({reasons})")
    macs_after, params_after = count_macs_and_params(model, example_inputs)
    record.summary = {"macs_before": macs_before, "macs_after": macs_after, "params_before": params_before,
                      "params_after": params_after, "mac_ratio": round(macs_before / max(macs_after, 1), 3),
                      "param_ratio": round(params_before / max(params_after, 1), 3), "fraction": settings.fraction
                      if settings else None}
    return model, record
