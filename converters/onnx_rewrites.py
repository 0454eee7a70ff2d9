"""Graph rewrites before onnx2tf, for valid ONNX that onnx2tf 1.29 mis-converts.

Each rewrite keeps the graph's function exactly (checked by the conversion's own
fidelity check against onnxruntime on the unrewritten graph) and is named in the
report's notes when it fires.
"""

from __future__ import annotations

import copy


def rewrite_for_onnx2tf(model) -> tuple[object, list[str]]:
    """A rewritten copy of ``model`` and one note per rewrite that fired."""
    model = copy.deepcopy(model)
    notes = []
    count = _explicit_kernel_shapes(model)
    if count:
        notes.append(f"kernel_shape written into {count} Conv/ConvTranspose node(s) that omitted it (onnx2tf "
                     "cannot convert them without it)")
    return model, notes


def _explicit_kernel_shapes(model) -> int:
    """Conv/ConvTranspose may omit kernel_shape (it is the weight's spatial shape); onnx2tf needs it."""
    from onnx import helper

    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or any(a.name == "kernel_shape" for a in node.attribute):
            continue
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or len(weight) < 3:
            continue
        node.attribute.append(helper.make_attribute("kernel_shape", [int(d) for d in weight[2:]]))
        count += 1
    return count


