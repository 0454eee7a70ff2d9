"""Magnitude pruning: unstructured to a target sparsity, structured 2:4, or whole output channels.

One-shot (no data) zeroes the smallest-magnitude weights in numpy.  With data,
tfmot's ``prune_low_magnitude`` ramps sparsity during fine-tuning; its update
frequency is derived from the number of steps, because tfmot's default of 100
steps leaves short fine-tunes at 0% sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _tf
from ..errors import RecipeError, check_choice, check_switch
from .base import WEIGHTS, PassRecord, Technique, WeightPass

if TYPE_CHECKING:
    from ..recipe import LayerPlan

PRUNE_STRUCTURES = ("unstructured", "2:4", "channel")
PRUNE_SCHEDULES = ("polynomial", "constant")
# One-shot pruning with calibration data on the PyTorch/ONNX route (data_aware.py); auto: the data-aware choice
# when --calib data is given and nothing is fine-tuned, else the plain one.
PRUNE_ALLOCATIONS = ("auto", "uniform", "sensitivity")
PRUNE_RANKINGS = ("auto", "magnitude", "activation")
M_BY_N = (2, 4)
RAMP_FRACTION = 0.7  # reach the target sparsity at 70% of fine-tuning, then recover


@dataclass(frozen=True)
class PruneSettings:
    sparsity: float
    structure: str = "unstructured"
    schedule: str = "polynomial"
    allocation: str = "auto"  # uniform: every layer at `sparsity`; sensitivity: per layer, by measured error
    ranking: str = "auto"  # magnitude: |w|; activation: |w| x its input channel's RMS on calibration data
    bias_correction: bool | str = "auto"  # after one-shot compression: mean output shift moved into the bias

    def validate(self, where: str) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise RecipeError(f"{where}.sparsity must be in [0, 1); got {self.sparsity}")
        check_choice(f"{where}.structure", self.structure, PRUNE_STRUCTURES)
        check_choice(f"{where}.schedule", self.schedule, PRUNE_SCHEDULES)
        check_choice(f"{where}.allocation", self.allocation, PRUNE_ALLOCATIONS)
        check_choice(f"{where}.ranking", self.ranking, PRUNE_RANKINGS)
        check_switch(f"{where}.bias_correction", self.bias_correction)
        for key in ("allocation", "ranking"):
            if self.structure != "unstructured" and getattr(self, key) not in ("auto", "uniform", "magnitude"):
                raise RecipeError(f"{where}.{key} {getattr(self, key)} applies to unstructured pruning; got "
                                  f"structure {self.structure} (set {key} auto or use structure unstructured)")
        if self.structure == "2:4" and self.sparsity not in (0.0, 0.5):
            raise RecipeError(f"{where}: 2:4 pruning always gives sparsity 0.5; got sparsity "
                              f"{self.sparsity} (drop it or set 0.5)")


_ARRAYS = "converters.techniques.arrays:prune_arrays"
TECHNIQUE = Technique("prune", PruneSettings, "pruning (unstructured, 2:4, channel)", WEIGHTS,
                      {"keras": "converters.techniques.prune:PrunePass", "pytorch": _ARRAYS, "onnx": _ARRAYS},
                      trainers={"pytorch": "converters.training.torch:PrunePhase"})


def magnitude_prune(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the ``sparsity`` fraction of entries with the smallest magnitude."""
    k = int(np.floor(weights.size * sparsity))
    if k == 0:
        return weights.copy()
    flat = weights.reshape(-1).copy()
    flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0
    return flat.reshape(weights.shape)


def m_by_n_prune(weights: np.ndarray, m: int = M_BY_N[0], n: int = M_BY_N[1], axis: int = -2) -> np.ndarray:
    """Keep the n - m largest of every n consecutive input-channel weights along ``axis``.

    Keras kernels keep input channels on axis -2 (as tfmot groups them); PyTorch
    and ONNX weights on axis 1.
    """
    moved = np.moveaxis(weights, axis, -1)
    groups = moved.reshape(-1, n)
    drop = np.argsort(np.abs(groups), axis=1, kind="stable")[:, :m]
    pruned = groups.copy()
    np.put_along_axis(pruned, drop, 0, axis=1)
    return np.moveaxis(pruned.reshape(moved.shape), -1, axis)


def channel_prune(weights: np.ndarray, sparsity: float, axis: int) -> np.ndarray:
    """Zero the ``sparsity`` fraction of output channels (slices along ``axis``) with the smallest L2 norm."""
    moved = np.moveaxis(weights, axis, 0)
    k = int(np.floor(moved.shape[0] * sparsity))
    pruned = moved.copy()
    if k:
        norms = np.linalg.norm(moved.reshape(moved.shape[0], -1), axis=1)
        pruned[np.argsort(norms, kind="stable")[:k]] = 0
    return np.moveaxis(pruned, 0, axis)


def prune_array(values: np.ndarray, settings: PruneSettings, in_axis: int, out_axis: int) -> np.ndarray:
    """One-shot pruning of one weight array, whatever framework's axis order it uses."""
    if settings.structure == "2:4":
        return m_by_n_prune(values, axis=in_axis)
    if settings.structure == "channel":
        return channel_prune(values, settings.sparsity, out_axis)
    return magnitude_prune(values, settings.sparsity)


def prune_measure(values: list[np.ndarray], settings: PruneSettings) -> dict[str, Any]:
    return {"target": 0.5 if settings.structure == "2:4" else settings.sparsity,
            "structure": settings.structure,
            "sparsity": float(np.mean([sparsity_of(v) for v in values]))}


def sparsity_of(weights: np.ndarray) -> float:
    return float(1.0 - np.count_nonzero(weights) / weights.size) if weights.size else 0.0


class PrunePass(WeightPass):
    name = "prune"

    def settings(self, plan: LayerPlan) -> PruneSettings | None:
        if plan.prune is None or (plan.prune.sparsity == 0 and plan.prune.structure != "2:4"):
            return None
        return plan.prune

    def registry(self):
        return _tf.prune_registry()

    def unsupported_reason(self, layer, settings: PruneSettings) -> str | None:
        reason = super().unsupported_reason(layer, settings)
        if reason or settings.structure != "2:4":
            return reason
        for weight in self.weights_of(layer):
            shape = weight.shape
            if len(shape) not in (2, 4) or shape[-2] % M_BY_N[1]:
                return (f"2:4 pruning needs a rank-2 or rank-4 kernel with input channels divisible "
                        f"by 4; {layer.name} has {tuple(shape)}")
        return None

    def one_shot(self, layer, settings: PruneSettings, after: dict[str, PassRecord]) -> None:
        for weight in self.weights_of(layer):
            values = weight.numpy()
            weight.assign(prune_array(values, settings, in_axis=-2, out_axis=-1))

    def wrap(self, model, targets: dict[str, PruneSettings], steps: int, after: dict[str, PassRecord]):
        mot = _tf.tfmot()
        keras = _tf.keras()
        end_step = max(1, int(steps * RAMP_FRACTION))
        frequency = max(1, end_step // 10)

        channel_pruned = sorted(name for name, s in targets.items() if s.structure == "channel")
        if channel_pruned:
            raise RecipeError(f"channel pruning with fine-tuning is not available for Keras models "
                              f"(layers {', '.join(channel_pruned)}): tfmot has no channel schedule; "
                              "prune one-shot (no --finetune data) or use structure unstructured or 2:4")

        def wrap_layer(layer):
            settings = targets.get(layer.name)
            if settings is None:
                return layer
            if settings.structure == "2:4":
                return mot.sparsity.keras.prune_low_magnitude(
                    layer, sparsity_m_by_n=M_BY_N,
                    pruning_schedule=mot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=frequency))
            if settings.schedule == "constant":
                schedule = mot.sparsity.keras.ConstantSparsity(settings.sparsity, 0, frequency=frequency)
            else:
                schedule = mot.sparsity.keras.PolynomialDecay(0.0, settings.sparsity, 0, end_step,
                                                              frequency=frequency)
            return mot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)

        return keras.models.clone_model(model, clone_function=wrap_layer)

    def callbacks(self) -> list:
        return [_tf.tfmot().sparsity.keras.UpdatePruningStep()]

    def strip(self, model):
        return _tf.tfmot().sparsity.keras.strip_pruning(model)

    def measure(self, layer, settings: PruneSettings) -> dict[str, Any]:
        values = [w.numpy() for w in self.weights_of(layer)]
        return prune_measure(values, settings)
