"""Smaller students for a PyTorch teacher, and training them by distillation.

A student is shallower (every k-th block of the teacher's deepest stack of like blocks, as DistilBERT
keeps one BERT layer in two), narrower (a fraction of the channels, removed by the channel-removal pass
with the teacher's best-ranked filters kept), or any architecture the user gives. Derived students start
from the teacher's weights. Training uses the fine-tuning loss (soft targets at T, KL x T^2, plus
cross-entropy when labels exist); embeddings and hidden states add DistilBERT's cosine term. Each epoch
is scored on a held-out split: the best epoch is kept, training stops after ``patience`` epochs without
improvement, and a checkpoint file lets an interrupted run resume.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data import Dataset
from ..errors import UserInputError
from ..recipe import FinetuneSettings, Recipe
from .keras import steps_per_epoch
from .torch import Trainer, first_output

HELD_OUT_FRACTION = 0.1
OUTPUT_KINDS = ("auto", "scores", "embedding")  # a sentence embedding (N, 384) has the shape of class scores


class StudentError(UserInputError):
    """The student cannot be derived from the teacher, or does not fit it."""


@dataclass(frozen=True)
class DistillSettings:
    """How the student is trained; ``finetune`` holds epochs, batch size, learning rate, T and alpha."""

    finetune: FinetuneSettings = FinetuneSettings(epochs=30)
    patience: int = 5  # epochs without a better held-out loss before stopping
    cosine_weight: float = 1.0  # weight of (1 - cosine) for outputs that are not class scores
    checkpoint: str | os.PathLike | None = None
    outputs: str = "auto"  # auto (rank-2 outputs are class scores) | scores | embedding

    def validate(self) -> None:
        self.finetune.validate()
        if self.outputs not in OUTPUT_KINDS:
            raise StudentError(f"outputs must be one of {', '.join(OUTPUT_KINDS)}; got {self.outputs!r}")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise StudentError(f"patience must be an integer >= 1; got {self.patience!r}")
        if not self.cosine_weight >= 0:
            raise StudentError(f"cosine_weight must be >= 0; got {self.cosine_weight}")


def block_stacks(module) -> list[tuple[str, Any]]:
    """(name, container) of every nn.ModuleList/nn.Sequential holding two or more blocks of one class."""
    import torch

    stacks = []
    for name, child in module.named_modules():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) and len(child) >= 2 and \
                len({type(block) for block in child}) == 1 and not _is_leaf_like(child[0]):
            stacks.append((name, child))
    return stacks


def _is_leaf_like(block) -> bool:
    """Single layers (Linear, ReLU...) are not blocks a student drops: they change widths or do nothing."""
    return not any(True for _ in block.children())


def keep_blocks(teacher, keep: int) -> tuple[Any, str]:
    """A copy of ``teacher`` whose deepest stack keeps ``keep`` blocks, one every n/keep, with their weights."""
    import torch

    from ..sources.torch import copy_module

    stacks = block_stacks(teacher)
    if not stacks:
        raise StudentError("--keep-layers needs a stack of like blocks (an nn.ModuleList or nn.Sequential of "
                           "transformer layers or residual blocks); the teacher has none. Give --student "
                           "package.module:factory, or --width-ratio")
    name, stack = max(stacks, key=lambda item: len(item[1]))
    depth = len(stack)
    if not isinstance(keep, int) or not 1 <= keep < depth:
        raise StudentError(f"--keep-layers {keep}: the teacher's deepest stack of blocks, {name}, has {depth}; "
                           f"keep 1 to {depth - 1}")
    kept = [i * depth // keep for i in range(keep)]
    student = copy_module(teacher)
    parent_name, _, attribute = name.rpartition(".")
    parent = student.get_submodule(parent_name) if parent_name else student
    old = getattr(parent, attribute)
    blocks = [old[i] for i in kept]
    setattr(parent, attribute, torch.nn.ModuleList(blocks) if isinstance(old, torch.nn.ModuleList)
            else torch.nn.Sequential(*blocks))
    return student, f"{name}: kept blocks {kept} of {depth}, initialised from the teacher's"


def narrower(teacher, width_ratio: float, example_inputs: Sequence[Any]) -> tuple[Any, str]:
    """A copy of ``teacher`` with ``width_ratio`` of the channels of every layer that can lose them."""
    from ..techniques.channels.torch import remove_channels

    if not 0.0 < width_ratio < 1.0:
        raise StudentError(f"--width-ratio must be in (0, 1), the fraction of channels the student keeps; "
                           f"got {width_ratio}")
    recipe = Recipe.from_dict({"channels": {"fraction": round(1.0 - width_ratio, 6)}})
    student, record = remove_channels(teacher, recipe, tuple(example_inputs))
    kept = ", ".join(f"{layer} {info['kept']}/{info['channels']}" for layer, info in record.layers.items())
    return student, f"channels kept: {kept}, the teacher's best-ranked filters"


def check_fits(student, teacher, example_inputs: Sequence[Any]) -> None:
    """The student must take the teacher's inputs and give outputs of the teacher's shape."""
    import torch

    with torch.no_grad():
        want = first_output(teacher(*example_inputs))
        try:
            got = first_output(student(*example_inputs))
        except Exception as exc:  # any error the user's module raises on the teacher's inputs
            raise StudentError(f"the student cannot run on the teacher's inputs "
                               f"{[tuple(x.shape) for x in example_inputs]}: {str(exc).strip()[:200]}") from None
    if tuple(got.shape) != tuple(want.shape):
        raise StudentError(f"the student's output has shape {tuple(got.shape)} but the teacher's has "
                           f"{tuple(want.shape)}; a student must give the teacher's outputs (the same classes "
                           "or embedding size)")


class _StudentTrainer(Trainer):
    """The fine-tuning trainer, with DistilBERT's cosine term for outputs that are not class scores."""

    cosine_weight = 1.0

    def _loss(self, student_out, index):
        import torch.nn.functional as F

        loss = super()._loss(student_out, index)
        if self.classifier or not self.cosine_weight:
            return loss
        teacher_out = self.teacher_out[index]
        cosine = F.cosine_similarity(student_out.flatten(1), teacher_out.flatten(1), dim=1).mean()
        return loss + self.cosine_weight * (1.0 - cosine)


class _Stop(Exception):
    """Raised between epochs when the held-out loss has not improved for ``patience`` epochs."""


def distil(student, teacher, data: Dataset, settings: DistillSettings, verbose: bool) -> dict[str, Any]:
    """Train ``student`` in place towards ``teacher``; the best held-out epoch is kept. Returns a summary."""
    import torch

    settings.validate()
    if settings.finetune.seed is not None:
        torch.manual_seed(settings.finetune.seed)
    train, held_out = data.split(HELD_OUT_FRACTION)
    trainer = _StudentTrainer(student, teacher, train, settings.finetune, verbose=False)
    judge = _StudentTrainer(student, teacher, held_out, settings.finetune, verbose=False)
    for one in (trainer, judge):
        one.cosine_weight = settings.cosine_weight
        if settings.outputs != "auto":
            one.classifier = settings.outputs == "scores"
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    state = {"epoch": 0, "best": float("inf"), "best_epoch": 0, "since_best": 0, "history": []}
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        student.load_state_dict(saved["student"])
        state = saved["state"]
    best_weights = {k: v.clone() for k, v in student.state_dict().items()}
    steps = steps_per_epoch(train, settings.finetune)
    remaining = settings.finetune.epochs - state["epoch"]

    def after_step(step: int, total: int) -> None:
        if step == 0 or step % steps:
            return
        loss = held_out_loss(student, judge)
        state["epoch"] += 1
        state["history"].append(round(loss, 6))
        if loss < state["best"] - 1e-9:
            state.update(best=loss, best_epoch=state["epoch"], since_best=0)
            best_weights.update({k: v.clone() for k, v in student.state_dict().items()})
        else:
            state["since_best"] += 1
        if verbose:
            print(f"distil epoch {state['epoch']}/{settings.finetune.epochs}: held-out loss {loss:.4f}"
                  f"{' (best)' if state['best_epoch'] == state['epoch'] else ''}", file=sys.stderr, flush=True)
        if checkpoint is not None:
            _save(checkpoint, {"student": student.state_dict(), "state": state})
        if state["since_best"] >= settings.patience:
            raise _Stop

    stopped_early = False
    if remaining > 0:
        trainer.settings = dataclasses.replace(settings.finetune, epochs=remaining)
        try:
            trainer.train(after_step, "distil")
        except _Stop:
            stopped_early = True
    student.load_state_dict(best_weights)
    student.eval()
    return {"epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "stopped_early": stopped_early,
            "held_out_samples": len(held_out), "held_out_loss": state["history"], "train_samples": len(train),
            "loss": ("KL x T^2 + cross-entropy" if data.labelled else "KL x T^2") if trainer.classifier
            else f"MSE + {settings.cosine_weight} x (1 - cosine)"}


def held_out_loss(student, judge: Trainer) -> float:
    """The training loss on the held-out split (no gradients), the score early stopping watches."""
    import torch

    student.eval()
    with torch.no_grad():
        index = torch.arange(len(judge.data))
        loss = float(judge._loss(first_output(student(*judge._batch(index))), index))
    student.train()
    return loss


def _save(path: Path, payload: dict) -> None:
    """Write the checkpoint atomically, so an interrupted save never leaves a half file to resume from."""
    import torch

    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)

