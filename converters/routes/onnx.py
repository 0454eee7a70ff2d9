"""The PyTorch/ONNX route: PyTorch -> ONNX -> compress -> onnx2tf -> the TFLite converter.

Weights are compressed before onnx2tf (on ONNX initializers after batch-norm folding, or in PyTorch while
fine-tuning), because onnx2tf's Keras model holds them as constants that tfmot cannot reach. Inputs that feed
convolutions become channel-last (NHWC/NWC) unless ``keep_nchw``; fidelity is measured per output against the
source model (PyTorch, or onnxruntime for ONNX files).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..capabilities import Request, check_supported
from ..data import Dataset, InputSpec, datasets, random_inputs
from ..errors import ConversionError, DataError, RecipeError, first_line
from ..lowering.onnx_io import IoLayout, lower_with_onnx2tf, probe_source
from ..lowering.onnx_recurrent import RECURRENT_OPS, not_unrolled, prepare_recurrent
from ..recipe import Recipe
from ..sources.onnx import (CONV_LIKE_OPS, TensorSpec, channel_last_inputs, fix_input_shapes, graph_inputs,
                            index_inputs, input_dtype, load_onnx, onnx_weights, run_once, simplify)
from ..targets.tflite import normalisation
from ..targets.tflite.embed import check_vocab_fits
from ..targets.tflite.flex import FLEX_CONSEQUENCE, flex_nodes, refusal
from ..techniques.adaround_onnx import learned_rounding, rounded_weights
from ..techniques.arrays import float_precision_weights
from ..techniques.base import PassRecord
from ..techniques.data_aware import check_data_aware, compress_with_data
from ..techniques.equalization import equalized
from ..techniques.registry import rewrite_graph
from ..verify.analysis import ModelStats, analyse, label_weights
from ..verify.layers import quantized_layer_report
from ..verify.outputs import check_float_fidelity, output_fidelity, source_outputs
from .base import Conversion, ConvertOptions, Lowered, Route, Verified

# TensorFlow 2.19's int8/int16x8 calibrator dies with SIGSEGV on onnx2tf's recurrent loops (measured).
CALIBRATION_CRASHING_OPS = {"LSTM", "GRU", "RNN", "Loop", "Scan"}


class OnnxRoute(Route):
    """PyTorch modules, TorchScript files, ``package.module:factory`` sources and ONNX files."""

    lowering_step = "onnx2tf"

    def __init__(self, source: Any, options: ConvertOptions):
        super().__init__(source, options)
        self.is_onnx_file = isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".onnx"
        self.framework = "onnx" if self.is_onnx_file else "pytorch"
        self.torch_source = self.onnx_model = self.original = self.reference_model = None
        self.input_shapes = options.input_shapes
        self.fine_tuned: dict[str, PassRecord] | None = None
        self.graph_records: list[PassRecord] = []
        self.weight_names: list[str] = []

    @property
    def source_files(self) -> list[Path]:
        return [Path(p) for p in (self.source, self.options.weights)
                if isinstance(p, (str, os.PathLike)) and Path(p).exists()]

    @property
    def description(self) -> str:
        return self._description

    @property
    def metadata_name(self) -> str:
        return Path(self._description).stem if self.source_files else "model"

    def check(self, recipe: Recipe) -> None:
        if self.options.custom_objects:
            raise DataError("custom_objects applies to Keras sources; a PyTorch or ONNX model needs none")
        check_supported(Request(recipe, finetune=self.options.finetune_data is not None), self.framework)
        check_data_aware(recipe, self.options.calib_data is not None, self.options.finetune_data is not None)

    @contextlib.contextmanager
    def workspace(self) -> Iterator[None]:
        """A folder for the ONNX files and onnx2tf's output; removed after, except what the user asked to keep
        (--keep-intermediates) or an error points to (onnx2tf's log)."""
        self.work = Path(tempfile.mkdtemp(prefix="sdk-convert-"))
        self.log_path = self.work / "onnx2tf.log"
        log_named_in_error = False
        try:
            yield
        except ConversionError as exc:
            log_named_in_error = str(self.log_path) in str(exc)
            raise
        finally:
            if self.options.keep_intermediates:
                pass
            elif log_named_in_error:  # keep onnx2tf's log, which the error tells the user to read
                for path in self.work.iterdir():
                    if path != self.log_path:
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
            else:
                shutil.rmtree(self.work, ignore_errors=True)

    def load(self, run: Conversion) -> None:
        from ..sources.torch import FACTORY_SPEC, is_torch_source

        options, source = self.options, self.source
        if options.keep_intermediates:
            run.notes.append(f"intermediate files kept in {self.work}")
        if self.is_onnx_file:
            if options.input_dtypes:
                raise DataError("--input-dtype applies to PyTorch sources; an ONNX file declares its inputs' dtypes")
            self.onnx_model, self._description = load_onnx(source), str(source)
        elif is_torch_source(source):
            from ..sources.torch import load_torch_source

            self.torch_source = load_torch_source(source, options.example_input, options.input_shapes,
                                                  options.weights, options.input_dtypes)
            self._description = self.torch_source.description
            if isinstance(source, str) and FACTORY_SPEC.match(source) and options.weights is None:
                run.notes.append(f"{source} was converted with the weights its factory returns, since no --weights "
                                 "state dict was given: random initial weights unless the factory loads trained ones")
            self.input_shapes = self.torch_source.input_shapes
        else:
            raise DataError(f"not a PyTorch or ONNX source: {source!r}")
        self._check_overrides(run.recipe)
        if self.torch_source is not None:
            from ..sources.torch import export_onnx

            # Exported first: its graph tells each input's dtype and vocabulary, which the data must fit.
            mark = time.perf_counter()
            self.exported = export_onnx(self.torch_source, self.torch_source.module, self.work / "model.onnx")
            run.timings["torch_onnx_export"] = time.perf_counter() - mark
            self._read_data(run, fix_input_shapes(self.exported, self.input_shapes), self.exported,
                            options.finetune_data)
        else:
            self._fix_shapes(run)
            self.reference_model = copy.deepcopy(self.onnx_model)
            if self.input_shapes is not None or self.shape_notes:
                _check_runs(self.reference_model, self.specs)
            self._read_data(run, self.specs, self.onnx_model, None)

    def _read_data(self, run: Conversion, specs: list[TensorSpec], onnx_model, finetune_data) -> None:
        options = self.options
        self.inputs = input_specs(specs, onnx_model)
        check_vocab_fits(options.metadata, [(i.name, i.dtype, i.id_limit) for i in self.inputs])
        run.known = normalisation.given(options.metadata, [s.shape for s in specs])
        first = self.inputs[0].shape
        run.tune, run.calib, run.evaluation, notes = datasets(
            first, finetune_data, options.calib_data, options.eval_data, channels_first=len(first) == 3,
            pixels=run.known, specs=self.inputs)
        self.data_notes = notes

    def _fix_shapes(self, run: Conversion) -> None:
        self.shape_notes: list[str] = prepare_recurrent(self.onnx_model, self.input_shapes)
        self.specs = fix_input_shapes(self.onnx_model, self.input_shapes, self.shape_notes)
        run.notes += self.shape_notes

    def compress(self, run: Conversion) -> dict[str, PassRecord]:
        recipe, notes = run.recipe, run.notes
        if self.torch_source is not None:
            self._compress_module(run)
            self._fix_shapes(run)
        notes += self.data_notes
        _check_quantizable(self.onnx_model, recipe)
        onnx_model, note = simplify(self.onnx_model)
        notes += [note] if note else []
        notes += self._bounded_mask_fills(onnx_model, recipe, run.calib)
        if self.original is None:
            self.float_model = copy.deepcopy(onnx_model)
        else:
            fix_input_shapes(self.original, self.input_shapes)
            self.float_model = simplify(self.original)[0]
            self._bounded_mask_fills(self.float_model, recipe, run.calib)
        records = self.fine_tuned
        if records is None:
            weights, sources = onnx_weights(onnx_model)
            names = [s.name for s in self.specs]
            onnx_model, records = compress_with_data(
                onnx_model, weights, sources, recipe, self.framework,
                None if run.calib is None else dict(zip(names, run.calib.columns(names))), self.specs)
            self.weight_names = [w.name for w in weights]
        for record in self.graph_records:
            record.fine_tuned = self.fine_tuned is not None
        self.onnx_model = onnx_model
        return {**{record.name: record for record in self.graph_records}, **records}

    def _compress_module(self, run: Conversion) -> None:
        """Graph techniques on the PyTorch module, fine-tuning with the weight techniques' phases when data is
        given; the module is exported again when anything changed (the original stays the float baseline)."""
        from ..sources.torch import export_onnx

        recipe, tune, torch_source = run.recipe, run.tune, self.torch_source
        module, rewritten = rewrite_graph(torch_source.module, recipe, "pytorch", torch_source.example_inputs)
        self.graph_records = list(rewritten.values())
        if tune is not None and (recipe.compresses_weights or self.graph_records or recipe.quantize.qat):
            mark = time.perf_counter()
            module, self.fine_tuned, self.weight_names = _finetune(torch_source, module, recipe, tune,
                                                                   self.options.verbose, run.notes)
            run.timings["finetune"] = time.perf_counter() - mark
        elif tune is not None:
            run.notes.append("fine-tuning data given but the recipe neither prunes, clusters, removes channels "
                             "nor factorizes; not fine-tuned")
        if module is torch_source.module:
            self.onnx_model = self.exported
            return
        mark = time.perf_counter()  # the float32 baseline is the original, not the student
        (self.work / "model.onnx").rename(self.work / "original.onnx")  # model.onnx is what gets converted
        self.onnx_model, self.original = export_onnx(torch_source, module, self.work / "model.onnx"), self.exported
        run.timings["torch_onnx_export"] += time.perf_counter() - mark

    def lower(self, run: Conversion, records: dict[str, PassRecord]) -> Lowered:
        recipe, notes, specs, onnx_model = run.recipe, run.notes, self.specs, self.onnx_model
        final_arrays = onnx_weights(onnx_model)[0]
        self.final_weights = {w.name: w.values for w in final_arrays}
        float_layers = float_precision_weights(final_arrays, recipe)  # mixed precision: found by their final values
        channel_last = [] if self.options.keep_nchw else channel_last_inputs(onnx_model, specs)
        keep_first = [s.name for s in specs if 3 <= len(s.shape) <= 5 and s.name not in channel_last]
        self.layout = layout = IoLayout(specs, channel_last, [o.name for o in onnx_model.graph.output])
        layout.probe = probe_source(self.float_model, specs)
        layout.output_shapes = {name: y.shape for name, y in layout.probe[1].items()}
        # onnx2tf's accuracy correction looks for transpositions broken by NCHW -> NHWC: needed only with them
        strict = bool(channel_last) or any(node.op_type in CONV_LIKE_OPS for node in onnx_model.graph.node)
        lower = lambda model, decided=None: lower_with_onnx2tf(  # noqa: E731 - one call, five fixed arguments
            model, keep_first, self.log_path, self.options.keep_nchw, layout, notes, strict, decided)
        float_keras, kept = lower(self.float_model)
        changed = self.original is not None or any(r.layers for r in records.values())
        plain = lower(onnx_model, kept)[0] if changed else float_keras
        prepared = equalized(onnx_model, recipe.quantize, notes)  # the int8 model's weights only
        self.rounded = learned_rounding(prepared or onnx_model, recipe.quantize, run.calib, specs, notes)
        self.corrected = self.rounded if self.rounded is not None else \
            _bias_correction(prepared or onnx_model, recipe, run.calib, specs, notes)  # adaround has its own
        prepared = self.corrected if self.corrected is not None else prepared
        converted = lower(prepared, kept)[0] if prepared is not None else plain
        self.flex = flex_nodes(float_keras, self.float_model)
        allow_flex = self.options.allow_flex or recipe.allow_flex  # the flag or the recipe key
        if self.flex and not allow_flex:
            raise refusal(self.flex)
        if self.flex:
            notes.append(f"Select TF ops kept (--allow-flex): {', '.join(self.flex)}; {FLEX_CONSEQUENCE}")

        names = [s.name for s in specs]
        float_input = len(self.inputs) == 1 and not self.inputs[0].integer
        if run.calib is None and recipe.quantize.needs_calibration and not float_input:  # random, valid per input
            run.calib = Dataset(random_inputs(self.inputs, recipe.quantize.samples), None, "random valid inputs")
        calibration = [layout.runs_in_tflite_layout(s, x) for s, x in zip(specs, run.calib.columns(names))] \
            if run.calib is not None else None
        weight_names = self.weight_names
        return Lowered(
            float_model=float_keras, plain=plain, quantizable=converted, calibration=calibration,
            search_samples=[_one_per_run(c, s) for c, s in zip(calibration, specs)] if calibration else None,
            search_input_shapes=[tuple(converted.inputs[0].shape[1:])],
            candidates={name: values for name, values in self.final_weights.items() if name not in float_layers},
            float_layers=float_layers,
            all_clustered=bool(weight_names) and set(weight_names) <= set(records["cluster"].layers),
            changed=changed, traced=True, allow_flex=allow_flex,
            stats_input=calibration[0] if calibration and float_input else None,  # the monitor watches one input
            io_order={"input_order": names, "output_order": layout.output_names})

    def rank_layers(self, search: Any, run: Conversion, progress) -> None:
        """Rank by each layer's own error (its weights alone in int8), measured once on the ONNX graph."""
        if len(self.specs) == 1 and run.calib is not None:
            from ..search.weight_effect import rank_layers

            search.ranking = functools.partial(rank_layers, self.onnx_model, self.corrected,
                                               run.calib.columns([self.specs[0].name])[0], list(search.candidates),
                                               progress=progress)
        if self.rounded is not None:  # AdaRound moved the weights kept layers are found by
            search.matched = rounded_weights(self.rounded, self.onnx_model)

    def verify(self, run: Conversion, lowered: Lowered, tflite_bytes: bytes, baseline_bytes: bytes,
               float_reference: bytes | None) -> Verified:
        evaluation, specs, layout = run.evaluation, self.specs, self.layout
        inputs = evaluation.columns([s.name for s in specs])
        references = source_outputs(self.torch_source, self.reference_model, specs, inputs)
        backend = "tensorflow" if self.flex else "auto"  # only full TensorFlow's interpreter has the Flex delegate
        by_output = output_fidelity(layout, references, tflite_bytes, inputs, evaluation, backend)
        float_by_output = by_output if tflite_bytes is baseline_bytes else \
            output_fidelity(layout, references, baseline_bytes, inputs, evaluation, backend)
        check_float_fidelity(float_by_output)
        reference_weights = self.final_weights if float_reference is not baseline_bytes else \
            {w.name: w.values for w in onnx_weights(self.float_model)[0]}  # the reference file holds these weights
        layer_errors = quantized_layer_report(
            run.recipe.quantize.mode, tflite_bytes, float_reference,
            _one_per_run(layout.runs_in_tflite_layout(specs[0], inputs[0]), specs[0]), evaluation.source,
            reference_weights) if len(specs) == 1 else None
        first = layout.output_names[0]
        return Verified(by_output[first], float_by_output[first], layer_errors,
                        by_output if len(by_output) > 1 else {})

    def analyse(self, baseline_bytes: bytes, tflite_bytes: bytes) -> tuple[ModelStats, ModelStats]:
        with ThreadPoolExecutor(2) as pool:  # gzip and numpy release the GIL: both models at once
            baseline, compressed = pool.map(analyse, (baseline_bytes, tflite_bytes))
        label_weights(baseline, {w.name: w.values for w in onnx_weights(self.float_model)[0]})
        label_weights(compressed, self.final_weights)
        return baseline, compressed

    def source_sha256(self) -> str:
        digest = hashlib.sha256()
        for file in self.source_files:
            digest.update(file.read_bytes())
        if not self.source_files and self.torch_source is not None:
            for name, tensor in self.torch_source.module.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().numpy().tobytes())
        return digest.hexdigest()

    def io_layout(self) -> list[dict[str, Any]]:
        return self.layout.describe()

    def _bounded_mask_fills(self, onnx_model, recipe: Recipe, calib: Dataset | None) -> list[str]:
        """For int8/int16x8: attention-mask fills bounded by the scores they mask (``lowering/mask_fill.py``),
        in place, in the float model too (its function is unchanged: masked weights stay below e^-20)."""
        if not recipe.quantize.needs_calibration:
            return []
        from ..lowering.mask_fill import SAMPLES, bound_mask_fills

        names = [s.name for s in self.specs]
        data = dict(zip(names, calib.columns(names))) if calib is not None else random_inputs(self.inputs, SAMPLES)
        note = bound_mask_fills(onnx_model, data, self.specs)
        return [note] if note else []

    def _check_overrides(self, recipe: Recipe) -> None:
        """Per-layer overrides must name PyTorch modules (or ONNX layers) and their classes or ONNX ops."""
        if not (recipe.layers or recipe.layer_types):
            return
        types = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                 "ConvTranspose2d", "ConvTranspose3d"}  # the aliases weights answer to
        if self.torch_source is not None:
            from ..sources.torch import torch_weights

            modules = list(self.torch_source.module.named_modules())
            names = [name for name, _ in modules if name]
            types |= {type(module).__name__ for _, module in modules}
            weights = torch_weights(self.torch_source.module)[0]
        else:
            weights = onnx_weights(self.onnx_model)[0]
            names = [w.name for w in weights]
            types |= {node.op_type for node in self.onnx_model.graph.node}
        recipe.check_overrides(names, sorted(types))
        if recipe.keeps_float_layers and not float_precision_weights(weights, recipe):
            raise RecipeError("precision: float keeps layers with weights (Conv, Linear/Gemm, MatMul) in float, and "
                              "the override names none of them; layers with weights: "
                              f"{', '.join(w.name for w in weights[:12])}{' ...' if len(weights) > 12 else ''}")


def _one_per_run(runs: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Runs stacked on a new first axis (``IoLayout.runs_in_tflite_layout``) as samples of one run each: the
    per-layer report and the mixed-precision search feed the .tflite one sample at a time."""
    return runs.reshape(-1, *runs.shape[2:]) if spec.batch is not None else runs


def _bias_correction(onnx_model, recipe: Recipe, calib: Dataset | None, specs: list, notes: list[str]):
    """The model with int8-corrected biases (``quantize.bias_correction``; auto: for int8/int16x8 with
    calibration data for a single input), or None."""
    settings = recipe.quantize
    if settings.bias_correction is False or settings.mode not in ("int8", "int16x8") or \
            (settings.bias_correction == "auto" and (calib is None or len(specs) != 1)):
        return None
    if calib is None or len(specs) != 1:
        notes.append("bias correction skipped: it measures mean layer inputs on calibration data for one input, "
                     "and " + ("none was given" if calib is None else f"the model has {len(specs)} inputs"))
        return None
    from ..techniques.bias_correction import correct_biases

    corrected, record = correct_biases(onnx_model, calib.columns([specs[0].name])[0])
    notes.append(record.summary())
    return corrected


def _check_runs(onnx_model, specs: list[TensorSpec]) -> None:
    """An --input-shape the ONNX graph cannot run is the user's input, found before onnx2tf fails on it."""
    try:
        run_once(onnx_model, specs)
    except Exception as exc:  # onnxruntime's own error types, raised at load or at run
        shapes = ", ".join(f"{s.name} {s.shape}" for s in specs)
        raise DataError(f"the model cannot run on inputs of shape {shapes} ({first_line(exc, 160)}); check "
                        "--input-shape "
                        "against the shapes the model was exported with") from None


def _check_quantizable(onnx_model, recipe: Recipe) -> None:
    if not recipe.quantize.needs_calibration:
        return
    graph_in = graph_inputs(onnx_model)
    names = [i.name for i in graph_in]
    integer = [f"{i.name} {input_dtype(i)}" for i in graph_in if not np.issubdtype(input_dtype(i), np.floating)]
    if recipe.quantize.mode == "int16x8" and integer:  # measured on all-MiniLM-L6-v2 and a small encoder
        raise RecipeError(f"quantize int16x8 is not available for models with integer inputs ({', '.join(integer)}): "
                          "TensorFlow 2.19's int16 quantizer fails on them (it asks for a calibrated range of the "
                          "token ids) and its MLIR quantizer cannot type the mask arithmetic; use --quantize "
                          "dynamic or int8")
    if recipe.quantize.searches_precision and len(names) > 1:  # the search feeds and ranks one input
        raise RecipeError(f"quantize.min_cosine/min_agreement (automatic mixed precision) measures models with one "
                          f"input; this model has {len(names)} ({', '.join(names)}): keep layers float by name "
                          "(layers: {NAME: {precision: float}}), or use --quantize dynamic")
    left = not_unrolled(onnx_model)  # the others become plain ops before onnx2tf
    for index, node in enumerate(onnx_model.graph.node):
        if node.op_type in CALIBRATION_CRASHING_OPS and (node.op_type not in RECURRENT_OPS or index in left):
            why = f" (not unrolled: {left[index]})" if index in left else ""
            raise ConversionError(f"quantize {recipe.quantize.mode} is not available for this recurrent model: "
                                  f"TensorFlow's calibrator crashes on {node.op_type} (node {node.name}){why}; use "
                                  "--quantize dynamic or float16 for this model")


def input_specs(specs: list[TensorSpec], onnx_model) -> list[InputSpec]:
    """What data must fit: each input's per-sample shape and dtype, and for token ids the vocabulary size
    (rows of the embedding table the graph indexes with them)."""
    indexed = index_inputs(onnx_model)
    return [InputSpec(s.name, tuple(s.sample_shape), s.dtype, indexed.get(s.name),
                      s.name in indexed and indexed[s.name] is None) for s in specs]


def _finetune(torch_source, module, recipe: Recipe, tune: Dataset, verbose: bool, notes: list[str]):
    from ..sources.torch import fold_batchnorm, torch_weights
    from ..training.torch import finetune_torch

    import torch

    if len(torch_source.output_names) != 1:
        raise DataError("fine-tuning supports single-output models; compress without --finetune data "
                        "(one-shot) or fine-tune the model yourself")
    if isinstance(module, torch.jit.ScriptModule):  # its layers are compiled: masks cannot be attached
        raise DataError("fine-tuning needs the nn.Module, not a TorchScript file: give a package.module:factory "
                        "source with --weights, or compress one-shot without --finetune data")
    student, note = fold_batchnorm(module)
    if note:
        notes.append(note)
    weights, owners = torch_weights(student)
    qat = recipe.quantize.qat
    records = finetune_torch(student, torch_source.module, weights, owners, recipe, tune, verbose,
                             train_unchanged=not qat)
    if qat:
        from ..techniques.qat.torch import quantization_aware_finetune

        clustered = {name: owners[name] for name in records["cluster"].layers}
        records["qat"] = quantization_aware_finetune(student, torch_source.module, tune, recipe.finetune, verbose,
                                                     clustered)
    return student.eval(), records, [w.name for w in weights]

