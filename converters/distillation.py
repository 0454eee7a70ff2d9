"""Distillation into a smaller student: teacher -> student -> trained -> the normal pipeline -> side by side.

Everything checkable is checked before training: the options, the output path, the data against the
teacher's inputs, and the student against the teacher's output shape. The student is then converted
like any PyTorch source (the recipe may prune, cluster and quantize it), and the report compares teacher
and student: parameters, MACs, file size, latency through the device runtime, accuracy or agreement.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .capabilities import Request, check_supported
from .data import DataSource
from .errors import UserInputError
from .files import check_output_path
from .recipe import Recipe
from .sources import framework_of
from .techniques.base import PassRecord
from .training.students import DistillSettings, check_fits, distil, keep_blocks, narrower


def distill_student(teacher: Any, output: str | os.PathLike, data: DataSource, *, student: Any = None,
                    keep_layers: int | None = None, width_ratio: float | None = None,
                    recipe: Recipe | None = None, settings: DistillSettings | None = None,
                    eval_data: DataSource | None = None, calib_data: DataSource | None = None,
                    example_input: Any = None, input_shapes: Sequence[Sequence[int]] | None = None,
                    weights: str | os.PathLike | None = None, student_weights: str | os.PathLike | None = None,
                    force: bool = False, progress: Callable | None = None, verbose: bool = False):
    """Train a smaller student from ``teacher`` on ``data`` and write it to ``output`` (.tflite) with a report.

    The student is ``student`` (an nn.Module or 'package.module:factory', with ``student_weights``), or is
    derived from the teacher: ``keep_layers`` blocks of its deepest stack and/or ``width_ratio`` of its
    channels. Returns the student's ``ConversionResult``; its report's ``passes["distill"]`` holds the
    teacher-vs-student comparison.
    """
    from .onnx_pipeline import convert_onnx_route
    from .pipeline import datasets
    from .sources.torch import load_torch_source

    recipe = recipe or Recipe()
    settings = settings or DistillSettings()
    settings.validate()
    if student is not None and (keep_layers is not None or width_ratio is not None):
        raise UserInputError("give --student, or derive the student with --keep-layers and/or --width-ratio; "
                             "not both")
    if student is None and keep_layers is None and width_ratio is None:
        raise UserInputError("name the student: --student package.module:factory, or derive it from the teacher "
                             "with --keep-layers N (fewer blocks) and/or --width-ratio R (fewer channels)")
    framework = framework_of(teacher)
    check_supported(Request(recipe, distill=True), framework)
    sources = [p for p in (teacher, weights, student_weights, data, eval_data, calib_data)
               if isinstance(p, (str, os.PathLike)) and Path(p).exists()]
    output = check_output_path(output, sources, force)

    source = load_torch_source(teacher, example_input, input_shapes, weights)
    inputs = source.example_inputs
    shape = tuple(inputs[0].shape[1:])
    train, _, evaluation, notes = datasets(shape, data, None, eval_data, channels_first=len(shape) == 3)
    if student is not None:
        student_source = load_torch_source(student, example_input, [tuple(x.shape) for x in inputs], student_weights)
        module, how = student_source.module, f"given: {student_source.description}"
    else:
        module, parts = source.module, []
        if keep_layers is not None:
            module, part = keep_blocks(module, keep_layers)
            parts.append(part)
        if width_ratio is not None:
            module, part = narrower(module, width_ratio, inputs)
            parts.append(part)
        how = "; ".join(parts)
    check_fits(module, source.module, inputs)  # runs the student at the teacher's inputs, before training

    summary = distil(module.train(), source.module, train, settings, verbose)
    work = Path(tempfile.mkdtemp(prefix="sdk-distill-"))
    try:
        convert = dict(recipe=recipe, example_input=inputs if len(inputs) > 1 else inputs[0],
                       calib_data=calib_data if calib_data is not None else train.x,
                       eval_data=evaluation.x if evaluation.y is None else (evaluation.x, evaluation.y),
                       progress=progress, verbose=verbose)
        teacher_file = convert_onnx_route(source.module, work / "teacher.tflite", **convert)
        result = convert_onnx_route(module, output, force=force, **convert)
        record = PassRecord("distill", fine_tuned=True, summary={
            "student": how, **summary, "against_teacher": _against(module, source.module, evaluation),
            "teacher": _side(source.module, inputs, teacher_file), "student_side": _side(module, inputs, result)})
        result.report.passes = {"distill": record, **result.report.passes}
        result.report.notes = notes + result.report.notes
        from .pipeline import write_result

        return write_result(output, result.path.read_bytes(), result.report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _against(student, teacher, evaluation) -> dict[str, Any]:
    """The student's outputs against the teacher's on the evaluation data (PyTorch, before conversion)."""
    from .training.torch import predict

    got, want = predict(student, evaluation.x), predict(teacher, evaluation.x)
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


def _side(module, inputs, result) -> dict[str, Any]:
    """One column of the teacher-vs-student table, measured: the module and its written .tflite."""
    from device_runtime.bench import benchmark

    from .techniques.channels.torch import count_macs_and_params

    macs, params = count_macs_and_params(module, tuple(inputs))
    fidelity = result.report.fidelity
    latency = benchmark(result.path, threads=(1,), warmup=5, runs=30)["results"][0]["p50_ms"]
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
