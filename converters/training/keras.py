"""Fine-tuning by distillation from the original model, with or without labels.

The teacher (the uncompressed model) is run once over the data and its outputs
become the targets, so fine-tuning is a plain Keras ``fit`` that tfmot's
callbacks work with.  For a classifier (outputs are probabilities), the loss is
``alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` with
softened distributions at temperature T (Hinton et al.); without labels alpha
is 0, so a user never needs labels to compress.  Other outputs are matched to
the teacher by mean squared error.
"""

from __future__ import annotations

import numpy as np

from .. import _tf
from ..data import Dataset
from ..errors import ConversionError, DataError
from ..recipe import FinetuneSettings

_EPS = 1e-7


def is_probability_output(outputs: np.ndarray) -> bool:
    """Rank-2, non-negative rows summing to one: a softmax classifier."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return False
    return bool((outputs >= -1e-6).all() and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3))


def distillation_loss(num_classes: int, temperature: float, alpha: float):
    """Loss over packed targets [teacher probabilities | one-hot labels]."""
    tf = _tf.tensorflow()
    t2 = temperature * temperature

    def loss(packed, student_probs):
        teacher_probs, onehot = packed[:, :num_classes], packed[:, num_classes:]
        log_student = tf.math.log(tf.clip_by_value(student_probs, _EPS, 1.0))
        soft_teacher = tf.nn.softmax(tf.math.log(tf.clip_by_value(teacher_probs, _EPS, 1.0)) / temperature)
        log_soft_student = tf.nn.log_softmax(log_student / temperature)
        kl = tf.reduce_sum(soft_teacher * (tf.math.log(soft_teacher + _EPS) - log_soft_student), axis=-1)
        ce = -tf.reduce_sum(onehot * log_student, axis=-1)
        return alpha * ce + (1.0 - alpha) * t2 * kl

    return loss


def finetune(student, teacher, data: Dataset, settings: FinetuneSettings, callbacks: list,
             verbose: bool, step: str = "fine-tune") -> dict:
    """Train ``student`` towards ``teacher`` (and the labels, when present); return the history.

    With ``verbose``, each epoch is one line on stderr naming ``step`` (prune, cluster, qat...),
    never Keras's own progress bars, which fill logs with backspaces.
    """
    keras = _tf.keras()
    if len(student.outputs) != 1:
        raise ConversionError("fine-tuning supports single-output models; compress without data "
                              "(one-shot) or fine-tune the model yourself")
    if settings.seed is not None:
        keras.utils.set_random_seed(settings.seed)
    teacher_out = teacher.predict(data.x, batch_size=256, verbose=0)
    if is_probability_output(teacher_out):
        classes = teacher_out.shape[1]
        alpha = settings.alpha if data.labelled else 0.0
        onehot = np.zeros_like(teacher_out)
        if data.labelled:
            if data.y.max() >= classes or data.y.min() < 0:
                raise DataError(f"labels range {data.y.min()}..{data.y.max()} does not fit the "
                                f"model's {classes} classes; labels must be class ids 0..{classes - 1}")
            onehot[np.arange(len(data.y)), data.y] = 1.0
        targets = np.concatenate([teacher_out, onehot], axis=1)
        loss = distillation_loss(classes, settings.temperature, alpha)
    else:
        targets, loss = teacher_out, "mse"
    student.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=loss)
    history = student.fit(data.x, targets, batch_size=settings.batch_size, epochs=settings.epochs,
                          callbacks=callbacks + ([_epoch_lines(keras, step, settings.epochs)] if verbose else []),
                          verbose=0, shuffle=True)
    return {"epochs": settings.epochs, "samples": len(data),
            "loss": "distillation+labels" if loss != "mse" and data.labelled else
                    ("distillation" if loss != "mse" else "mse-to-teacher"),
            "final_loss": float(history.history["loss"][-1])}


def _epoch_lines(keras, step: str, epochs: int):
    """A callback that prints 'fine-tune (STEP) epoch n/N: loss L' on stderr after each epoch."""
    import sys

    def line(epoch, logs):
        print(f"fine-tune ({step}) epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.4f}",
              file=sys.stderr, flush=True)

    return keras.callbacks.LambdaCallback(on_epoch_end=line)


def steps_per_epoch(data: Dataset, settings: FinetuneSettings) -> int:
    return int(np.ceil(len(data) / settings.batch_size))
