"""Attention-mask fill values bounded before int8/int16x8 quantization.

Transformers mask padded positions by adding a huge negative constant to the attention scores before
the softmax: Hugging Face's BERT uses ``torch.finfo(float32).min`` (-3.4e38), others -1e9 or -inf.  In
float that zeroes the positions' weights; quantized, the calibrated range of the mask and of every
``scores + mask`` Add spans 1e38, so each score rounds to the same integer and attention is lost
(all-MiniLM-L6-v2 full int8: cosine 0.25 against PyTorch).  Here the fill becomes -1 (a 0/-1 mask, exact
in any integer format) and each masked Add gets the mask times its own measured bound instead: the
spread of the scores it masks on calibration data plus ``MARGIN``, so a masked position still ends at
least ``MARGIN`` below every real score in its row (weight exp(-20) = 2e-9 of a real one), and the Add's
range is the scores' own plus that bound.
"""

from __future__ import annotations

import copy

import numpy as np

FILL_FLOOR = -1e9  # a constant at or below this is a mask fill, not a weight
MARGIN = 20.0
SAMPLES = 32  # calibration samples measured (enough for the scores' range; each is one onnxruntime run)
# Ops a mask passes through on its way from the fill constant to the scores: selections and reshapes,
# and multiplication by the 0/1 mask.  Anything else reading it leaves the model as it is.
MASK_OPS = {"Where", "Mul", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Transpose", "Identity", "Tile"}


def _fill_constants(model) -> dict[str, object]:
    """{tensor name: its TensorProto} for float constants holding a value <= FILL_FLOOR."""
    from onnx import numpy_helper

    found = {}
    for init in model.graph.initializer:
        found[init.name] = init
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
    fills = {}
    for name, tensor in found.items():
        array = numpy_helper.to_array(tensor)
        fill = array <= FILL_FLOOR
        if np.issubdtype(array.dtype, np.floating) and fill.any() and not array[~fill].any():  # fills and 0s
            fills[name] = tensor
    return fills


def _masked_adds(model, fills: dict) -> list[tuple] | None:
    """(Add node, mask input, scores input) for each Add of the mask to scores, or None when the mask
    reaches anything else."""
    derived = set(fills)
    adds = []
    for node in model.graph.node:  # topological order
        reads = [i for i in node.input if i in derived]
        if not reads:
            continue
        if node.op_type == "Add" and len(reads) == 1 and len(node.input) == 2:
            adds.append((node, reads[0], next(i for i in node.input if i != reads[0])))
        elif node.op_type in MASK_OPS:
            derived.update(node.output)
        else:
            return None
    outputs = {o.name for o in model.graph.output}
    return adds if adds and not derived & outputs else None


def bound_mask_fills(model, inputs: dict[str, np.ndarray], specs: list) -> str | None:
    """Rewrite ``model`` in place as the module says, measuring the scores on ``inputs`` (one array per
    graph input); a note saying what changed, or None when the model has no such mask."""
    from onnx import helper, numpy_helper

    from ..sources.onnx import run_onnx

    fills = _fill_constants(model)
    adds = _masked_adds(model, fills) if fills else None
    if not adds:
        return None
    scores = [score for _, _, score in adds]
    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in dict.fromkeys(scores))
    count = min(SAMPLES, min(len(x) for x in inputs.values()))
    measured = run_onnx(probe, {name: x[:count] for name, x in inputs.items()}, specs)
    spread = {name: float(np.max(v) - np.min(v)) for name, v in zip(dict.fromkeys(scores), measured)}
    old = sorted({float(np.min(numpy_helper.to_array(t))) for t in fills.values()})
    for tensor in fills.values():
        array = numpy_helper.to_array(tensor).copy()
        array[array <= FILL_FLOOR] = -1.0
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    for add, mask, score in adds:
        bound = f"{add.name or add.output[0]}_mask_bound"
        model.graph.initializer.append(numpy_helper.from_array(np.array(spread[score] + MARGIN, np.float32), bound))
        scaled = helper.make_node("Mul", [mask, bound], [f"{bound}_mask"], name=f"{bound}_mul")
        position = list(model.graph.node).index(add)
        model.graph.node.insert(position, scaled)
        add.input[list(add.input).index(mask)] = scaled.output[0]
        known = next((v for v in model.graph.value_info if v.name == mask), None)
        if known is not None:  # onnx2tf plans layouts from shapes: the new tensor has the mask's
            typed = model.graph.value_info.add()
            typed.CopyFrom(known)
            typed.name = scaled.output[0]
    bounds = [spread[s] + MARGIN for s in dict.fromkeys(scores)]
    return (f"attention-mask fill {', '.join(f'{v:.3g}' for v in old)} bounded for quantization in {len(adds)} "
            f"masked Add(s): each masks by its scores' measured spread + {MARGIN:g} ({min(bounds):.1f} to "
            f"{max(bounds):.1f}) instead, so integer ranges keep the scores (masked weights stay below e^-{MARGIN:g})")

