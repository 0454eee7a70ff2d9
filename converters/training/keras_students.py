"""Smaller students for a Keras teacher (tf_keras, or Keras 3 translated to tf_keras), and training them.

The student is a Keras model the user gives (a model, a .keras/.h5 file, or 'package.module:factory'), or the
teacher narrowed by the Keras channel-removal pass (the best-ranked filters kept, with their weights).
Training matches the PyTorch students' (``students.py``): soft targets at T with KL x T^2 for class scores
(softmax outputs or logits), plus cross-entropy weighted alpha when labels exist; MSE plus a cosine term for
embeddings. Each epoch is scored on a held-out tenth: the best epoch is kept, training stops after
``patience`` epochs without improvement, and a checkpoint (.npz: weights + state) lets a run resume.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import _tf
from ..data import Dataset
from ..errors import DataError, SourceModelError
from ..recipe import Recipe
from .keras import is_probability_output
from .students import HELD_OUT_FRACTION, DistillSettings, StudentError

_EPS = 1e-7


def keras_student(student: Any, custom_objects: dict | None = None):
    """The user's student as a tf_keras model: a Keras model, a .keras/.h5 file or 'package.module:factory'."""
    from ..sources.keras import is_keras_source, load_keras_model
    from ..sources.torch import FACTORY_SPEC, call_factory

    if isinstance(student, (str, os.PathLike)) and FACTORY_SPEC.match(str(student)) and not Path(student).exists():
        made = call_factory(str(student))
        if not is_keras_source(made):
            raise SourceModelError(f"{student}() must return a Keras model for a Keras teacher; it returned "
                                   f"{type(made).__name__}")
        student = made
    elif not is_keras_source(student):
        raise SourceModelError(f"the student of a Keras teacher must be a Keras model, a .keras/.h5 file or "
                               f"'package.module:factory'; got {type(student).__name__}")
    return load_keras_model(student, custom_objects)


def narrower_keras(teacher, width_ratio: float) -> tuple[Any, str]:
    """A copy of ``teacher`` with ``width_ratio`` of the channels of every layer that can lose them."""
    from ..techniques.channels.keras import remove_channels_keras

    if not 0.0 < width_ratio < 1.0:
        raise StudentError(f"--width-ratio must be in (0, 1), the fraction of channels the student keeps; "
                           f"got {width_ratio}")
    recipe = Recipe.from_dict({"channels": {"fraction": round(1.0 - width_ratio, 6)}})
    student, record = remove_channels_keras(teacher, recipe)
    kept = ", ".join(f"{layer} {info['kept']}/{info['channels']}" for layer, info in record.layers.items())
    return student, f"channels kept: {kept}, the teacher's best-ranked filters"


def check_fits_keras(student, teacher) -> None:
    """The student must take the teacher's input and give an output of the teacher's shape."""
    if len(teacher.inputs) != 1 or len(teacher.outputs) != 1:
        raise DataError(f"distilling a Keras teacher needs one input and one output; it has {len(teacher.inputs)} "
                        f"and {len(teacher.outputs)}: give a single-input, single-output model")
    want_in, got_in = tuple(teacher.inputs[0].shape[1:]), tuple(student.inputs[0].shape[1:])
    want_out, got_out = tuple(teacher.outputs[0].shape[1:]), tuple(student.outputs[0].shape[1:])
    if len(student.inputs) != 1 or got_in != want_in:
        raise StudentError(f"the student's input is {got_in} but the teacher's is {want_in}; a student must "
                           "take the teacher's input")
    if len(student.outputs) != 1 or got_out != want_out:
        raise StudentError(f"the student's output has shape {(1, *got_out)} but the teacher's has "
                           f"{(1, *want_out)}; a student must give the teacher's outputs (the same classes "
                           "or embedding size)")


def _kind(teacher_out: np.ndarray, outputs: str) -> str:
    """probabilities | logits | embedding: which loss the student's output gets."""
    scores = teacher_out.ndim == 2 and teacher_out.shape[1] > 1 if outputs == "auto" else outputs == "scores"
    if not scores:
        return "embedding"
    return "probabilities" if is_probability_output(teacher_out) else "logits"


def _loss(kind: str, classes: int, settings: DistillSettings, labelled: bool):
    """Loss over packed targets [teacher outputs | one-hot labels], as the PyTorch students' loss."""
    tf = _tf.tensorflow()
    t = settings.finetune.temperature
    alpha = settings.finetune.alpha if labelled else 0.0

    def loss(packed, student_out):
        teacher_out, onehot = packed[:, :classes], packed[:, classes:]
        if kind == "embedding":
            error = tf.reduce_mean(tf.square(student_out - teacher_out), axis=-1)
            cosine = tf.reduce_sum(tf.math.l2_normalize(student_out, -1) * tf.math.l2_normalize(teacher_out, -1), -1)
            return error + settings.cosine_weight * (1.0 - cosine)
        if kind == "probabilities":
            student_out = tf.math.log(tf.clip_by_value(student_out, _EPS, 1.0))
            teacher_out = tf.math.log(tf.clip_by_value(teacher_out, _EPS, 1.0))
        soft_teacher = tf.nn.softmax(teacher_out / t)
        kl = tf.reduce_sum(soft_teacher * (tf.math.log(soft_teacher + _EPS) - tf.nn.log_softmax(student_out / t)), -1)
        ce = -tf.reduce_sum(onehot * tf.nn.log_softmax(student_out), axis=-1)
        return alpha * ce + (1.0 - alpha) * t * t * kl

    return loss


def distil_keras(student, teacher, data: Dataset, settings: DistillSettings, verbose: bool) -> dict[str, Any]:
    """Train ``student`` in place towards ``teacher``; the best held-out epoch is kept. Returns a summary."""
    keras = _tf.keras()
    settings.validate()
    if settings.finetune.seed is not None:
        keras.utils.set_random_seed(settings.finetune.seed)
    train, held_out = data.split(HELD_OUT_FRACTION)
    teacher_out = teacher.predict(data.x, batch_size=256, verbose=0)
    kind = _kind(teacher_out, settings.outputs)
    classes = teacher_out.shape[1] if teacher_out.ndim == 2 else 0
    if kind != "embedding" and data.labelled and (data.y.min() < 0 or data.y.max() >= classes):
        raise DataError(f"labels range {data.y.min()}..{data.y.max()} does not fit the teacher's {classes} "
                        f"classes; labels must be class ids 0..{classes - 1}")

    def targets(part: Dataset) -> np.ndarray:
        out = teacher.predict(part.x, batch_size=256, verbose=0)
        if kind == "embedding":
            return out.reshape(len(out), -1) if out.ndim > 2 else out
        onehot = np.zeros_like(out)
        if part.labelled:
            onehot[np.arange(len(part)), part.y] = 1.0
        return np.concatenate([out, onehot], axis=1)

    train_targets, held_targets = targets(train), targets(held_out)
    student.compile(optimizer=keras.optimizers.Adam(settings.finetune.learning_rate),
                    loss=_loss(kind, classes if kind != "embedding" else train_targets.shape[1], settings,
                               data.labelled))
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    state: dict[str, Any] = {"epoch": 0, "best": float("inf"), "best_epoch": 0, "since_best": 0, "history": [],
                             "stopped_early": False, "train_s": 0.0}
    best = student.get_weights()
    if checkpoint is not None and checkpoint.is_file():
        state, last, best = _load(checkpoint, student)
        student.set_weights(last)
    while state["epoch"] < settings.finetune.epochs and not state["stopped_early"]:
        started = time.perf_counter()
        student.fit(train.x, train_targets, batch_size=settings.finetune.batch_size, epochs=1, shuffle=True,
                    verbose=0)
        loss = float(student.evaluate(held_out.x, held_targets, batch_size=256, verbose=0))
        state["train_s"] += time.perf_counter() - started
        state["epoch"] += 1
        state["history"].append(round(loss, 6))
        if loss < state["best"] - 1e-9:
            state.update(best=loss, best_epoch=state["epoch"], since_best=0)
            best = student.get_weights()
        else:
            state["since_best"] += 1
        state["stopped_early"] = state["since_best"] >= settings.patience
        if verbose:
            print(f"distil epoch {state['epoch']}/{settings.finetune.epochs}: held-out loss {loss:.4f}"
                  f"{' (best)' if state['best_epoch'] == state['epoch'] else ''}", file=sys.stderr, flush=True)
        if checkpoint is not None:
            _save(checkpoint, state, student.get_weights(), best)
    student.set_weights(best)
    return {"epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "stopped_early": state["stopped_early"],
            "train_seconds": round(state["train_s"], 1), "held_out_samples": len(held_out),
            "held_out_loss": state["history"], "train_samples": len(train),
            "loss": (f"MSE + {settings.cosine_weight} x (1 - cosine)" if kind == "embedding" else
                     "KL x T^2 + cross-entropy" if data.labelled else "KL x T^2")}


def _save(path: Path, state: dict, last: list[np.ndarray], best: list[np.ndarray]) -> None:
    """The state and both weight lists in one .npz, written atomically so a resume never reads half a file."""
    arrays = {f"last_{i}": w for i, w in enumerate(last)} | {f"best_{i}": w for i, w in enumerate(best)}
    buffer = io.BytesIO()
    np.savez(buffer, state=np.array(json.dumps(state)), **arrays)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, path)


def _load(path: Path, student) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    count = len(student.get_weights())
    try:
        with np.load(path, allow_pickle=False) as saved:
            state = json.loads(str(saved["state"]))
            last = [saved[f"last_{i}"] for i in range(count)]
            best = [saved[f"best_{i}"] for i in range(count)]
    except (KeyError, ValueError, OSError) as exc:
        raise StudentError(f"cannot resume from checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else exc}; "
                           "it is not this student's (delete it to start over)") from None
    shapes = [w.shape for w in student.get_weights()]
    if [w.shape for w in last] != shapes:
        raise StudentError(f"checkpoint {path} holds another student's weights; delete it to start over")
    return state, last, best
