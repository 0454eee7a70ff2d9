"""`sdk export mcu`: check a .tflite for TFLite Micro, measure its arena, write the C/C++ files."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import ConversionError, OutputPathError, UserInputError
from ...files import atomic_write_folder, check_writable_folder
from ...labels import read_labels
from ...verify.report import describe_recipe
from ...verify.analysis import FLOAT_TYPES, analyse, read_single_io_model
from . import codegen
from .boards import Board, board_named

ARENA_MARGIN_FRACTION = 0.10
ARENA_MARGIN_MIN = 1024
PROBE_TIMEOUT_S = 600


class TargetError(UserInputError):
    """The model cannot run on the chosen target as it is; the message says how to fix it."""


class TflmCrash(ConversionError):
    """TFLite Micro killed its process (it aborts on checks it fails) and printed nothing."""


# TFLite Micro's int8 softmax folds input scale x beta x 2^(31 - 5) into a multiplier it requires > 1,
# and aborts otherwise: an input scale at or below 2^-26 (beta 1) means a calibrated range of ~4e-6.
SOFTMAX_MIN_INPUT_SCALE = 2.0 ** -26


@dataclass
class TflmRun:
    outputs: np.ndarray
    min_arena: int


def run_tflm(model: bytes, inputs: np.ndarray) -> TflmRun:
    """Run ``inputs`` (stored int values, batch first) through TFLite Micro in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        model_path, inputs_path = Path(tmp) / "model.tflite", Path(tmp) / "inputs.npy"
        model_path.write_bytes(model)
        np.save(inputs_path, inputs)
        root = Path(__file__).resolve().parents[3]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        try:
            done = subprocess.run([sys.executable, "-m", "converters.targets.mcu._tflm_probe", str(model_path),
                                   str(inputs_path)], capture_output=True, text=True, env=env,
                                  timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"the TFLite Micro interpreter did not finish in {PROBE_TIMEOUT_S} s") from None
        if done.returncode != 0:
            if "No module named 'tflite_micro'" in done.stderr:
                raise ConversionError("MCU export needs the tflite-micro package: pip install tflite-micro")
            if done.returncode < 0 and not done.stderr.strip():  # TFLM aborts on some checks it fails
                raise TflmCrash(f"the TFLite Micro interpreter crashed ({_signal_name(-done.returncode)}) "
                                "on the model, printing no reason")
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise ConversionError(f"the TFLite Micro interpreter failed on the model: {last}")
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        if not facts["loads"]:
            missing = sorted(set(re.findall(r"Didn't find op for builtin opcode '(\w+)'", done.stderr)))
            if missing:
                raise TargetError(f"TFLite Micro has no kernels for {', '.join(missing)}; replace those "
                                  "layers with supported ones (conv, dense, pooling, reshape, softmax, ...)")
            detail = [ln for ln in done.stderr.splitlines() if ln.strip()]
            raise ConversionError("the TFLite Micro interpreter cannot load the model"
                                  + (f": {detail[0]}" if detail else ""))
        return TflmRun(np.load(str(inputs_path) + ".out.npy"), int(facts["min_arena"]))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass
class McuExport:
    out_dir: str
    files: list[str]
    model_bytes: int
    arena_bytes: int
    arena_min_bytes: int
    arena_margin_bytes: int
    ops: list[str]
    board: Board | None
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool | None:
        if self.board is None:
            return None
        return self.arena_bytes <= self.board.ram_bytes and self.model_bytes <= self.board.flash_bytes

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fits"] = self.fits
        return out

    def render(self) -> str:
        lines = [f"wrote {', '.join(self.files)} to {self.out_dir}",
                 f"flash: {self.model_bytes} bytes of model (plus TFLite Micro code)",
                 f"RAM:   {self.arena_bytes} bytes of tensor arena ({self.arena_min_bytes} measured "
                 f"+ {self.arena_margin_bytes} margin)",
                 f"ops:   {', '.join(self.ops)} ({len(self.ops)} registered, no AllOpsResolver)"]
        if self.board is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"board: {self.board.name} ({self.board.description}): {verdict} "
                         f"(RAM {self.arena_bytes}/{self.board.ram_bytes}, "
                         f"flash {self.model_bytes}/{self.board.flash_bytes})")
        lines += [f"note:  {note}" for note in self.notes]
        return "\n".join(lines)


def export_mcu(model_path: str | os.PathLike, out_dir: str | os.PathLike, *, board: str | None = None,
               allow_float: bool = False, labels: Sequence[str] | str | os.PathLike | None = None,
               force: bool = False) -> McuExport:
    """Check ``model_path`` for TFLite Micro, measure its arena and write the project files.

    Everything that can be checked without running the model (board, output folder, float ops, I/O types,
    labels) is checked before TFLite Micro runs, and the files are written all together or not at all.
    """
    chosen = board_named(board)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{out} is a file; give a folder for the MCU project files")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputPathError(f"{out} is not empty; pass --force to overwrite its files")
    check_writable_folder(out / "model_data.h")
    data, model = read_single_io_model(model_path, "MCU export")
    sg = model.main
    if not allow_float:
        _require_full_integer(data)
    tensor_in, tensor_out = sg.tensors[sg.inputs[0]], sg.tensors[sg.outputs[0]]
    for role, tensor in (("input", tensor_in), ("output", tensor_out)):
        if tensor.dtype_name not in codegen.IO_TYPES:
            raise TargetError(f"the model's {role} '{tensor.name}' is {tensor.dtype_name}; the generated C code "
                              f"handles {', '.join(codegen.IO_TYPES)} inputs and outputs. Fix: sdk convert ... "
                              "--quantize int8 --io-type int8 --calib DATA")
    names = read_labels(labels, tensor_out.size)  # one per score: example_main.cc indexes them by argmax
    notes = _float_notes(data) if allow_float else []
    sample = _sample_input(tensor_in)
    try:
        measured = run_tflm(data, sample).min_arena
    except TflmCrash as crash:
        raise TargetError(f"{crash}: {_crash_cause(sg)}") from None
    margin = max(ARENA_MARGIN_MIN, math.ceil(measured * ARENA_MARGIN_FRACTION))
    arena = -(-(measured + margin) // 16) * 16
    facts = codegen.CodeFacts(data, hashlib.sha256(data).hexdigest(), _recipe_text(Path(model_path)),
                              model.ops_used(), tensor_in, tensor_out, arena, measured, arena - measured, names)
    files = {**codegen.model_data_files(facts), "model_ops.h": codegen.model_ops_file(facts),
             **codegen.model_io_files(facts), "model_settings.h": codegen.model_settings_file(facts),
             "example_main.cc": codegen.example_main_file(facts)}
    atomic_write_folder(out, {name: text.encode() for name, text in files.items()})
    return McuExport(str(out), sorted(files), len(data), arena, measured, arena - measured, facts.ops, chosen,
                     notes)


def _crash_cause(sg) -> str:
    """The known reason TFLite Micro aborts on a model, when the model shows it, with the fix."""
    for op in sg.operators:
        if op.op_name != "SOFTMAX" or not op.inputs:
            continue
        tensor = sg.tensors[op.inputs[0]]
        quant = tensor.quantization
        if tensor.dtype_name in ("int8", "uint8") and quant is not None and quant.scale[0] <= SOFTMAX_MIN_INPUT_SCALE:
            scale = float(quant.scale[0])
            return (f"the SOFTMAX input '{tensor.name}' has int8 scale {scale:.2g} (a calibrated range of "
                    f"{scale * 255:.2g}), and TFLite Micro's int8 softmax needs a scale above "
                    f"{SOFTMAX_MIN_INPUT_SCALE:.2g} (for beta 1, Keras's and PyTorch's). The logits barely move "
                    "on the calibration data: calibrate with representative inputs (--calib), or train the model")
    return ("MCU models are usually a few hundred KB of int8 convolutions, dense layers and pooling: "
            "try a smaller or simpler model")


def _float_parts(data: bytes) -> tuple[list[str], list[str]]:
    """The ops computing in float ("CONV_2D x2") and the float inputs/outputs ("x (float32)") of a model."""
    stats = analyse(data)
    float_io = [f"{t['name']} ({t['dtype']})" for t in stats.inputs + stats.outputs if t["dtype"] in FLOAT_TYPES]
    return [f"{name} x{n}" for name, n in stats.ops.float_ops.items()], float_io


def _float_notes(data: bytes) -> list[str]:
    float_ops, float_io = _float_parts(data)
    notes = []
    if float_ops:
        notes.append(f"exported with float ops ({', '.join(float_ops)}): their weights and activations take "
                     "4 bytes a value (int8: 1), and they are slow on an MCU without an FPU")
    if float_io:
        notes.append(f"float inputs/outputs ({', '.join(float_io)}): model_io.c copies them, with no "
                     "quantization")
    return notes


def _require_full_integer(data: bytes) -> None:
    float_ops, float_io = _float_parts(data)
    if float_ops or float_io:
        parts = []
        if float_ops:
            parts.append(f"ops computing in float: {', '.join(float_ops)}")
        if float_io:
            parts.append(f"float inputs/outputs: {', '.join(float_io)}")
        raise TargetError("MCU targets need a full-integer model; " + "; ".join(parts)
                          + ". Fix: sdk convert ... --quantize int8 --io-type int8 --calib DATA "
                            "(or pass --allow-float to export anyway)")


def _sample_input(tensor) -> np.ndarray:
    dtype = tensor.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.random.default_rng(0).integers(info.min, info.max, (1, *tensor.shape[1:]), dtype=dtype)
    return np.random.default_rng(0).random((1, *tensor.shape[1:])).astype(dtype)


def _recipe_text(model_path: Path) -> str:
    report = model_path.with_name(model_path.stem + ".report.json")
    try:
        return describe_recipe(json.loads(report.read_text())["recipe"])
    except (OSError, ValueError, KeyError):
        return "unknown (no report beside the model)"
