"""GELU subgraphs found in an ONNX graph and written as one ``Gelu`` node each, before onnx2tf.

PyTorch exports GELU before opset 20 as primitives: exact GELU as ``x * 0.5 * (1 + erf(x / sqrt 2))`` and
the tanh approximation as ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``, with the operands in
whatever order the model's code wrote them (BERT's ``x * 0.5 * (1.0 + erf(x / math.sqrt(2.0)))``,
``F.gelu``'s ``x * (1 + erf) * 0.5``, ``x * 0.7071`` instead of ``x / 1.4142``, ``pow(x, 3)`` or ``x * x * x``).
onnx2tf recognises one order of the exact form only, and (with its ``gelu`` pseudo-op) as the tanh
approximation; any other order keeps Erf as a polynomial, which leaves DIV and NEG in float under int8.
A ``Gelu`` node instead becomes ``tf.nn.gelu`` with the node's own ``approximate``, which TFLite's
converter writes as its GELU builtin (int8 too) with the same approximation as the source.  Before opset
20 only exact GELU is rewritten (see ``gelus_as_nodes``).
"""

from __future__ import annotations

import math

import numpy as np

RELATIVE_TOLERANCE = 1e-4  # constants as float32 round them (1.4142135 for sqrt 2)
SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
KAPPA = 0.044715
GELU_OPSET = 20  # ONNX's own Gelu, with the approximate attribute
CONTRIB = "com.microsoft"  # onnxruntime's contrib ops: exact Gelu at any opset


class _Graph:
    """Producers, consumers and scalar constants of an ONNX graph, for matching small patterns."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in model.graph.output}
        self.constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def scalar(self, name: str, value: float) -> bool:
        """Whether ``name`` is a constant holding ``value`` (one element, any rank)."""
        array = self.constants.get(name)
        return array is not None and array.size == 1 and np.issubdtype(array.dtype, np.floating) and \
            math.isclose(float(array.reshape(-1)[0]), value, rel_tol=RELATIVE_TOLERANCE)

    def only_consumer(self, name: str, op_type: str):
        """The single node reading ``name`` if it is an ``op_type`` and ``name`` is no graph output."""
        readers = self.consumers.get(name, [])
        if len(readers) == 1 and readers[0].op_type == op_type and name not in self.outputs:
            return readers[0]
        return None

    def made_by(self, name: str, op_type: str, single_use: bool = True):
        """The ``op_type`` node producing ``name`` (read by one node only, when ``single_use``)."""
        node = self.producer.get(name)
        if node is None or node.op_type != op_type:
            return None
        if single_use and (len(self.consumers.get(name, [])) != 1 or name in self.outputs):
            return None
        return node


def _other(node, name: str) -> str | None:
    """The other operand of a binary node that reads ``name``."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _times_constant(graph: _Graph, node, value: float) -> str | None:
    """``node`` as ``t * value`` (Mul either side, or Div by 1/value): the tensor t, else None."""
    if node.op_type == "Mul":
        for a, b in (node.input, reversed(node.input)):
            if graph.scalar(b, value):
                return a
    if node.op_type == "Div" and graph.scalar(node.input[1], 1.0 / value):
        return node.input[0]
    return None


def _exact_argument(graph: _Graph, erf) -> tuple[str, list] | None:
    """x and the nodes of ``erf(x / sqrt 2)`` (or ``erf(x * 0.7071)``)."""
    scaled = graph.made_by(erf.input[0], "Mul") or graph.made_by(erf.input[0], "Div")
    x = _times_constant(graph, scaled, 1.0 / SQRT2) if scaled is not None else None
    return (x, [scaled, erf]) if x is not None else None


def _factors(graph: _Graph, name: str, nodes: list) -> list[str]:
    """The leaves of the tree of single-use Muls computing ``name`` (its nodes appended to ``nodes``)."""
    node = graph.made_by(name, "Mul")
    if node is None or len(nodes) > 4:
        return [name]
    nodes.append(node)
    return [leaf for operand in node.input for leaf in _factors(graph, operand, nodes)]


def _is_kappa_cube(graph: _Graph, term: str, x: str) -> list | None:
    """The nodes computing ``0.044715 * x^3`` into ``term`` (Pow(x, 3) or x * x * x, any grouping)."""
    nodes: list = []
    factors = _factors(graph, term, nodes)
    rest = [f for f in factors if not graph.scalar(f, KAPPA)]
    if len(rest) != len(factors) - 1:
        return None
    if rest == [x, x, x]:
        return nodes
    power = graph.made_by(rest[0], "Pow") if len(rest) == 1 else None
    if power is not None and power.input[0] == x and graph.scalar(power.input[1], 3.0):
        return [*nodes, power]
    return None


def _tanh_argument(graph: _Graph, tanh) -> tuple[str, list] | None:
    """x and the nodes of ``tanh(sqrt(2/pi) * (x + 0.044715 * x^3))``."""
    outer = graph.made_by(tanh.input[0], "Mul")
    inner = _times_constant(graph, outer, SQRT_2_OVER_PI) if outer is not None else None
    total = graph.made_by(inner, "Add") if inner is not None else None
    if total is None:
        return None
    for x, term in (total.input, reversed(total.input)):
        cube_nodes = _is_kappa_cube(graph, term, x)
        if cube_nodes is not None:
            return x, [outer, total, *cube_nodes, tanh]
    return None


def _half_x_times(graph: _Graph, x: str, plus_one: str) -> tuple[str, list] | None:
    """The output and nodes of ``0.5 * x * plus_one`` in any order and grouping of the two Muls."""
    first = graph.only_consumer(plus_one, "Mul")
    if first is None:
        return None
    other = _other(first, plus_one)
    if other == x or (other is not None and graph.scalar(other, 0.5)):  # (x * p) * 0.5 or (0.5 * p) * x
        second = graph.only_consumer(first.output[0], "Mul") or graph.only_consumer(first.output[0], "Div")
        if second is None:
            return None
        rest = _other(second, first.output[0]) if second.op_type == "Mul" else second.input[1]
        if other == x and (graph.scalar(rest, 0.5) if second.op_type == "Mul" else graph.scalar(rest, 2.0)):
            return second.output[0], [first, second]
        if other != x and second.op_type == "Mul" and rest == x:
            return second.output[0], [first, second]
        return None
    half = graph.made_by(other, "Mul") if other is not None else None  # (x * 0.5) * p
    if half is not None and _times_constant(graph, half, 0.5) == x:
        return first.output[0], [half, first]
    return None


def _matches(graph: _Graph):
    """(x, y, nodes, approximate) for each GELU subgraph."""
    for node in graph.model.graph.node:
        if node.op_type not in ("Erf", "Tanh"):
            continue
        found = _exact_argument(graph, node) if node.op_type == "Erf" else _tanh_argument(graph, node)
        add = graph.only_consumer(node.output[0], "Add") if found else None
        if add is None or not graph.scalar(_other(add, node.output[0]) or "", 1.0):
            continue
        x, nodes = found
        tail = _half_x_times(graph, x, add.output[0])
        if tail is not None:
            yield x, tail[0], [*nodes, add, *tail[1]], "none" if node.op_type == "Erf" else "tanh"


def gelus_as_nodes(model) -> int:
    """Each GELU subgraph replaced by one ``Gelu`` node (in place); how many.

    The node must stay valid for onnxruntime, which onnx2tf runs to estimate shapes (without it onnx2tf
    mis-converts attention blocks: measured, error 0.6 on a small encoder). ONNX has Gelu from opset 20;
    before that, exact GELU is onnxruntime's com.microsoft Gelu, and the tanh approximation, which has no
    such node there, keeps its primitives."""
    from onnx import helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    graph = _Graph(model)
    done = 0
    for x, y, nodes, approximate in list(_matches(graph)):
        if opset < GELU_OPSET and approximate != "none":
            continue
        position = min(list(model.graph.node).index(n) for n in nodes)
        for node in nodes:
            model.graph.node.remove(node)
        gelu = helper.make_node("Gelu", [x], [y], name=f"{y}_gelu", approximate=approximate) \
            if opset >= GELU_OPSET else helper.make_node("Gelu", [x], [y], name=f"{y}_gelu", domain=CONTRIB)
        model.graph.node.insert(position, gelu)
        done += 1
    if done and opset < GELU_OPSET and not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    return done
