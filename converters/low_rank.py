"""Low-rank factorization: a Linear layer's weight W (out x in) becomes two thinner layers via SVD.

W = U S V^T is cut to rank r and split symmetrically, A = sqrt(S_r) V_r^T (r x in,
no bias) then B = U_r sqrt(S_r) (out x r, with the original bias), so the
layer costs r * (in + out) multiply-adds instead of in * out.  This changes the
graph, so it runs on the PyTorch module before export (then fine-tuning, when
data is given, recovers what the cut lost, by distillation from the original).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from .errors import RecipeError
from .passes.base import PassRecord
from .recipe import LowRankSettings, Recipe

LINEAR_TYPES = ("Linear", "Gemm", "MatMul")  # the names a recipe's layer_types may use for a Linear


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


def factorize_linear_layers(module, recipe: Recipe) -> tuple[Any, PassRecord]:
    """A copy of ``module`` with each Linear the recipe asks for replaced by its rank-r pair."""
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        raise RecipeError("low_rank rewrites layers, which a TorchScript file does not allow; give the "
                          "nn.Module (or a package.module:factory source)")
    record = PassRecord("low_rank")
    model = copy.deepcopy(module)
    for name, child in list(model.named_modules()):
        if not isinstance(child, torch.nn.Linear):
            continue
        layer_type = next((t for t in LINEAR_TYPES if t in recipe.layer_types), "Linear")
        plan = recipe.plan_for(name, layer_type)
        if plan is None or plan.low_rank is None:
            continue
        weight = child.weight.detach().double()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        rank, kept = choose_rank(s.numpy(), plan.low_rank)
        before, after = child.in_features * child.out_features, rank * (child.in_features + child.out_features)
        if after >= before:
            record.skipped[name] = (f"rank {rank} of a {child.out_features}x{child.in_features} weight saves "
                                    f"nothing ({after} >= {before} parameters)")
            continue
        root = s[:rank].sqrt()
        first = torch.nn.Linear(child.in_features, rank, bias=False)
        second = torch.nn.Linear(rank, child.out_features, bias=child.bias is not None)
        with torch.no_grad():
            first.weight.copy_((root[:, None] * vh[:rank]).float())
            second.weight.copy_((u[:, :rank] * root[None, :]).float())
            if child.bias is not None:
                second.bias.copy_(child.bias)
        parent_name, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attribute,
                torch.nn.Sequential(first, second))
        record.layers[name] = {"rank": rank, "full_rank": int(len(s)), "energy_kept": round(kept, 6),
                               "params_before": before, "params_after": after,
                               "param_ratio": round(before / after, 3)}
    if not record.layers and not record.skipped:
        raise RecipeError("low_rank is set but no Linear layer matched; check the recipe's layers/layer_types")
    return model.eval(), record
