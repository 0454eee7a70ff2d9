"""Keras model -> .tflite bytes with post-training quantization.

Modes: none (float32), dynamic (int8 weights, float activations), float16,
int8 (full integer, per-channel weights, int8/uint8/float32 I/O) and int16x8
(int16 activations, int8 weights).  Calibration data is always the user's;
random calibration happens only when the recipe says so explicitly.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from ... import _tf
from ...errors import ConversionError, first_line
from ...recipe import QuantizeSettings

Progress = Callable[[str, int, int], None]


def representative_samples(calibration: np.ndarray | list[np.ndarray] | None, settings: QuantizeSettings,
                           input_shapes: list[tuple], seed: int = 0) -> list[np.ndarray]:
    """The calibration inputs, one array per model input: the user's data (samples of a batch-1 input, or
    whole inputs stacked on a new first axis), or random ones only when explicitly allowed."""
    if calibration is not None:
        arrays = calibration if isinstance(calibration, list) else [calibration]
        return [x[:settings.samples] for x in arrays]
    if not settings.allow_random_calibration:
        raise ConversionError("int8/int16x8 needs calibration data (--calib DATA)")
    rng = np.random.default_rng(seed)  # whole inputs (a free batch is 1), stacked on a new first axis
    return [rng.random((settings.samples, *(d or 1 for d in shape)), dtype=np.float32) for shape in input_shapes]


def to_tflite(model, settings: QuantizeSettings, calibration: np.ndarray | list[np.ndarray] | None = None,
              sparse: bool = False, per_channel: bool = True, progress: Progress | None = None,
              float_layers: Sequence[str] | Mapping[str, np.ndarray] = (), traced: bool = False,
              allow_flex: bool = False) -> bytes:
    """Convert ``model``; ``calibration`` feeds int8/int16x8 activation ranges.

    ``float_layers`` (int8 only) keeps those layers' ops in float32 while the rest is
    int8: mixed precision by the converter's own selective quantization. Layer names
    are found in the ops' tensor names (Keras); a mapping {layer: weight values} finds
    each layer's op by its constant weights instead, for graphs whose tensor names do
    not carry the source layer (onnx2tf's).

    ``calibration`` holds one array per model input (or one array for a single input).
    ``allow_flex`` lets ops with no TFLite builtin through as Select TF ops (Flex); without it such an op
    is refused in one line.
    ``per_channel=False`` gives one scale per weight tensor, which keeps k-means
    weight sharing intact in the file (per-channel scales map each shared value
    to a different integer in every channel).
    ``traced`` converts a traced function of the model instead of the Keras model (see ``_converter``).
    """
    tf = _tf.tensorflow()
    converter = _converter(model) if traced else tf.lite.TFLiteConverter.from_keras_model(model)
    optimizations = []
    if settings.mode != "none":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if settings.mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if settings.needs_calibration:
        samples = representative_samples(calibration, settings, [tuple(i.shape) for i in model.inputs])
        count = min(len(x) for x in samples)
        names = list(model.input_names)
        ranks = [len(i.shape) for i in model.inputs]

        def one_run(x: np.ndarray, rank: int, i: int) -> np.ndarray:
            # Samples of a batch-1 input, or whole inputs stacked on a new axis (any batch, any rank).
            return x[i] if x.ndim == rank + 1 else x[i:i + 1]

        def representative_dataset():
            for i in range(count):
                if progress:
                    progress("calibrate", i + 1, count)
                # By name: the converter's input order need not be the model's.
                yield [one_run(samples[0], ranks[0], i)] if len(samples) == 1 else \
                    {name: one_run(x, rank, i) for name, x, rank in zip(names, samples, ranks)}

        converter.representative_dataset = representative_dataset
        if (float_layers or settings.activation_range == "percentile") and settings.mode == "int8":
            return _selective_int8(converter, settings, per_channel, float_layers, samples)
        if settings.mode == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            io_type = _io_dtype(settings)
            converter.inference_input_type = io_type
            converter.inference_output_type = io_type
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    if settings.mode != "none" and not per_channel:
        converter._experimental_disable_per_channel = True  # the converter's only switch for it
    if allow_flex:
        converter.target_spec.supported_ops = [*(converter.target_spec.supported_ops or
                                                 [tf.lite.OpsSet.TFLITE_BUILTINS]), tf.lite.OpsSet.SELECT_TF_OPS]
    try:
        return bytes(converter.convert())
    except Exception as exc:  # the converter raises ConverterError, ValueError, RuntimeError...
        from .flex import refusal, select_ops_named

        flex = select_ops_named(str(exc))
        if flex:
            raise refusal([f"tf.{op}" for op in sorted(flex)]) from None
        raise ConversionError(f"TFLite conversion ({settings.mode}) failed: {first_line(exc)}") from None


def _converter(model):
    """A converter for ``model`` traced as a function with the same signature (input and output names).

    ``from_keras_model`` first saves a SavedModel whose metadata is the Keras config as JSON. onnx2tf's
    models hold every weight as a constant in that config, so for a 90 MB BERT its deep copies and JSON
    encoding took over 6 minutes (measured: 97% of the time). The function, saved from a bare tf.Module
    that holds it and the model's variables, gives the same signature, ops and bytes.
    """
    tf = _tf.tensorflow()
    specs = [tf.TensorSpec(i.shape, i.dtype, name=name) for i, name in zip(model.inputs, model.input_names)]

    @tf.function(input_signature=specs)
    def serve(*inputs):
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(model.output_names, outputs))

    holder = tf.Module()  # not the Keras model: saving that is what takes minutes
    holder.captured, holder.serve = list(model.variables), serve
    return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], holder)


def _selective_int8(converter, settings: QuantizeSettings, per_channel: bool,
                    float_layers: Sequence[str] | Mapping[str, np.ndarray], samples: list[np.ndarray]) -> bytes:
    """Calibrate, then quantize everything but the ops of ``float_layers`` (TFLite's denylisted nodes), with
    activation ranges narrowed to a percentile of ``samples`` when the settings ask for it."""
    from tensorflow.lite.python import convert as lite_convert

    from ...errors import RecipeError

    converter._experimental_calibrate_only = True  # the route tf.lite.experimental.QuantizationDebugger takes
    converter.experimental_mlir_quantizer = True
    try:
        calibrated = converter.convert()
    except Exception as exc:
        raise ConversionError(f"TFLite calibration for mixed precision failed: {first_line(exc)}") from None
    if settings.activation_range == "percentile":
        from ...techniques.activation_ranges import narrow_ranges

        calibrated = narrow_ranges(calibrated, samples, settings.percentile)[0]
    wanted = set(float_layers)
    nodes, found = _float_nodes(calibrated, float_layers)
    if wanted - found:
        raise RecipeError(f"precision float: no ops of layer(s) {sorted(wanted - found)} in the converted model")
    io_type = _io_dtype(settings)
    try:
        return bytes(lite_convert.mlir_quantize(calibrated, disable_per_channel=not per_channel,
                                                fully_quantize=settings.io_type != "float32",
                                                input_data_type=io_type, output_data_type=io_type,
                                                denylisted_nodes=nodes))
    except Exception as exc:
        raise ConversionError(f"TFLite mixed-precision quantization failed: {first_line(exc)}") from None


def _float_nodes(calibrated: bytes, float_layers: Sequence[str] | Mapping[str, np.ndarray]
                 ) -> tuple[list[str], set[str]]:
    """The output tensor names of the ops to keep in float, and the layers they were found for."""
    from device_runtime.tflite_format import read_model

    main = read_model(calibrated).main
    layers = op_layers(calibrated, float_layers)
    return [main.tensors[main.operators[i].outputs[0]].name for i in layers], set(layers.values())


def op_layers(data: bytes, layers: Sequence[str] | Mapping[str, np.ndarray]) -> dict[int, str]:
    """{op index: layer} for the ops of a float (or calibrated) .tflite that belong to ``layers``: by the
    layer name in the op's output tensor name (Keras), or, for a mapping {layer: weight values}, by the
    op's constant weights (onnx2tf's tensor names do not carry the source layer)."""
    from device_runtime.tflite_format import read_model

    from ...verify.analysis import layer_of

    model = read_model(data)
    main = model.main
    by_weights = {name: np.sort(np.asarray(values, np.float32), axis=None)  # None: found by name alone
                  for name, values in layers.items() if values is not None} if isinstance(layers, Mapping) else {}
    wanted = set(layers)
    found = {}
    for index, op in enumerate(main.operators):
        if not op.outputs:
            continue
        layer = layer_of(main.tensors[op.outputs[0]].name, wanted)
        if layer not in wanted and by_weights:
            layer = _layer_by_weights(model, op, by_weights)
        if layer in wanted:
            found[index] = layer
    return found


def _layer_by_weights(model, op, by_weights: dict[str, np.ndarray]) -> str | None:
    """The layer whose weights are one of ``op``'s constant inputs (compared as sorted values, so layouts
    transposed by the converter still match)."""
    for index in op.inputs:
        if index < 0:
            continue
        tensor = model.main.tensors[index]
        values = model.constant(tensor) if tensor.dtype_name == "float32" else None
        if values is None:
            continue
        for layer, weights in by_weights.items():
            if weights.size == values.size and np.array_equal(weights, np.sort(values, axis=None)):
                return layer
    return None


def _io_dtype(settings: QuantizeSettings):
    """The TensorFlow dtype of a full-integer model's inputs and outputs."""
    tf = _tf.tensorflow()
    return {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[settings.io_type]
