"""Graph rewrites before onnx2tf, for valid ONNX that onnx2tf 1.29 mis-converts.

Each rewrite keeps the graph's function exactly (checked by the conversion's own
fidelity check against onnxruntime on the unrewritten graph) and is named in the
report's notes when it fires.
"""

from __future__ import annotations

import copy

from .gelu import gelus_as_nodes
from .onnx_recurrent import unroll_recurrent


def rewrite_for_onnx2tf(model) -> tuple[object, list[str]]:
    """A rewritten copy of ``model`` and one note per rewrite that fired, in the order of ``REWRITES``."""
    model = copy.deepcopy(model)
    notes = []
    for rewrite, note in REWRITES:
        done = rewrite(model)  # a count of nodes, or the names of the nodes rewritten
        if done:
            count, names = (len(done), ", ".join(done)) if isinstance(done, list) else (done, "")
            notes.append(note.format(count=count, names=names))
    return model, notes


def _resize_tflite_cannot_match(attrs: dict, shape_in: tuple, shape_out: tuple) -> bool:
    """Resizes onnx2tf gets wrong or cannot convert to builtins (measured on the ONNX node tests): cubic
    (TensorFlow's bicubic kernel has no builtin and samples differently), antialiased linear
    (ScaleAndTranslate, not even a Flex op), linear with other sampling positions than TFLite's
    (align_corners, half_pixel_symmetric, tf_crop_and_resize), and any downsampling linear or nearest
    Resize.  Upsampling with TFLite's own sampling stays RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR."""
    mode = attrs.get("mode", b"nearest").decode()
    transform = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
    shrinks = any(o < i for i, o in zip(shape_in[2:], shape_out[2:]))
    return mode == "cubic" or shrinks or (mode == "linear" and (
        bool(attrs.get("antialias", 0)) or transform not in ("half_pixel", "pytorch_half_pixel", "asymmetric")))


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
        _replace_node(model, node, replacement)
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


def _input_shapes(model) -> dict[str, tuple[int, ...]]:
    """Static shapes of the graph's tensors, from ONNX shape inference."""
    import onnx

    shapes = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _explicit_padding(model) -> int:
    """SAME_UPPER/SAME_LOWER auto_pad, and ConvTranspose's output_shape, as the explicit pads (and
    output_padding) the ONNX spec derives from them."""
    from onnx import helper

    ops = {"Conv", "ConvTranspose", "MaxPool", "AveragePool"}
    candidates = [n for n in model.graph.node if n.op_type in ops]
    if not any(a.name in ("auto_pad", "output_shape") for n in candidates for a in n.attribute):
        return 0
    shapes = _input_shapes(model)
    count = 0
    for node in candidates:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        auto_pad = attrs.get("auto_pad", b"NOTSET").decode()
        transposed = node.op_type == "ConvTranspose"
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER") and not (transposed and "output_shape" in attrs):
            continue
        shape_in = shapes.get(node.input[0])
        if shape_in is None:
            continue
        spatial = list(shape_in[2:])
        rank = len(spatial)
        kernel = list(attrs.get("kernel_shape") or (shapes.get(node.input[1], ())[2:] if len(node.input) > 1 else []))
        if len(kernel) != rank:
            continue
        strides = list(attrs.get("strides", [1] * rank))
        dilations = list(attrs.get("dilations", [1] * rank))
        extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
        output_padding = list(attrs.get("output_padding", [0] * rank))
        if transposed:
            wanted = list(attrs["output_shape"])[-rank:] if "output_shape" in attrs else \
                [i * s for i, s in zip(spatial, strides)]
            total = [s * (i - 1) + p + e - o for s, i, p, e, o in zip(strides, spatial, output_padding, extent, wanted)]
            upper = auto_pad == "SAME_UPPER"
        else:
            out = [-(-i // s) for i, s in zip(spatial, strides)]
            total = [max(0, (o - 1) * s + e - i) for o, s, e, i in zip(out, strides, extent, spatial)]
            upper = auto_pad != "SAME_LOWER"
        for axis, t in enumerate(total):
            if t < 0:  # the output is longer than the pads can make it: output_padding adds the rest
                output_padding[axis] += -t
                total[axis] = 0
        begin = [t // 2 if upper else t - t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin)]
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "output_shape", "pads", "output_padding")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("pads", begin + end))
        if transposed and any(output_padding):
            node.attribute.append(helper.make_attribute("output_padding", output_padding))
        count += 1
    return count


def _undilated_conv_transposes(model) -> int:
    """A dilated ConvTranspose equals one with the dilated kernel (zeros between the taps) and no dilation."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        dilations = list(attrs.get("dilations", []))
        if node.op_type != "ConvTranspose" or not any(d > 1 for d in dilations) or node.input[1] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        spatial = weight.shape[2:]
        dilated = np.zeros((*weight.shape[:2], *[(k - 1) * d + 1 for k, d in zip(spatial, dilations)]), weight.dtype)
        dilated[(slice(None), slice(None), *[slice(None, None, d) for d in dilations])] = weight
        name = f"{node.input[1]}_dilated"
        model.graph.initializer.append(numpy_helper.from_array(dilated, name))
        node.input[1] = name
        kept = [a for a in node.attribute if a.name not in ("dilations", "kernel_shape")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("kernel_shape", list(dilated.shape[2:])))
        count += 1
    return count


def _resize_as_matmuls(model, wanted) -> list[str]:
    """Resize nodes ``wanted(attrs)`` selects, on the last two axes of a rank-4 tensor with constant
    scales/sizes, as two MatMuls with the node's own interpolation matrices: Y = A_h X A_w^T, with A_h
    and A_w measured by running the node in onnxruntime on one-hot inputs, then checked on a random one.
    Reshapes to 2-D around each MatMul keep onnx2tf's layout handling out of the way."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    if not resizes:
        return []
    shapes = _input_shapes(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    rewritten = []
    for node in resizes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape_in, shape_out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not (shape_in and shape_out and len(shape_in) == 4 and shape_in[:2] == shape_out[:2]
                and wanted(attrs, shape_in, shape_out) and "axes" not in attrs
                and all(not n or n in initializers for n in node.input[1:])):
            continue
        matrices = _interpolation_matrices(node, initializers, shape_in, shape_out, opset)
        if matrices is None:
            continue
        (n, c, h, w), (h2, w2) = shape_in, shape_out[2:]
        base = f"{node.name or node.output[0]}_matmul_resize"
        constants = {"aw": matrices[1].T, "ah": matrices[0].T, "s1": [n * c * h, w], "s2": [n, c, h, w2],
                     "s3": [n * c * w2, h], "s4": [n, c, w2, h2]}
        model.graph.initializer.extend(
            numpy_helper.from_array(np.asarray(v, np.float32 if k.startswith("a") else np.int64), f"{base}_{k}")
            for k, v in constants.items())
        t = [f"{base}_t{i}" for i in range(7)]
        replacement = [
            helper.make_node("Reshape", [node.input[0], f"{base}_s1"], [t[0]], name=f"{base}_r1"),
            helper.make_node("MatMul", [t[0], f"{base}_aw"], [t[1]], name=f"{base}_mw"),
            helper.make_node("Reshape", [t[1], f"{base}_s2"], [t[2]], name=f"{base}_r2"),
            helper.make_node("Transpose", [t[2]], [t[3]], perm=[0, 1, 3, 2], name=f"{base}_t1"),
            helper.make_node("Reshape", [t[3], f"{base}_s3"], [t[4]], name=f"{base}_r3"),
            helper.make_node("MatMul", [t[4], f"{base}_ah"], [t[5]], name=f"{base}_mh"),
            helper.make_node("Reshape", [t[5], f"{base}_s4"], [t[6]], name=f"{base}_r4"),
            helper.make_node("Transpose", [t[6]], [node.output[0]], perm=[0, 1, 3, 2], name=f"{base}_t2")]
        _replace_node(model, node, replacement)
        rewritten.append(node.name or node.output[0])
    return rewritten


def _interpolation_matrices(node, initializers, shape_in, shape_out, opset: int):
    """(A_h, A_w) such that the node computes A_h X A_w^T per channel, or None when it does not."""
    import numpy as np
    from onnx import helper, numpy_helper

    from ..sources.onnx import _session

    height, width = shape_in[2:]

    def run(x):
        inputs, inits = ["x"], []
        for k, name in enumerate(node.input[1:], 1):
            if not name:
                inputs.append("")
                continue
            value = initializers[name]
            if k == 3:  # sizes: the batch and channel entries follow the probe's
                value = np.array([x.shape[0], x.shape[1], *value[2:]], value.dtype)
            inits.append(numpy_helper.from_array(value, f"c{k}"))
            inputs.append(f"c{k}")
        probe = helper.make_node("Resize", inputs, ["y"], **{a.name: helper.get_attribute_value(a)
                                                              for a in node.attribute})
        graph = helper.make_graph([probe], "probe", [helper.make_tensor_value_info("x", 1, list(x.shape))],
                                  [helper.make_tensor_value_info("y", 1, None)], initializer=inits)
        probe_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        probe_model.ir_version = min(probe_model.ir_version, 8)  # what onnxruntime reads
        try:
            return _session(probe_model).run(None, {"x": x})[0]
        except Exception:  # noqa: BLE001 - the probe cannot run: leave the node to onnx2tf
            return None

    rows = np.zeros((height, 1, height, width), np.float32)
    rows[np.arange(height), 0, np.arange(height), :] = 1
    cols = np.zeros((width, 1, height, width), np.float32)
    cols[np.arange(width), 0, :, np.arange(width)] = 1
    y_rows, y_cols = run(rows), run(cols)
    if y_rows is None or y_cols is None or y_rows.shape[2:] != tuple(shape_out[2:]):
        return None
    a_h, a_w = y_rows[:, 0, :, 0].T, y_cols[:, 0, 0, :].T
    check = np.random.default_rng(0).random((1, 2, height, width), dtype=np.float32)
    want = run(check)
    if want is None or not np.allclose(a_h @ check @ a_w.T, want, rtol=1e-4, atol=1e-5):
        return None
    return a_h, a_w


def _explicit_splits(model) -> int:
    """Split (opset 18) by num_outputs as the explicit sizes the spec gives: ceil(n / k) each, the last
    one smaller."""
    import numpy as np
    from onnx import helper, numpy_helper

    splits = [n for n in model.graph.node if n.op_type == "Split" and any(a.name == "num_outputs" for a in n.attribute)
              and (len(n.input) < 2 or not n.input[1])]
    if not splits:
        return 0
    shapes = _input_shapes(model)
    count = 0
    for node in splits:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0])
        if shape is None:
            continue
        parts = attrs["num_outputs"]
        length = shape[attrs.get("axis", 0) % len(shape)]
        chunk = -(-length // parts)
        sizes = [chunk] * (parts - 1) + [length - chunk * (parts - 1)]
        if sizes[-1] <= 0:
            continue
        name = f"{node.name or node.output[0]}_split_sizes"
        model.graph.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), name))
        del node.input[1:]
        node.input.append(name)
        kept = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(kept)
        count += 1
    return count


def _crossed_clips(model) -> int:
    """Clip with constant min > max: the spec's answer is max everywhere (Min(Max(x, min), max)), where
    onnx2tf's clip_by_value returns min."""
    import numpy as np
    from onnx import helper, numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    count = 0
    for node in list(model.graph.node):
        if node.op_type != "Clip" or len(node.input) < 3 or not all(n in constants for n in node.input[1:3]):
            continue
        low, high = constants[node.input[1]], constants[node.input[2]]
        if not np.all(low > high):
            continue
        base = f"{node.name or node.output[0]}_crossed"
        _replace_node(model, node, [helper.make_node("Max", [node.input[0], node.input[1]], [f"{base}_max"],
                                                     name=f"{base}_max"),
                                    helper.make_node("Min", [f"{base}_max", node.input[2]], [node.output[0]],
                                                     name=f"{base}_min")])
        count += 1
    return count


def _training_batch_norms(model) -> int:
    """BatchNormalization with training_mode=1 normalises with the batch's own mean and (population)
    variance over every axis but the channel axis, and outputs the updated running statistics."""
    import numpy as np
    from onnx import helper, numpy_helper

    shapes = None
    count = 0
    for node in list(model.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "BatchNormalization" or not attrs.get("training_mode", 0):
            continue
        shapes = shapes or _input_shapes(model)
        shape = shapes.get(node.input[0])
        if shape is None or len(shape) < 2:
            continue
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        axes = [0, *range(2, len(shape))]
        base = f"{node.name or node.output[0]}_train_bn"
        channels = shape[1]
        view = [1, channels] + [1] * (len(shape) - 2)
        momentum = attrs.get("momentum", 0.9)
        consts = {"eps": np.array(attrs.get("epsilon", 1e-5), np.float32), "view": np.array(view, np.int64),
                  "flat": np.array([channels], np.int64), "momentum": np.array(momentum, np.float32),
                  "rest": np.array(1 - momentum, np.float32), "axes": np.array(axes, np.int64)}
        model.graph.initializer.extend(numpy_helper.from_array(v, f"{base}_{k}") for k, v in consts.items())
        values = {init.name: init for init in model.graph.initializer}
        if node.input[1] not in values or node.input[2] not in values:
            continue
        for name, tag in ((node.input[1], "sv"), (node.input[2], "bv")):  # at the input's rank: onnx2tf lays
            model.graph.initializer.append(numpy_helper.from_array(  # such constants out rightly
                numpy_helper.to_array(values[name]).reshape(view).astype(np.float32), f"{base}_{tag}"))

        def mean(source: str, target: str):
            if opset >= 18:
                return helper.make_node("ReduceMean", [source, f"{base}_axes"], [target], keepdims=1, name=target)
            return helper.make_node("ReduceMean", [source], [target], axes=axes, keepdims=1, name=target)

        x, scale, bias, running_mean, running_var = node.input[:5]
        t = {k: f"{base}_{k}" for k in ("mean", "d", "d2", "var", "ve", "std", "n", "s", "sv", "b", "bv")}
        replacement = [
            mean(x, t["mean"]), helper.make_node("Sub", [x, t["mean"]], [t["d"]]),
            helper.make_node("Mul", [t["d"], t["d"]], [t["d2"]]), mean(t["d2"], t["var"]),
            helper.make_node("Add", [t["var"], f"{base}_eps"], [t["ve"]]), helper.make_node("Sqrt", [t["ve"]], [t["std"]]),
            helper.make_node("Div", [t["d"], t["std"]], [t["n"]]),
            helper.make_node("Mul", [t["n"], t["sv"]], [t["s"]]),
            helper.make_node("Add", [t["s"], t["bv"]], [node.output[0]])]
        for index, (stat, running) in enumerate(((t["mean"], running_mean), (t["var"], running_var)), 1):
            if len(node.output) > index and node.output[index]:
                names = [f"{base}_stat{index}_{k}" for k in ("flat", "old", "new")]
                replacement += [helper.make_node("Reshape", [stat, f"{base}_flat"], [names[0]]),
                                helper.make_node("Mul", [running, f"{base}_momentum"], [names[1]]),
                                helper.make_node("Mul", [names[0], f"{base}_rest"], [names[2]]),
                                helper.make_node("Add", [names[1], names[2]], [node.output[index]])]
        for k, new in enumerate(replacement):
            new.name = new.name or f"{base}_n{k}"
        _replace_node(model, node, replacement)
        count += 1
    return count


def _concats_with_constants(model) -> int:
    """A rank-3..5 Concat with constant operands, along any axis but the first, as zero-padded computed
    operands plus one constant that holds the constants at their offsets (zeros elsewhere): the same values
    exactly, through Pad and Add, whose constants onnx2tf lays out rightly (it transposes a Concat's
    constant operands wrongly; along the first axis, converting in onnx2tf's layout gets it right)."""
    import numpy as np
    from onnx import helper, numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    shapes = None
    count = 0
    for node in list(model.graph.node):
        if node.op_type != "Concat" or all(n in constants for n in node.input) \
                or not any(n in constants and 3 <= len(constants[n].dims) <= 5 for n in node.input):
            continue
        shapes = shapes or _input_shapes(model)
        parts = [shapes.get(n) for n in node.input]
        if any(p is None for p in parts):
            continue
        rank = len(parts[0])
        axis = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "axis") % rank
        if axis == 0:
            continue
        total = sum(p[axis] for p in parts)
        out_shape = list(parts[0])
        out_shape[axis] = total
        base = f"{node.name or node.output[0]}_concat"
        filled = np.zeros(out_shape, np.float32)
        terms, offset = [], 0
        for k, (name, part) in enumerate(zip(node.input, parts)):
            where = [slice(None)] * rank
            where[axis] = slice(offset, offset + part[axis])
            if name in constants:
                filled[tuple(where)] = numpy_helper.to_array(constants[name])
            else:
                pads = [0] * (2 * rank)
                pads[axis], pads[rank + axis] = offset, total - offset - part[axis]
                model.graph.initializer.append(numpy_helper.from_array(np.array(pads, np.int64), f"{base}_pads{k}"))
                terms.append(helper.make_node("Pad", [name, f"{base}_pads{k}"], [f"{base}_padded{k}"],
                                              name=f"{base}_pad{k}"))
            offset += part[axis]
        model.graph.initializer.append(numpy_helper.from_array(filled, f"{base}_constants"))
        sums, current = [], f"{base}_constants"
        for k, pad in enumerate(terms):
            target = node.output[0] if k == len(terms) - 1 else f"{base}_sum{k}"
            sums.append(helper.make_node("Add", [pad.output[0], current], [target], name=f"{base}_add{k}"))
            current = target
        _replace_node(model, node, terms + sums)
        count += 1
    return count


def _replace_node(model, node, replacement: list) -> None:
    """Put ``replacement`` (a list of nodes) where ``node`` was, keeping the graph's topological order."""
    position = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    for offset, new in enumerate(replacement):
        model.graph.node.insert(position + offset, new)


# Each rewrite changes the model in place and returns what it did; the note says what and why.
REWRITES = (
    (unroll_recurrent, "{count} recurrent node(s) unrolled into per-step MatMul/Add/Sigmoid/Tanh/Mul ops: {names} "
                       "(onnx2tf fails on LSTM/GRU fed from the graph, and TensorFlow's int8 calibrator on its "
                       "loops)"),
    (_explicit_kernel_shapes, "kernel_shape written into {count} Conv/ConvTranspose node(s) that omitted it "
                              "(onnx2tf cannot convert them without it)"),
    (_explicit_padding, "auto_pad / output_shape of {count} Conv/ConvTranspose/pooling node(s) written as explicit "
                        "pads (onnx2tf fails on SAME_LOWER and on ConvTranspose output_shape)"),
    (_undilated_conv_transposes, "{count} dilated ConvTranspose node(s) given their dilated kernel instead (a "
                                 "dilated transposed convolution has no TFLite builtin)"),
    (lambda model: _resize_as_matmuls(model, _resize_tflite_cannot_match),
     "{count} Resize node(s) ({names}) written as two MatMuls with their exact interpolation matrices (TFLite "
     "has no resize that samples as they do)"),
    (_explicit_splits, "{count} Split node(s) given their split sizes instead of num_outputs (onnx2tf fails on "
                       "uneven splits)"),
    (_trailing_empty_inputs, "empty optional inputs dropped from {count} node(s) (onnx2tf fails on them)"),
    (_unbounded_clips, "{count} Clip node(s) with neither min nor max given infinite bounds (onnx2tf emits "
                       "nothing for them)"),
    (_crossed_clips, "{count} Clip node(s) with min > max written as Min(Max(x, min), max), max everywhere as the "
                     "spec says (onnx2tf's clip returns min)"),
    (_training_batch_norms, "{count} training-mode BatchNormalization node(s) written with the batch's own "
                            "mean/variance in ReduceMean/Sub/Mul/Sqrt (onnx2tf uses the running statistics)"),
    (_concats_with_constants, "{count} rank-3..5 Concat node(s) with constant operands written as Pad + Add of "
                              "one constant (onnx2tf lays out a Concat's constant operands wrongly)"),
    (gelus_as_nodes, "{count} GELU subgraph(s) written as one Gelu node each, which becomes TFLite's GELU "
                     "builtin with the source's approximation (erf or tanh); otherwise Erf is a polynomial that "
                     "leaves DIV/NEG in float under int8"),
    (_layer_norms_as_primitives, "{count} LayerNormalization node(s) over several axes or with Mean/InvStdDev "
                                 "outputs written as ReduceMean/Sub/Mul/Sqrt (onnx2tf converts only the last-axis "
                                 "form)"),
)
