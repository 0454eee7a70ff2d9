"""The flatbuffer reader: correct facts on real models, clear errors on broken ones."""

import struct

import numpy as np
import pytest

from converters import _tf
from converters.recipe import QuantizeSettings
from converters.targets.tflite.convert import to_tflite
from device_runtime.errors import ModelFormatError
from device_runtime.tflite_format import read_model


@pytest.fixture(scope="module")
def small_models():
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="c"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="d")])
    calib = np.random.default_rng(0).random((16, 6, 6, 2), dtype=np.float32)
    return model, {mode: to_tflite(model, QuantizeSettings(mode=mode), calib)
                   for mode in ("none", "int8")}


def test_reads_structure_and_weights(small_models):
    model, files = small_models
    parsed = read_model(files["none"])
    sg = parsed.main
    assert parsed.ops_used() == ["CONV_2D", "FULLY_CONNECTED", "RESHAPE"]
    assert sg.tensors[sg.inputs[0]].shape_signature == (-1, 6, 6, 2)
    conv = next(op for op in sg.operators if op.op_name == "CONV_2D")
    kernel = parsed.constant(sg.tensors[conv.inputs[1]])
    # TFLite stores conv kernels as (out, h, w, in); Keras as (h, w, in, out).
    np.testing.assert_array_equal(kernel, np.transpose(model.get_layer("c").kernel.numpy(), (3, 0, 1, 2)))
    assert parsed.signatures[0].key == "serving_default"


def test_reads_per_channel_quantization(small_models):
    _, files = small_models
    parsed = read_model(files["int8"])
    sg = parsed.main
    conv = next(op for op in sg.operators if op.op_name == "CONV_2D")
    weight = sg.tensors[conv.inputs[1]]
    assert weight.dtype_name == "int8"
    assert weight.quantization.per_channel and weight.quantization.scale.size == 4
    assert weight.quantization.axis == 0


def test_refuses_non_models_and_truncation(small_models):
    data = small_models[1]["none"]
    with pytest.raises(ModelFormatError, match="only 3 bytes"):
        read_model(b"abc")
    with pytest.raises(ModelFormatError, match="file identifier is not 'TFL3'"):
        read_model(b"\x89HDF\r\n\x1a\n" + data[8:])
    for cut in (16, len(data) // 3, len(data) - 200):
        with pytest.raises(ModelFormatError):
            read_model(data[:cut])


def _field_position(data: bytes, path: list[tuple[int, int]], field: int) -> int:
    """Byte position of ``field`` in the table reached by following (vector field, item) pairs."""
    from device_runtime.tflite_format import _Table

    buf = memoryview(data)
    table = _Table(buf, struct.unpack_from("<I", buf, 0)[0], "model")
    for vector_field, item in path:
        table = table.tables(vector_field, "t")[item]
    return table._field_pos(field)


def test_refuses_out_of_range_indices(small_models):
    original = small_models[1]["none"]
    sg = read_model(original).main
    tensor = next(t.index for t in sg.tensors if t.buffer)  # default values are not stored
    operator = next(i for i, op in enumerate(sg.operators) if op.opcode_index)
    cases = [
        ([(2, 0), (0, tensor)], 2, "<I", 9999, "uses buffer 9999"),
        ([(2, 0), (3, operator)], 0, "<I", 77, "uses op code 77"),
        ([], 0, "<I", 4, "schema version 4"),
    ]
    for path, field, fmt, value, message in cases:
        data = bytearray(original)
        struct.pack_into(fmt, data, _field_position(bytes(data), path, field), value)
        with pytest.raises(ModelFormatError, match=message):
            read_model(bytes(data))
    assert read_model(original).version == 3
