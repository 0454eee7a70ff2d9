"""Quantization-aware training (Keras and PyTorch): recovers what post-training int8 loses on a model built to lose it,
and keeps earlier pruning and clustering (PCQAT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdk
from converters import _tf
from converters.errors import DataError, RecipeError

WIDE = 50.0  # one bottleneck dimension carries activations this much wider than the others


@pytest.fixture(scope="module")
def wide_bottleneck(digits, tmp_path_factory):
    """A digits MLP with a 6-wide bottleneck whose first unit is rescaled 50x (the function is unchanged):
    one per-tensor int8 scale must then cover a range 50x wider than most values need."""
    keras = _tf.keras()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(6, name="bottleneck"),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(digits.x_train, digits.y_train, epochs=80, batch_size=32, verbose=0)
    weights = model.get_weights()
    weights[2][:, 0] *= WIDE
    weights[3][0] *= WIDE
    weights[4][0, :] /= WIDE
    model.set_weights(weights)
    path = tmp_path_factory.mktemp("qat") / "wide.h5"
    model.save(path)
    return path


def test_qat_recovers_at_least_half_of_what_ptq_loses(wide_bottleneck, digits_npz, tmp_path):
    train, test = digits_npz
    ptq = sdk.convert(wide_bottleneck, tmp_path / "ptq.tflite", {"quantize": {"mode": "int8"}}, calib_data=train,
                      eval_data=test).report.fidelity
    qat = sdk.convert(wide_bottleneck, tmp_path / "qat.tflite",
                      {"quantize": {"mode": "int8", "qat": True}, "finetune": {"epochs": 15}},
                      finetune_data=train, eval_data=test)
    fidelity = qat.report.fidelity
    assert fidelity.accuracy_source == ptq.accuracy_source  # the same float model
    ptq_loss = ptq.accuracy_source - ptq.accuracy_tflite
    qat_loss = fidelity.accuracy_source - fidelity.accuracy_tflite
    assert ptq_loss > 1.0, f"the construction should make PTQ lose > 1 point; lost {ptq_loss:.2f}"
    assert ptq_loss - qat_loss >= ptq_loss / 2, f"PTQ lost {ptq_loss:.2f}, QAT {qat_loss:.2f}"
    assert qat.report.passes["qat"].summary["scheme"] == "default 8-bit"
    assert "FULLY_CONNECTED" not in qat.report.compressed.ops.float_ops  # really int8


def test_pcqat_keeps_sparsity_and_shared_values(digits_model_path, digits_npz, tmp_path):
    train, test = digits_npz
    result = sdk.convert(digits_model_path, tmp_path / "pcqat.tflite",
                         {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 16},
                          "quantize": {"mode": "int8", "qat": True}, "finetune": {"epochs": 3}},
                         finetune_data=train, eval_data=test)
    report = result.report
    assert report.passes["qat"].summary["scheme"] == "cluster-preserving with sparsity (PCQAT)"
    weights = {w.layer: w for w in report.compressed.weights}
    assert {"conv1", "conv2", "conv3", "fc1", "classifier"} <= set(weights)
    for name in ("conv2", "conv3", "fc1"):  # measured in the written int8 file
        # QAT's fake-quant gives conv weights per-channel scales: 16 shared values per channel, not per tensor
        shared = weights[name].unique_per_channel_max or weights[name].unique_values  # None when per-tensor
        assert weights[name].sparsity >= 0.49 and shared <= 16 + 1, weights[name]
    assert report.fidelity.accuracy_tflite >= report.fidelity.accuracy_source - 2.0


def test_qat_needs_data_int8_and_keras(digits_model_path, tmp_path):
    with pytest.raises(DataError, match="quantize.qat .* needs --finetune DATA"):
        sdk.convert(digits_model_path, tmp_path / "a.tflite", {"quantize": {"mode": "int8", "qat": True}},
                    calib_data=np.zeros((8, 8, 8, 1), np.float32))
    with pytest.raises(RecipeError, match="quantize.qat trains for int8; set quantize.mode int8 \\(got dynamic\\)"):
        sdk.Recipe.from_dict({"quantize": {"mode": "dynamic", "qat": True}})
    with pytest.raises(DataError, match="quantize.qat .* needs --finetune DATA"):
        sdk.convert(torch.nn.Linear(4, 2), tmp_path / "c.tflite", {"quantize": {"mode": "int8", "qat": True}},
                    example_input=torch.zeros(1, 4), calib_data=np.zeros((8, 4), np.float32))
    assert not list(tmp_path.glob("*.tflite"))


def test_pytorch_qat_recovers_at_least_half_and_keeps_pruned_zeros(tmp_path):
    """The same construction in PyTorch: fake-quant fine-tuning, then PTQ calibration of the result."""
    from examples.digits_torch import nchw_splits

    splits = nchw_splits()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 6),
                              torch.nn.Linear(6, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    for _ in range(80):
        for index in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[index]), y[index]).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():  # one bottleneck unit 50x wider, the function unchanged
        net[3].weight[0] *= WIDE
        net[3].bias[0] *= WIDE
        net[4].weight[:, 0] /= WIDE
    data = {"example_input": torch.zeros(1, 1, 8, 8), "eval_data": (splits.x_test, splits.y_test)}
    ptq = sdk.convert(net, tmp_path / "ptq.tflite", {"quantize": {"mode": "int8"}}, calib_data=splits.x_train,
                      **data).report.fidelity
    qat = sdk.convert(net, tmp_path / "qat.tflite", {"quantize": {"mode": "int8", "qat": True},
                                                     "finetune": {"epochs": 15}},
                      finetune_data=(splits.x_train, splits.y_train), **data).report
    ptq_loss = ptq.accuracy_source - ptq.accuracy_tflite
    qat_loss = qat.fidelity.accuracy_source - qat.fidelity.accuracy_tflite
    assert ptq_loss > 1.0, f"the construction should make PTQ lose > 1 point; lost {ptq_loss:.2f}"
    assert ptq_loss - qat_loss >= ptq_loss / 2, f"PTQ lost {ptq_loss:.2f}, QAT {qat_loss:.2f}"
    assert qat.passes["qat"].summary["layers"] == 4
    pruned = sdk.convert(net, tmp_path / "pqat.tflite", {"prune": {"sparsity": 0.5},
                                                        "quantize": {"mode": "int8", "qat": True},
                                                        "finetune": {"epochs": 3}},
                         finetune_data=(splits.x_train, splits.y_train), **data).report
    assert pruned.compressed.overall_sparsity >= 0.49  # QAT kept the zeros, measured in the int8 file


def test_pytorch_cluster_preserving_qat_keeps_shared_values_and_zeros(tmp_path):
    """QAT after pruning and clustering was refused for PyTorch. Now the clustered layers train only their
    shared values under fake quantization: in the written int8 file each output channel of each clustered
    weight holds at most `clusters` values (zero among them), and the pruned zeros are still there."""
    from device_runtime.tflite_format import read_model
    from examples.digits_torch import nchw_splits

    splits = nchw_splits()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    for _ in range(20):
        for index in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[index]), y[index]).backward()
            optimizer.step()
    result = sdk.convert(net.eval(), tmp_path / "pcqat.tflite",
                         {"prune": {"sparsity": 0.5}, "cluster": {"clusters": 8},
                          "quantize": {"mode": "int8", "qat": True}, "finetune": {"epochs": 4}},
                         example_input=torch.zeros(1, 1, 8, 8), finetune_data=(splits.x_train, splits.y_train),
                         eval_data=(splits.x_test, splits.y_test))
    report = result.report
    assert report.passes["qat"].summary["scheme"].startswith("cluster-preserving")
    assert report.passes["qat"].summary["values_per_channel_max"] <= 8
    model = read_model(result.path.read_bytes())
    kernels = [model.constant(model.main.tensors[op.inputs[1]]) for op in model.main.operators
               if op.op_name == "FULLY_CONNECTED"]
    assert [k.dtype.name for k in kernels] == ["int8", "int8"]
    for kernel in kernels:
        assert max(len(np.unique(row)) for row in kernel) <= 8
        assert (kernel == 0).mean() >= 0.49
    assert report.fidelity.accuracy_tflite >= report.fidelity.accuracy_source - 3.0
