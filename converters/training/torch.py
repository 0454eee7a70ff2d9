"""Prune and cluster a PyTorch model while fine-tuning it, by distillation from the original.

The same two passes as for Keras, in PyTorch: pruning ramps sparsity up on a
polynomial schedule (as tfmot's ``PolynomialDecay``), re-choosing the mask from
the current magnitudes, then holds it fixed; clustering starts from one-shot
k-means and trains the shared values (centroids) with the assignments fixed,
so zeros stay zeros.  The loss is the one ``converters.training.keras`` documents:
labels (when given) plus KL to the teacher at temperature T.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..techniques.arrays import WeightArray, cluster_weights, plan_cluster, plan_prune
from ..data import Dataset
from .keras import is_probability_output, steps_per_epoch
from ..techniques.base import PassRecord
from ..techniques.cluster import cluster_measure
from ..techniques.prune import RAMP_FRACTION, PruneSettings, prune_array, prune_measure
from ..recipe import FinetuneSettings, Recipe

UPDATES_PER_RAMP = 10


@dataclass
class TrainingState:
    """What the fine-tuning phases of the weight techniques share: each weight's array and owning module, and
    the prune masks (which later phases keep applying, so that pruned zeros stay zero)."""

    weights: list[WeightArray]
    owners: dict[str, Any]
    masks: dict[str, Any] = field(default_factory=dict)


def finetune_torch(student, teacher, weights: list[WeightArray], owners: dict[str, Any], recipe: Recipe,
                   data: Dataset, verbose: bool, train_unchanged: bool = True) -> dict[str, PassRecord]:
    """Compress ``student`` (its Conv/Linear weights, listed in ``weights``) in place, with fine-tuning: each
    registered weight technique's PyTorch phase (``Technique.trainers["pytorch"]``), in registry order, gets a
    training run with its step hook.

    With nothing to prune or cluster (the graph was rewritten instead), ``train_unchanged``
    still fine-tunes it by distillation.
    """
    import torch

    from ..techniques.base import WEIGHTS
    from ..techniques.registry import in_stage

    settings = recipe.finetune
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    state = TrainingState(weights, owners)
    phases = {t.key: t.trainer("pytorch")(recipe, state) for t in in_stage(WEIGHTS)}
    trainer = Trainer(student, teacher, data, settings, verbose)
    if not any(phase.targets for phase in phases.values()) and train_unchanged:  # the graph changed: distil
        trainer.train(lambda step, total: None, "distillation after the graph rewrite")
    records = {}
    for key, phase in phases.items():
        if phase.targets:
            phase.begin()
            trainer.train(phase.after_step, key)
            phase.record.fine_tuned = True
        phase.end()
        records[key] = phase.record
    return records


class PrunePhase:
    """Pruning while fine-tuning: masks re-chosen at a rising sparsity until RAMP_FRACTION of training."""

    def __init__(self, recipe: Recipe, state: TrainingState):
        self.state = state
        self.targets, self.record = plan_prune(state.weights, recipe)

    def begin(self) -> None:
        pass

    def after_step(self, step: int, total: int) -> None:
        _update_masks(self.state.owners, self.targets, self.state.masks, step, total)

    def end(self) -> None:
        for name, settings in self.targets.items():
            self.record.layers[name] = prune_measure([_weight(self.state.owners[name])], settings)


class ClusterPhase:
    """Clustering while fine-tuning: k-means once, then only the shared values train (zeros stay zero)."""

    def __init__(self, recipe: Recipe, state: TrainingState):
        self.state = state
        self.targets, self.record = plan_cluster(state.weights, recipe)

    def begin(self) -> None:
        owners = self.state.owners
        for weight in self.state.weights:
            weight.values = _weight(owners[weight.name])
        cluster_weights(self.state.weights, self.targets, set(self.state.masks), PassRecord("cluster"))
        for weight in self.state.weights:
            if weight.name in self.targets:
                share_values(owners[weight.name], weight.values)

    def after_step(self, step: int, total: int) -> None:
        _apply_masks(self.state.owners, self.state.masks)

    def end(self) -> None:
        import torch

        for name, settings in self.targets.items():
            torch.nn.utils.parametrize.remove_parametrizations(self.state.owners[name], "weight",
                                                               leave_parametrized=True)
            self.record.layers[name] = cluster_measure([_weight(self.state.owners[name])], settings)


def _weight(module) -> np.ndarray:
    return module.weight.detach().numpy().copy()


def _update_masks(owners, prune: dict[str, PruneSettings], masks, step: int, total: int) -> None:
    """Every few steps until RAMP_FRACTION of training, re-choose masks at the scheduled sparsity."""
    import torch

    end = max(1, int(total * RAMP_FRACTION))
    every = max(1, end // UPDATES_PER_RAMP)
    if step <= end and (step % every == 0 or step == end):
        progress = min(1.0, step / end)
        for name, settings in prune.items():
            scheduled = settings if settings.structure == "2:4" else dataclasses.replace(
                settings, sparsity=settings.sparsity * (1.0 - (1.0 - progress) ** 3))
            module = owners[name]
            pruned = prune_array(_weight(module), scheduled, in_axis=1, out_axis=0)
            masks[name] = torch.from_numpy((pruned != 0).astype(np.float32))
    _apply_masks(owners, masks)


def _apply_masks(owners, masks) -> None:
    import torch

    with torch.no_grad():
        for name, mask in masks.items():
            if not torch.nn.utils.parametrize.is_parametrized(owners[name], "weight"):
                owners[name].weight.mul_(mask)


def share_values(module, clustered: np.ndarray) -> None:
    """Make ``module.weight`` = centroids[assignment], training only the centroids; zeros stay fixed."""
    import torch

    values, codes = np.unique(clustered, return_inverse=True)

    class SharedValues(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.centroids = torch.nn.Parameter(torch.from_numpy(values.astype(np.float32)))
            self.register_buffer("codes", torch.from_numpy(codes.reshape(clustered.shape).astype(np.int64)))
            self.register_buffer("keep", torch.from_numpy((clustered != 0).astype(np.float32)))

        def forward(self, original):
            return self.centroids[self.codes] * self.keep

    torch.nn.utils.parametrize.register_parametrization(module, "weight", SharedValues(), unsafe=True)


class Trainer:
    """Adam over the student's parameters, towards the teacher's outputs and the labels."""

    def __init__(self, student, teacher, data: Dataset, settings: FinetuneSettings, verbose: bool):
        import torch

        self.student, self.data, self.settings, self.verbose = student, data, settings, verbose
        columns = [data.x] if isinstance(data.x, np.ndarray) else list(data.x.values())  # in input order
        self.inputs = [torch.from_numpy(np.ascontiguousarray(x)) for x in columns]
        with torch.no_grad():
            teacher_out = torch.cat([first_output(teacher(*self._batch(slice(i, i + 256))))
                                     for i in range(0, len(data), 256)])
        self.probabilities = is_probability_output(teacher_out.numpy())
        self.teacher_out = teacher_out
        self.y = torch.from_numpy(data.y) if data.labelled else None
        self.classifier = teacher_out.ndim == 2 and teacher_out.shape[1] > 1

    def train(self, after_step, step_name: str = "fine-tune", lr_at: Callable[[int], float] | None = None) -> None:
        """Train every epoch, calling ``after_step(step, total)``; with verbose, one stderr line per epoch.
        ``lr_at(step)`` scales the learning rate of each step (a schedule); None keeps it constant."""
        import sys

        import torch

        settings = self.settings
        self.student.train()
        params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=settings.learning_rate)
        total = settings.epochs * steps_per_epoch(self.data, settings)
        step = 0
        after_step(0, total)
        for epoch in range(settings.epochs):
            for index in self._batches():
                loss = self._loss(first_output(self.student(*self._batch(index))), index)
                optimizer.zero_grad()
                loss.backward()
                if lr_at is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = settings.learning_rate * lr_at(step)
                optimizer.step()
                step += 1
                after_step(step, total)
            if self.verbose:
                print(f"fine-tune ({step_name}) epoch {epoch + 1}/{settings.epochs}: loss {loss.item():.4f}",
                      file=sys.stderr, flush=True)
        self.student.eval()

    def _batches(self) -> list:
        """One epoch's sample indices, batch by batch, in random order."""
        import torch

        order = torch.randperm(len(self.data))
        size = self.settings.batch_size
        return [order[start:start + size] for start in range(0, len(order), size)]

    def _batch(self, index) -> list:
        return [x[index] for x in self.inputs]

    def _loss(self, student_out, index):
        import torch.nn.functional as F

        teacher_out = self.teacher_out[index]
        if not self.classifier:
            return F.mse_loss(student_out, teacher_out)
        if self.probabilities:
            student_out, teacher_out = student_out.clamp_min(1e-7).log(), teacher_out.clamp_min(1e-7).log()
        t = self.settings.temperature
        kl = F.kl_div(F.log_softmax(student_out / t, dim=1), F.log_softmax(teacher_out / t, dim=1),
                      reduction="batchmean", log_target=True) * t * t
        if self.y is None:
            return kl
        alpha = self.settings.alpha
        return alpha * F.cross_entropy(student_out, self.y[index]) + (1 - alpha) * kl


def first_output(outputs):
    if isinstance(outputs, dict):
        return next(iter(outputs.values()))
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def predict(module, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """``module``'s first output on ``x`` in batches of 256, as numpy."""
    import torch

    columns = [x] if isinstance(x, np.ndarray) else list(x.values())
    count = len(columns[0])
    module.eval()
    with torch.no_grad():
        return np.concatenate([first_output(module(*(torch.from_numpy(np.ascontiguousarray(c[i:i + 256]))
                                                     for c in columns))).numpy() for i in range(0, count, 256)])
