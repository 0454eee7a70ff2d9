"""A bounds-checked reader for the TFLite flatbuffer format.

Why not the generated schema module: generated flatbuffer readers trust every
offset, and the TFLite interpreter itself crashes the process on many malformed
files.  This reader checks each offset, length and index before use and raises
``ModelFormatError`` with a one-line cause, so a hostile or truncated file is
refused in Python before its bytes reach native code.  It reads only the parts
of the schema (tensorflow/lite/schema/schema.fbs) the SDK needs: tensors,
quantization, sparsity, operators, buffers, metadata and signatures.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import ModelFormatError

FILE_IDENTIFIER = b"TFL3"
# Ops whose inputs from index 1 on may be absent (-1); all other ops allow it only from index 2
# (e.g. a missing bias).  A required input marked absent crashes the interpreter.
RECURRENT_OPS = {"LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "RNN",
                 "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN", "SVDF"}
_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
_MAX_TENSOR_ELEMENTS = 1 << 34  # far above any real model; stops absurd shapes early

# TensorType enum of the schema -> (name, numpy dtype or None when not a plain array).
TENSOR_TYPES: dict[int, tuple[str, np.dtype | None]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("float16", np.dtype("<f2")),
    2: ("int32", np.dtype("<i4")),
    3: ("uint8", np.dtype("u1")),
    4: ("int64", np.dtype("<i8")),
    5: ("string", None),
    6: ("bool", np.dtype("?")),
    7: ("int16", np.dtype("<i2")),
    8: ("complex64", np.dtype("<c8")),
    9: ("int8", np.dtype("i1")),
    10: ("float64", np.dtype("<f8")),
    11: ("complex128", np.dtype("<c16")),
    12: ("uint64", np.dtype("<u8")),
    13: ("resource", None),
    14: ("variant", None),
    15: ("uint32", np.dtype("<u4")),
    16: ("uint16", np.dtype("<u2")),
    17: ("int4", None),
    18: ("bfloat16", None),
    19: ("int2", None),
}


@functools.cache
def _builtin_op_names() -> dict[int, str]:
    """Op code -> name, from the schema module that ships with ai-edge-litert when present."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return {}
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def builtin_op_name(code: int) -> str:
    return _builtin_op_names().get(code, f"BUILTIN_{code}")


class _Table:
    """One flatbuffer table: a position in the buffer plus its vtable, every read checked."""

    __slots__ = ("buf", "pos", "vt", "vt_len", "where")

    def __init__(self, buf: memoryview, pos: int, where: str):
        self.buf, self.pos, self.where = buf, pos, where
        _need(buf, pos, 4, where)
        vt = pos - struct.unpack_from("<i", buf, pos)[0]
        _need(buf, vt, 4, where + " vtable")
        vt_len, _ = struct.unpack_from("<HH", buf, vt)
        if vt_len < 4 or vt_len % 2:
            raise ModelFormatError(f"corrupt model: bad vtable size {vt_len} in {where}")
        _need(buf, vt, vt_len, where + " vtable")
        self.vt, self.vt_len = vt, vt_len

    def _field_pos(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot + 2 > self.vt_len:
            return None
        off = struct.unpack_from("<H", self.buf, self.vt + slot)[0]
        return self.pos + off if off else None

    def scalar(self, index: int, fmt: str, default):
        pos = self._field_pos(index)
        if pos is None:
            return default
        _need(self.buf, pos, struct.calcsize(fmt), self.where)
        return struct.unpack_from("<" + fmt, self.buf, pos)[0]

    def _indirect(self, index: int) -> int | None:
        pos = self._field_pos(index)
        if pos is None:
            return None
        _need(self.buf, pos, 4, self.where)
        return pos + struct.unpack_from("<I", self.buf, pos)[0]

    def table(self, index: int, what: str) -> _Table | None:
        pos = self._indirect(index)
        return None if pos is None else _Table(self.buf, pos, what)

    def _vector(self, index: int, item_size: int) -> tuple[int, int] | None:
        pos = self._indirect(index)
        if pos is None:
            return None
        _need(self.buf, pos, 4, self.where)
        length = struct.unpack_from("<I", self.buf, pos)[0]
        _need(self.buf, pos + 4, length * item_size, self.where + " vector")
        return pos + 4, length

    def array(self, index: int, dtype: str) -> np.ndarray:
        dt = np.dtype(dtype)
        vec = self._vector(index, dt.itemsize)
        if vec is None:
            return np.zeros(0, dt)
        start, length = vec
        return np.frombuffer(self.buf, dt, length, start)

    def bytes_view(self, index: int) -> memoryview | None:
        vec = self._vector(index, 1)
        if vec is None:
            return None
        start, length = vec
        return self.buf[start:start + length]

    def string(self, index: int) -> str:
        raw = self.bytes_view(index)
        if raw is None:
            return ""
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(f"corrupt model: a name in {self.where} is not UTF-8") from None

    def tables(self, index: int, what: str) -> list[_Table]:
        vec = self._vector(index, 4)
        if vec is None:
            return []
        start, length = vec
        out = []
        for i in range(length):
            slot = start + 4 * i
            out.append(_Table(self.buf, slot + struct.unpack_from("<I", self.buf, slot)[0], f"{what}[{i}]"))
        return out


def _need(buf: memoryview, pos: int, size: int, where: str) -> None:
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise ModelFormatError(
            f"corrupt or truncated model: {where} points outside the file "
            f"(offset {pos}+{size}, file is {len(buf)} bytes)")


@dataclass(frozen=True)
class Quantization:
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass(frozen=True)
class Sparsity:
    """Where a constant is stored in TFLite's compressed sparse format."""

    traversal_order: tuple[int, ...]
    block_map: tuple[int, ...]


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    type_code: int
    buffer: int
    quantization: Quantization | None
    sparsity: Sparsity | None
    is_variable: bool

    @property
    def dtype_name(self) -> str:
        return TENSOR_TYPES.get(self.type_code, (f"type{self.type_code}", None))[0]

    @property
    def dtype(self) -> np.dtype | None:
        return TENSOR_TYPES.get(self.type_code, ("", None))[1]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class Operator:
    opcode_index: int
    op_name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Subgraph:
    name: str
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[Operator, ...]


@dataclass(frozen=True)
class Signature:
    key: str
    subgraph_index: int
    inputs: dict[str, int]
    outputs: dict[str, int]


@dataclass
class TFLiteModel:
    """A parsed and validated TFLite model; buffers are views into ``data``."""

    data: bytes
    version: int
    description: str
    op_names: tuple[str, ...]
    subgraphs: tuple[Subgraph, ...]
    buffers: tuple[memoryview, ...]
    metadata: dict[str, int] = field(default_factory=dict)
    signatures: tuple[Signature, ...] = ()

    @property
    def main(self) -> Subgraph:
        return self.subgraphs[0]

    def buffer_bytes(self, tensor: Tensor) -> memoryview:
        return self.buffers[tensor.buffer]

    def constant(self, tensor: Tensor) -> np.ndarray | None:
        """The stored values of a constant tensor (sparse tensors give their non-zero values)."""
        raw = self.buffer_bytes(tensor)
        if not len(raw) or tensor.dtype is None:
            return None
        values = np.frombuffer(raw, tensor.dtype, len(raw) // tensor.dtype.itemsize)
        return values if tensor.sparsity is not None else values.reshape(tensor.shape)

    def metadata_bytes(self, name: str) -> bytes | None:
        index = self.metadata.get(name)
        return None if index is None else bytes(self.buffers[index])

    def ops_used(self) -> list[str]:
        return sorted({op.op_name for sg in self.subgraphs for op in sg.operators})


def read_model(data: bytes | bytearray | memoryview) -> TFLiteModel:
    """Parse and validate a TFLite flatbuffer; raise ModelFormatError naming the first defect."""
    data = bytes(data)
    buf = memoryview(data)
    if len(buf) < 8:
        raise ModelFormatError(f"not a TFLite model: only {len(buf)} bytes")
    if bytes(buf[4:8]) != FILE_IDENTIFIER:
        raise ModelFormatError("not a TFLite model: the file identifier is not 'TFL3' "
                               "(is this a .pb, .onnx, .h5 or a truncated download?)")
    root = _Table(buf, struct.unpack_from("<I", buf, 0)[0], "model")
    version = root.scalar(0, "I", 0)
    if version != 3:
        raise ModelFormatError(f"unsupported TFLite schema version {version}; expected 3")

    buffers = tuple(_read_buffer(buf, t) for t in root.tables(4, "buffer"))
    op_names = tuple(_read_opcode(t) for t in root.tables(1, "operator_code"))
    subgraphs = tuple(_read_subgraph(t, len(buffers), op_names) for t in root.tables(2, "subgraph"))
    if not subgraphs:
        raise ModelFormatError("corrupt model: it has no subgraph")
    for sg in subgraphs:
        for tensor in sg.tensors:
            _check_constant_size(tensor, buffers[tensor.buffer])
        _check_dataflow(sg, buffers)
    metadata = {}
    for t in root.tables(6, "metadata"):
        index = t.scalar(1, "I", 0)
        if index >= len(buffers):
            raise ModelFormatError(f"corrupt model: metadata buffer index {index} out of range")
        metadata[t.string(0)] = index
    signatures = tuple(_read_signature(t, subgraphs) for t in root.tables(7, "signature_def"))
    return TFLiteModel(data, version, root.string(3), op_names, subgraphs, buffers,
                       metadata, signatures)


def _read_buffer(buf: memoryview, table: _Table) -> memoryview:
    inline = table.bytes_view(0)
    offset, size = table.scalar(1, "Q", 0), table.scalar(2, "Q", 0)
    if offset > 1:  # models over 2 GB keep buffers after the flatbuffer
        _need(buf, offset, size, table.where)
        return buf[offset:offset + size]
    return inline if inline is not None else buf[0:0]


def _read_opcode(table: _Table) -> str:
    deprecated, code = table.scalar(0, "b", 0), table.scalar(3, "i", 0)
    # Writers store both fields (deprecated = min(code, 127)); legacy files only the deprecated one.
    if code and deprecated != min(code, 127):
        raise ModelFormatError(f"corrupt model: an operator code says {code} in one field and "
                               f"{deprecated} in the other")
    code = max(deprecated, code)
    if code == 32:  # CUSTOM
        return "CUSTOM:" + table.string(1)
    return builtin_op_name(code)


def _read_subgraph(table: _Table, n_buffers: int, op_names: tuple[str, ...]) -> Subgraph:
    tensors = tuple(_read_tensor(i, t, n_buffers) for i, t in enumerate(table.tables(0, "tensor")))
    n = len(tensors)
    inputs = _indices(table.array(1, "<i4"), n, "subgraph input")
    outputs = _indices(table.array(2, "<i4"), n, "subgraph output")
    operators = []
    for i, t in enumerate(table.tables(3, "operator")):
        opcode = t.scalar(0, "I", 0)
        if opcode >= len(op_names):
            raise ModelFormatError(f"corrupt model: operator {i} uses op code {opcode}, "
                                   f"but the model declares {len(op_names)}")
        operators.append(Operator(opcode, op_names[opcode],
                                  _indices(t.array(1, "<i4"), n, f"operator {i} input", optional=True),
                                  _indices(t.array(2, "<i4"), n, f"operator {i} output")))
    return Subgraph(table.string(4), tensors, inputs, outputs, tuple(operators))


def _indices(values: np.ndarray, n: int, what: str, optional: bool = False) -> tuple[int, ...]:
    low = -1 if optional else 0
    bad = values[(values < low) | (values >= n)]
    if bad.size:
        raise ModelFormatError(f"corrupt model: {what} refers to tensor {int(bad[0])}, "
                               f"but there are {n} tensors")
    return tuple(int(v) for v in values)


def _read_tensor(index: int, table: _Table, n_buffers: int) -> Tensor:
    shape = tuple(int(v) for v in table.array(0, "<i4"))
    where = f"tensor {index}"
    if any(d <= 0 for d in shape):
        raise ModelFormatError(f"corrupt model: {where} has a zero or negative dimension {shape}")
    if int(np.prod(shape, dtype=np.float64)) > _MAX_TENSOR_ELEMENTS:
        raise ModelFormatError(f"corrupt model: {where} has an impossible shape {shape}")
    type_code = table.scalar(1, "b", 0)
    if type_code not in TENSOR_TYPES:
        raise ModelFormatError(f"corrupt model: {where} has unknown type code {type_code}")
    where = f"tensor {index} ({TENSOR_TYPES[type_code][0]})"
    buffer = table.scalar(2, "I", 0)
    if buffer >= n_buffers:
        raise ModelFormatError(f"corrupt model: {where} uses buffer {buffer}, "
                               f"but the model has {n_buffers}")
    return Tensor(index, table.string(3), shape,
                  tuple(int(v) for v in table.array(7, "<i4")) or shape,
                  type_code, buffer, _read_quantization(table.table(4, where + " quantization"), shape, where,
                                                       TENSOR_TYPES[type_code][0]),
                  _read_sparsity(table.table(6, where + " sparsity")),
                  bool(table.scalar(5, "B", 0)))


def _read_quantization(table: _Table | None, shape: tuple[int, ...], where: str, type_name: str
                       ) -> Quantization | None:
    if table is None:
        return None
    scale = table.array(2, "<f4")
    if not scale.size:
        return None
    zero_point = table.array(3, "<i8")
    axis = table.scalar(6, "i", 0)
    if scale.size > 1:
        if not 0 <= axis < len(shape) or shape[axis] != scale.size:
            raise ModelFormatError(f"corrupt model: {where} has {scale.size} scales for axis {axis} "
                                   f"of shape {shape}")
    if zero_point.size not in (0, scale.size):
        raise ModelFormatError(f"corrupt model: {where} has {zero_point.size} zero points "
                               f"for {scale.size} scales")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ModelFormatError(f"corrupt model: {where} has a quantization scale that is not a "
                               f"positive finite number ({scale[:4].tolist()})")
    low, high = _INT_RANGES.get(type_name, (-(1 << 62), 1 << 62))
    if ((zero_point < low) | (zero_point > high)).any():
        raise ModelFormatError(f"corrupt model: {where} has a zero point outside {low}..{high}")
    return Quantization(scale, zero_point if zero_point.size else np.zeros(scale.size, np.int64), axis)


def _read_sparsity(table: _Table | None) -> Sparsity | None:
    if table is None:
        return None
    return Sparsity(tuple(int(v) for v in table.array(0, "<i4")),
                    tuple(int(v) for v in table.array(1, "<i4")))


def _check_constant_size(tensor: Tensor, raw: memoryview) -> None:
    """A dense constant whose buffer is not exactly its shape's size would be read out of bounds."""
    if not len(raw) or tensor.sparsity is not None or tensor.dtype is None:
        return
    expected = tensor.size * tensor.dtype.itemsize
    if len(raw) != expected:
        raise ModelFormatError(
            f"corrupt model: constant tensor '{tensor.name}' holds {len(raw)} bytes "
            f"but its shape {list(tensor.shape)} of {tensor.dtype_name} needs {expected}")


def _check_dataflow(sg: Subgraph, buffers: tuple[memoryview, ...]) -> None:
    """Every operator input must exist before the operator runs; required inputs must be present."""
    available = set(sg.inputs) | {t.index for t in sg.tensors if len(buffers[t.buffer]) or t.is_variable}
    for i, op in enumerate(sg.operators):
        for position, index in enumerate(op.inputs):
            if index == -1:
                if position < (1 if op.op_name in RECURRENT_OPS else 2):
                    raise ModelFormatError(f"corrupt model: operator {i} ({op.op_name}) lacks its "
                                           f"required input {position}")
            elif index not in available:
                raise ModelFormatError(f"corrupt model: operator {i} ({op.op_name}) reads tensor "
                                       f"{index} before anything writes it")
        available.update(op.outputs)
    missing = [index for index in sg.outputs if index not in available]
    if missing:
        raise ModelFormatError(f"corrupt model: output tensor {missing[0]} is never written")


def _read_signature(table: _Table, subgraphs: tuple[Subgraph, ...]) -> Signature:
    index = table.scalar(4, "I", 0)
    if index >= len(subgraphs):
        raise ModelFormatError(f"corrupt model: a signature names subgraph {index} of {len(subgraphs)}")
    n = len(subgraphs[index].tensors)

    def tensor_map(field_index: int, what: str) -> dict[str, int]:
        out = {}
        for t in table.tables(field_index, what):
            tensor = t.scalar(1, "I", 0)
            if tensor >= n:
                raise ModelFormatError(f"corrupt model: signature {what} refers to tensor {tensor} of {n}")
            out[t.string(0)] = tensor
        return out

    return Signature(table.string(2), index, tensor_map(0, "input"), tensor_map(1, "output"))
