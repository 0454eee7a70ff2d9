"""The recipe's prune and cluster passes on plain weight arrays (ONNX initializers, PyTorch tensors).

onnx2tf turns weights into constants that tfmot cannot see, so PyTorch and
ONNX models are compressed before conversion, on the arrays themselves, with
the same numpy kernels the Keras passes use for one-shot compression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import PassRecord
from .cluster import ClusterSettings, cluster_measure, kmeans_1d
from .prune import M_BY_N, PruneSettings, prune_array, prune_measure
from ..recipe import LayerPlan, Recipe

if TYPE_CHECKING:
    from .data_aware import DataEvidence


@dataclass
class WeightArray:
    """One compressible weight: its layer's name and type aliases, and where its channels are."""

    name: str
    layer_types: tuple[str, ...]  # e.g. ("Conv2d", "Conv"): the recipe's layer_types may use either
    values: np.ndarray
    in_axis: int = 1  # input channels: 2:4 groups run along this axis
    out_axis: int = 0  # output channels: channel pruning zeroes slices of this axis


def plan_prune(weights: list[WeightArray], recipe: Recipe) -> tuple[dict[str, PruneSettings], PassRecord]:
    """The arrays the prune technique compresses, and its record with what is skipped and why."""
    record, targets = PassRecord("prune"), {}
    for weight in weights:
        plan = layer_plan(weight, recipe)
        settings = plan.prune if plan is not None else None
        if settings is not None and (settings.sparsity > 0 or settings.structure == "2:4"):
            reason = _unprunable(weight, settings)
            if reason:
                record.skipped[weight.name] = reason
            else:
                targets[weight.name] = settings
    return targets, record


def plan_cluster(weights: list[WeightArray], recipe: Recipe) -> tuple[dict[str, ClusterSettings], PassRecord]:
    """The arrays the cluster technique compresses, and its record."""
    targets = {weight.name: plan.cluster for weight in weights
               if (plan := layer_plan(weight, recipe)) is not None and plan.cluster is not None}
    return targets, PassRecord("cluster")


def layer_plan(weight: WeightArray, recipe: Recipe) -> LayerPlan | None:
    """The recipe's plan for ``weight``'s layer, by its name and whichever type alias the recipe names."""
    layer_type = next((t for t in weight.layer_types if t in recipe.layer_types), weight.layer_types[0])
    return recipe.plan_for(weight.name, layer_type)


def float_precision_weights(weights: list[WeightArray], recipe: Recipe) -> dict[str, np.ndarray]:
    """{layer: final weight values} of the layers the recipe keeps in float (``precision: float``)."""
    return {w.name: w.values for w in weights if (plan := layer_plan(w, recipe)) and plan.precision == "float"}


def _unprunable(weight: WeightArray, settings: PruneSettings) -> str | None:
    if settings.structure == "2:4" and weight.values.shape[weight.in_axis] % M_BY_N[1]:
        return (f"2:4 pruning needs input channels divisible by 4; {weight.name} has "
                f"{weight.values.shape[weight.in_axis]} (shape {tuple(weight.values.shape)})")
    return None


def prune_weights(weights: list[WeightArray], targets: dict[str, PruneSettings], record: PassRecord,
                  scores: dict[str, np.ndarray] | None = None) -> None:
    """One-shot pruning in place, measured into ``record``; unstructured layers with a ``scores`` array
    (data-aware saliency, same shape) lose their lowest-scored weights instead of the smallest."""
    for weight in weights:
        settings = targets.get(weight.name)
        if settings is not None:
            weight.values = prune_one(weight, settings, (scores or {}).get(weight.name))
            record.layers[weight.name] = {**record.layers.get(weight.name, {}),
                                          **prune_measure([weight.values], settings)}


def prune_one(weight: WeightArray, settings: PruneSettings, score: np.ndarray | None = None) -> np.ndarray:
    """``weight``'s values pruned by ``settings``: by ``score`` within each output channel when given
    (unstructured only), else by magnitude."""
    if score is None or settings.structure != "unstructured":
        return prune_array(weight.values, settings, weight.in_axis, weight.out_axis)
    return prune_by_score(weight.values, score, settings.sparsity, weight.out_axis)


def prune_by_score(values: np.ndarray, score: np.ndarray, sparsity: float, out_axis: int) -> np.ndarray:
    """Zero the ``sparsity`` fraction of each output channel's weights with the lowest ``score`` (Wanda
    compares within an output, so every output keeps its share); when the share is fractional (9 weights
    a filter), the outputs whose next weight scores lowest lose one more, so the layer's count is exact."""
    moved_values = np.moveaxis(values, out_axis, 0)
    moved_score = np.moveaxis(score, out_axis, 0).reshape(len(moved_values), -1)
    rows, width = moved_score.shape
    total = int(np.floor(values.size * sparsity))
    k = total // rows
    order = np.argsort(moved_score, axis=1, kind="stable")
    drop = np.zeros(moved_score.shape, bool)
    np.put_along_axis(drop, order[:, :k], True, axis=1)
    extra = total - k * rows
    if extra and k < width:
        next_score = np.take_along_axis(moved_score, order[:, k:k + 1], axis=1)[:, 0]
        chosen = np.argsort(next_score, kind="stable")[:extra]
        drop[chosen, order[chosen, k]] = True
    pruned = np.where(drop, 0, moved_values.reshape(rows, -1))
    return np.moveaxis(pruned.reshape(moved_values.shape), 0, out_axis)


def cluster_weights(weights: list[WeightArray], targets: dict[str, ClusterSettings],
                    pruned: set[str], record: PassRecord, sample_weights: dict[str, np.ndarray] | None = None
                    ) -> None:
    """One-shot k-means in place; pruned arrays keep their zeros, which count as one of the clusters.
    ``sample_weights`` (by layer) weigh each entry in the centroids (data-aware clustering)."""
    for weight in weights:
        settings = targets.get(weight.name)
        if settings is not None:
            weight.values = kmeans_1d(weight.values, settings.clusters, preserve_zeros=weight.name in pruned,
                                      sample_weight=(sample_weights or {}).get(weight.name))
            record.layers[weight.name] = cluster_measure([weight.values], settings)


def prune_arrays(weights: list[WeightArray], recipe: Recipe, records: dict[str, PassRecord],
                 evidence: DataEvidence | None = None) -> PassRecord:
    """The prune technique's PyTorch/ONNX backend: one-shot, in place; with calibration ``evidence``, ranked by
    data-aware saliency and allocated per layer by measured sensitivity where the recipe allows."""
    targets, record = plan_prune(weights, recipe)
    scores = None
    if evidence is not None and targets:
        scores = evidence.saliency(targets, weights, record)
        targets = evidence.allocate(targets, weights, scores, recipe, record)
    prune_weights(weights, targets, record, scores)
    return record


def cluster_arrays(weights: list[WeightArray], recipe: Recipe, records: dict[str, PassRecord],
                   evidence: DataEvidence | None = None) -> PassRecord:
    """The cluster technique's PyTorch/ONNX backend: one-shot, in place; zeros of pruned arrays stay zero; with
    calibration ``evidence``, centres weighted by each weight's input energy where the recipe allows."""
    targets, record = plan_cluster(weights, recipe)
    pruned = set(records["prune"].layers) if "prune" in records else set()
    weighting = evidence.weighting(targets, weights, record) if evidence is not None and targets else None
    cluster_weights(weights, targets, pruned, record, weighting)
    return record


def compress_weights(weights: list[WeightArray], recipe: Recipe, framework: str = "onnx",
                     evidence: DataEvidence | None = None) -> dict[str, PassRecord]:
    """Every registered weight technique, in registry order, on the arrays (one-shot, in place); ``evidence``
    (what calibration data showed) steers those that use it."""
    from .base import WEIGHTS
    from .registry import in_stage

    records: dict[str, PassRecord] = {}
    for technique in in_stage(WEIGHTS):
        records[technique.key] = technique.backend(framework)(weights, recipe, records, evidence)
    return records
