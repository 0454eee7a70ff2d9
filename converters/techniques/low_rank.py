"""Low-rank factorization: a Linear (or 1x1 Conv) weight W (out x in) becomes two thinner layers via SVD.

W = U S V^T is cut to rank r and split symmetrically, A = sqrt(S_r) V_r^T (r x in,
no bias) then B = U_r sqrt(S_r) (out x r, with the original bias), so the
layer costs r * (in + out) multiply-adds instead of in * out.  This changes the
graph, so it runs on the PyTorch module before export (then fine-tuning, when
data is given, recovers what the cut lost, by distillation from the original).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _tf
from ..errors import RecipeError
from .base import GRAPH, GRAPH_NEEDS_SOURCE, PassRecord, Technique

if TYPE_CHECKING:
    from ..recipe import Recipe

LINEAR_TYPES = ("Linear", "Gemm", "MatMul")  # the names a recipe's layer_types may use for a Linear
CONV_TYPES = ("Conv2d", "Conv")


@dataclass(frozen=True)
class LowRankSettings:
    """SVD of a Linear weight into two thinner layers; give the rank as a ratio or an energy to keep."""

    rank_ratio: float | None = None  # rank = ceil(rank_ratio * min(in, out))
    energy: float | None = None  # smallest rank keeping this fraction of the sum of squared singular values

    def validate(self, where: str) -> None:
        if (self.rank_ratio is None) == (self.energy is None):
            raise RecipeError(f"{where} needs exactly one of rank_ratio or energy; got rank_ratio="
                              f"{self.rank_ratio}, energy={self.energy}")
        for name, value in (("rank_ratio", self.rank_ratio), ("energy", self.energy)):
            if value is not None and not 0.0 < value <= 1.0:
                raise RecipeError(f"{where}.{name} must be in (0, 1]; got {value}")


TECHNIQUE = Technique("low_rank", LowRankSettings, "low-rank factorization", GRAPH,
                      {"keras": "converters.techniques.low_rank:factorize_keras_dense_layers",
                       "pytorch": "converters.techniques.low_rank:factorize_linear_layers"},
                      {"onnx": GRAPH_NEEDS_SOURCE})


def choose_rank(singular_values: np.ndarray, settings: LowRankSettings) -> tuple[int, float]:
    """The rank the settings ask for, and the fraction of squared singular values it keeps."""
    squares = singular_values.astype(np.float64) ** 2
    cumulative = np.cumsum(squares) / squares.sum() if squares.sum() > 0 else np.ones_like(squares)
    if settings.rank_ratio is not None:
        rank = max(1, math.ceil(settings.rank_ratio * len(singular_values)))
    else:
        rank = int(np.searchsorted(cumulative, settings.energy - 1e-12) + 1)
    rank = min(rank, len(singular_values))
    return rank, float(cumulative[rank - 1])


def _pointwise(child) -> bool:
    import torch

    return (isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1) and child.groups == 1
            and child.padding in ((0, 0), "valid") and child.dilation == (1, 1))


def _pair(child, rank: int, first_weight, second_weight):
    """The two thinner layers replacing ``child``: (in -> rank, no bias) then (rank -> out, its bias)."""
    import torch

    if isinstance(child, torch.nn.Linear):
        first = torch.nn.Linear(child.in_features, rank, bias=False)
        second = torch.nn.Linear(rank, child.out_features, bias=child.bias is not None)
    else:  # 1x1 convolution: the stride stays on the first, which sees the full input
        first = torch.nn.Conv2d(child.in_channels, rank, 1, stride=child.stride, bias=False)
        second = torch.nn.Conv2d(rank, child.out_channels, 1, bias=child.bias is not None)
    with torch.no_grad():
        first.weight.copy_(first_weight.reshape(first.weight.shape).float())
        second.weight.copy_(second_weight.reshape(second.weight.shape).float())
        if child.bias is not None:
            second.bias.copy_(child.bias)
    return torch.nn.Sequential(first, second)


def factorize_linear_layers(module, recipe: Recipe, example_inputs: tuple | None = None) -> tuple[Any, PassRecord]:
    """A copy of ``module`` with each Linear / 1x1 Conv2d the recipe asks for replaced by its rank-r pair."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        raise RecipeError("low_rank rewrites layers, which a TorchScript file does not allow; give the "
                          "nn.Module (or a package.module:factory source)")
    record = PassRecord("low_rank")
    model = copy.deepcopy(module)
    for name, child in list(model.named_modules()):
        if isinstance(child, torch.nn.Linear):
            types = LINEAR_TYPES
        elif _pointwise(child):
            types = CONV_TYPES
        else:
            continue
        plan = recipe.plan_for(name, next((t for t in types if t in recipe.layer_types), types[0]))
        if plan is None or plan.low_rank is None:
            continue
        weight = child.weight.detach().double().reshape(child.weight.shape[0], -1)  # out x in
        outputs, inputs = weight.shape
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        rank, kept = choose_rank(s.numpy(), plan.low_rank)
        before, after = inputs * outputs, rank * (inputs + outputs)
        if after >= before:
            record.skipped[name] = (f"rank {rank} of a {outputs}x{inputs} weight saves nothing "
                                    f"({after} >= {before} parameters)")
            continue
        root = s[:rank].sqrt()
        pair = _pair(child, rank, root[:, None] * vh[:rank], u[:, :rank] * root[None, :])
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attribute, pair)
        record.layers[name] = {"rank": rank, "full_rank": int(len(s)), "energy_kept": round(kept, 6),
                               "params_before": before, "params_after": after,
                               "param_ratio": round(before / after, 3)}
    if not record.layers and not record.skipped:
        raise RecipeError("low_rank is set but no Linear or 1x1 Conv2d layer matched; check the recipe's "
                          "layers/layer_types")
    return model.eval(), record


def factorize_keras_dense_layers(model, recipe: Recipe, example_inputs: tuple | None = None
                                 ) -> tuple[Any, PassRecord]:
    """A Sequential/functional tf_keras model with each Dense the recipe asks for split in two.

    The first layer (``<name>_lowrank``, rank units, no bias, linear) is inserted before
    the original, which keeps its name, bias and activation and gets the second factor.
    """
    from .channels.keras import functional_graph

    keras_model, config = functional_graph(model, "low_rank")
    record = PassRecord("low_rank")
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    entries = []
    for entry in config["layers"]:
        name = entry["config"]["name"]
        plan = recipe.plan_for(name, entry["class_name"]) if entry["class_name"] == "Dense" else None
        if plan is None or plan.low_rank is None:
            entries.append(entry)
            continue
        kernel = keras_model.get_layer(name).get_weights()[0].astype(np.float64)  # in x out
        u, s, vh = np.linalg.svd(kernel, full_matrices=False)
        rank, kept = choose_rank(s, plan.low_rank)
        before, after = kernel.size, rank * sum(kernel.shape)
        if after >= before or len(entry.get("inbound_nodes", [])) != 1:
            record.skipped[name] = (f"rank {rank} of a {kernel.shape[1]}x{kernel.shape[0]} weight saves nothing "
                                    f"({after} >= {before} parameters)" if after >= before
                                    else "the layer is called more than once")
            entries.append(entry)
            continue
        root = np.sqrt(s[:rank])
        factors[name] = ((u[:, :rank] * root).astype(np.float32), (root[:, None] * vh[:rank]).astype(np.float32))
        first = {"class_name": "Dense", "name": f"{name}_lowrank", "inbound_nodes": entry["inbound_nodes"],
                 "config": {"name": f"{name}_lowrank", "units": rank, "use_bias": False, "activation": "linear",
                            "trainable": True, "dtype": entry["config"].get("dtype", "float32")}}
        second = {**entry, "inbound_nodes": [[[f"{name}_lowrank", 0, 0, {}]]]}
        entries += [first, second]
        record.layers[name] = {"rank": rank, "full_rank": int(len(s)), "energy_kept": round(kept, 6),
                               "params_before": int(before), "params_after": int(after),
                               "param_ratio": round(before / after, 3)}
    if not record.layers and not record.skipped:
        raise RecipeError("low_rank is set but no Dense layer matched; check the recipe's layers/layer_types")
    config["layers"] = entries
    rebuilt = _tf.keras().Model.from_config(config)
    for layer in rebuilt.layers:
        if layer.name in factors:
            layer.set_weights([factors[layer.name][1], *keras_model.get_layer(layer.name).get_weights()[1:]])
        elif layer.name.endswith("_lowrank") and layer.name[:-8] in factors:
            layer.set_weights([factors[layer.name[:-8]][0]])
        elif layer.get_weights():
            layer.set_weights(keras_model.get_layer(layer.name).get_weights())
    return rebuilt, record
