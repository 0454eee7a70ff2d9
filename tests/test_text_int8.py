"""Full-integer text encoders: GELU subgraphs in every exported form become TFLite's GELU builtin, and a
Hugging Face-style additive attention mask (finfo.min) keeps attention under int8."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

import sdk
from converters.lowering.gelu import gelus_as_nodes
from converters.lowering.mask_fill import MARGIN, bound_mask_fills
from converters.sources.onnx import TensorSpec, run_onnx, simplify
from device_runtime import Model
from tests.test_text_models import SEQ, VOCAB, cosine, tokens, torch_outputs

DIM = 32
FLOAT_RELATIVE_ERROR = 1e-4  # max abs error / max |output|, float32 .tflite vs PyTorch
# Measured on MaskedEncoder below (random weights, 32 padded samples): int8 cosine 0.972 with the mask's fill
# bounded; with finfo.min kept, the int8 file aborts the interpreter (SIGABRT in allocate_tensors).
INT8_COSINE = 0.95
GELU_FORMS = {  # as model code writes GELU; torch.onnx.export keeps each as primitives at opset 17
    "bert": lambda h: h * 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0))),
    "functional": torch.nn.functional.gelu,
    "times_rsqrt2": lambda h: 0.5 * h * (1.0 + torch.erf(h * 0.7071067811865476)),
    "tanh": lambda h: torch.nn.functional.gelu(h, approximate="tanh"),
    "tanh_pow": lambda h: 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0)))),
    "tanh_cube": lambda h: h * (1.0 + torch.tanh(0.7978845608 * (h + 0.044715 * h * h * h))) * 0.5,
}


class GeluChain(torch.nn.Module):
    """Linear layers joined by each GELU form in turn."""

    def __init__(self, forms: list[str]):
        super().__init__()
        torch.manual_seed(0)
        self.forms = forms
        self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(len(forms) + 1))

    def forward(self, x):
        for layer, form in zip(self.layers, self.forms):
            x = GELU_FORMS[form](layer(x))
        return self.layers[-1](x)


def exported(model, example: tuple, path, opset: int = 17) -> onnx.ModelProto:
    torch.onnx.export(model, example, str(path), opset_version=opset, dynamo=False,
                      input_names=["input_ids", "attention_mask"] if len(example) == 2 else ["x"])
    return onnx.load(str(path))


@pytest.mark.parametrize("form", list(GELU_FORMS))
@pytest.mark.parametrize("opset", [17, 20])
def test_each_exported_gelu_form_becomes_one_gelu_node(form, opset, tmp_path):
    """Opset 20: ONNX's Gelu with the form's approximation (PyTorch writes F.gelu as one already). Before:
    onnxruntime's com.microsoft Gelu for exact GELU (onnx2tf runs onnxruntime to estimate shapes, so the
    node must be valid); the tanh approximation, which has no such node, keeps its primitives."""
    graph = exported(GeluChain([form]).eval(), (torch.randn(1, 16),), tmp_path / "g.onnx", opset)
    tanh = form.startswith("tanh")
    exported_as_gelu = opset == 20 and form in ("functional", "tanh")
    assert gelus_as_nodes(graph) == (0 if exported_as_gelu or (tanh and opset < 20) else 1)
    ops = [n.op_type for n in graph.graph.node]
    if tanh and opset < 20:
        assert "Gelu" not in ops and "Tanh" in ops
        return
    assert ops.count("Gelu") == 1 and not {"Erf", "Tanh", "Pow", "Div"} & set(ops), ops
    gelu = next(n for n in graph.graph.node if n.op_type == "Gelu")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gelu.attribute}
    assert (gelu.domain, attrs.get("approximate", b"none")) == \
        ("com.microsoft" if opset < 20 else "", b"tanh" if tanh else b"none")
    onnx.checker.check_model(graph)  # onnxruntime runs it (the pipeline's float check compares it)


def test_gelu_that_is_not_gelu_is_left_alone(tmp_path):
    """erf(x / 2) (not sqrt 2) and a GELU whose inner value is also used elsewhere keep their primitives."""

    class NotGelu(torch.nn.Module):
        def forward(self, x):
            wrong = x * 0.5 * (1.0 + torch.erf(x / 2.0))
            inner = 1.0 + torch.erf(x / math.sqrt(2.0))
            return wrong + x * 0.5 * inner + inner

    graph = exported(NotGelu(), (torch.randn(1, 16),), tmp_path / "n.onnx")
    assert gelus_as_nodes(graph) == 0
    assert [n.op_type for n in graph.graph.node].count("Erf") == 2


def test_int8_gelus_are_the_builtin_with_nothing_left_in_float(tmp_path):
    """Every form in one int8 model (an opset-20 export): GELU builtins only (no Erf polynomial, no DIV/NEG
    in float), and the float32 file matches onnxruntime (exact GELU stays exact, tanh stays tanh)."""
    forms = list(GELU_FORMS)
    path = tmp_path / "g.onnx"
    exported(GeluChain(forms).eval(), (torch.randn(1, 16),), path, opset=20)
    result = sdk.convert(path, tmp_path / "g.tflite",
                         {"quantize": {"mode": "int8", "samples": 16, "allow_random_calibration": True}})
    ops = result.report.compressed.ops
    assert ops.counts.get("GELU") == len(forms), ops.counts
    assert not {"DIV", "NEG", "EXP", "TANH", "POW", "ABS", "SIGN"} & set(ops.counts), ops.counts
    assert ops.float_ops == {}, ops.float_ops
    floats = result.report.float_fidelity
    assert floats.max_abs_error <= FLOAT_RELATIVE_ERROR * floats.output_scale, floats
    assert result.report.fidelity.cosine >= 0.999, result.report.fidelity


class MaskedEncoder(torch.nn.Module):
    """BERT in miniature as Hugging Face writes it: the padding mask added to the attention scores as
    (1 - mask) * finfo(float32).min, one attention block with exact GELU, masked mean pooling."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tokens, self.positions = torch.nn.Embedding(VOCAB, DIM), torch.nn.Embedding(SEQ, DIM)
        self.qkv, self.out = torch.nn.Linear(DIM, 3 * DIM), torch.nn.Linear(DIM, DIM)
        self.up, self.down = torch.nn.Linear(DIM, 2 * DIM), torch.nn.Linear(2 * DIM, DIM)
        self.norm1, self.norm2 = torch.nn.LayerNorm(DIM), torch.nn.LayerNorm(DIM)

    def forward(self, input_ids, attention_mask):
        hidden = self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1]).unsqueeze(0))
        batch = input_ids.shape[0]
        heads = self.qkv(hidden).view(batch, SEQ, 3, 2, DIM // 2).permute(2, 0, 3, 1, 4)
        scores = heads[0] @ heads[1].transpose(-1, -2) / math.sqrt(DIM // 2)
        extended = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        attended = (torch.softmax(scores + extended, -1) @ heads[2]).transpose(1, 2).reshape(batch, SEQ, DIM)
        hidden = self.norm1(hidden + self.out(attended))
        hidden = self.norm2(hidden + self.down(torch.nn.functional.gelu(self.up(hidden))))
        mask = attention_mask.unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)


def test_mask_fill_is_bounded_by_the_scores_it_masks(tmp_path):
    """The rewrite alone: same function in float (masked weights < e^-20), fill gone, one bound per Add."""
    model = MaskedEncoder().eval()
    example = tokens(1, seed=0)
    graph = exported(model, tuple(torch.from_numpy(example[k]) for k in ("input_ids", "attention_mask")),
                     tmp_path / "m.onnx")
    graph = simplify(graph)[0]  # as the pipeline hands it over: with value_info
    data = tokens(16, seed=1)
    specs = [TensorSpec(k, (1, SEQ), np.dtype(np.int64)) for k in ("input_ids", "attention_mask")]
    before = run_onnx(graph, data, specs)[0]
    note = bound_mask_fills(graph, data, specs)
    assert note is not None and note.startswith("attention-mask fill -3.4e+38 bounded for quantization in 1 masked "
                                                "Add(s)"), note
    np.testing.assert_allclose(run_onnx(graph, data, specs)[0], before, atol=1e-6)
    constants = [onnx.numpy_helper.to_array(t) for t in graph.graph.initializer] + \
        [onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.graph.node if n.op_type == "Constant"]
    assert min(float(c.min()) for c in constants if c.dtype == np.float32 and c.size) > -1e3
    bounds = [onnx.numpy_helper.to_array(t) for t in graph.graph.initializer if t.name.endswith("_mask_bound")]
    assert len(bounds) == 1 and MARGIN < float(bounds[0]) < MARGIN + 100
    # the bounded mask has the mask's shape on record: without it onnx2tf mis-converted MiniLM (error 0.15)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.graph.value_info}
    scaled = [n.output[0] for n in graph.graph.node if n.name.endswith("_mask_bound_mul")]
    assert len(scaled) == 1 and shapes.get(scaled[0]) == [1, 1, 1, SEQ], (scaled, shapes.get(scaled[0]))
    assert bound_mask_fills(graph, data, specs) is None  # nothing left to bound


def test_int8_encoder_with_additive_mask_keeps_attention(tmp_path):
    """Integer inputs, named calibration data, full int8: cosine vs PyTorch on padded samples (with the
    finfo.min fill kept, the file aborts the interpreter; all-MiniLM-L6-v2's gives cosine 0.25)."""
    model = MaskedEncoder().eval()
    example = tokens(1, seed=0)
    calib, evaluation = tokens(64, seed=3), tokens(32, seed=4)
    result = sdk.convert(model, tmp_path / "q.tflite", {"quantize": {"mode": "int8"}},
                         example_input=tuple(torch.from_numpy(example[k]) for k in ("input_ids", "attention_mask")),
                         calib_data=calib, eval_data=evaluation)
    assert any(n.startswith("attention-mask fill") for n in result.report.notes), result.report.notes
    floats = result.report.float_fidelity
    assert floats.max_abs_error <= FLOAT_RELATIVE_ERROR * floats.output_scale, floats
    assert result.report.compressed.ops.counts.get("GELU") == 1
    got = Model(result.path).run(evaluation)["output"]
    assert cosine(got, torch_outputs(model, evaluation)) >= INT8_COSINE


def test_what_tensorflow_cannot_quantize_is_refused_in_one_line(tmp_path):
    """Before any work: automatic mixed precision on two inputs (the search feeds and ranks one), and int16x8
    on token ids (TF 2.19's int16 quantizer fails on them: measured on all-MiniLM-L6-v2 and this encoder)."""
    from converters.errors import RecipeError

    example = tokens(1, seed=0)
    path = tmp_path / "m.onnx"
    exported(MaskedEncoder().eval(), tuple(torch.from_numpy(example[k]) for k in ("input_ids", "attention_mask")),
             path)
    with pytest.raises(RecipeError, match=r"^quantize.min_cosine/min_agreement \(automatic mixed precision\) "
                                          r"measures models with one input; this model has 2 \(input_ids, "
                                          r"attention_mask\): keep layers float by name"):
        sdk.convert(path, tmp_path / "q.tflite", {"quantize": {"mode": "int8", "min_cosine": 0.99}},
                    calib_data=tokens(8, seed=1))
    with pytest.raises(RecipeError, match=r"^quantize int16x8 is not available for models with integer inputs "
                                          r"\(input_ids int64, attention_mask int64\): TensorFlow 2.19's int16 "
                                          r"quantizer fails on them"):
        sdk.convert(path, tmp_path / "q.tflite", {"quantize": {"mode": "int16x8"}}, calib_data=tokens(8, seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
