"""Accuracy-budget mode: sensitivity, the knapsack choice, and a digits model within 1 point and smaller
than the best fixed recipe of the benchmark sweep."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

import sdk
from converters.search.budget import LayerSensitivity, choose, estimated_bytes, size_options
from device_runtime import Model
from examples.digits_cnn import accuracy
from sdk.cli import main


def test_estimated_bytes_and_choice_by_hand():
    # 800 weights, half zero (1 bit of mask entropy each), 16 clusters (4 bits per nonzero): 3 bits each
    assert estimated_bytes(800, 0.5, 16) == pytest.approx(300.0)
    assert estimated_bytes(800, 0.0, None) == 800.0
    big = LayerSensitivity("big", "Dense", 10_000, {0.5: 0.1, 0.75: 0.5, 0.9: 3.0}, {32: 0.0, 16: 0.0, 8: 0.2})
    small = LayerSensitivity("small", "Dense", 100, {0.5: 2.0, 0.75: 5.0, 0.9: 9.0}, {32: 0.0, 16: 0.0, 8: 1.0})
    # no allowance: only free moves -> 16 clusters everywhere (32 saves less at the same zero cost)
    assert choose(size_options([big, small]), 0.0) == {"big": (0.0, 16), "small": (0.0, 16)}
    # 1 point: the big layer goes to 75% + 8 clusters (0.7 points); the small one cannot afford pruning
    assert choose(size_options([big, small]), 1.0) == {"big": (0.75, 8), "small": (0.0, 16)}


def test_digits_within_one_point_and_smaller_than_the_best_fixed_recipe(digits, digits_npz, digits_model_path,
                                                                       digits_model, tmp_path):
    train, test = digits_npz
    budget = sdk.convert_within_budget(digits_model_path, tmp_path / "auto.tflite", max_drop=1.0,
                                       finetune_data=train, eval_data=test)
    # measured independently: the written file on the test split vs the source model
    source = accuracy(digits_model.predict(digits.x_test, verbose=0), digits.y_test)
    written = accuracy(next(iter(Model(budget.result.path).run(digits.x_test).values())), digits.y_test)
    assert source - written <= 1.0
    fixed = sdk.convert(digits_model_path, tmp_path / "fixed.tflite",  # the benchmark sweep's best fixed recipe
                        {"prune": {"sparsity": 0.75}, "cluster": {"clusters": 16}, "quantize": {"mode": "int8"}},
                        finetune_data=train, eval_data=test)
    assert budget.result.report.compressed.gzip_size < fixed.report.compressed.gzip_size
    reused = sdk.Recipe.load(budget.recipe_path)  # the chosen recipe is reusable as YAML
    assert reused.to_dict() == budget.recipe.to_dict() and len(reused.layers) == 5
    assert yaml.safe_load(budget.recipe_path.read_text())["quantize"]["mode"] == "int8"
    assert (tmp_path / "auto.sensitivity.json").is_file()
    sensitivity = {s.name: s for s in budget.sensitivity}
    assert sensitivity["fc1"].params == 1024 * 128 and sensitivity["conv1"].prune[0.9] > 5.0


def test_budget_mode_bad_requests_are_one_line(tmp_path, digits_model_path, digits_npz):
    train, _ = digits_npz
    out = str(tmp_path / "o.tflite")
    done = CliRunner().invoke(main, ["convert", str(digits_model_path), "-o", out, "--max-drop", "1",
                                     "--finetune", str(train)])
    assert done.exit_code == 2 and "needs --finetune DATA" in done.output
    assert len(done.output.strip().splitlines()) == 1
    done = CliRunner().invoke(main, ["convert", str(digits_model_path), "-o", out, "--max-drop", "1",
                                     "--optimize", "speed"])
    assert done.exit_code == 2 and "'speed' is not one of 'size', 'latency'" in done.output
    assert not (tmp_path / "o.tflite").exists()


def test_latency_mode_removes_channels_within_budget(digits, digits_npz, digits_model_path, digits_model, tmp_path):
    train, test = digits_npz
    budget = sdk.convert_within_budget(digits_model_path, tmp_path / "fast.tflite", max_drop=1.0,
                                       optimize="latency", finetune_data=train, eval_data=test)
    source = accuracy(digits_model.predict(digits.x_test, verbose=0), digits.y_test)
    written = accuracy(next(iter(Model(budget.result.path).run(digits.x_test).values())), digits.y_test)
    assert source - written <= 1.0
    channels = budget.result.report.passes["channels"]
    assert channels.layers and channels.summary["param_ratio"] > 1.2  # thinner layers, measured
    chosen = budget.attempts[-1]
    assert chosen["within"] and chosen["latency_ms"] > 0 and chosen["speedup_vs_int8"] > 0
    sensitivity = {s.name: s for s in budget.sensitivity}
    assert set(sensitivity["conv2"].channels) == {0.25, 0.5, 0.75} and not sensitivity["classifier"].channels
    assert "remove 50%" in budget.render()


def test_pytorch_budget_mode_size_and_latency(tmp_path):
    """Budget mode was Keras-only. A PyTorch digits CNN (Conv-BN-ReLU): the size mode's file is within the
    budget, measured independently from the written file, and smaller than plain int8; the latency mode
    removes channels from PyTorch modules by name."""
    import numpy as np
    import torch

    from examples.digits_torch import accuracy as torch_accuracy, nchw_splits, train_digits_net

    splits = nchw_splits()
    net = train_digits_net(splits, epochs=10)
    data = {"finetune_data": (splits.x_train, splits.y_train), "eval_data": (splits.x_test, splits.y_test),
            "example_input": torch.zeros(1, 1, 8, 8), "recipe": {"finetune": {"epochs": 4}}}
    size = sdk.convert_within_budget(net, tmp_path / "size.tflite", max_drop=1.0, **data)
    written = Model(size.result.path).run(splits.x_test.transpose(0, 2, 3, 1))  # the file takes NHWC
    written_accuracy = float((next(iter(written.values())).argmax(1) == splits.y_test).mean() * 100)
    assert torch_accuracy(net, splits.x_test, splits.y_test) - written_accuracy <= 1.0
    assert {s.name for s in size.sensitivity} == {"conv1", "conv2", "fc1", "fc2"}
    assert size.sensitivity[2].params == 64 * 4 * 4 * 128
    plain = sdk.convert(net, tmp_path / "int8.tflite", {"quantize": {"mode": "int8"}},
                        calib_data=splits.x_train, example_input=data["example_input"]).report
    assert size.result.report.compressed.gzip_size < plain.compressed.gzip_size
    assert set(sdk.Recipe.load(size.recipe_path).layers) <= {"conv1", "conv2", "fc1", "fc2"}

    latency = sdk.convert_within_budget(net, tmp_path / "fast.tflite", max_drop=2.0, optimize="latency", **data)
    removed = latency.result.report.passes["channels"].layers
    assert removed and set(removed) <= {"conv1", "conv2", "fc1"}
    assert latency.attempts[-1]["within"] and np.isfinite(latency.attempts[-1]["speedup_vs_int8"])
