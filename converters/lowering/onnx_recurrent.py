"""ONNX LSTM / GRU / RNN unrolled into plain ops, before onnx2tf.

onnx2tf 1.29 fails on recurrent nodes fed straight from the graph (it hands them a channel-last X), and
where it converts them, TensorFlow 2.19's int8 calibrator crashes on the While loops it emits.  Unrolled
over a sequence length fixed by the input shape, each step is MatMul/Add/Sigmoid/Tanh/Mul on rank-2
tensors: the .tflite holds only builtins (FULLY_CONNECTED, STRIDED_SLICE, LOGISTIC, TANH, MUL, ADD) and
int8 calibration works.  The cost is size in ops, not in weights: each step adds ~15 ops (LSTM) that
share the same weight tensors, so a graph grows linearly with the sequence length; past
``MAX_UNROLL_STEPS`` a node is left to onnx2tf.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
MAX_UNROLL_STEPS = 256
# activation: (uses alpha, uses beta, default alpha, default beta), as the ONNX spec lists them
ACTIVATIONS = {"Sigmoid": (False, False, None, None), "Tanh": (False, False, None, None),
               "Relu": (False, False, None, None), "Softsign": (False, False, None, None),
               "Softplus": (False, False, None, None), "LeakyRelu": (True, False, 0.01, None),
               "ThresholdedRelu": (True, False, 1.0, None), "Elu": (True, False, 1.0, None),
               "HardSigmoid": (True, True, 0.2, 0.5), "Affine": (True, True, 1.0, 0.0),
               "ScaledTanh": (True, True, 1.0, 1.0)}


def check_sequence_lengths(model, input_shapes) -> None:
    """Refuse, before any work, a recurrent node whose sequence length is dynamic and not fixed by
    ``--input-shape``: it is unrolled over a fixed number of steps, and 1 (the default for a dynamic
    dimension) would silently convert another model."""
    import onnx
    from onnx import helper

    nodes = [n for n in model.graph.node if n.op_type in RECURRENT_OPS]
    if input_shapes is not None or not nodes:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without shapes, fix_input_shapes and the unroll decide
        return
    values = {v.name: v for v in [*inferred.graph.input, *inferred.graph.value_info]}
    for node in nodes:
        value = values.get(node.input[0])
        if value is None or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        layout = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "layout"), 0)
        if len(dims) == 3 and not (dims[1 if layout else 0].HasField("dim_value")
                                   and dims[1 if layout else 0].dim_value > 0):
            shown = ",".join(str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else "?" for d in dims)
            raise DataError(f"{node.op_type} node {node.name or node.output[-1]!r} has a dynamic sequence length "
                            f"(X shape ({shown})); recurrent nodes are unrolled over a fixed number of steps: give "
                            f"--input-shape with the sequence length for each input (e.g. --input-shape "
                            f"{','.join(map(str, _example_shape(model)))})")


def _example_shape(model) -> list[int]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 16 for d in dims]


def unroll_recurrent(model) -> list[str]:
    """Every LSTM/GRU/RNN node with constant W/R/B, a static X shape and at most ``MAX_UNROLL_STEPS``
    steps, replaced by its unrolled steps; the names (and step counts) of the nodes replaced."""
    from onnx import helper, numpy_helper

    from .onnx_rewrites import _input_shapes, _replace_node

    nodes = [n for n in model.graph.node if n.op_type in RECURRENT_OPS]
    if not nodes:
        return []
    shapes = _input_shapes(model)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    done = []
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        builder = _Builder(f"{node.name or node.output[-1] or node.op_type}_unrolled", opset)
        if _unroll(node, attrs, shapes, constants, builder) is None:
            model.graph.initializer.extend(builder.initializers)
            _replace_node(model, node, builder.nodes)
            _drop_unused(model, [n for n in node.input[1:] if n in constants])
            done.append(f"{node.name or node.op_type} ({builder.steps} steps)")
    return done


def _drop_unused(model, names: list[str]) -> None:
    """The replaced node's constants that nothing reads any more (they would only weigh on onnx2tf)."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for init in [i for i in model.graph.initializer if i.name in names and i.name not in used]:
        model.graph.initializer.remove(init)


def not_unrolled(model) -> dict[int, str]:
    """{index of the node in model.graph.node: why} for the recurrent nodes ``unroll_recurrent`` would leave
    to onnx2tf (an index: protobuf may hand out a new Python object for a node at each access)."""
    from onnx import helper, numpy_helper

    from .onnx_rewrites import _input_shapes

    nodes = [(k, n) for k, n in enumerate(model.graph.node) if n.op_type in RECURRENT_OPS]
    if not nodes:
        return {}
    shapes = _input_shapes(model)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    left = {}
    for index, node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        why = _unroll(node, attrs, shapes, constants, _Builder("probe", 17))
        if why is not None:
            left[index] = why
    return left


class _Builder:
    """Collects the nodes and constants of one unrolled node, with unique names."""

    def __init__(self, base: str, opset: int):
        self.base, self.opset, self.count, self.steps = base, opset, 0, 0
        self.nodes: list = []
        self.initializers: list = []
        self.weights: dict = {}  # one constant per weight matrix (and small constant), shared by every step

    def _name(self, tag: str) -> str:
        self.count += 1
        return f"{self.base}_{tag}{self.count}"

    def const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        array = np.ascontiguousarray(value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 4 else None  # indices, scalars
        if key in self.weights:
            return self.weights[key]
        name = self._name("c")
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.weights[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        from onnx import helper

        output = output or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self._name(f"{op_type.lower()}_"),
                                           **attrs))
        return output

    def add(self, a: str | None, b: str | None) -> str | None:
        return b if a is None else a if b is None else self.op("Add", [a, b])

    def cols(self, x: str, start: int, stop: int) -> str:
        """x[:, start:stop] of a rank-2 tensor."""
        return self.op("Slice", [x, self.const([start], np.int64), self.const([stop], np.int64),
                                 self.const([1], np.int64)])

    def rows(self, x: str, start: int, stop: int) -> str:
        return self.op("Slice", [x, self.const([start], np.int64), self.const([stop], np.int64),
                                 self.const([0], np.int64)])

    def reshape(self, x: str, shape, output: str | None = None) -> str:
        return self.op("Reshape", [x, self.const(list(shape), np.int64)], output)

    def matmul(self, x: str, weight: np.ndarray) -> str:
        """x @ weight.T for a constant (out, in) weight (a view of an initializer, which outlives the build)."""
        key = (weight.__array_interface__["data"][0], weight.shape, weight.strides)
        if key not in self.weights:
            self.weights[key] = self.const(weight.T)
        return self.op("MatMul", [x, self.weights[key]])

    def clip(self, x: str, bound: float | None) -> str:
        if bound is None:
            return x
        if self.opset >= 11:
            return self.op("Clip", [x, self.const(-bound), self.const(bound)])
        return self.op("Clip", [x], min=-float(bound), max=float(bound))

    def activate(self, kind: str, x: str, alpha: float | None, beta: float | None) -> str:
        if kind == "Affine":
            return self.op("Add", [self.op("Mul", [x, self.const(alpha)]), self.const(beta)])
        if kind == "ScaledTanh":
            return self.op("Mul", [self.op("Tanh", [self.op("Mul", [x, self.const(beta)])]), self.const(alpha)])
        extra = {k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None}
        return self.op(kind, [x], **extra)


def _activations(node_type: str, attrs: dict, directions: int) -> list[list[tuple]] | None:
    """Per direction: [(kind, alpha, beta)] for f, g(, h); None when one is not known."""
    kinds = [k.decode() if isinstance(k, bytes) else k for k in attrs.get("activations", [])] \
        or DEFAULT_ACTIVATIONS[node_type] * directions
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    resolved = []
    for kind in kinds:
        match = next((k for k in ACTIVATIONS if k.lower() == kind.lower()), None)
        if match is None:
            return None
        uses_alpha, uses_beta, alpha, beta = ACTIVATIONS[match]
        if uses_alpha:
            alpha = alphas.pop(0) if alphas else alpha
        if uses_beta:
            beta = betas.pop(0) if betas else beta
        resolved.append((match, alpha, beta))
    per = len(DEFAULT_ACTIVATIONS[node_type])
    if len(resolved) != per * directions:
        return None
    return [resolved[d * per:(d + 1) * per] for d in range(directions)]


def _optional(node, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _unroll(node, attrs: dict, shapes: dict, constants: dict, g: _Builder) -> str | None:
    """Build the unrolled steps of ``node`` into ``g``; None when done, else why it cannot be."""
    kind = node.op_type
    x_name, w_name, r_name = node.input[0], node.input[1], node.input[2]
    b_name, lens_name = _optional(node, 3), _optional(node, 4)
    h0_name, c0_name = _optional(node, 5), _optional(node, 6)
    p_name = _optional(node, 7) if kind == "LSTM" else ""
    if x_name not in shapes or len(shapes[x_name]) != 3:
        return "its input has no static rank-3 shape"
    if w_name not in constants or r_name not in constants or any(n and n not in constants
                                                                 for n in (b_name, lens_name, p_name)):
        return "its weights are computed, not constants"
    if attrs.get("input_forget", 0):
        return "input_forget is not unrolled"
    layout = attrs.get("layout", 0)
    seq, batch = (shapes[x_name][1], shapes[x_name][0]) if layout else shapes[x_name][:2]
    if seq > MAX_UNROLL_STEPS:
        return f"its {seq} steps are more than the {MAX_UNROLL_STEPS} the SDK unrolls"
    if lens_name and not np.all(constants[lens_name] == seq):
        return "sequence_lens differ between batch entries"
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    directions = 2 if direction == "bidirectional" else 1
    activations = _activations(kind, attrs, directions)
    if activations is None:
        return f"its activations {attrs.get('activations')} are not all known"
    w, r = constants[w_name].astype(np.float32), constants[r_name].astype(np.float32)
    hidden = int(attrs.get("hidden_size", r.shape[-1]))
    gates = GATES[kind]
    b = constants[b_name].astype(np.float32) if b_name else np.zeros((directions, 2 * gates * hidden), np.float32)
    peep = constants[p_name].astype(np.float32) if p_name else None
    clip = attrs.get("clip")
    g.steps = seq

    x = g.op("Transpose", [x_name], perm=[1, 0, 2]) if layout else x_name
    x2d = g.reshape(x, [seq * batch, shapes[x_name][2]])
    outputs, last_h, last_c = [], [], []
    for d in range(directions):
        reverse = direction == "reverse" or d == 1
        wb, rb = b[d, :gates * hidden], b[d, gates * hidden:]
        linear_before_reset = kind == "GRU" and attrs.get("linear_before_reset", 0)
        input_bias = wb + rb
        if linear_before_reset:  # Rb_h stays inside r * (H R_h^T + Rb_h)
            input_bias = wb + np.concatenate([rb[:2 * hidden], np.zeros(hidden, np.float32)])
        xw = g.op("Add", [g.matmul(x2d, w[d]), g.const(input_bias)]) if np.any(input_bias) else g.matmul(x2d, w[d])
        h = _initial(g, h0_name, constants, d, layout, batch, hidden)
        c = _initial(g, c0_name, constants, d, layout, batch, hidden) if kind == "LSTM" else None
        step = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}[kind]
        states = [None] * seq
        for t in (reversed(range(seq)) if reverse else range(seq)):
            xw_t = g.rows(xw, t * batch, (t + 1) * batch) if seq > 1 else xw
            h, c = step(g, xw_t, h, c, r[d], rb, peep[d] if peep is not None else None, hidden, activations[d],
                        clip, linear_before_reset)
            states[t] = h
        outputs.append(states)
        last_h.append(h)
        last_c.append(c)

    out = list(node.output) + [""] * (3 - len(node.output))
    if out[0]:
        ordered = [outputs[d][t] for t in range(seq) for d in range(directions)]
        stacked = g.op("Concat", ordered, axis=0) if len(ordered) > 1 else ordered[0]
        if layout:
            g.op("Transpose", [g.reshape(stacked, [seq, directions, batch, hidden])], out[0], perm=[2, 0, 1, 3])
        else:
            g.reshape(stacked, [seq, directions, batch, hidden], out[0])
    for name, states in ((out[1], last_h), (out[2], last_c)):
        if not name:
            continue
        stacked = g.op("Concat", states, axis=0) if directions > 1 else states[0]
        if layout:
            g.op("Transpose", [g.reshape(stacked, [directions, batch, hidden])], name, perm=[1, 0, 2])
        else:
            g.reshape(stacked, [directions, batch, hidden], name)
    return None


def _initial(g: _Builder, name: str, constants: dict, d: int, layout: int, batch: int, hidden: int) -> str | None:
    """Direction ``d``'s initial state as a (batch, hidden) tensor; None for zeros."""
    if not name:
        return None
    if name in constants:
        value = constants[name][:, d] if layout else constants[name][d]
        return g.const(value) if np.any(value) else None
    axis = 1 if layout else 0
    part = g.op("Slice", [name, g.const([d], np.int64), g.const([d + 1], np.int64), g.const([axis], np.int64)])
    return g.reshape(part, [batch, hidden])


def _lstm_step(g, xw_t, h, c, r, rb, peep, hidden, acts, clip, _lbr):
    """One LSTM step (gates i, o, f, c); returns (H_t, C_t)."""
    f, gact, hact = acts
    pre = g.add(xw_t, g.matmul(h, r) if h is not None else None)
    i_pre, o_pre, f_pre, c_pre = (g.cols(pre, k * hidden, (k + 1) * hidden) for k in range(4))
    if peep is not None and c is not None:
        i_pre = g.op("Add", [i_pre, g.op("Mul", [c, g.const(peep[:hidden])])])
        f_pre = g.op("Add", [f_pre, g.op("Mul", [c, g.const(peep[2 * hidden:])])])
    i_gate = g.activate(f[0], g.clip(i_pre, clip), *f[1:])
    cand = g.activate(gact[0], g.clip(c_pre, clip), *gact[1:])
    new_c = g.op("Mul", [i_gate, cand])
    if c is not None:
        f_gate = g.activate(f[0], g.clip(f_pre, clip), *f[1:])
        new_c = g.op("Add", [g.op("Mul", [f_gate, c]), new_c])
    if peep is not None:
        o_pre = g.op("Add", [o_pre, g.op("Mul", [new_c, g.const(peep[hidden:2 * hidden])])])
    o_gate = g.activate(f[0], g.clip(o_pre, clip), *f[1:])
    return g.op("Mul", [o_gate, g.activate(hact[0], new_c, *hact[1:])]), new_c


def _gru_step(g, xw_t, h, _c, r, rb, _peep, hidden, acts, clip, linear_before_reset):
    """One GRU step (gates z, r, h); returns (H_t, None)."""
    f, gact = acts
    xz, xr, xh = (g.cols(xw_t, k * hidden, (k + 1) * hidden) for k in range(3))
    if h is None:
        z = g.activate(f[0], g.clip(xz, clip), *f[1:])
        h_pre = xh
        if linear_before_reset and np.any(rb[2 * hidden:]):  # r * (0 R_h^T + Rb_h)
            reset = g.activate(f[0], g.clip(xr, clip), *f[1:])
            h_pre = g.op("Add", [xh, g.op("Mul", [reset, g.const(rb[2 * hidden:])])])
        cand = g.activate(gact[0], g.clip(h_pre, clip), *gact[1:])
        return g.op("Mul", [g.op("Sub", [g.const(1.0), z]), cand]), None
    if linear_before_reset:
        hr = g.op("Add", [g.matmul(h, r), g.const(np.concatenate([np.zeros(2 * hidden, np.float32),
                                                                   rb[2 * hidden:]]))])
        hz, hrr, hh = (g.cols(hr, k * hidden, (k + 1) * hidden) for k in range(3))
    else:
        hzr = g.matmul(h, r[:2 * hidden])
        hz, hrr = g.cols(hzr, 0, hidden), g.cols(hzr, hidden, 2 * hidden)
    z = g.activate(f[0], g.clip(g.op("Add", [xz, hz]), clip), *f[1:])
    reset = g.activate(f[0], g.clip(g.op("Add", [xr, hrr]), clip), *f[1:])
    if linear_before_reset:
        h_pre = g.op("Add", [xh, g.op("Mul", [reset, hh])])
    else:
        h_pre = g.op("Add", [xh, g.matmul(g.op("Mul", [reset, h]), r[2 * hidden:])])
    cand = g.activate(gact[0], g.clip(h_pre, clip), *gact[1:])
    return g.op("Add", [cand, g.op("Mul", [z, g.op("Sub", [h, cand])])]), None  # (1-z) h~ + z h


def _rnn_step(g, xw_t, h, _c, r, _rb, _peep, _hidden, acts, clip, _lbr):
    """One RNN step; returns (H_t, None)."""
    f = acts[0]
    pre = g.add(xw_t, g.matmul(h, r) if h is not None else None)
    return g.activate(f[0], g.clip(pre, clip), *f[1:]), None


def sequence_first_layouts(model) -> list[str]:
    """Recurrent nodes with ``layout=1`` (batch first, opset 14) as Transposes around the same node with
    ``layout=0``: the same function, in the form onnxruntime (the SDK's reference) can run; it has no
    kernel for ``layout=1``.  The names of the nodes changed."""
    from onnx import helper

    changed = []
    for node in [n for n in model.graph.node if n.op_type in RECURRENT_OPS]:
        if not any(a.name == "layout" and helper.get_attribute_value(a) for a in node.attribute):
            continue
        base = f"{node.name or node.output[-1]}_seq_first"
        before, after = [], []
        for index in (0, 5, 6):
            if len(node.input) > index and node.input[index]:
                moved = f"{base}_in{index}"
                before.append(helper.make_node("Transpose", [node.input[index]], [moved], perm=[1, 0, 2],
                                               name=f"{base}_transpose_in{index}"))
                node.input[index] = moved
        for index, perm in ((0, [2, 0, 1, 3]), (1, [1, 0, 2]), (2, [1, 0, 2])):
            if len(node.output) > index and node.output[index]:
                moved = f"{base}_out{index}"
                after.append(helper.make_node("Transpose", [moved], [node.output[index]], perm=perm,
                                              name=f"{base}_transpose_out{index}"))
                node.output[index] = moved
        kept = [a for a in node.attribute if a.name != "layout"]
        del node.attribute[:]
        node.attribute.extend(kept)
        position = list(model.graph.node).index(node)
        for offset, new in enumerate(before):
            model.graph.node.insert(position + offset, new)
        position += len(before) + 1
        for offset, new in enumerate(after):
            model.graph.node.insert(position + offset, new)
        changed.append(node.name or node.op_type)
    return changed


def prepare_recurrent(model, input_shapes) -> list[str]:
    """Before any work: refuse a dynamic sequence length (``check_sequence_lengths``), and put batch-first
    recurrent nodes in the form onnxruntime runs; the notes to report."""
    check_sequence_lengths(model, input_shapes)
    changed = sequence_first_layouts(model)
    return [f"{len(changed)} batch-first (layout=1) recurrent node(s) ({', '.join(changed)}) written as "
            "Transposes around a layout=0 node (onnxruntime, the reference, has no layout=1 kernel)"] if changed else []
