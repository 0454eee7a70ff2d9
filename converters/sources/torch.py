"""PyTorch sources: an nn.Module with an example input, a TorchScript file, or a factory + weights.

Each becomes a ``TorchSource``: the module in eval mode, example inputs, and
input/output names (from ``forward``'s parameters and the outputs' structure),
which the .tflite keeps as its signature names.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..techniques.arrays import WeightArray
from ..errors import ConversionError, DataError, SourceModelError, first_line

FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
ONNX_OPSET = 17
REFERENCE_BATCH = 64
INPUT_DTYPES = ("float32", "int64", "int32", "bool")
# What torch says when float inputs reach an nn.Embedding (or another index op).
INDEX_DTYPE_ERRORS = ("indices", "Long, Int", "scalar type Long", "must be Long", "expected scalar type Long")


@dataclass
class TorchSource:
    module: Any  # torch.nn.Module (or ScriptModule) in eval mode
    example_inputs: tuple  # torch tensors, batch 1
    input_names: list[str]
    output_names: list[str]
    description: str
    path: Path | None  # the file hashed for provenance, when there is one

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(x.shape) for x in self.example_inputs]


def is_torch_source(source: Any) -> bool:
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        return Path(text).suffix.lower() in (".pt", ".pth", ".torchscript") or bool(FACTORY_SPEC.match(text))
    return type(source).__module__.startswith("torch") or _is_module(source)


def _is_module(obj: Any) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(obj, torch.nn.Module)


def load_torch_source(source: Any, example_input: Any = None, input_shapes: Sequence[Sequence[int]] | None = None,
                      weights: str | os.PathLike | None = None,
                      input_dtypes: Sequence[str] | None = None) -> TorchSource:
    """A module (path, factory spec or object) with example inputs made from ``example_input`` or shapes
    (and ``input_dtypes``: one per input, or one for all; integer inputs such as token ids are all ones)."""
    import torch

    path = None
    if isinstance(source, (str, os.PathLike)) and FACTORY_SPEC.match(str(source)) and not Path(source).exists():
        module, description = _from_factory(str(source), weights), str(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        module, description = _load_torchscript(path), str(path)
        if weights is not None:
            raise DataError("--weights goes with a 'package.module:factory' source, not a TorchScript file")
    elif isinstance(source, torch.nn.Module):
        module, description = _private_copy(source), f"<in-memory {type(source).__name__}>"
    else:
        raise SourceModelError(f"unknown PyTorch source {type(source).__name__}: give an nn.Module, a "
                               "TorchScript file or 'package.module:factory'")
    module = module.eval()
    inputs = _example_inputs(example_input, input_shapes, input_dtypes)
    outputs = run_module(module, inputs)
    return TorchSource(module, inputs, _input_names(module, len(inputs)), _output_names(outputs),
                       description, path)


def copy_module(module) -> Any:
    """A deep copy whose parameters stay trainable leaves (deepcopy of a ScriptModule makes them non-leaf)."""
    import io

    import torch

    if isinstance(module, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)
    return copy.deepcopy(module)


def _private_copy(module) -> Any:
    """A copy to set to eval mode, export and compress, so the caller's module is never changed."""
    try:
        return copy_module(module)
    except Exception as exc:  # modules holding un-copyable state (open files, locks)
        raise SourceModelError(f"cannot copy {type(module).__name__} to convert it safely: {first_line(exc)}; "
                               "save it with torch.jit.save and convert the file") from None


def _from_factory(spec: str, weights) -> Any:
    import torch

    module = call_factory(spec)
    if not isinstance(module, torch.nn.Module):
        raise SourceModelError(f"{spec}() must return a torch.nn.Module; it returned {type(module).__name__}")
    if weights is not None:
        _load_weights(module, Path(weights))
    return module


def call_factory(spec: str) -> Any:
    """What ``package.module:factory`` returns (a PyTorch module, or a Keras model for a Keras student)."""
    module_name, factory_name = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so that a model file in the working directory imports
    try:
        source = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceModelError(f"cannot import {spec}: {first_line(exc)}; run from the folder that holds "
                               f"{module_name.split('.')[0]} or install it") from None
    factory = getattr(source, factory_name, None)
    if not callable(factory):
        offered = sorted(name for name, value in vars(source).items() if callable(value) and not name.startswith("_")
                         and getattr(value, "__module__", None) == source.__name__)
        close = difflib.get_close_matches(factory_name, offered, n=1)
        raise SourceModelError(f"{module_name} has no model factory {factory_name!r}"
                               + (f" (did you mean {close[0]!r}?)" if close else "")
                               + f"; it defines {', '.join(offered) or 'no public callables'}")
    try:
        return factory()
    except Exception as exc:  # the user's code may raise anything
        raise SourceModelError(f"{spec}() failed: {first_line(exc)}") from None


def _load_weights(module, path: Path) -> None:
    import torch

    if not path.is_file():
        raise SourceModelError(f"weights file not found: {path}")
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (or, before 1.6, a pickle)
        # torch.load's own message for such a file is a bare number or a warning about weights_only
        raise SourceModelError(f"cannot read weights {path.name}: not a file written by torch.save; save them "
                               "with torch.save(model.state_dict(), path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: not a loadable state dict
        raise SourceModelError(f"cannot read weights {path.name}: {first_line(exc)}; save them with "
                               "torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SourceModelError(f"{path.name} holds a {type(state).__name__}, not a state dict; save it with "
                               "torch.save(model.state_dict(), path)")
    mismatch = _state_dict_mismatch(module.state_dict(), state)
    if mismatch:
        raise SourceModelError(f"weights {path.name} do not fit the model: {mismatch}; save them from the same "
                               "architecture the factory builds")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SourceModelError(f"weights {path.name} do not fit the model: {first_line(exc)}") from None


def _state_dict_mismatch(expected: dict, given: dict, shown: int = 3) -> str:
    """The missing, unexpected and mis-shaped keys, a few of each by name (torch's own message puts the
    names on lines after its first, which a one-line error drops)."""
    def names(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")

    missing, unexpected = set(expected) - set(given), set(given) - set(expected)
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(expected) & set(given))
              if hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = ([f"missing {names(missing)}"] if missing else []) + \
            ([f"unexpected {names(unexpected)}"] if unexpected else []) + \
            ([f"shape of {', '.join(shapes[:shown])}"] if shapes else [])
    return "; ".join(parts)


def _load_torchscript(path: Path) -> Any:
    import torch

    if not path.is_file():
        raise SourceModelError(f"PyTorch model not found: {path}")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError from the archive reader, ValueError, pickle errors
        raise SourceModelError(
            f"{path.name} is not a TorchScript file ({first_line(exc)}); save one with "
            "torch.jit.save(torch.jit.trace(model, x), path), or give 'package.module:factory' with "
            f"--weights {path.name} for a state dict") from None


def _example_inputs(example_input: Any, input_shapes, input_dtypes: Sequence[str] | None = None) -> tuple:
    import torch

    if example_input is not None and input_dtypes:
        raise DataError("input dtypes come from example_input's tensors; give input_dtypes only with input shapes")
    if example_input is not None:
        inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
        converted = []
        for x in inputs:
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(x)
            if not isinstance(x, torch.Tensor):
                raise DataError(f"example inputs must be tensors or numpy arrays; got {type(x).__name__}")
            converted.append(x[:1] if x.ndim > 1 and x.shape[0] > 1 else x)
        return tuple(converted)
    if not input_shapes:
        raise DataError("a PyTorch model needs its input shape: give --input-shape 1,3,224,224 "
                        "(once per input), or example_input= in Python")
    dtypes = _dtypes(input_dtypes, len(input_shapes))
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.rand(tuple(shape), generator=generator) if dtype is None
                 else torch.ones(tuple(shape), dtype=dtype) for shape, dtype in zip(input_shapes, dtypes))


def _dtypes(names: Sequence[str] | None, count: int) -> list:
    """torch dtypes for ``names`` (None: float32); one name applies to every input."""
    import torch

    if not names:
        return [None] * count
    if len(names) not in (1, count):
        raise DataError(f"--input-dtype given {len(names)} times for {count} inputs: give it once per "
                        "--input-shape, or once for all inputs")
    names = list(names) * count if len(names) == 1 else list(names)
    if any(n not in INPUT_DTYPES for n in names):
        bad = next(n for n in names if n not in INPUT_DTYPES)
        raise DataError(f"--input-dtype must be one of {', '.join(INPUT_DTYPES)}; got {bad!r}")
    return [None if n == "float32" else getattr(torch, n) for n in names]


def run_module(module, inputs: tuple) -> Any:
    import torch

    with torch.no_grad():
        try:
            return module(*inputs)
        except Exception as exc:  # shape mismatches and the user's own errors
            shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
            if any(x.is_floating_point() for x in inputs) and any(e in str(exc) for e in INDEX_DTYPE_ERRORS):
                raise DataError(f"the model cannot run on float32 inputs ({first_line(exc, 120)}): its inputs are "
                                "token ids or other indices; give --input-dtype int64 (once per input, or once for "
                                "all), or example_input= with integer tensors") from None
            raise DataError(f"the model cannot run on inputs of shape {shapes}: {first_line(exc)}; "
                            "check --input-shape") from None


def _input_names(module, count: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:count]]
    return names if len(names) == count else [f"input_{i}" for i in range(count)]


def _output_names(outputs: Any) -> list[str]:
    import torch

    if isinstance(outputs, torch.Tensor):
        return ["output"]
    if isinstance(outputs, dict) and all(isinstance(v, torch.Tensor) for v in outputs.values()):
        return [str(k) for k in outputs]
    if isinstance(outputs, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in outputs):
        return [f"output_{i}" for i in range(len(outputs))]
    raise SourceModelError(f"model outputs must be a tensor, or a tuple or dict of tensors; got "
                           f"{type(outputs).__name__} (nested outputs are not supported)")


def _as_tuple(outputs: Any) -> tuple:
    if isinstance(outputs, dict):
        return tuple(outputs.values())
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def reference_outputs(module, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The module's outputs on numpy inputs (source layout), in batches."""
    import torch

    results: list[list[np.ndarray]] = []
    for start in range(0, len(inputs[0]), REFERENCE_BATCH):
        batch = tuple(torch.from_numpy(np.ascontiguousarray(x[start:start + REFERENCE_BATCH])) for x in inputs)
        results.append([o.detach().numpy() for o in _as_tuple(run_module(module, batch))])
    return [np.concatenate([r[j] for r in results]) for j in range(len(results[0]))]


def export_onnx(source: TorchSource, module, path: Path):
    """torch.onnx.export (TorchScript exporter, opset 17; it folds BatchNorm in eval mode).

    Dict outputs export in key order, under their keys.
    """
    import onnx
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), source.example_inputs, str(path), input_names=source.input_names,
                              output_names=source.output_names, opset_version=ONNX_OPSET, dynamo=False,
                              do_constant_folding=True)
    except Exception as exc:  # torch raises many types for unexportable code
        raise ConversionError(f"torch.onnx.export failed: {first_line(exc)}; make forward() traceable "
                              "(no data-dependent Python control flow) or export ONNX yourself") from None
    return onnx.load(str(path))


def fold_batchnorm(module) -> tuple[Any, str | None]:
    """A copy with each BatchNorm folded into its convolution (torch.fx), so fine-tuned weights are final."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy_module(module)), None
    except Exception as exc:  # torch.fx cannot trace data-dependent control flow
        return copy_module(module), (f"BatchNorm not folded before fine-tuning (torch.fx: {first_line(exc)}); "
                                       "clustered layers followed by BatchNorm may hold more unique values")


def torch_weights(module) -> tuple[list[WeightArray], dict[str, Any]]:
    """Conv and Linear weights as arrays, and the modules that own them, by module name."""
    import torch

    weights, owners = [], {}
    for name, child in module.named_modules():
        if isinstance(child, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            types = (type(child).__name__, "Conv")
        elif isinstance(child, torch.nn.Linear):
            types = ("Linear", "Gemm", "MatMul")
        else:
            continue
        weights.append(WeightArray(name, types, child.weight.detach().numpy().copy(), in_axis=1, out_axis=0))
        owners[name] = child
    return weights, owners
