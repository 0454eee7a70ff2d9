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
    count = _trailing_empty_inputs(model)
    if count:
        notes.append(f"empty optional inputs dropped from {count} node(s) (onnx2tf fails on them)")
    count = _unbounded_clips(model)
    if count:
        notes.append(f"{count} Clip node(s) with neither min nor max given infinite bounds (onnx2tf emits "
                     "nothing for them)")
    count = _exact_gelus(model)
    if count:
        notes.append(f"{count} Gelu node(s) written as x * 0.5 * (1 + erf(x / sqrt 2)), the form onnx2tf turns "
                     "into TFLite's GELU builtin (its own Gelu lowering uses Erfc, which has none)")
    count = _layer_norms_as_primitives(model)
    if count:
        notes.append(f"{count} LayerNormalization node(s) over several axes or with Mean/InvStdDev outputs "
                     "written as ReduceMean/Sub/Mul/Sqrt (onnx2tf converts only the last-axis form)")
    return model, notes


def _layer_norms_as_primitives(model) -> int:
    """LayerNormalization (opset 17) in primitives, where onnx2tf's own lowering fails: an axis other than
    the last, or the optional Mean / InvStdDev outputs."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*onnx.shape_inference.infer_shapes(model).graph.value_info, *model.graph.input,
                       *model.graph.output] if v.type.tensor_type.HasField("shape")}
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    count = 0
    for node in list(model.graph.node):
        if node.op_type != "LayerNormalization" or node.input[0] not in ranks:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rank = ranks[node.input[0]]
        axis = attrs.get("axis", -1) % rank
        extra = [o for o in node.output[1:] if o]
        if axis == rank - 1 and not extra:
            continue
        base = f"{node.name or node.output[0]}_ln"
        axes = list(range(axis, rank))
        model.graph.initializer.append(numpy_helper.from_array(np.array(attrs.get("epsilon", 1e-5), np.float32),
                                                               f"{base}_eps"))

        def mean(source: str, target: str, tag: str):
            if opset >= 18:
                model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), f"{base}_axes_{tag}"))
                return helper.make_node("ReduceMean", [source, f"{base}_axes_{tag}"], [target], keepdims=1,
                                        name=f"{base}_{tag}")
            return helper.make_node("ReduceMean", [source], [target], axes=axes, keepdims=1, name=f"{base}_{tag}")

        outputs = list(node.output) + [""] * (3 - len(node.output))
        mean_out = outputs[1] or f"{base}_mean"
        inv_out = outputs[2] or f"{base}_inv"
        normalized = f"{base}_normalized"
        scaled = outputs[0] if len(node.input) < 3 or not node.input[2] else f"{base}_scaled"
        params = list(node.input[1:3])
        for k, name in enumerate(params):  # constants at the input's rank: onnx2tf broadcasts them rightly
            if name in initializers:
                value = initializers[name]
                params[k] = f"{base}_param{k}"
                model.graph.initializer.append(numpy_helper.from_array(
                    value.reshape((1,) * (rank - value.ndim) + value.shape), params[k]))
        replacement = [mean(node.input[0], mean_out, "mean"),
                       helper.make_node("Sub", [node.input[0], mean_out], [f"{base}_d"], name=f"{base}_sub"),
                       helper.make_node("Mul", [f"{base}_d", f"{base}_d"], [f"{base}_d2"], name=f"{base}_square"),
                       mean(f"{base}_d2", f"{base}_var", "var"),
                       helper.make_node("Add", [f"{base}_var", f"{base}_eps"], [f"{base}_var_eps"], name=f"{base}_add"),
                       helper.make_node("Sqrt", [f"{base}_var_eps"], [f"{base}_std"], name=f"{base}_sqrt"),
                       helper.make_node("Reciprocal", [f"{base}_std"], [inv_out], name=f"{base}_reciprocal"),
                       helper.make_node("Mul", [f"{base}_d", inv_out], [normalized], name=f"{base}_normalize"),
                       helper.make_node("Mul", [normalized, params[0]], [scaled], name=f"{base}_scale")]
        if scaled != outputs[0]:
            replacement.append(helper.make_node("Add", [scaled, params[1]], [outputs[0]], name=f"{base}_bias"))
        position = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new in enumerate(replacement):
            model.graph.node.insert(position + offset, new)
        count += 1
    return count


def _exact_gelus(model) -> int:
    """ONNX Gelu (opset 20, approximate 'none') as PyTorch exports exact GELU before opset 20."""
    import numpy as np
    from onnx import helper, numpy_helper

    count = 0
    nodes = list(model.graph.node)
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gelu" or attrs.get("approximate", b"none") not in (b"none", "none"):
            continue
        x, y = node.input[0], node.output[0]
        base = f"{node.name or y}_gelu"
        constants = {"sqrt2": np.sqrt(2.0), "one": 1.0, "half": 0.5}
        model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), f"{base}_{k}")
                                       for k, v in constants.items())
        t = [f"{base}_t{i}" for i in range(4)]
        replacement = [helper.make_node("Div", [x, f"{base}_sqrt2"], [t[0]], name=f"{base}_div"),
                       helper.make_node("Erf", [t[0]], [t[1]], name=f"{base}_erf"),
                       helper.make_node("Add", [t[1], f"{base}_one"], [t[2]], name=f"{base}_add"),
                       helper.make_node("Mul", [x, t[2]], [t[3]], name=f"{base}_mul"),
                       helper.make_node("Mul", [t[3], f"{base}_half"], [y], name=f"{base}_half_mul")]
        position = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new in enumerate(replacement):
            model.graph.node.insert(position + offset, new)
        count += 1
    return count


def _unbounded_clips(model) -> int:
    """A Clip without min and max bounds nothing: given explicit infinite float bounds, onnx2tf converts it."""
    import numpy as np
    from onnx import numpy_helper

    count = 0
    for node in model.graph.node:
        if node.op_type == "Clip" and len(node.input) == 1 and not any(a.name in ("min", "max")
                                                                        for a in node.attribute):
            base = f"{node.name or node.output[0]}_clip"
            model.graph.initializer.extend([numpy_helper.from_array(np.array(-np.inf, np.float32), f"{base}_min"),
                                            numpy_helper.from_array(np.array(np.inf, np.float32), f"{base}_max")])
            node.input.extend([f"{base}_min", f"{base}_max"])
            count += 1
    return count


def _trailing_empty_inputs(model) -> int:
    """Optional inputs given as '' at the end of a node's input list mean 'absent', as omitting them does."""
    count = 0
    for node in model.graph.node:
        if node.input and not node.input[-1]:
            kept = list(node.input)
            while kept and not kept[-1]:
                kept.pop()
            del node.input[:]
            node.input.extend(kept)
            count += 1
    return count


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


