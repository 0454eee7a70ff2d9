"""One-shot pruning and clustering that use calibration data (converters/techniques/data_aware.py).

The digits test is issue #24's bar: prune 0.5 + cluster 16 + int8 with --calib and no fine-tuning, within 1.5
points of the float PyTorch model, measured from the written .tflite (uniform magnitude pruning loses 1.7-3.1
points on this model: bench/results/oneshot.md). The others are fast checks of each step on a tiny graph.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

import sdk
from converters.capabilities import Request, UnsupportedTechniqueError, check_supported
from converters.errors import RecipeError
from converters.recipe import Recipe
from converters.sources.onnx import TensorSpec, onnx_weights, run_onnx, simplify
from converters.techniques.activations import Probe, channel_sums, layer_sites
from converters.techniques.arrays import prune_by_score
from converters.techniques.cluster import kmeans_1d
from converters.techniques.data_aware import compress_with_data, correct_biases

OFF = {"allocation": "uniform", "ranking": "magnitude", "bias_correction": False}


class Tiny(torch.nn.Module):
    """conv1 (1->8, 72 weights) -> BN -> relu -> conv2 (8->16, 1152) -> relu -> fc (1024->10, 10240)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = torch.nn.Conv2d(1, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.conv2, self.fc = torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Linear(16 * 64, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x))))).flatten(1))


@pytest.fixture(scope="module")
def tiny():
    import onnx

    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), buffer, input_names=["x"], dynamo=False)
    x = np.random.default_rng(0).random((96, 1, 8, 8), np.float32)
    return simplify(onnx.load_from_string(buffer.getvalue()))[0], {"x": x}, [TensorSpec("x", (1, 1, 8, 8))]


def compress(tiny, recipe: dict):
    model, data, specs = tiny
    model = copy.deepcopy(model)
    weights, sources = onnx_weights(model)
    model, records = compress_with_data(model, weights, sources, Recipe.from_dict(recipe), "onnx", data, specs)
    return model, records, {w.name: w.values for w in onnx_weights(model)[0]}


def test_sensitivity_allocation_spares_first_and_small_layers_and_meets_the_target(tiny):
    _, records, arrays = compress(tiny, {"prune": {"sparsity": 0.5, "allocation": "sensitivity"}})
    assert records["prune"].skipped == {"conv1": "kept dense: first layer (72 weights)"}
    sizes = {name: a.size for name, a in arrays.items()}
    assert np.count_nonzero(arrays["conv1"]) == 72
    assert abs(sum(int((a == 0).sum()) for a in arrays.values()) - 0.5 * sum(sizes.values())) <= 2
    assert records["prune"].summary["allocation"].startswith(f"sensitivity: target 0.5 over {sum(sizes.values()):,} "
                                                             "prunable weights, met 0.5000")


def test_a_per_layer_override_keeps_its_own_sparsity(tiny):
    _, records, arrays = compress(tiny, {"prune": {"sparsity": 0.5, "allocation": "sensitivity"},
                                         "layers": {"fc": {"prune": {"sparsity": 0.3}}}})
    assert (arrays["fc"] == 0).mean() == pytest.approx(0.3, abs=1e-3)
    assert "allocated" not in records["prune"].layers["fc"]


def test_activation_ranking_counts_exactly_and_follows_input_energy():
    values = np.array([[1.0, 0.2, 0.3], [0.5, 0.4, 0.6]])
    energy = np.array([0.01, 1.0, 1.0])  # the largest weights read an almost silent input
    pruned = prune_by_score(values, np.abs(values) * np.sqrt(energy), 1 / 3, out_axis=0)
    np.testing.assert_array_equal(pruned, [[0.0, 0.2, 0.3], [0.0, 0.4, 0.6]])
    rows = np.random.default_rng(0).normal(size=(32, 1, 3, 3))  # 9 weights a filter: 4.5 each at 50%
    assert (prune_by_score(rows, np.abs(rows), 0.5, out_axis=0) == 0).sum() == 144


def test_weighted_kmeans_equals_plain_kmeans_for_equal_weights_and_follows_heavy_entries():
    w = np.random.default_rng(1).normal(size=(64, 32)).astype(np.float32)
    np.testing.assert_array_equal(kmeans_1d(w, 16), kmeans_1d(w, 16, sample_weight=np.ones_like(w)))
    heavy = np.ones_like(w)
    heavy[:3, 0] = 1e4  # three weights dominate the output: the centres move to them
    plain, weighted = kmeans_1d(w, 4), kmeans_1d(w, 4, sample_weight=heavy)
    assert np.abs(weighted - w)[:3, 0].mean() < 0.2 * np.abs(plain - w)[:3, 0].mean()
    assert len(np.unique(weighted)) <= 4


def test_bias_correction_moves_layer_means_back_to_the_dense_model(tiny):
    model, data, specs = tiny
    plain, _, _ = compress(tiny, {"prune": {"sparsity": 0.6, **OFF}, "cluster": {"clusters": 4,
                                                                                  "bias_correction": False}})
    weights, sources = onnx_weights(plain)
    sites = layer_sites(plain, sources)
    corrected, record = correct_biases(model, copy.deepcopy(plain), specs, sites, list(sites), data)
    assert set(record.layers) == {"conv1", "conv2", "fc"}
    outputs = [s.output for s in sites.values()]

    def means(m):
        axes = {s.output: 1 if s.op_type == "Conv" else -1 for s in sites.values()}
        sums = Probe(m, specs, outputs, []).run(data, outputs, reduce=lambda n, v, r: channel_sums(v, axes[n]))
        return [t[0] / t[2] for t in sums]

    for dense, before, after in zip(means(model), means(plain), means(corrected)):
        assert np.abs(after - dense).max() < 1e-4 * max(1.0, np.abs(dense).max())
        assert np.abs(before - dense).max() > 1e-3
    reference = run_onnx(model, data, specs)[0]
    error = [np.abs(run_onnx(m, data, specs)[0] - reference).mean() for m in (plain, corrected)]
    assert error[1] < error[0], error


def test_refusals_before_any_work(tmp_path):
    keras_recipe = Recipe.from_dict({"prune": {"sparsity": 0.5, "ranking": "activation"}})
    with pytest.raises(UnsupportedTechniqueError) as caught:
        check_supported(Request(keras_recipe), "keras")
    assert str(caught.value) == (
        "data-aware one-shot pruning and clustering (prune.allocation/ranking, cluster.weighting, *.bias_correction) "
        "is not available for Keras sources: it measures ONNX layers on calibration data, on the PyTorch/ONNX route "
        "only; drop the option (Keras one-shot pruning ranks by magnitude) or fine-tune with --finetune DATA")
    model = Tiny().eval()
    with pytest.raises(RecipeError) as caught:
        sdk.convert(model, tmp_path / "m.tflite", {"prune": {"sparsity": 0.5, "ranking": "activation"}},
                    example_input=torch.zeros(1, 1, 8, 8))
    assert str(caught.value) == ("prune.ranking activation measures activations on calibration data, and none was "
                                 "given; pass --calib DATA, or drop the option")
    x = np.zeros((8, 1, 8, 8), np.float32)
    with pytest.raises(RecipeError) as caught:
        sdk.convert(model, tmp_path / "m.tflite", {"cluster": {"clusters": 8, "bias_correction": True}},
                    example_input=torch.zeros(1, 1, 8, 8), finetune_data=(x, np.zeros(8, np.int64)))
    assert str(caught.value) == ("cluster.bias_correction true applies to one-shot compression, and --finetune data "
                                 "trains the compressed weights instead; drop the option or the --finetune data")
    with pytest.raises(RecipeError) as caught:
        Recipe.from_dict({"prune": {"sparsity": 0.5, "structure": "channel", "allocation": "sensitivity"}})
    assert str(caught.value) == ("prune.allocation sensitivity applies to unstructured pruning; got structure channel "
                                 "(set allocation auto or use structure unstructured)")
    with pytest.raises(RecipeError) as caught:
        Recipe.from_dict({"cluster": {"clusters": 8, "weighting": "energy"}})
    assert str(caught.value) == "cluster.weighting must be one of auto, uniform, activation; got 'energy'"
    assert not list(tmp_path.iterdir())


def test_digits_prune_cluster_int8_one_shot_within_1_5_points(tmp_path):
    """--prune 0.5 --cluster 16 --quantize int8 --calib, no fine-tuning, on a digits CNN with BatchNorm."""
    from examples.digits_torch import DigitsConvNet, accuracy, nchw_splits, train_digits_net

    splits = nchw_splits()
    model = train_digits_net(splits, architecture=DigitsConvNet)
    source_accuracy = accuracy(model, splits.x_test, splits.y_test)
    recipe = Recipe().with_flags(prune=0.5, cluster=16, quantize="int8")
    result = sdk.convert(model, tmp_path / "d.tflite", recipe, example_input=splits.x_test[:1],
                         calib_data=splits.x_train, eval_data=(splits.x_test, splits.y_test))
    report = result.report
    assert report.fidelity.accuracy_source == pytest.approx(source_accuracy)
    assert report.fidelity.accuracy_tflite >= source_accuracy - 1.5, report.fidelity
    weights = {w.layer: w for w in report.compressed.weights}  # measured in the written int8 file
    assert set(weights) == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert sum(w.size - w.nonzero for w in weights.values()) >= 0.4995 * sum(w.size for w in weights.values())
    assert weights["conv1"].sparsity == 0 and weights["fc2"].sparsity == 0  # spared: first and small layer
    assert all(w.dtype == "int8" and w.unique_values <= 16 for w in weights.values()), weights
    prune = report.passes["prune"]
    assert prune.skipped == {"conv1": "kept dense: first layer (288 weights)",
                             "fc2": "kept dense: small layer (1280 weights, 0.68% of the prunable weights)"}
    assert set(report.passes["bias_correction"].layers) == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert "skipped by prune: conv1: kept dense: first layer (288 weights)" in report.render()
