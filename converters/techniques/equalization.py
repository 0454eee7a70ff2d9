"""Cross-layer equalization (Nagel et al. 2019) on the PyTorch/ONNX route, before lowering.

For two convolutions in a row, A then B, with nothing between them or a ReLU (positively homogeneous:
relu(x / s) = relu(x) / s for s > 0), dividing A's output channel i (weights and bias) by s_i and multiplying
B's weights reading channel i by s_i leaves the float outputs unchanged. With s_i = sqrt(r1_i / r2_i) (r1_i:
the largest |weight| of A's output channel i, r2_i: of B's weights reading channel i) both ranges become
sqrt(r1_i r2_i): channels of wildly different ranges (common in depthwise convolutions) no longer share one
activation scale with a channel 1000x larger, so int8 keeps their values. B may be a plain convolution (group
1) or a depthwise one (one input channel per output channel); chains (conv -> depthwise -> pointwise) are
equalized pair by pair, repeated until the scales settle.

ReLU6 (ONNX Clip(0, 6)) is NOT crossed: relu6(x / s) != relu6(x) / s once x exceeds 6, and one Clip cannot
hold a bound per channel, so such pairs are left and counted (EfficientNet-Lite and MobileNetV2 put ReLU6
after their depthwise convolutions; there only the linear pairs, a projection conv feeding the next
block's expansion, are equalized).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SWEEPS = 20
SETTLED = 1e-4  # stop when no scale moves more than this (log)


@dataclass
class Equalization:
    pairs: list[str] = field(default_factory=list)  # "A -> B"
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    largest_scale: float = 1.0

    def to_dict(self) -> dict:
        return {"pairs": self.pairs, "skipped": self.skipped, "largest_scale": self.largest_scale}

    def summary(self) -> str:
        left = "; ".join(f"{count} left: {reason}" for reason, count in self.skipped.items())
        return (f"cross-layer equalization: {len(self.pairs)} conv pair(s) equalized (largest channel scale "
                f"{self.largest_scale:.3g})" + (f"; {left}" if left else ""))


def equalize(model) -> tuple[object, Equalization]:
    """A copy of the ONNX ``model`` with equalized conv pairs (float outputs unchanged), and the record."""
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    record = Equalization()
    pairs = []
    for a in graph.node:
        if not _own_weights(a, inits, uses):
            continue
        tensor, between = a.output[0], consumers.get(a.output[0], [])
        if tensor in outputs or len(between) != 1:
            continue
        if between[0].op_type == "Relu":
            tensor = between[0].output[0]
        elif between[0].op_type in ("Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Swish", "Mul", "Add"):
            reason = ("ReLU6/Clip between (relu6(x/s) != relu6(x)/s: one Clip cannot hold a bound per channel)"
                      if between[0].op_type == "Clip" else f"{between[0].op_type} between (not scale-equivariant)")
            if _is_conv_after(between[0], consumers, inits, uses):
                record.skipped[reason] = record.skipped.get(reason, 0) + 1
            continue
        following = consumers.get(tensor, [])
        if tensor in outputs or len(following) != 1:
            continue
        b = following[0]
        if not _own_weights(b, inits, uses) or b.input[0] != tensor:
            continue
        w1, w2 = (numpy_helper.to_array(inits[n.input[1]]) for n in (a, b))
        groups = _group(b)
        if groups == 1 and w2.shape[1] == w1.shape[0]:
            pairs.append((a, b, False))
        elif groups == w1.shape[0] == w2.shape[0] and w2.shape[1] == 1:
            pairs.append((a, b, True))
        else:
            record.skipped["grouped convolution after"] = record.skipped.get("grouped convolution after", 0) + 1
    values = {name: numpy_helper.to_array(inits[name]).astype(np.float64)
              for a, b, _ in pairs for node in (a, b) for name in node.input[1:3] if name in inits}
    total = {id(a): np.ones(values[a.input[1]].shape[0]) for a, _, _ in pairs}
    for _ in range(SWEEPS):
        moved = 0.0
        for a, b, depthwise in pairs:
            w1, w2 = values[a.input[1]], values[b.input[1]]
            r1 = np.abs(w1.reshape(len(w1), -1)).max(axis=1)
            r2 = np.abs(w2.reshape(len(w2), -1)).max(axis=1) if depthwise else \
                np.abs(np.moveaxis(w2, 1, 0).reshape(w2.shape[1], -1)).max(axis=1)
            scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
            shape = (-1,) + (1,) * (w1.ndim - 1)
            values[a.input[1]] = w1 / scale.reshape(shape)
            if len(a.input) > 2 and a.input[2] in values:
                values[a.input[2]] = values[a.input[2]] / scale
            values[b.input[1]] = w2 * (scale.reshape(shape) if depthwise else
                                       scale.reshape((1, -1) + (1,) * (w2.ndim - 2)))
            total[id(a)] *= scale
            moved = max(moved, float(np.abs(np.log(scale)).max()))
        if moved < SETTLED:
            break
    for name, array in values.items():
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    record.pairs = [f"{a.name or a.output[0]} -> {b.name or b.output[0]}" for a, b, _ in pairs]
    if pairs:
        record.largest_scale = float(max(max(t.max(), 1 / t.min()) for t in total.values()))
    return model, record


def _own_weights(node, inits: dict, uses: dict) -> bool:
    """A Conv whose weights (and bias) are constants used by it alone, so scaling them changes nothing else."""
    return node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in inits and \
        all(uses.get(n, 0) == 1 and n in inits for n in node.input[1:3] if n)


def _is_conv_after(node, consumers: dict, inits: dict, uses: dict) -> bool:
    following = consumers.get(node.output[0], [])
    return len(following) == 1 and _own_weights(following[0], inits, uses)


def _group(node) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def equalized(model, settings, notes: list[str]):
    """The equalized model when ``settings`` (QuantizeSettings) ask for it, else None; the summary in ``notes``."""
    if not settings.equalization or settings.mode not in ("int8", "int16x8"):
        return None
    result, record = equalize(model)
    notes.append(record.summary())
    return result
