"""Layers inside nested models (issue 23): a ``keras.applications`` base nested in a classifier, and hand-built
nested blocks whose layers share names. Per-layer settings name them by bare name or ``outer/inner`` path
(converters/layer_paths.py); each effect is measured in the written .tflite, the rest against the source.
"""

from __future__ import annotations

import numpy as np
import pytest

import sdk
from converters import _tf
from converters.errors import RecipeError
from converters.layer_paths import LayerPaths
from converters.recipe import Recipe
from converters.verify.analysis import analyse
from device_runtime import Model

BASE = "mobilenetv2_0.35_32"


def outputs(path, x) -> np.ndarray:
    return next(iter(Model(path).run(x).values()))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def blocks_model():
    """tf_keras: a top-level ``conv``, then two nested blocks each with a ``conv`` and a ``mix`` (names they
    share), then a Dense head."""
    keras = _tf.keras()
    keras.utils.set_random_seed(0)

    def block(name):
        inputs = keras.Input((10, 10, 8))
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
        return keras.Model(inputs, keras.layers.Conv2D(8, 1, name="mix")(x), name=name)

    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = block("block_b")(block("block_a")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def test_recipe_names_layers_by_path_bare_name_and_enclosing_model():
    paths = LayerPaths({"conv": ("conv",), "block_a_conv": ("block_a", "conv"), "block_a_mix": ("block_a", "mix"),
                        "block_b_conv": ("block_b", "conv"), "block_b_mix": ("block_b", "mix"),
                        "expand": ("block_b", "expand"), "head": ("head",)})
    recipe = Recipe.from_dict({"quantize": {"mode": "int8"}, "prune": {"sparsity": 0.5}, "layers": {
        "block_b": {"prune": {"sparsity": 0.9}},  # every layer of block_b ...
        "block_b/mix": {"precision": "float"},  # ... but its own key wins for mix
        "expand": {"cluster": {"clusters": 8}},  # a unique bare name
        "block_a/.*": None}}).with_layer_paths(paths)  # a pattern over paths
    names = list(paths.paths)
    recipe.check_overrides(names, ["Conv2D", "Dense"])
    plans = {name: recipe.plan_for(name, "Conv2D") for name in names}
    assert plans["block_a_conv"] is None and plans["block_a_mix"] is None
    assert plans["conv"].prune.sparsity == 0.5 and plans["head"].prune.sparsity == 0.5  # "conv" is the top-level one
    assert plans["block_b_conv"].prune.sparsity == 0.9 and plans["expand"].cluster.clusters == 8
    assert plans["block_b_mix"].precision == "float" and plans["block_b_mix"].prune.sparsity == 0.5
    assert recipe.to_dict()["layers"].keys() == {"block_b", "block_b/mix", "expand", "block_a/.*"}  # as given
    assert recipe.replace(sparse_export="off").plan_for("block_b_conv", "Conv2D").prune.sparsity == 0.9

    def refused(key):
        with pytest.raises(RecipeError) as info:
            Recipe.from_dict({"layers": {key: None}}).with_layer_paths(paths).check_overrides(names, ["Conv2D"])
        return str(info.value)

    assert refused("mix") == ("layers['mix'] is ambiguous: 2 layers or nested models are named 'mix' "
                              "(block_a/mix, block_b/mix); name one by its path")
    assert refused("block_b/expnd").startswith("layers['block_b/expnd'] matches no layer of the model "
                                               "(did you mean 'block_b/expand'?); it has: ")


def test_settings_reach_layers_of_nested_tf_keras_blocks(tmp_path):
    """tf_keras in memory: block_a's layers pruned by the block's name, block_b's ``mix`` kept float by path; the
    shared names are refused as ambiguous before any work."""
    model = blocks_model()
    calib = np.random.default_rng(0).random((48, 10, 10, 3), np.float32)
    with pytest.raises(RecipeError, match=r"^layers\['mix'\] is ambiguous: .*\(block_a/mix, block_b/mix\)"):
        sdk.convert(model, tmp_path / "x.tflite", {"quantize": {"mode": "int8"}, "layers": {"mix": None}},
                    calib_data=calib)
    assert list(tmp_path.iterdir()) == []
    result = sdk.convert(model, tmp_path / "blocks.tflite",
                         {"quantize": {"mode": "int8"}, "layers": {"block_a": {"prune": {"sparsity": 0.5}},
                                                                    "block_b/mix": {"precision": "float"}}},
                         calib_data=calib)
    assert set(result.report.passes["prune"].layers) == {"block_a_conv", "block_a_mix"}
    found = analyse(result.path.read_bytes()).weights  # the written file; the head's op is named after the output
    weights = {w.layer: w for w in found[:-1]} | {"head": found[-1]}
    assert list(weights) == ["conv", "block_a_conv", "block_a_mix", "block_b_conv", "block_b_mix", "head"]
    assert weights["head"].shape == [4, 8]
    assert weights["block_a_conv"].sparsity >= 0.49 and weights["block_a_mix"].sparsity >= 0.49
    assert max(weights[n].sparsity for n in ("conv", "block_b_conv", "block_b_mix", "head")) < 0.05
    assert {n: w.dtype for n, w in weights.items() if w.dtype != "int8"} == {"block_b_mix": "float32"}
    assert result.report.compressed.ops.float_ops == {"CONV_2D": 1}
    assert any(n.startswith("nested model(s) block_a, block_b opened into one flat model") for n in result.report.notes)
    x = np.random.default_rng(1).random((16, 10, 10, 3), np.float32)
    pruned = result.report.fidelity  # against the unpruned source: pruning half of block_a costs something
    assert pruned.cosine > 0.9 and cosine(outputs(result.path, x), model.predict(x, verbose=0)) > 0.9


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    """``keras.applications.MobileNetV2(weights=None)`` nested in a Keras 3 classifier, saved by Keras 3."""
    keras = _tf.keras3()
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, include_top=False)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(6, activation="softmax", name="head")(x))
    assert base.name == BASE
    path = tmp_path_factory.mktemp("nested") / "mobilenet.keras"
    model.save(path)
    return path, model


@pytest.mark.slow
def test_settings_reach_layers_inside_a_keras3_mobilenet(mobilenet_file, tmp_path):
    """One int8 conversion: an inner layer kept float by bare name, one pruned by path, one clustered."""
    path, model = mobilenet_file
    calib = np.random.default_rng(0).random((64, 32, 32, 3), np.float32)
    with pytest.raises(RecipeError, match=r"^layers\['block_1_expnd'\] matches no layer of the model \(did you "
                                          r"mean 'block_1_expand'\?\); it has: "):
        sdk.convert(path, tmp_path / "x.tflite", {"layers": {"block_1_expnd": None}})
    assert list(tmp_path.iterdir()) == []
    result = sdk.convert(path, tmp_path / "m.tflite", {
        "quantize": {"mode": "int8"}, "layers": {
            "block_1_expand": {"precision": "float"},
            f"{BASE}/block_2_project": {"prune": {"sparsity": 0.75}},
            "block_4_expand": {"cluster": {"clusters": 8}}}}, calib_data=calib)
    names = [layer.name for layer in model.get_layer(BASE).layers]
    found = analyse(result.path.read_bytes(), names).weights  # the written file; the head's op is named after the output
    weights = {w.layer: w for w in found[:-1]} | {"head": found[-1]}
    assert len(weights) == 53  # every conv of the base and the head, each named by its own layer
    assert {n: w.dtype for n, w in weights.items() if w.dtype != "int8"} == {"block_1_expand": "float32"}
    assert result.report.compressed.ops.float_ops == {"CONV_2D": 1}
    assert weights["block_2_project"].sparsity >= 0.74
    assert max(w.sparsity for n, w in weights.items() if n != "block_2_project") < 0.1
    assert weights["block_4_expand"].unique_per_channel_max <= 8
    wide = [w for n, w in weights.items() if n.endswith(("_expand", "_project")) and n != "block_4_expand"
            and w.dtype == "int8" and w.shape[-1] >= 24]  # 1x1 convs with at least 24 weights per channel
    assert len(wide) >= 20 and min(w.unique_per_channel_max for w in wide) > 8
    x = np.random.default_rng(1).random((16, 32, 32, 3), np.float32)
    assert cosine(outputs(result.path, x), model.predict(x, verbose=0)) > 0.99


def broken_nested_keras3_model():
    """Keras 3: conv_b (inside the nested ``block``, followed by BatchNormalization and ReLU, so the converter
    fuses them and names the op after the ReLU) reads a channel conv_a never fires, with outlier weights there:
    its int8 scales are far too coarse for its other weights."""
    keras = _tf.keras3()
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, activation="relu", name="conv_a")(inner_in)
    x = layers.ReLU(name="conv_b_relu")(layers.BatchNormalization(name="conv_b_bn")(
        layers.Conv2D(8, 3, name="conv_b")(x)))
    block = keras.Model(inner_in, x, name="block")
    inputs = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, activation="relu", name="conv_c")(block(inputs))
    model = keras.Model(inputs, layers.Dense(10, name="fc")(layers.Flatten()(x)))
    conv_a, conv_b = block.get_layer("conv_a"), block.get_layer("conv_b")
    w, b = conv_a.get_weights()
    w[..., 0], b[0] = 0.0, -1.0  # channel 0 of conv_a is always 0 after its ReLU
    conv_a.set_weights([w, b])
    w, b = conv_b.get_weights()
    w[1, 1, 0, :] = 200.0 * np.abs(w).max()  # conv_b's weights on that dead channel
    conv_b.set_weights([w, b])
    return model


def test_the_precision_search_finds_a_layer_inside_a_nested_model(tmp_path):
    """--min-cosine ranks the nested layers by their own int8 error and keeps exactly the broken one float (it
    used to find no layer whose op the converter had fused with a BatchNormalization and a ReLU, and stopped)."""
    model = broken_nested_keras3_model()
    model.save(tmp_path / "broken.keras")
    calib = np.random.default_rng(0).random((64, 12, 12, 3), np.float32)
    result = sdk.convert(tmp_path / "broken.keras", tmp_path / "mp.tflite",
                         {"quantize": {"mode": "int8", "min_cosine": 0.999}}, calib_data=calib)
    record = result.report.mixed_precision
    assert record.met and record.kept == ["conv_b"], record.to_dict()
    assert record.steps[0].cosine < 0.999 and record.steps[1].layer_error > 0.001  # ranked by its own error
    found = analyse(result.path.read_bytes(), ["conv_a", "conv_b", "conv_c", "fc"]).weights
    assert [(w.layer, w.dtype) for w in found[:3]] == [("conv_a", "int8"), ("conv_b", "float32"), ("conv_c", "int8")]
    x = np.random.default_rng(1).random((32, 12, 12, 3), np.float32)
    assert cosine(outputs(result.path, x), model.predict(x, verbose=0)) >= 0.999


def test_a_search_that_cannot_meet_its_target_says_why():
    from converters.search.mixed_precision import MixedPrecisionRecord, Step

    record = MixedPrecisionRecord("top-1 agreement >= 90%", "128 calibration samples", False,
                                  [Step(None, 0.99, 89.84, 2726896)],
                                  "none of the 53 layers with weights was found in the converted file")
    assert record.note() == ("automatic mixed precision (top-1 agreement >= 90%): target NOT met on 128 calibration "
                             "samples, no layer kept float: none of the 53 layers with weights was found in the "
                             "converted file")
