"""One contract per technique x framework cell of converters/capabilities.py.

A "yes" cell must show its effect in the written .tflite, read back from the file's bytes (not from the
report): sparsity, shared values, int8 weights, fewer channels, a factorized layer. The one-shot cells are
measured here on small models; the cells that train (fine-tuning, QAT, budget mode) are measured by the
named tests in other files, and a "no" cell must be refused before any work (test_capabilities.py).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import sdk
from converters.capabilities import FRAMEWORKS, CAPABILITIES
from converters.verify.analysis import analyse

WEIGHT_OPS = {"CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"}

# The cells whose effect needs training, and the test that measures it in the written file.
MEASURED_ELSEWHERE = {
    ("mixed precision", "keras"): "test_mixed_precision::test_chosen_layers_stay_float_and_the_rest_is_int8",
    ("mixed precision", "pytorch"): "test_mixed_precision::test_pytorch_and_onnx_layers_stay_float",
    ("mixed precision", "onnx"): "test_mixed_precision::test_pytorch_and_onnx_layers_stay_float",
    ("automatic mixed precision", "keras"):
        "test_ptq_layers::test_automatic_mixed_precision_keeps_exactly_the_broken_layer_float",
    ("automatic mixed precision", "pytorch"): "test_ptq_layers::test_automatic_mixed_precision_on_the_pytorch_route",
    ("automatic mixed precision", "onnx"): "test_ptq_layers::test_automatic_mixed_precision_on_the_pytorch_route",
    ("bias correction", "keras"): "test_keras3_recipes::test_bias_correction_on_a_keras3_file",
    ("bias correction", "pytorch"): "test_ptq_layers::test_bias_correction_cuts_int8_error_and_leaves_the_float_reference",
    ("bias correction", "onnx"): "test_ptq_layers::test_bias_correction_cuts_int8_error_and_leaves_the_float_reference",
    ("learned weight rounding (AdaRound)", "keras"):
        "test_ptq_adaround::test_adaround_keras_route_folds_batchnorm_and_the_file_holds_its_grid",
    ("learned weight rounding (AdaRound)", "pytorch"):
        "test_ptq_adaround::test_adaround_pytorch_route_cuts_int8_error_and_the_file_holds_its_grid",
    ("learned weight rounding (AdaRound)", "onnx"):
        "test_ptq_adaround::test_adaround_pytorch_route_cuts_int8_error_and_the_file_holds_its_grid",
    ("data-aware one-shot pruning and clustering", "pytorch"):
        "test_oneshot::test_digits_prune_cluster_int8_one_shot_within_1_5_points",
    ("data-aware one-shot pruning and clustering", "onnx"):
        "test_oneshot::test_sensitivity_allocation_spares_first_and_small_layers_and_meets_the_target",
    ("cross-layer equalization", "pytorch"):
        "test_ptq_equalization::test_equalization_keeps_float_outputs_and_cuts_int8_error",
    ("cross-layer equalization", "onnx"):
        "test_ptq_equalization::test_equalization_keeps_float_outputs_and_cuts_int8_error",
    ("fine-tuning by distillation", "keras"): "test_keras_convert::test_unlabelled_finetune_distils",
    ("fine-tuning by distillation", "pytorch"):
        "test_torch_onnx::test_digits_pruned_clustered_int8_keeps_accuracy_and_shrinks_10x",
    ("quantization-aware training", "keras"): "test_qat::test_qat_recovers_at_least_half_of_what_ptq_loses",
    ("quantization-aware training", "pytorch"):
        "test_qat::test_pytorch_qat_recovers_at_least_half_and_keeps_pruned_zeros",
    ("QAT with clustering", "keras"): "test_qat::test_pcqat_keeps_sparsity_and_shared_values",
    ("QAT with clustering", "pytorch"): "test_qat::test_pytorch_cluster_preserving_qat_keeps_shared_values_and_zeros",
    ("accuracy-budget mode", "keras"):
        "test_budget::test_digits_within_one_point_and_smaller_than_the_best_fixed_recipe",
    ("accuracy-budget mode", "pytorch"): "test_budget::test_pytorch_budget_mode_size_and_latency",
    ("distillation into a smaller student", "pytorch"):
        "test_distill::test_digits_half_width_student_without_labels_within_1_5_points",
    ("distillation into a smaller student", "keras"):
        "test_distill::test_keras_teacher_into_a_half_width_student_without_labels",
    ("student with fewer blocks", "pytorch"): "test_distill::test_checkpoint_resumes_where_training_stopped",
}

# The one-shot cells measured here: recipe, and a check on the written file's weight tensors.
ONE_SHOT = {
    "pruning (unstructured, 2:4, channel)": {"prune": {"sparsity": 0.5}},
    "k-means clustering": {"cluster": {"clusters": 8}},
    "post-training quantization": {"quantize": {"mode": "int8"}},
    "channel removal": {"channels": {"fraction": 0.5}},
    "low-rank factorization": {"low_rank": {"rank_ratio": 0.25}, "layers": {"out": {"low_rank": None}}},
}


class TinyNet(torch.nn.Module):
    """conv (8 filters) -> relu -> fc1 (32 units) -> relu -> out (10): small enough to convert in seconds."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc1, self.out = torch.nn.Conv2d(1, 8, 3), torch.nn.Linear(8 * 6 * 6, 32), torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.out(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same small network as a Keras .h5, a PyTorch module and an ONNX file, with NCHW/NHWC data."""
    from converters import _tf

    folder = tmp_path_factory.mktemp("contracts")
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    keras_net = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                                  keras.layers.Flatten(), keras.layers.Dense(32, activation="relu", name="fc1"),
                                  keras.layers.Dense(10, name="out")])
    keras_net.save(folder / "tiny.h5")
    torch.manual_seed(0)
    torch_net = TinyNet().eval()
    torch.onnx.export(torch_net, torch.zeros(1, 1, 8, 8), folder / "tiny.onnx", input_names=["x"], dynamo=False)
    x = np.random.default_rng(0).random((64, 8, 8, 1), np.float32)
    return {"keras": (folder / "tiny.h5", {"calib_data": x}),
            "pytorch": (torch_net, {"calib_data": x.transpose(0, 3, 1, 2), "example_input": torch.zeros(1, 1, 8, 8)}),
            "onnx": (folder / "tiny.onnx", {"calib_data": x.transpose(0, 3, 1, 2)})}


def _weights(path) -> list:
    """The conv/dense weight tensors of the written file, read from its bytes."""
    stats = analyse(path.read_bytes())
    return [w for w in stats.weights if w.op in WEIGHT_OPS and len(w.shape) >= 2]


CELLS = [(name, framework) for name in ONE_SHOT for framework in FRAMEWORKS
         if next(t for t in CAPABILITIES if t.name == name).cells[framework] is None]


@pytest.mark.parametrize("technique, framework", CELLS)
def test_one_shot_cell_shows_in_the_written_file(technique, framework, sources, tmp_path):
    source, data = sources[framework]
    recipe = ONE_SHOT[technique]
    if recipe.get("quantize", {}).get("mode") != "int8":
        data = {k: v for k, v in data.items() if k != "calib_data"}
    baseline = _weights(sdk.convert(source, tmp_path / "float.tflite", **data).path) if technique in (
        "channel removal", "low-rank factorization") else None
    result = sdk.convert(source, tmp_path / "out.tflite", recipe, **data)
    weights = _weights(result.path)
    if technique.startswith("pruning"):
        assert all(w.sparsity >= 0.49 for w in weights), [(w.layer, w.sparsity) for w in weights]
    elif technique == "k-means clustering":
        assert all(w.unique_values <= 8 for w in weights), [(w.layer, w.unique_values) for w in weights]
    elif technique == "post-training quantization":
        assert {w.dtype for w in weights} == {"int8"}
    elif technique == "channel removal":  # the conv keeps 4 of 8 filters, fc1 16 of 32 units
        assert sorted(min(w.shape) for w in weights) < sorted(min(w.shape) for w in baseline)
        assert sum(w.size for w in weights) < 0.6 * sum(w.size for w in baseline)
    else:  # low rank: fc1 (288 -> 32) becomes two layers through rank 8: fewer weights, one more weight op
        assert len(weights) == len(baseline) + 1
        assert sum(w.size for w in weights) < sum(w.size for w in baseline)
    assert result.report.fidelity.cosine > 0.5  # the file still computes the model (one-shot, no fine-tuning)


def test_every_supported_cell_has_a_contract():
    """Each "yes" cell is measured here or by a named test that exists; "no" cells by test_capabilities."""
    for technique in CAPABILITIES:
        for framework in FRAMEWORKS:
            if technique.cells[framework] is not None:
                continue
            if (technique.name, framework) in CELLS:
                continue
            named = MEASURED_ELSEWHERE.get((technique.name, framework))
            assert named, f"no contract for {technique.name} x {framework}"
            module, function = named.split("::")
            assert hasattr(importlib.import_module(f"tests.{module}"), function), named
