"""Weight sharing by k-means: each kernel keeps at most N distinct values.

One-shot runs 1-D k-means (quantile initialisation, Lloyd iterations) in numpy.
With data, tfmot's ``cluster_weights`` fine-tunes the centroids; because its
k-means++ initialisation picks among distinct weight values, starting from the
one-shot result hands it exactly those centroids.  After pruning, zeros are
kept out of the clusters (sparsity-preserving), so a layer holds at most N
values plus zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _tf
from ..errors import RecipeError, check_choice, check_switch
from .base import WEIGHTS, PassRecord, Technique, WeightPass
from .prune import sparsity_of

if TYPE_CHECKING:
    from ..recipe import LayerPlan

LLOYD_ITERATIONS = 60
# With calibration data on the PyTorch/ONNX route (data_aware.py); auto: activation when --calib is given.
CLUSTER_WEIGHTINGS = ("auto", "uniform", "activation")


@dataclass(frozen=True)
class ClusterSettings:
    clusters: int
    weighting: str = "auto"  # activation: k-means weighted by each weight's input energy on calibration data
    bias_correction: bool | str = "auto"  # after one-shot compression: mean output shift moved into the bias

    def validate(self, where: str) -> None:
        if not isinstance(self.clusters, int) or isinstance(self.clusters, bool) or self.clusters < 2:
            raise RecipeError(f"{where}.clusters must be an integer >= 2; got {self.clusters!r}")
        check_choice(f"{where}.weighting", self.weighting, CLUSTER_WEIGHTINGS)
        check_switch(f"{where}.bias_correction", self.bias_correction)
        if self.clusters > 256:
            raise RecipeError(f"{where}.clusters must be <= 256 (int8 holds 256 values); "
                              f"got {self.clusters}")


_ARRAYS = "converters.techniques.arrays:cluster_arrays"
TECHNIQUE = Technique("cluster", ClusterSettings, "k-means clustering", WEIGHTS,
                      {"keras": "converters.techniques.cluster:ClusterPass", "pytorch": _ARRAYS, "onnx": _ARRAYS},
                      trainers={"pytorch": "converters.training.torch:ClusterPhase"})


def kmeans_1d(values: np.ndarray, clusters: int, preserve_zeros: bool = False,
              sample_weight: np.ndarray | None = None) -> np.ndarray:
    """``values`` with every entry replaced by its nearest of at most ``clusters`` centroids.

    ``preserve_zeros`` keeps pruned zeros exactly zero, and zero counts as one of the
    ``clusters`` values, as in tfmot's sparsity-preserving clustering: a 16-cluster
    tensor holds at most 16 distinct values (a 4-bit palette), never 16 plus zero.
    ``sample_weight`` (same shape, >= 0) weighs each entry in the centroids' means, e.g. by how much
    its input moves the output (data-aware clustering).
    """
    flat = values.reshape(-1).astype(np.float64)
    chosen = flat != 0 if preserve_zeros else np.ones(flat.shape, bool)
    data = flat[chosen]
    if data.size == 0:
        return values.copy()
    weight = np.ones(data.shape) if sample_weight is None else \
        np.broadcast_to(sample_weight, values.shape).reshape(-1)[chosen].astype(np.float64) + 1e-12
    if data.size < flat.size:  # zeros kept: they take one of the values
        clusters -= 1
    centroids = np.unique(_weighted_quantiles(data, weight, (np.arange(clusters) + 0.5) / clusters))
    for _ in range(LLOYD_ITERATIONS):
        assignment = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, data)
        counts = np.bincount(assignment, weights=weight, minlength=centroids.size)
        sums = np.bincount(assignment, weights=data * weight, minlength=centroids.size)
        updated = np.where(counts > 0, sums / np.where(counts > 0, counts, 1), centroids)
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(updated)
    assignment = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, data)
    out = flat.copy()
    out[chosen] = centroids[assignment]
    return out.reshape(values.shape).astype(values.dtype)


def _weighted_quantiles(data: np.ndarray, weight: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.quantile`` where each entry counts ``weight`` times (equal weights: the same answer)."""
    if np.all(weight == weight[0]):
        return np.quantile(data, q)
    order = np.argsort(data)
    cumulative = np.cumsum(weight[order])
    return np.interp(q * cumulative[-1], cumulative - weight[order] / 2, data[order])


def unique_count(values: np.ndarray) -> int:
    return int(np.unique(values).size)


def cluster_measure(values: list[np.ndarray], settings: ClusterSettings) -> dict[str, Any]:
    return {"clusters": settings.clusters,
            "unique_values": max(unique_count(v) for v in values),
            "sparsity": float(np.mean([sparsity_of(v) for v in values]))}


class ClusterPass(WeightPass):
    name = "cluster"

    def settings(self, plan: LayerPlan) -> ClusterSettings | None:
        return plan.cluster

    def registry(self):
        return _tf.clustering_registry()

    @staticmethod
    def _pruned(layer, after: dict[str, PassRecord]) -> bool:
        return "prune" in after and layer.name in after["prune"].layers

    def one_shot(self, layer, settings: ClusterSettings, after: dict[str, PassRecord]) -> None:
        for weight in self.weights_of(layer):
            weight.assign(kmeans_1d(weight.numpy(), settings.clusters, self._pruned(layer, after)))

    def wrap(self, model, targets: dict[str, ClusterSettings], steps: int, after: dict[str, PassRecord]):
        mot = _tf.tfmot()
        keras = _tf.keras()
        init = mot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS
        by_name = {layer.name: layer for layer in model.layers}
        for name, settings in targets.items():  # good centroids first; tfmot then refines them
            self.one_shot(by_name[name], settings, after)

        def wrap_layer(layer):
            settings = targets.get(layer.name)
            if settings is None:
                return layer
            return mot.clustering.keras.cluster_weights(
                layer, number_of_clusters=settings.clusters, cluster_centroids_init=init,
                preserve_sparsity=self._pruned(layer, after))

        return keras.models.clone_model(model, clone_function=wrap_layer)

    def callbacks(self) -> list:
        return []

    def strip(self, model):
        return _tf.tfmot().clustering.keras.strip_clustering(model)

    def measure(self, layer, settings: ClusterSettings) -> dict[str, Any]:
        return cluster_measure([w.numpy() for w in self.weights_of(layer)], settings)
