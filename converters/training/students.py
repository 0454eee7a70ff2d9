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
import time
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
LR_SCHEDULES = ("constant", "linear")  # linear: warm up over WARMUP_FRACTION of the steps, then decay to 0
WARMUP_FRACTION = 0.06  # BERT's and DistilBERT's recipes warm up over the first 6-10% of the steps


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
    hidden_weight: float = 0.0  # weight of the layer-to-layer hidden-state loss (converters.training.hidden)
    lr_schedule: str = "constant"
    trim_padding: bool = False  # batches of like-length samples, cut to their longest (needs attention_mask)

    def validate(self) -> None:
        _recheck("distill", self.finetune)
        if self.outputs not in OUTPUT_KINDS:
            raise StudentError(f"distill.outputs must be one of {', '.join(OUTPUT_KINDS)}; got {self.outputs!r}")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise StudentError(f"distill.patience must be an integer >= 1; got {self.patience!r}")
        if not self.cosine_weight >= 0:
            raise StudentError(f"distill.cosine_weight must be >= 0; got {self.cosine_weight}")
        if not self.hidden_weight >= 0:
            raise StudentError(f"distill.hidden_weight must be >= 0; got {self.hidden_weight}")
        if not isinstance(self.trim_padding, bool):
            raise StudentError(f"distill.trim_padding must be true or false; got {self.trim_padding!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise StudentError(f"distill.lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got "
                               f"{self.lr_schedule!r}")


def _recheck(section: str, settings: FinetuneSettings) -> None:
    """``settings.validate()``, its messages naming ``section`` (the key the user wrote) instead of finetune."""
    try:
        settings.validate()
    except UserInputError as exc:
        message = str(exc)
        raise StudentError(f"{section}.{message.removeprefix('finetune.')}" if message.startswith("finetune.")
                           else message) from None


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning rate's multiplier at ``step`` of ``total``: 1, or linear warm-up then linear decay to 0."""
    if schedule == "constant":
        return 1.0
    warm = max(1, int(WARMUP_FRACTION * total))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


@dataclass(frozen=True)
class StudentChoice:
    """Which student: given (``student``, a model or 'package.module:factory'), or derived from the teacher."""

    student: Any = None
    student_weights: str | os.PathLike | None = None
    keep_layers: int | None = None
    width_ratio: float | None = None

    def validate(self) -> None:
        if self.student is not None and (self.keep_layers is not None or self.width_ratio is not None):
            raise StudentError("give --student, or derive the student with --keep-layers and/or --width-ratio; "
                               "not both")
        if self.student is None and self.keep_layers is None and self.width_ratio is None:
            raise StudentError("name the student: --student package.module:factory, or derive it from the teacher "
                               "with --keep-layers N (fewer blocks) and/or --width-ratio R (fewer channels)")
        if self.student_weights is not None and self.student is None:
            raise StudentError("--student-weights goes with --student package.module:factory; a derived student "
                               "starts from the teacher's weights")
        if self.keep_layers is not None and (isinstance(self.keep_layers, bool) or
                                             not isinstance(self.keep_layers, int) or self.keep_layers < 1):
            raise StudentError(f"--keep-layers must be an integer >= 1; got {self.keep_layers!r}")
        if self.width_ratio is not None and not (isinstance(self.width_ratio, (int, float))
                                                 and 0.0 < self.width_ratio < 1.0):
            raise StudentError(f"--width-ratio must be in (0, 1), the fraction of channels the student keeps; "
                               f"got {self.width_ratio}")


# The recipe's distill section: key -> (type, default). The CLI flags and sdk.distill's keywords are the same names.
DISTILL_KEYS: dict[str, tuple[type | tuple, Any]] = {
    "student": (str, None), "student_weights": (str, None), "keep_layers": (int, None), "width_ratio": (float, None),
    "temperature": (float, 4.0), "alpha": (float, 0.5), "cosine_weight": (float, 1.0), "epochs": (int, 30),
    "patience": (int, 5), "batch_size": (int, 64), "learning_rate": (float, 1e-3), "outputs": (str, "auto"),
    "hidden_weight": (float, 0.0), "lr_schedule": (str, "constant"), "trim_padding": (bool, False),
}


def distill_options(section: Any = None, **flags: Any) -> tuple[StudentChoice, DistillSettings]:
    """The student and training settings: the recipe's ``distill`` section, with flags that are not None on
    top (flags win, as for every other recipe key). Checked here, before any work."""
    import difflib

    if section is not None and not isinstance(section, dict):
        raise StudentError(f"the recipe's distill section must be a mapping of {', '.join(DISTILL_KEYS)}; got "
                           f"{type(section).__name__}")
    for key in list(section or {}) + list(flags):
        if key not in DISTILL_KEYS and key != "checkpoint":
            hint = difflib.get_close_matches(str(key), list(DISTILL_KEYS), n=1)
            raise StudentError(f"unknown key {key!r} in distill{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                               f"allowed: {', '.join(DISTILL_KEYS)}")
    merged = {key: default for key, (_, default) in DISTILL_KEYS.items()}
    merged.update(section or {})
    merged.update({k: v for k, v in flags.items() if v is not None})
    for key, (kind, _) in DISTILL_KEYS.items():
        value = merged[key]
        if value is None or key == "student":  # a student may be a model object in the Python API
            continue
        number = kind is float and isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number or (isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))) and \
                not (key == "student_weights" and isinstance(value, os.PathLike)):
            raise StudentError(f"distill.{key} must be {'a number' if kind is float else kind.__name__}; "
                               f"got {value!r}")
    for key in ("epochs", "patience", "batch_size"):
        if merged[key] < 1:
            raise StudentError(f"distill.{key} must be an integer >= 1; got {merged[key]}")
    choice = StudentChoice(merged["student"], merged["student_weights"], merged["keep_layers"], merged["width_ratio"])
    choice.validate()
    settings = DistillSettings(FinetuneSettings(epochs=merged["epochs"], batch_size=merged["batch_size"],
                                                learning_rate=float(merged["learning_rate"]),
                                                temperature=float(merged["temperature"]), alpha=float(merged["alpha"])),
                               patience=merged["patience"], cosine_weight=float(merged["cosine_weight"]),
                               checkpoint=flags.get("checkpoint"), outputs=merged["outputs"],
                               hidden_weight=float(merged["hidden_weight"]), lr_schedule=merged["lr_schedule"],
                               trim_padding=merged["trim_padding"])
    settings.validate()
    return choice, settings


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


def spread(depth: int, keep: int) -> list[int]:
    """``keep`` of ``depth`` block indices spread evenly from the first to the last, as DistilBERT picks
    BERT-base's layers 0, 2, 4, 7, 9, 11. Keeping the last block matters: on all-MiniLM-L6-v2, layers
    [0, 3, 5] start at cosine 0.64 with the teacher's sentence embeddings, [0, 2, 4] at 0.34."""
    if keep == 1:
        return [depth - 1]
    return [int(i * (depth - 1) / (keep - 1) + 0.5) for i in range(keep)]


def keep_blocks(teacher, keep: int, example_inputs: Sequence[Any] = ()) -> tuple[Any, str]:
    """A copy of ``teacher`` whose stacks of like blocks keep ``keep`` blocks each, spread from the first to
    the last, with their weights. One stack for a transformer (its layers); every stage for a ResNet-style
    CNN, where a block that changes the shape (a stage's first, with its downsample) is always kept: only
    blocks whose input and output shapes match can be dropped (measured on ``example_inputs``)."""
    import torch

    from ..sources.torch import copy_module

    stacks = _stages(teacher)
    if not stacks:
        raise StudentError("--keep-layers needs a stack of like blocks (an nn.ModuleList or nn.Sequential of "
                           "transformer layers or residual blocks); the teacher has none. Give --student "
                           "package.module:factory, or --width-ratio")
    name, stack = max(stacks, key=lambda item: len(item[1]))
    depth = len(stack)
    if not isinstance(keep, int) or not 1 <= keep < depth:
        raise StudentError(f"--keep-layers {keep}: the teacher's deepest stack of blocks, {name}, has {depth}; "
                           f"keep 1 to {depth - 1}")
    reshaping = _reshaping_blocks(teacher, stacks, example_inputs)
    student, parts = copy_module(teacher), []
    for name, stack in stacks:
        if len(stack) <= keep:
            continue
        forced = reshaping.get(name, [])
        if len(forced) > keep:
            raise StudentError(f"--keep-layers {keep}: blocks {forced} of {name} change the shape of their input, "
                               f"so none of them can be dropped; give --keep-layers {len(forced)} or more, or "
                               "--student package.module:factory")
        kept = set(forced)
        for i in spread(len(stack), keep) + list(range(len(stack) - 1, -1, -1)):
            if len(kept) == keep:
                break
            kept.add(i)
        parent_name, _, attribute = name.rpartition(".")
        parent = student.get_submodule(parent_name) if parent_name else student
        old = getattr(parent, attribute)
        blocks = [old[i] for i in sorted(kept)]
        setattr(parent, attribute, torch.nn.ModuleList(blocks) if isinstance(old, torch.nn.ModuleList)
                else torch.nn.Sequential(*blocks))
        parts.append(f"{name}: kept blocks {sorted(kept)} of {len(stack)}")
    return student, "; ".join(parts) + ", initialised from the teacher's"


def _stages(module) -> list[tuple[str, Any]]:
    """The stacks of like blocks that are not inside another one (a ResNet's stages, a transformer's layers)."""
    stacks = block_stacks(module)
    return [(name, stack) for name, stack in stacks
            if not any(name.startswith(other + ".") for other, _ in stacks if other != name)]


def _reshaping_blocks(teacher, stacks, example_inputs: Sequence[Any]) -> dict[str, list[int]]:
    """Per stack, the blocks whose output shape differs from their input's, on one run of the teacher."""
    import torch

    found: dict[str, list[int]] = {}
    if not example_inputs:
        return found
    handles = []
    for name, stack in stacks:
        for i, block in enumerate(stack):
            def hook(_module, inputs, output, name=name, i=i):
                if inputs and tuple(inputs[0].shape) != tuple(first_output(output).shape):
                    found.setdefault(name, []).append(i)
            handles.append(block.register_forward_hook(hook))
    try:
        with torch.no_grad():
            teacher(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sorted(set(blocks)) for name, blocks in found.items()}


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
    """The fine-tuning trainer, with DistilBERT's cosine term for outputs that are not class scores, and the
    hidden-state term when ``hidden`` is set (``states`` then collects the student's block outputs)."""

    cosine_weight = 1.0
    hidden_weight = 0.0
    hidden: Any = None
    states: list = []
    mask_index: int | None = None  # set when batches are cut to their longest sample (trim_padding)

    def _batches(self) -> list:
        """With trim_padding, batches of like-length samples (sorted with random ties, in random order), so
        cutting each to its longest saves most of the padding; otherwise random batches."""
        import torch

        if self.mask_index is None:
            return super()._batches()
        lengths = self.inputs[self.mask_index].sum(1).double() + torch.rand(len(self.data), dtype=torch.float64)
        order = torch.argsort(lengths)
        size = self.settings.batch_size
        batches = [order[start:start + size] for start in range(0, len(order), size)]
        return [batches[i] for i in torch.randperm(len(batches))]

    def _batch(self, index) -> list:
        """The batch, cut after its longest sample's last real token when trim_padding is set: exact for
        encoders that mask padded keys and number positions from 0 (BERT)."""
        batch = super()._batch(index)
        if self.mask_index is None:
            return batch
        mask = batch[self.mask_index]
        length = max(1, int(mask.sum(1).max()))
        return [x[:, :length] if x.ndim >= 2 and x.shape[:2] == mask.shape else x for x in batch]

    def _loss(self, student_out, index):
        import torch.nn.functional as F

        loss = super()._loss(student_out, index)
        if self.hidden is not None and self.hidden_weight:
            states = list(self.states)
            self.states.clear()
            loss = loss + self.hidden_weight * self.hidden(states, self._batch(index))
        if self.classifier or not self.cosine_weight:
            return loss
        teacher_out = self.teacher_out[index]
        cosine = F.cosine_similarity(student_out.flatten(1), teacher_out.flatten(1), dim=1).mean()
        return loss + self.cosine_weight * (1.0 - cosine)


class _Stop(Exception):
    """Raised between epochs when the held-out loss has not improved for ``patience`` epochs."""


def distil(student, teacher, data: Dataset, settings: DistillSettings, verbose: bool,
           example_inputs: Sequence[Any] = ()) -> dict[str, Any]:
    """Train ``student`` in place towards ``teacher``; the best held-out epoch is kept. Returns a summary.
    ``example_inputs`` (the teacher's) check the hidden-state pairing before any training."""
    import torch

    from .hidden import MASK_INPUT, HiddenLoss, captured

    settings.validate()
    names = list(data.x) if isinstance(data.x, dict) else []
    hidden = HiddenLoss(student, teacher, example_inputs, names) if settings.hidden_weight else None
    if settings.trim_padding and MASK_INPUT not in names:
        raise StudentError(f"distill.trim_padding needs an input named {MASK_INPUT!r} (1 for tokens, 0 for "
                           f"padding at the end); the data's inputs are {names or 'one unnamed array'}. Set "
                           "trim_padding false")
    if settings.finetune.seed is not None:
        torch.manual_seed(settings.finetune.seed)
    train, held_out = data.split(HELD_OUT_FRACTION)
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    state = {"epoch": 0, "best": float("inf"), "best_epoch": 0, "since_best": 0, "history": [],
             "stopped_early": False, "train_s": 0.0}
    best_weights = {k: v.clone() for k, v in student.state_dict().items()}
    if checkpoint is not None and checkpoint.is_file():  # resume: the last epoch's weights and the best's
        saved = torch.load(checkpoint, weights_only=False)
        student.load_state_dict(saved["student"])
        best_weights = saved.get("best", best_weights)
        state = {"stopped_early": False, "train_s": 0.0, **saved["state"]}
    remaining = 0 if state["stopped_early"] else settings.finetune.epochs - state["epoch"]
    # a finished checkpoint trains nothing: one sample each then says which loss it was, without running the
    # teacher over all the data
    trainer = _StudentTrainer(student, teacher, train if remaining > 0 else train.take(1), settings.finetune,
                              verbose=False)
    judge = _StudentTrainer(student, teacher, held_out if remaining > 0 else held_out.take(1), settings.finetune,
                            verbose=False)
    for one in (trainer, judge):
        one.cosine_weight, one.hidden_weight, one.hidden = settings.cosine_weight, settings.hidden_weight, hidden
        one.mask_index = names.index(MASK_INPUT) if settings.trim_padding else None
        if settings.outputs != "auto":
            one.classifier = settings.outputs == "scores"
    steps = steps_per_epoch(train, settings.finetune)

    def after_step(step: int, total: int) -> None:
        if step == 0 or step % steps:
            return
        loss = held_out_loss(student, judge)
        state["train_s"] += time.perf_counter() - clock[0]
        clock[0] = time.perf_counter()
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
        state["stopped_early"] = state["since_best"] >= settings.patience
        if checkpoint is not None:  # a stopped run resumes as finished, with its best epoch
            _save(checkpoint, {"student": student.state_dict(), "best": best_weights, "state": state})
        if state["stopped_early"]:
            raise _Stop

    clock = [time.perf_counter()]
    done, total = state["epoch"] * steps, settings.finetune.epochs * steps  # the schedule spans all epochs
    if remaining > 0:
        trainer.settings = dataclasses.replace(settings.finetune, epochs=remaining)
        with captured(hidden.student_blocks if hidden else []) as states:
            trainer.states = judge.states = states
            try:
                trainer.train(after_step, "distil",
                              lr_at=lambda step: lr_factor(settings.lr_schedule, done + step, total))
            except _Stop:
                pass
    student.load_state_dict(best_weights)
    student.eval()
    return {"epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "stopped_early": state["stopped_early"],
            "train_seconds": round(state["train_s"], 1), "held_out_samples": len(held_out),
            "held_out_loss": state["history"], "train_samples": len(train),
            "loss": _loss_name(trainer.classifier, data.labelled, settings, hidden),
            "lr_schedule": settings.lr_schedule}


def _loss_name(classifier: bool, labelled: bool, settings: DistillSettings, hidden) -> str:
    name = ("KL x T^2 + cross-entropy" if labelled else "KL x T^2") if classifier \
        else f"MSE + {settings.cosine_weight} x (1 - cosine)"
    if hidden is not None:
        name += f" + {settings.hidden_weight} x hidden-state (1 - cosine), {hidden.describe()}"
    return name


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

