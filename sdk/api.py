"""The public Python API: convert a model, inspect a .tflite."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from converters.data import DataSource
from converters.errors import SourceModelError, UserInputError
from converters.recipe import Recipe
from device_runtime.loading import read_model_bytes
from device_runtime.tflite_format import read_model


TARGETS = ("tflite", "mcu", "android")


def convert(source: Any, output: str | os.PathLike, recipe: Recipe | dict | str | os.PathLike | None = None,
            *, target: str = "tflite", board: str | None = None, android_project: str | os.PathLike | None = None,
            max_drop: float | None = None, optimize: str = "size",
            finetune_data: DataSource | None = None, calib_data: DataSource | None = None,
            eval_data: DataSource | None = None, force: bool = False,
            progress: Callable[[str, int, int], None] | None = None, verbose: bool = False,
            custom_objects: dict | None = None, metadata=None, labels: str | os.PathLike | Sequence[str] | None = None,
            vocab: str | os.PathLike | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, model_version: str | None = None,
            example_input: Any = None, input_shapes: Sequence[Sequence[int]] | None = None,
            weights: str | os.PathLike | None = None, keep_nchw: bool = False, keep_intermediates: bool = False,
            input_dtypes: Sequence[str] | None = None, allow_flex: bool = False):
    """Compress ``source`` as ``recipe`` says and write ``output`` (.tflite) plus a report JSON, then the
    ``target``'s files: "tflite" (only those), "mcu" (TFLite Micro C/C++ sources in OUTPUT_mcu/, checked
    against ``board``; needs an int8 model with int8 I/O) or "android" (the model, labels and model card copied
    into the ``android_project`` folder, e.g. android_demo/). Everything is checked before any work.

    ``source``: a .keras/.h5 file, a SavedModel folder or an in-memory Keras 3 or tf_keras model; or a
    PyTorch ``nn.Module`` (with ``example_input``, a tensor or tuple, or ``input_shapes``), a
    TorchScript file, ``"package.module:factory"`` (with ``weights``, a state-dict file), or a
    ``.onnx`` file.  PyTorch/ONNX inputs that feed convolutions become channels-last (NHWC) in
    the .tflite unless ``keep_nchw``; data is always given in the source's layout.  Any input rank and
    batch is kept as exported; ``input_shapes`` fixes dynamic dimensions (otherwise 1).
    ``allow_flex`` (PyTorch/ONNX): keep ops with no TFLite builtin as Select TF ops; the .tflite then
    needs the Flex delegate (full TensorFlow's interpreter; not ai-edge-litert or tflite-runtime).
    ``recipe``: a Recipe, a dict in recipe form, or a .yaml/.json path.
    ``max_drop``: accuracy-budget mode (see ``convert_within_budget``; ``optimize`` "size" or "latency"); the
    result's ``budget`` then holds the search.
    Data arguments take a .npz (x, y), .npy, image folder, (x, y) tuple or array; a model with several
    or integer inputs (token ids, masks) takes a .npz or dict with one array per input name (and y).
    ``input_dtypes`` (PyTorch with ``input_shapes``): e.g. ``["int64"]`` for token-id inputs.
    Image classifiers get standard TFLite metadata: ``labels`` (a file, one per line, or a list), ``mean``/``std``
    (the input normalisation on 0..255 pixels) and ``model_version``, or a whole
    ``converters.targets.tflite.metadata.MetadataSpec`` as ``metadata``. By default: the source's name,
    image-folder labels, and a normalisation only when known (image-folder data, or a Keras model's
    leading Rescaling/Normalization layers); otherwise none, and the report says how to set it.
    Text models: ``vocab`` (a BERT vocab.txt or a Hugging Face model folder) embeds the tokenizer's vocabulary
    for ``Model.embed_text``/``classify_text``, with ``labels`` for a classifier.
    Returns a ``ConversionResult`` with ``path``, ``report_path``, ``report``, ``exports`` (the target's
    result by name) and ``budget``.
    """
    recipe = _recipe(recipe) or Recipe()
    if recipe.distill is not None:
        raise UserInputError("the recipe's distill section trains a smaller student, which `sdk distill` does: "
                             "run `sdk distill MODEL --recipe R -o STUDENT.tflite --data D`, or remove the section "
                             "to convert the model itself")
    metadata = _metadata(metadata, source, labels, mean, std, model_version, vocab)
    _check_target(target, board, android_project, recipe, output, force)
    options = {"example_input": example_input, "input_shapes": input_shapes, "weights": weights,
               "keep_nchw": keep_nchw, "keep_intermediates": keep_intermediates, "input_dtypes": input_dtypes,
               "allow_flex": allow_flex or recipe.allow_flex}  # the flag or the recipe key
    common = dict(finetune_data=finetune_data, calib_data=calib_data, eval_data=eval_data, force=force,
                  progress=progress, verbose=verbose, metadata=metadata)
    budget = None
    if max_drop is not None:
        budget = convert_within_budget(source, output, max_drop=max_drop, optimize=optimize, recipe=recipe,
                                       **common, **options)
        result = budget.result
    else:
        from converters.pipeline import convert as run_conversion

        result = run_conversion(source, output, recipe, custom_objects=custom_objects, **common,
                                **{name: value for name, value in options.items() if value is not None})
    result.budget = budget
    if target == "mcu":
        from converters.targets.mcu import export_mcu

        result.exports["mcu"] = export_mcu(result.path, _firmware_dir(result.path), board=board, force=force)
    elif target == "android":
        from converters.targets.android import export_android

        result.exports["android"] = export_android(result.path, android_project, force=force)
    return result


def _check_target(target: str, board: str | None, android_project, recipe: Recipe, output, force: bool) -> None:
    """Refuse, before any work, a target the recipe or the options cannot give."""
    if target not in TARGETS:
        raise UserInputError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    if board and target != "mcu":
        raise UserInputError(f"--board {board} applies to --target mcu; add --target mcu (or drop --board)")
    if android_project is not None and target != "android":
        raise UserInputError("an Android project folder applies to --target android; add it (or drop the folder)")
    if target == "mcu":
        from converters.targets.mcu.boards import board_named

        board_named(board)
        if recipe.quantize.mode != "int8" or recipe.quantize.io_type == "float32":
            raise UserInputError("--target mcu needs a full-integer model: add --quantize int8 --io-type int8 "
                                 "and --calib DATA")
        firmware = _firmware_dir(Path(output))
        if firmware.exists() and (not firmware.is_dir() or any(firmware.iterdir())) and not force:
            raise UserInputError(f"{firmware} (where --target mcu writes) exists and is not empty; pass "
                                 "--force to overwrite its files")
    if target == "android":
        from converters.targets.android import check_project

        if android_project is None:
            raise UserInputError("--target android needs the Android demo project folder (--android-project "
                                 "android_demo/)")
        check_project(android_project)


def _firmware_dir(output: str | os.PathLike) -> Path:
    """Where --target mcu writes: beside the .tflite, named after it."""
    return Path(output).with_name(Path(output).stem + "_mcu")


def _metadata(metadata, source: Any, labels, mean, std, model_version, vocab=None):
    """The MetadataSpec from ``metadata`` or the shorthand arguments (not both), checked before any work."""
    from converters.targets.tflite.metadata import MetadataSpec, read_labels_file
    from converters.targets.tflite.text_metadata import read_vocab

    shorthand = {k: v for k, v in {"labels": labels, "mean": mean, "std": std, "model_version": model_version,
                                   "vocab": vocab}.items() if v}
    if metadata is not None and shorthand:
        raise UserInputError(f"give either metadata= or {', '.join(shorthand)}, not both: they say the same")
    if shorthand:
        if isinstance(labels, (str, os.PathLike)):
            labels = read_labels_file(labels)
        name = Path(source).stem if isinstance(source, (str, os.PathLike)) else "model"
        metadata = MetadataSpec(name=name, version=model_version or "1", mean=tuple(mean) if mean else None,
                                std=tuple(std) if std else None, labels=tuple(labels or ()),
                                vocab=read_vocab(vocab) if vocab else None)
    _check_metadata(metadata)
    return metadata


def convert_within_budget(source: Any, output: str | os.PathLike, *, max_drop: float, optimize: str = "size",
                          recipe: Recipe | dict | str | os.PathLike | None = None,
                          finetune_data: DataSource | None = None, calib_data: DataSource | None = None,
                          eval_data: DataSource | None = None, force: bool = False, metadata=None,
                          progress: Callable[[str, int, int], None] | None = None, verbose: bool = False,
                          example_input: Any = None, input_shapes: Sequence[Sequence[int]] | None = None,
                          weights: str | os.PathLike | None = None, keep_nchw: bool = False,
                          keep_intermediates: bool = False, input_dtypes: Sequence[str] | None = None,
                          allow_flex: bool = False):
    """Accuracy-budget mode: the smallest per-layer recipe whose measured drop on ``eval_data`` is within
    ``max_drop`` points (Keras and PyTorch sources; PyTorch takes ``example_input``/``input_shapes``,
    ``weights`` and ``keep_nchw`` as in ``convert``).  ``recipe`` supplies the shared settings (quantization,
    fine-tuning).  Returns a ``converters.search.budget.BudgetResult`` with ``result`` (the conversion),
    ``recipe`` and ``recipe_path`` (reusable YAML), ``sensitivity`` and ``attempts``.
    """
    from converters.search.budget import run_budget

    _check_metadata(metadata)
    recipe = _recipe(recipe)
    torch_options = _refuse_torch_options(source, {"example_input": example_input, "input_shapes": input_shapes,
                                                   "weights": weights, "keep_nchw": keep_nchw,
                                                   "keep_intermediates": keep_intermediates,
                                                   "input_dtypes": input_dtypes,
                                                   "allow_flex": allow_flex or bool(recipe and recipe.allow_flex)})
    return run_budget(source, output, max_drop=max_drop, optimize=optimize, finetune_data=finetune_data,
                      calib_data=calib_data, eval_data=eval_data, recipe=recipe, force=force, progress=progress,
                      verbose=verbose, metadata=metadata, source_options=torch_options)


def distill(teacher: Any, output: str | os.PathLike, data: DataSource, *, student: Any = None,
            keep_layers: int | None = None, width_ratio: float | None = None,
            recipe: Recipe | dict | str | os.PathLike | None = None, epochs: int | None = None,
            patience: int | None = None, temperature: float | None = None, alpha: float | None = None,
            cosine_weight: float | None = None, learning_rate: float | None = None, batch_size: int | None = None,
            checkpoint: str | os.PathLike | None = None, outputs: str | None = None,
            hidden_weight: float | None = None, lr_schedule: str | None = None, trim_padding: bool | None = None,
            eval_data: DataSource | None = None, calib_data: DataSource | None = None, example_input: Any = None,
            input_shapes: Sequence[Sequence[int]] | None = None, weights: str | os.PathLike | None = None,
            student_weights: str | os.PathLike | None = None, custom_objects: dict | None = None,
            force: bool = False, progress: Callable[[str, int, int], None] | None = None, verbose: bool = False):
    """Distil a PyTorch or Keras ``teacher`` into a smaller student trained on ``data`` (labels optional), then
    convert the student as ``recipe`` says; the report's ``passes["distill"]`` compares teacher and student.

    The student: ``student`` (an nn.Module or 'package.module:factory' with ``student_weights``; for a Keras
    teacher a Keras model, .keras/.h5 file or factory), or derived from the teacher with ``keep_layers``
    (PyTorch: blocks kept from its deepest stack, spread from first to last, as DistilBERT) and/or
    ``width_ratio`` (fraction of channels kept). Training: soft targets at ``temperature`` (KL x T^2) plus
    cross-entropy weighted ``alpha`` when labels exist, MSE + ``cosine_weight`` x (1 - cosine) for embeddings;
    the best epoch on a held-out tenth is kept, with early stop after ``patience`` epochs and a resumable
    ``checkpoint`` file. ``outputs``: "auto" treats a rank-2 output as class scores; say "embedding" for a
    sentence encoder's (N, D) embeddings, "scores" for logits of another shape. ``hidden_weight`` (PyTorch) adds
    1 - cosine between student block i's output and the paired teacher block's (6 -> 3: 1, 3, 5), per token;
    ``lr_schedule="linear"`` warms the learning rate up over 6% of the steps, then decays it to 0.
    ``trim_padding`` (needs an input named attention_mask) trains on batches of like-length samples cut to
    their longest: exact for BERT-style encoders, and faster. Every option may also come
    from the recipe's ``distill`` section (same names); a keyword given here wins over it.
    """
    from converters.distillation import distill_student
    from converters.training.students import distill_options

    recipe = _recipe(recipe)
    choice, settings = distill_options(
        recipe.distill if recipe is not None else None, student=student, student_weights=student_weights,
        keep_layers=keep_layers, width_ratio=width_ratio, epochs=epochs, patience=patience, temperature=temperature,
        alpha=alpha, cosine_weight=cosine_weight, learning_rate=learning_rate, batch_size=batch_size,
        outputs=outputs, checkpoint=checkpoint, hidden_weight=hidden_weight, lr_schedule=lr_schedule,
        trim_padding=trim_padding)
    return distill_student(teacher, output, data, choice=choice, recipe=recipe, settings=settings,
                           eval_data=eval_data, calib_data=calib_data, example_input=example_input,
                           input_shapes=input_shapes, weights=weights, custom_objects=custom_objects, force=force,
                           progress=progress, verbose=verbose)


def _recipe(recipe: Recipe | dict | str | os.PathLike | None) -> Recipe | None:
    """A Recipe from what the API takes: a Recipe, a dict in recipe form, a .yaml/.json path, or None."""
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if isinstance(recipe, (str, os.PathLike)):
        return Recipe.load(recipe)
    return recipe


def _refuse_torch_options(source: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The PyTorch/ONNX-only options that were given; refused for a Keras source, which has its own shapes."""
    from converters.routes.keras import refuse_torch_options, torch_options_given
    from converters.sources import framework_of

    if framework_of(source) == "keras":
        refuse_torch_options(options)
    return torch_options_given(options)


def _check_metadata(metadata) -> None:
    """``metadata`` is a MetadataSpec whose own values hold together, checked before any work."""
    from converters.targets.tflite.metadata import MetadataSpec

    if metadata is None:
        return
    if not isinstance(metadata, MetadataSpec):
        raise UserInputError(f"metadata must be a converters.targets.tflite.metadata.MetadataSpec; got {type(metadata).__name__}")
    metadata.validate()


@dataclass
class Inspection:
    """What a .tflite holds, measured from its bytes."""

    path: str
    sha256: str
    stats: Any  # converters.verify.analysis.ModelStats
    signatures: list[dict]
    metadata: list[str]
    metadata_bytes: dict[str, int]  # per metadata buffer: what it adds to the file
    description: str
    info: dict | None  # the standard TFLite metadata, when embedded
    build: dict | None  # what `sdk convert` recorded: source hash, recipe, calibration statistics
    tokenizer: dict | None = None  # a text model's embedded BERT tokenizer: vocab file, tokens, casing

    def to_dict(self) -> dict:
        out = asdict(self)
        out["stats"] = self.stats.to_dict()
        return out

    def render(self) -> str:
        from converters.verify.report import render_ops, render_weights
        from converters.verify.analysis import ModelStats

        stats: ModelStats = self.stats
        lines = [f"{self.path}  sha256 {self.sha256[:16]}",
                 f"size {stats.file_size} bytes, gzip {stats.gzip_size} bytes, "
                 f"weights {stats.total_weights} values, sparsity {stats.overall_sparsity:.1%}",
                 render_ops(stats)]
        for sig in self.signatures:
            lines.append(f"signature {sig['key']!r}: inputs {sig['inputs']} outputs {sig['outputs']}")
        if self.metadata:
            lines.append("metadata buffers: " + ", ".join(f"{name} ({self.metadata_bytes[name]:,} bytes)"
                                                          for name in self.metadata))
        if self.info:
            i = self.info
            lines.append(f"model: {i['name'] or '(no name)'} version {i['version']}"
                         + (f" by {i['author']}" if i["author"] else "") + (f", {i['license']}" if i["license"] else ""))
            if i["mean"] is not None:
                lines.append(f"input {i['input_name']}: {i['color_space']} image, (pixel - {list(i['mean'])}) "
                             f"/ {list(i['std'])}")
            elif i["color_space"] is not None:
                lines.append(f"input {i['input_name']}: {i['color_space']} image, normalisation unknown "
                             "(Model.classify refuses it; set it with sdk metadata add --mean M --std S)")
            if self.tokenizer:
                t = self.tokenizer
                lines.append(f"tokenizer: BERT WordPiece, {t['vocab_file']} ({t['tokens']:,} tokens, "
                             f"{'uncased' if t['lowercase'] else 'cased'}); Model.embed_text/classify_text read it")
            if i["labels"]:
                shown = ", ".join(i["labels"][:5]) + (", ..." if len(i["labels"]) > 5 else "")
                lines.append(f"output {i['output_name']}: {len(i['labels'])} labels ({shown}) from {i['label_file']}")
        if self.build:
            b = self.build
            lines.append(f"built by edge-deploy-sdk {b.get('sdk_version')} from source sha256 "
                         f"{str(b.get('source_sha256'))[:16]}, recipe sha256 {str(b.get('recipe_sha256'))[:16]}"
                         + (", with calibration input statistics" if b.get("input_stats") else ""))
        lines.append("weights:")
        lines += render_weights(stats)
        return "\n".join(lines)


def inspect(path: str | os.PathLike) -> Inspection:
    """Sizes, ops, per-layer sparsity and unique values, signatures and metadata of a .tflite."""
    import hashlib

    from converters.verify.analysis import analyse
    from device_runtime.metadata import read_build_info, read_info

    from device_runtime.errors import DeviceRuntimeError
    from device_runtime.integrity import is_encrypted

    try:
        data = read_model_bytes(path)
        if is_encrypted(data):
            raise SourceModelError(f"{path} is encrypted by `sdk encrypt`, so its structure is hidden; inspect "
                                   "the plain .tflite it was made from")
        model = read_model(data)
    except DeviceRuntimeError as exc:  # the runtime's own types: sdk callers catch sdk.SDKError
        raise SourceModelError(str(exc)) from None
    info = read_info(model)
    tokenizer = None
    if info is not None and info.vocab_file:
        from converters.targets.tflite.text_metadata import vocab_in_model

        vocab = vocab_in_model(data, info)
        tokenizer = {"vocab_file": info.vocab_file, "tokens": len(vocab.tokens), "lowercase": vocab.lowercase}
    return Inspection(str(path), hashlib.sha256(data).hexdigest(), analyse(data),
                      [{"key": s.key, "inputs": sorted(s.inputs), "outputs": sorted(s.outputs)}
                       for s in model.signatures],
                      sorted(model.metadata), {name: len(model.buffers[i]) for name, i in model.metadata.items()},
                      model.description, asdict(info) if info else None,
                      read_build_info(model), tokenizer)


def compare_files(quantized: str | os.PathLike, reference: str | os.PathLike, data: DataSource,
                  samples: int = 32):
    """Per-layer error of ``quantized`` against ``reference`` (any two .tflite files of one model, e.g. int8 and
    float32) on ``data`` (inputs in the .tflite's layout), plus the output fidelity: a
    ``converters.verify.layers.LayerComparison``. Both files must take one input of the same shape."""
    from converters.data import load_data
    from converters.verify.analysis import read_single_io_model
    from converters.verify.layers import compare_files as compare
    from device_runtime.errors import DeviceRuntimeError

    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise UserInputError(f"samples must be an integer >= 1; got {samples!r}")
    files = []
    for path in (quantized, reference):
        try:
            files.append(read_single_io_model(path, "inspect --compare"))
        except DeviceRuntimeError as exc:
            raise SourceModelError(str(exc)) from None
    shapes = [tuple(m.main.tensors[m.main.inputs[0]].shape[1:]) for _, m in files]
    if shapes[0] != shapes[1]:
        raise UserInputError(f"inspect --compare needs two files with the same input; {quantized} takes "
                             f"{shapes[0]} and {reference} takes {shapes[1]}: compare files of one model")
    dataset = load_data(data, shapes[0], "comparison")
    return compare(files[0][0], files[1][0], dataset.x, dataset.source, samples)
