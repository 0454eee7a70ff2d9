"""Hostile model files never crash the host process: fuzzing plus one test per crash class found."""

from __future__ import annotations

import struct

import pytest

from device_runtime import ModelFormatError
from device_runtime.tflite_format import _Table, read_model
from tests.fuzzing import fuzz, fuzz_models

FUZZ_CASES = 2000


@pytest.fixture(scope="module")
def small_models():
    return fuzz_models()


def test_mutated_models_never_crash(small_models):
    result = fuzz(small_models, FUZZ_CASES, seed=7)
    assert result.crashes == [], result.crashes
    assert result.unexpected == [], result.unexpected[:5]
    # Not vacuous: some mutants still run, and most are refused with the runtime's own errors.
    assert result.outcomes.get("ran", 0) > FUZZ_CASES // 20
    assert result.outcomes.get("refused:ModelFormatError", 0) > FUZZ_CASES // 2


def _vector_item_position(data: bytes, path: list[tuple[int, int]], field: int, item: int) -> int:
    table = _Table(memoryview(data), struct.unpack_from("<I", data, 0)[0], "model")
    for vector_field, index in path:
        table = table.tables(vector_field, "t")[index]
    start = table._indirect(field)
    return start + 4 + 4 * item


def test_crash_classes_found_by_fuzzing_are_refused(small_models):
    """Each of these crashed the interpreter (SIGSEGV/SIGFPE) in bench/runtime_fuzz.py."""
    int8, float_model = small_models
    sg = read_model(float_model).main
    conv = next(i for i, op in enumerate(sg.operators) if op.op_name == "CONV_2D")
    # 1. a required input (the conv kernel) marked absent
    buf = bytearray(float_model)
    struct.pack_into("<i", buf, _vector_item_position(float_model, [(2, 0), (3, conv)], 1, 1), -1)
    with pytest.raises(ModelFormatError, match=r"operator \d+ \(CONV_2D\) lacks its required input 1"):
        read_model(bytes(buf))
    # 2. an operator reading a tensor nothing has written yet (the model's output)
    buf = bytearray(float_model)
    struct.pack_into("<i", buf, _vector_item_position(float_model, [(2, 0), (3, conv)], 1, 0), sg.outputs[0])
    with pytest.raises(ModelFormatError, match="before anything writes it"):
        read_model(bytes(buf))
    # 3. a zero-sized dimension (division by zero in the kernels)
    buf = bytearray(float_model)
    struct.pack_into("<i", buf, _vector_item_position(float_model, [(2, 0), (0, sg.inputs[0])], 0, 3), 0)
    with pytest.raises(ModelFormatError, match="zero or negative dimension"):
        read_model(bytes(buf))
    # 4. a quantization scale that is not a positive finite number
    parsed = read_model(int8).main
    quantized = next(t.index for t in parsed.tensors if t.quantization is not None)
    q_table_path = [(2, 0), (0, quantized)]
    table = _Table(memoryview(int8), struct.unpack_from("<I", int8, 0)[0], "model")
    for vector_field, item in q_table_path:
        table = table.tables(vector_field, "t")[item]
    quant = table.table(4, "q")
    scale_pos = quant._indirect(2) + 4
    buf = bytearray(int8)
    struct.pack_into("<f", buf, scale_pos, float("nan"))
    with pytest.raises(ModelFormatError, match="not a positive finite number"):
        read_model(bytes(buf))
    # 5. an operator code whose two fields disagree (SOFTMAX turned into SPLIT in one of them)
    root = _Table(memoryview(float_model), struct.unpack_from("<I", float_model, 0)[0], "model")
    codes = root.tables(1, "operator_code")
    softmax = next(i for i, t in enumerate(codes) if t.scalar(3, "i", 0) == 25)
    buf = bytearray(float_model)
    struct.pack_into("<i", buf, codes[softmax]._field_pos(3), 49)
    with pytest.raises(ModelFormatError, match="operator code says 49 in one field and 25"):
        read_model(bytes(buf))
