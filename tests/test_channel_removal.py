"""Channel removal (PyTorch and Keras): groups through BatchNorm, depthwise convs and residual adds, exact slicing,
MACs and parameters before/after, and accuracy after fine-tuning on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import sdk
from converters.techniques.channels.torch import count_macs_and_params, remove_channels
from converters.errors import RecipeError
from converters.recipe import Recipe
from examples.torch_zoo import InvertedResidual, build

HALF = Recipe.from_dict({"channels": {"fraction": 0.5}})


def test_groups_follow_residual_adds_and_stop_at_outputs_and_concatenation():
    model, x = build("mobilenetv2_block"), torch.rand(1, 3, 32, 32)
    thinner, record = remove_channels(model, HALF, (x,))
    layers = record.layers
    # the stem feeds block 0's residual add, so the stem and block 0's projection keep the same channels
    assert layers["stem.0.0"]["joined_with"] == ["blocks.0.body.6"] and layers["stem.0.0"]["kept"] == 8
    assert layers["blocks.1.body.6"]["joined_with"] == ["blocks.2.body.6"]
    assert layers["blocks.0.body.0"] == {"channels": 64, "kept": 32, "ranking": "l2", "joined_with": []}
    assert thinner.blocks[0].body[3].groups == 32  # the depthwise conv between them follows
    assert record.skipped == {"head": "its channels reach the model's output"}
    summary = record.summary
    assert summary["macs_before"] == count_macs_and_params(model, (x,))[0]
    assert summary["macs_before"] / summary["macs_after"] > 3.0 and summary["param_ratio"] > 3.0
    assert thinner(x).shape == model(x).shape
    _, unet = remove_channels(build("unet"), HALF, (x,))
    assert unet.skipped["enc1.0.0"] == "its channels reach cat" and "dec.0.0" in unet.layers


def test_slicing_is_exact_when_the_removed_channels_were_silent():
    """Channels whose filters are zero contribute nothing: removing them must not change the output at all."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    silent = [1, 2, 5, 6]
    with torch.no_grad():
        model[0].weight[silent] = 0.0
        model[0].bias[silent] = 0.0
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_mean[silent] = 0.0
            bn.bias[silent] = 0.0
        model[3].bias[silent] = 0.0
    x = torch.rand(2, 3, 12, 12)
    thinner, record = remove_channels(model, HALF, (x[:1],))
    assert record.layers["0"]["kept"] == 4 and record.skipped == {"6": "its channels reach the model's output"}
    assert thinner[0].weight.shape == (4, 3, 3, 3) and thinner[3].weight.shape == (4, 1, 3, 3)
    assert thinner[6].weight.shape == (4, 4, 1, 1)
    torch.testing.assert_close(thinner(x), model(x), rtol=0, atol=1e-6)


class DigitsMobileNet(nn.Module):
    """Inverted residuals at digits scale: 8x8x1 -> 10 classes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(32, 32, 1), InvertedResidual(32, 64, 2),
                                    InvertedResidual(64, 64, 1))
        self.head = nn.Linear(64, 10)

    def forward(self, image):
        return self.head(self.blocks(self.stem(image)).mean((2, 3)))


def test_half_the_channels_stay_within_two_points_on_digits(tmp_path):
    from examples.digits_torch import accuracy, nchw_splits

    splits = nchw_splits()
    torch.manual_seed(0)
    net = DigitsMobileNet()
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    for _ in range(30):
        for index in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x[index]), y[index]).backward()
            optimizer.step()
    net.eval()
    source_accuracy = accuracy(net, splits.x_test, splits.y_test)
    assert source_accuracy > 93.0
    result = sdk.convert(net, tmp_path / "thin.tflite", {"channels": {"fraction": 0.5},
                                                        "quantize": {"mode": "int8"}, "finetune": {"epochs": 15}},
                         example_input=torch.zeros(1, 1, 8, 8), finetune_data=(splits.x_train, splits.y_train),
                         calib_data=splits.x_train, eval_data=(splits.x_test, splits.y_test))
    record, fidelity = result.report.passes["channels"], result.report.fidelity
    assert record.fine_tuned and record.summary["mac_ratio"] > 3.0
    assert fidelity.accuracy_source == pytest.approx(source_accuracy, abs=0.01)
    assert fidelity.accuracy_tflite >= source_accuracy - 2.0
    assert result.report.compressed.file_size < result.report.baseline.file_size / 3  # int8 and thinner


def test_keras_slicing_through_flatten_is_exact(digits_model):
    """conv3's channels reach fc1 through Flatten, 16 positions per channel: silent channels leave no trace."""
    from converters.techniques.channels.keras import remove_channels_keras
    from converters.sources.keras import load_keras_model

    model = load_keras_model(digits_model)
    weights = model.get_layer("conv3").get_weights()
    silent = np.arange(0, 64, 2)
    weights[0][..., silent] = 0.0
    weights[1][silent] = 0.0
    model.get_layer("conv3").set_weights(weights)
    only_conv3 = {"channels": {"fraction": 0.5}, "layers": {"conv[12]|fc1": {"channels": None}}}
    thinner, record = remove_channels_keras(model, Recipe.from_dict(only_conv3))
    assert list(record.layers) == ["conv3"] and thinner.get_layer("fc1").get_weights()[0].shape == (16 * 32, 128)
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(thinner.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_keras_digits_half_the_channels_within_two_points(digits_model_path, digits_npz, tmp_path):
    train, test = digits_npz
    result = sdk.convert(digits_model_path, tmp_path / "thin.tflite",
                         {"channels": {"fraction": 0.5}, "quantize": {"mode": "int8"}, "finetune": {"epochs": 15}},
                         finetune_data=train, eval_data=test)
    record, fidelity = result.report.passes["channels"], result.report.fidelity
    assert record.fine_tuned and {k: v["kept"] for k, v in record.layers.items()} == \
        {"conv1": 16, "conv2": 32, "conv3": 32, "fc1": 64}
    assert record.summary["param_ratio"] > 3.5 and record.skipped == {"classifier": "its channels reach the "
                                                                                    "model's output"}
    assert fidelity.accuracy_tflite >= fidelity.accuracy_source - 2.0
    fc1 = next(w for w in result.report.compressed.weights if w.layer == "fc1")
    assert fc1.shape == [64, 512]  # measured in the written file: 64 units over 32 channels x 16 positions


def test_channel_removal_is_refused_where_it_cannot_run(tmp_path):
    with pytest.raises(RecipeError, match="channels.fraction must be in \\(0, 1\\); got 1.0"):
        Recipe.from_dict({"channels": {"fraction": 1.0}})
    with pytest.raises(RecipeError, match="channels.ranking must be one of l2, l1, bn_scale"):
        Recipe.from_dict({"channels": {"fraction": 0.5, "ranking": "random"}})
    with pytest.raises(RecipeError, match="found no channels it can remove"):
        remove_channels(nn.Sequential(nn.Linear(4, 3)), HALF, (torch.rand(1, 4),))
    assert not list(tmp_path.glob("*.tflite"))


def _ranked_keras_net(batch_norm: bool):
    """conv1's four filters rank differently by L2 (0, 3), L1 (1, 0) and BatchNorm |gamma| (2, 3)."""
    from converters import _tf

    keras = _tf.keras()
    layers = [keras.layers.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="conv1")]
    layers += [keras.layers.BatchNormalization(name="bn1")] if batch_norm else []
    layers += [keras.layers.ReLU(), keras.layers.Conv2D(2, 3, name="conv2"), keras.layers.GlobalAveragePooling2D(),
               keras.layers.Dense(3, name="out")]
    model = keras.Sequential(layers)
    kernel = np.zeros((3, 3, 1, 4), np.float32)
    kernel[0, 0, 0, 0], kernel[..., 1], kernel[..., 2], kernel[1, 1, 0, 3] = 3.0, 0.5, 0.1, 2.0
    model.get_layer("conv1").set_weights([kernel, np.zeros(4, np.float32)])
    if batch_norm:
        bn = model.get_layer("bn1")
        bn.set_weights([np.array([0.1, 0.2, 5.0, 4.0], np.float32), *bn.get_weights()[1:]])
    return model, kernel


@pytest.mark.parametrize("ranking, kept", [("l2", [0, 3]), ("l1", [0, 1]), ("bn_scale", [2, 3])])
def test_keras_channel_removal_honours_the_ranking(ranking, kept):
    """Keras ranked by L2 and recorded "l2" whatever the recipe asked."""
    from converters.techniques.channels.keras import remove_channels_keras

    model, kernel = _ranked_keras_net(batch_norm=True)
    recipe = Recipe.from_dict({"channels": {"fraction": 0.5, "ranking": ranking},
                               "layers": {"conv2": {"channels": None}}})
    thinner, record = remove_channels_keras(model, recipe)
    assert record.layers["conv1"]["ranking"] == ranking and record.layers["conv1"]["kept"] == 2
    np.testing.assert_array_equal(thinner.get_layer("conv1").get_weights()[0], kernel[..., kept])


def test_bn_scale_ranking_without_a_batch_norm_is_refused():
    from converters.techniques.channels.keras import remove_channels_keras

    model, _ = _ranked_keras_net(batch_norm=False)
    recipe = Recipe.from_dict({"channels": {"fraction": 0.5, "ranking": "bn_scale"},
                               "layers": {"conv2": {"channels": None}}})
    with pytest.raises(RecipeError, match="ranking bn_scale ranks by the \\|gamma\\| of the BatchNorm after a layer, "
                                          "and conv1 has none; use ranking l1 or l2"):
        remove_channels_keras(model, recipe)
