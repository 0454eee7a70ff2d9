"""TensorFlow ops that TFLite cannot run as builtins, found in onnx2tf's Keras model before converting.

onnx2tf lowers some ONNX nodes to TensorFlow ops with no TFLite builtin (cubic
Resize -> ResizeBicubic, dilated MaxPool -> Dilation2D, 3-D pooling...).  The
TFLite converter would then fail with pages of MLIR, or, with Select TF ops,
write a model that ai-edge-litert / tflite-runtime cannot run without the Flex
delegate.  The SDK refuses such models in one line naming the ONNX node, unless
``allow_flex``.
"""

from __future__ import annotations

import re

from ...errors import ConversionError

# TensorFlow ops with no TFLite 2.19 builtin, each measured by converting a one-op tf.function with
# builtins only (onnx2tf emits ResizeBicubic for cubic Resize and Dilation2D for dilated MaxPool).
NO_BUILTIN_TF_OPS = {"ResizeBicubic", "Dilation2D", "MaxPool3D", "AvgPool3D", "ExtractImagePatches",
                     "MatrixDeterminant", "MatrixInverse", "Digamma", "BesselI0e", "BesselI1e", "Cumprod",
                     "Erf", "Erfc", "Atan", "Acos", "Asin", "Acosh", "Asinh", "Atanh", "Cosh", "Sinh", "Tan"}
# tf.nn.gelu's own ops (its name scope is "Gelu"): the TFLite converter fuses them into its GELU builtin.
FUSED_INTO_GELU = {"Erf", "Erfc"}
FLEX_CONSEQUENCE = ("the .tflite then needs TensorFlow's Flex delegate (full TensorFlow's interpreter has it; "
                    "ai-edge-litert and tflite-runtime cannot run it, nor can GPU/NNAPI delegates or TFLite Micro)")
SELECT_OPS_IN_ERROR = re.compile(r"TF Select ops: ([\w, ]+)")


class FlexOpsError(ConversionError):
    """The model needs TensorFlow ops that TFLite has no builtin for, and --allow-flex was not given."""


def tf_ops(keras_model) -> list[tuple[str, str]]:
    """(op type, op name) of every op in the model's traced graph, nested functions included."""
    from ... import _tf

    tf = _tf.tensorflow()
    specs = [tf.TensorSpec(i.shape, i.dtype) for i in keras_model.inputs]
    function = tf.function(lambda *xs: keras_model(list(xs) if len(xs) > 1 else xs[0]))
    graph = function.get_concrete_function(*specs).graph
    ops = [(op.type, op.name) for op in graph.get_operations()]
    for nested in graph._functions.values():  # tf.function's own registry: while/if bodies
        ops += [(node.op, node.name) for node in nested.definition.node_def]
    return ops


def flex_nodes(keras_model, onnx_model, op_types: set[str] | None = None) -> list[str]:
    """'tf.OP (ONNX OpType node NAME)' for each op of ``op_types`` (default: no builtin) in the model."""
    wanted = NO_BUILTIN_TF_OPS if op_types is None else op_types
    by_key: dict[str, object] = {}
    for node in onnx_model.graph.node:
        for key in (node.name, *node.output):
            if key:
                by_key.setdefault(key.replace(":", "__").lstrip("/"), node)
    found, seen = [], set()
    for op_type, op_name in tf_ops(keras_model):
        parts = op_name.split("/")
        if op_type not in wanted or (op_type in FUSED_INTO_GELU and "Gelu" in parts):
            continue
        node = next((by_key[p] for p in parts if p in by_key), None)
        where = f"ONNX {node.op_type} node {node.name or node.output[0]!r}" if node is not None else \
            f"TensorFlow op {op_name!r}"
        text = f"tf.{op_type} ({where})"
        if text not in seen:
            seen.add(text)
            found.append(text)
    return found


def refusal(found: list[str]) -> FlexOpsError:
    return FlexOpsError(f"no TFLite builtin for {', '.join(found)}; pass --allow-flex (allow_flex=True) to "
                        f"keep them as Select TF ops ({FLEX_CONSEQUENCE}), or replace the node in the model")


def check_builtin_only(keras_model, onnx_model) -> None:
    """Refuse, before the TFLite converter runs, a model with ops that have no TFLite builtin."""
    found = flex_nodes(keras_model, onnx_model)
    if found:
        raise refusal(found)


def select_ops_named(message: str) -> set[str]:
    """The TF op types a TFLite converter error lists as needing Select TF ops (its safety net)."""
    match = SELECT_OPS_IN_ERROR.search(message)
    return {op.strip() for op in match.group(1).split(",") if op.strip()} if match else set()
