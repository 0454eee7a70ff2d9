"""Distillation into a smaller student: teacher -> student -> trained -> the normal pipeline -> side by side.

PyTorch and Keras teachers (tf_keras, or Keras 3 translated to it). Everything checkable is checked before
training: the options, the output path, the data against the teacher's inputs, and the student against the
teacher's output shape. The student is then converted like any source of its framework (the recipe may
prune, cluster and quantize it), and the report compares teacher and student: parameters, MACs, file size,
latency through the device runtime, accuracy or agreement.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .capabilities import Request, check_supported
from .data import DataSource, Dataset, InputSpec
from .files import check_output_path
from .recipe import Recipe
from .sources import framework_of
from .techniques.base import PassRecord
from .training.students import (DistillSettings, StudentChoice, StudentError, check_fits, distil, keep_blocks,
                                narrower)


def distill_student(teacher: Any, output: str | os.PathLike, data: DataSource, *, choice: StudentChoice,
                    recipe: Recipe | None = None, settings: DistillSettings | None = None,
                    eval_data: DataSource | None = None, calib_data: DataSource | None = None,
                    example_input: Any = None, input_shapes: Sequence[Sequence[int]] | None = None,
                    weights: str | os.PathLike | None = None, custom_objects: dict | None = None,
                    force: bool = False, progress: Callable | None = None, verbose: bool = False):
    """Train a smaller student from ``teacher`` on ``data`` and write it to ``output`` (.tflite) with a report.

    ``choice`` names the student: given (an nn.Module, a Keras model or file, or 'package.module:factory'),
    or derived from the teacher (``keep_layers`` blocks of its deepest stack, PyTorch; ``width_ratio`` of its
    channels, PyTorch and Keras). Returns the student's ``ConversionResult``; its report's
    ``passes["distill"]`` holds the teacher-vs-student comparison.
    """
    recipe = recipe or Recipe()
    settings = settings or DistillSettings()
    settings.validate()
    choice.validate()
    framework = framework_of(teacher)
    check_supported(Request(recipe, distill=True, keep_layers=choice.keep_layers is not None), framework)
    sources = [p for p in (teacher, weights, choice.student, choice.student_weights, data, eval_data, calib_data)
               if isinstance(p, (str, os.PathLike)) and Path(p).exists()]
    output = check_output_path(output, sources, force)
    if framework == "keras":
        if choice.student_weights is not None or weights is not None:
            raise StudentError("--weights and --student-weights go with PyTorch factories; a Keras teacher or "
                               "student carries its weights (a .keras/.h5 file, or a factory that loads them)")
        if settings.hidden_weight or settings.lr_schedule != "constant":
            raise StudentError(f"distill.hidden_weight and distill.lr_schedule are PyTorch-only; a Keras teacher "
                               f"takes hidden_weight 0 and lr_schedule constant (got {settings.hidden_weight}, "
                               f"{settings.lr_schedule!r})")
        route = _keras_route(teacher, data, eval_data, choice, settings, custom_objects, verbose)
    else:
        route = _torch_route(teacher, data, eval_data, choice, settings, example_input, input_shapes, weights,
                             verbose)
    work = Path(tempfile.mkdtemp(prefix="sdk-distill-"))
    try:
        convert = dict(recipe=recipe, calib_data=calib_data if calib_data is not None else route.train.x,
                       eval_data=route.evaluation.x if route.evaluation.y is None else
                       (route.evaluation.x, route.evaluation.y), progress=progress, verbose=verbose)
        teacher_file = route.convert(route.teacher, work / "teacher.tflite", **convert)
        result = route.convert(route.student, output, force=force, **convert)
        latency = latencies([teacher_file.path, result.path])
        record = PassRecord("distill", fine_tuned=True, summary={
            "student": route.how, **route.summary,
            "against_teacher": against(route.predict(route.student), route.predict(route.teacher), route.evaluation),
            "teacher": _side(*route.size(route.teacher), teacher_file, latency[0]),
            "student_side": _side(*route.size(route.student), result, latency[1])})
        result.report.passes = {"distill": record, **result.report.passes}
        result.report.notes = route.notes + result.report.notes
        from .pipeline import write_result

        return write_result(output, result.path.read_bytes(), result.report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Route:
    """One framework's trained student and teacher, and how to convert, run and size them."""

    teacher: Any
    student: Any
    how: str
    summary: dict
    train: Dataset
    evaluation: Dataset
    notes: list
    convert: Callable
    predict: Callable  # model -> outputs on the evaluation data
    size: Callable  # model -> (parameters, MACs)


def _torch_route(teacher, data, eval_data, choice: StudentChoice, settings, example_input, input_shapes, weights,
                 verbose) -> _Route:
    from .data import datasets
    from .pipeline import convert as run_conversion
    from .sources.torch import load_torch_source
    from .techniques.channels.torch import count_macs_and_params
    from .training.torch import predict

    source = load_torch_source(teacher, example_input, input_shapes, weights)
    inputs = source.example_inputs
    shape = tuple(inputs[0].shape[1:])
    specs = [InputSpec(name, tuple(x.shape[1:]), x.numpy().dtype) for name, x in zip(source.input_names, inputs)]
    train, _, evaluation, notes = datasets(shape, data, None, eval_data, channels_first=len(shape) == 3,
                                           specs=specs)  # token ids and masks keyed by input name
    if choice.student is not None:
        student_source = load_torch_source(choice.student, example_input, [tuple(x.shape) for x in inputs],
                                           choice.student_weights)
        module, how = student_source.module, f"given: {student_source.description}"
    else:
        module, parts = source.module, []
        if choice.keep_layers is not None:
            module, part = keep_blocks(module, choice.keep_layers, inputs)
            parts.append(part)
        if choice.width_ratio is not None:
            module, part = narrower(module, choice.width_ratio, inputs)
            parts.append(part)
        how = "; ".join(parts)
    check_fits(module, source.module, inputs)  # runs the student at the teacher's inputs, before training
    summary = distil(module.train(), source.module, train, settings, verbose, inputs)

    def convert(model, path, **options):
        return run_conversion(model, path, example_input=inputs if len(inputs) > 1 else inputs[0], **options)

    return _Route(source.module, module, how, summary, train, evaluation, notes, convert,
                  lambda model: predict(model, evaluation.x),
                  lambda model: tuple(reversed(count_macs_and_params(model, tuple(inputs)))))


def _keras_route(teacher, data, eval_data, choice: StudentChoice, settings, custom_objects, verbose) -> _Route:
    from .data import datasets
    from .pipeline import convert as run_conversion
    from .routes.keras import keras_normalisation
    from .search.subjects import KerasSubject
    from .sources.keras import load_keras_model
    from .training.keras_students import check_fits_keras, distil_keras, keras_student, narrower_keras

    notes: list[str] = []
    model = load_keras_model(teacher, custom_objects, notes)
    if choice.student is not None:
        student = keras_student(choice.student, custom_objects)
        named = isinstance(choice.student, (str, os.PathLike))
        how = f"given: {choice.student if named else type(choice.student).__name__}"
    else:
        student, how = narrower_keras(model, choice.width_ratio)
    check_fits_keras(student, model)
    known, _ = keras_normalisation(model, None)
    train, _, evaluation, data_notes = datasets(tuple(model.inputs[0].shape[1:]), data, None, eval_data, pixels=known)
    summary = distil_keras(student, model, train, settings, verbose)

    def convert(keras_model, path, **options):
        return run_conversion(keras_model, path, custom_objects=custom_objects, **options)

    return _Route(model, student, how, summary, train, evaluation, notes + data_notes, convert,
                  lambda m: m.predict(evaluation.x, batch_size=256, verbose=0),
                  lambda m: (int(m.count_params()), KerasSubject(m).macs()))


def against(got: np.ndarray, want: np.ndarray, evaluation: Dataset) -> dict[str, Any]:
    """The student's outputs against the teacher's on the evaluation data (the models, before conversion)."""
    flat_got, flat_want = got.reshape(len(got), -1), want.reshape(len(want), -1)
    norms = np.linalg.norm(flat_got, axis=1) * np.linalg.norm(flat_want, axis=1)
    cosine = float(np.mean((flat_got * flat_want).sum(1) / np.maximum(norms, 1e-12)))
    out: dict[str, Any] = {"samples": len(got), "cosine_mean": round(cosine, 6)}
    if want.ndim == 2 and want.shape[1] > 1:
        out["top1_agreement"] = round(float((got.argmax(1) == want.argmax(1)).mean() * 100), 3)
        if evaluation.labelled:
            out["accuracy_teacher"] = round(float((want.argmax(1) == evaluation.y).mean() * 100), 3)
            out["accuracy_student"] = round(float((got.argmax(1) == evaluation.y).mean() * 100), 3)
    return out


LATENCY_ROUNDS = 3


def latencies(paths: Sequence[Path], rounds: int = LATENCY_ROUNDS, runs: int = 20) -> list[float]:
    """p50 latency (ms, 1 thread, device runtime) of each file, timed in alternating rounds and the lowest
    round kept: on a shared machine another process's burst then slows one round, not one model."""
    from device_runtime.bench import benchmark

    best = [float("inf")] * len(paths)
    for _ in range(rounds):
        for i, path in enumerate(paths):
            p50 = benchmark(path, threads=(1,), warmup=3, runs=runs)["results"][0]["p50_ms"]
            best[i] = min(best[i], p50)
    return best


def _side(params: int, macs: int, result, latency: float) -> dict[str, Any]:
    """One column of the teacher-vs-student table, measured: the model and its written .tflite."""
    fidelity = result.report.fidelity
    return {"params": int(params), "macs": int(macs), "file_bytes": result.report.compressed.file_size,
            "gzip_bytes": result.report.compressed.gzip_size, "latency_p50_ms": round(latency, 4),
            "tflite_cosine_vs_module": round(fidelity.cosine, 6)}



def render_comparison(summary: dict[str, Any]) -> str:
    """The teacher-vs-student table of a distillation's summary, for the terminal."""
    teacher, student, against = summary["teacher"], summary["student_side"], summary["against_teacher"]
    rows = [("parameters", "params", "{:,}"), ("MACs", "macs", "{:,}"), ("file bytes", "file_bytes", "{:,}"),
            ("gzip bytes", "gzip_bytes", "{:,}"), ("latency p50 (ms, 1 thread)", "latency_p50_ms", "{:.3f}")]
    lines = [f"student: {summary['student']}",
             f"trained {summary['epochs_run']} epoch(s) on {summary['train_samples']} samples, best epoch "
             f"{summary['best_epoch']} on {summary['held_out_samples']} held out"
             f"{' (stopped early)' if summary['stopped_early'] else ''}; loss {summary['loss']}",
             f"{'':<28}{'teacher':>14}{'student':>14}{'ratio':>8}"]
    for label, key, fmt in rows:
        ratio = teacher[key] / student[key] if student[key] else float("inf")
        lines.append(f"{label:<28}{fmt.format(teacher[key]):>14}{fmt.format(student[key]):>14}{ratio:>7.2f}x")
    quality = [f"cosine {against['cosine_mean']:.4f}"]
    if "top1_agreement" in against:
        quality.append(f"top-1 agreement {against['top1_agreement']:.2f}%")
    if "accuracy_teacher" in against:
        quality.append(f"accuracy {against['accuracy_teacher']:.2f}% -> {against['accuracy_student']:.2f}%")
    lines.append(f"student vs teacher on {against['samples']} evaluation samples: {', '.join(quality)}")
    return "\n".join(lines)
