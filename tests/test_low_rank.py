"""Low-rank factorization of Linear layers (PyTorch route): rank choice, parameters in the .tflite, fidelity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import sdk
from converters.errors import DataError, RecipeError
from converters.techniques.low_rank import choose_rank
from converters.recipe import Recipe
from converters.techniques.low_rank import LowRankSettings


class FeedForward(nn.Module):
    """A transformer-style feed-forward block (64 -> 256 -> 64, residual) and a 10-class head."""

    def __init__(self):
        super().__init__()
        self.up, self.down, self.head = nn.Linear(64, 256), nn.Linear(256, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.down(torch.relu(self.up(x))) + x)


def _weight_params(stats: dict, prefix: str) -> int:
    return sum(w["size"] for w in stats["weights"] if w["layer"].split(".")[0] == prefix)


def test_rank_choice_by_hand():
    singular = np.array([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22: cumulative .727, .909, .955, 1
    assert choose_rank(singular, LowRankSettings(energy=0.9)) == (2, pytest.approx(20 / 22))
    assert choose_rank(singular, LowRankSettings(energy=0.95))[0] == 3
    assert choose_rank(singular, LowRankSettings(rank_ratio=0.25)) == (1, pytest.approx(16 / 22))
    with pytest.raises(RecipeError, match="exactly one of rank_ratio or energy"):
        Recipe.from_dict({"low_rank": {"rank_ratio": 0.5, "energy": 0.9}})
    with pytest.raises(RecipeError, match="low_rank.rank_ratio must be in \\(0, 1\\]; got 1.5"):
        Recipe.from_dict({"low_rank": {"rank_ratio": 1.5}})


def test_rank_quarter_cuts_parameters_3x_in_the_written_file(tmp_path):
    torch.manual_seed(0)
    model = FeedForward().eval()
    result = sdk.convert(model, tmp_path / "ffn.tflite", {"low_rank": {"rank_ratio": 0.25},
                                                         "layers": {"head": {"low_rank": None}}},
                         example_input=torch.rand(1, 64))
    report = result.report.to_dict()
    record = report["passes"]["low_rank"]["layers"]
    assert set(record) == {"up", "down"} and record["up"]["rank"] == 16  # ceil(0.25 * min(64, 256))
    for layer in ("up", "down"):  # counted from the weight tensors of both .tflite files
        before = _weight_params(report["baseline_float32"], layer)
        after = _weight_params(report["compressed"], layer)
        assert before == 64 * 256 and after == 16 * (64 + 256) and before / after >= 3.0
    assert _weight_params(report["compressed"], "head") == _weight_params(report["baseline_float32"], "head")
    assert report["float_fidelity"]["cosine"] > 0.99999  # the baseline is the original, unfactorized model
    assert 0.9 < report["fidelity"]["cosine"] < 0.99999  # the cut is lossy on random weights, and reported


def test_fine_tuning_recovers_the_digits_net(tmp_path):
    from examples.digits_torch import accuracy, nchw_splits, train_digits_net

    splits = nchw_splits()
    net = train_digits_net(splits, epochs=10).eval()
    result = sdk.convert(net, tmp_path / "lr.tflite", {"low_rank": {"rank_ratio": 0.125},
                                                      "layers": {"fc2": {"low_rank": None}},
                                                      "finetune": {"epochs": 4}},
                         example_input=torch.zeros(1, 1, 8, 8), finetune_data=(splits.x_train, splits.y_train),
                         eval_data=(splits.x_test, splits.y_test))
    record = result.report.passes["low_rank"]
    assert record.fine_tuned and record.layers["fc1"]["rank"] == 16  # ceil(0.125 * 128)
    assert record.layers["fc1"]["param_ratio"] > 7  # 1024 x 128 -> 16 x (1024 + 128)
    fidelity = result.report.fidelity
    assert fidelity.accuracy_source == pytest.approx(accuracy(net, splits.x_test, splits.y_test), abs=0.01)
    assert fidelity.accuracy_tflite >= fidelity.accuracy_source - 1.5


def test_keras_dense_factorizes_exactly_at_its_true_rank():
    from converters import _tf
    from converters.techniques.low_rank import factorize_keras_dense_layers

    keras = _tf.keras()
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.layers.Input((64,)), keras.layers.Dense(256, activation="relu", name="up"),
                              keras.layers.Dense(10, name="head")])
    _, bias = model.get_layer("up").get_weights()
    rng = np.random.default_rng(0)
    model.get_layer("up").set_weights([(rng.normal(size=(64, 8)) @ rng.normal(size=(8, 256)) / 8).astype(np.float32),
                                       bias])
    thinner, record = factorize_keras_dense_layers(model, Recipe.from_dict({"low_rank": {"energy": 1.0}}))
    assert record.layers["up"]["rank"] == 8 and "head" in record.skipped  # 10 outputs: nothing to save
    assert [layer.name for layer in thinner.layers[1:]] == ["up_lowrank", "up", "head"]  # after the input
    assert thinner.get_layer("up_lowrank").get_weights()[0].shape == (64, 8)
    x = rng.random((16, 64), dtype=np.float32)
    np.testing.assert_allclose(thinner.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


def test_keras_digits_fc1_at_rank_ratio_quarter(digits_model_path, digits_npz, tmp_path):
    train, test = digits_npz
    result = sdk.convert(digits_model_path, tmp_path / "lr.tflite",
                         {"low_rank": {"rank_ratio": 0.25}, "layers": {"classifier": {"low_rank": None}},
                          "finetune": {"epochs": 4}}, finetune_data=train, eval_data=test)
    record = result.report.passes["low_rank"]
    assert record.fine_tuned and record.layers["fc1"]["rank"] == 32  # ceil(0.25 * min(1024, 128))
    shapes = {w.layer: w.shape for w in result.report.compressed.weights}  # measured in the written file
    assert shapes["fc1_lowrank"] == [32, 1024] and shapes["fc1"] == [128, 32]
    assert 1024 * 128 / (32 * 1024 + 128 * 32) > 3.5
    fidelity = result.report.fidelity
    assert fidelity.accuracy_tflite >= fidelity.accuracy_source - 1.5


def test_low_rank_is_refused_where_it_cannot_run(tmp_path):
    recipe = {"low_rank": {"rank_ratio": 0.5}}
    scripted = tmp_path / "ffn.pt"
    torch.jit.trace(FeedForward().eval(), torch.rand(1, 64)).save(str(scripted))
    with pytest.raises(RecipeError, match="TorchScript file does not allow"):
        sdk.convert(scripted, tmp_path / "t.tflite", recipe, input_shapes=[(1, 64)])
    with pytest.raises(DataError, match="fine-tuning needs the nn.Module, not a TorchScript file"):
        sdk.convert(scripted, tmp_path / "t.tflite", {"prune": {"sparsity": 0.5}}, input_shapes=[(1, 64)],
                    finetune_data=np.random.default_rng(0).random((32, 64), dtype=np.float32))
    onnx_path = tmp_path / "ffn.onnx"
    torch.onnx.export(FeedForward().eval(), torch.rand(1, 64), str(onnx_path), dynamo=False)
    with pytest.raises(RecipeError, match="need the PyTorch model"):
        sdk.convert(onnx_path, tmp_path / "o.tflite", recipe)
    assert not list(tmp_path.glob("*.tflite"))


def test_a_rank_8_pointwise_convolution_factorizes_exactly():
    """A 1x1 conv whose weight has rank 8 is rebuilt exactly by its rank-8 pair, stride kept;
    the 3x3 conv after it is not a candidate."""
    from converters.techniques.low_rank import factorize_linear_layers

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(64, 256, 1, stride=2), nn.ReLU(), nn.Conv2d(256, 4, 3)).eval()
    with torch.no_grad():
        model[0].weight.copy_((torch.randn(256, 8) @ torch.randn(8, 64)).reshape(256, 64, 1, 1) / 8)
    thinner, record = factorize_linear_layers(model, Recipe.from_dict({"low_rank": {"energy": 1.0}}))
    assert set(record.layers) == {"0"} and record.layers["0"]["rank"] == 8
    assert record.layers["0"]["params_after"] == 8 * (64 + 256)
    assert thinner[0][0].stride == (2, 2) and thinner[0][1].kernel_size == (1, 1)
    x = torch.rand(2, 64, 9, 9)
    torch.testing.assert_close(thinner(x), model(x), rtol=1e-4, atol=1e-4)
