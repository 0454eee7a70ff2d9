"""The recipe: precedence, strict loading and one-line errors (no TensorFlow needed)."""

import json

import pytest

from converters.errors import RecipeError
from converters.recipe import Recipe
from converters.techniques.cluster import ClusterSettings
from converters.techniques.prune import PruneSettings


def recipe_with_overrides() -> Recipe:
    return Recipe.from_dict({
        "prune": {"sparsity": 0.75},
        "cluster": {"clusters": 16},
        "layers": {"fc1": {"prune": {"sparsity": 0.5}}, "conv[0-9]": {"cluster": None}, "classifier": None},
        "layer_types": {"Conv2D": {"prune": {"sparsity": 0.9}}, "Dense": {"cluster": {"clusters": 8}}},
    })


def test_precedence_name_over_regex_over_type_over_global():
    recipe = recipe_with_overrides()
    fc1 = recipe.plan_for("fc1", "Dense")  # exact name beats the Dense type override for prune
    assert fc1.prune == PruneSettings(0.5) and fc1.cluster == ClusterSettings(8)
    conv = recipe.plan_for("conv2", "Conv2D")  # regex name; type gives prune 0.9
    assert conv.prune == PruneSettings(0.9) and conv.cluster is None
    other = recipe.plan_for("fc9", "Dense")
    assert other.prune == PruneSettings(0.75) and other.cluster == ClusterSettings(8)
    plain = recipe.plan_for("norm", "LayerNormalization")
    assert plain.prune == PruneSettings(0.75) and plain.cluster == ClusterSettings(16)


def test_none_override_skips_layer():
    assert recipe_with_overrides().plan_for("classifier", "Dense") is None


def test_round_trip_through_dict_and_files(tmp_path):
    recipe = recipe_with_overrides()
    again = Recipe.from_dict(recipe.to_dict())
    assert again == recipe
    (tmp_path / "r.json").write_text(json.dumps(recipe.to_dict()))
    assert Recipe.load(tmp_path / "r.json") == recipe
    (tmp_path / "r.yaml").write_text("prune: {sparsity: 0.5, structure: '2:4'}\nquantize: {mode: int8}\n")
    loaded = Recipe.load(tmp_path / "r.yaml")
    assert loaded.prune.structure == "2:4" and loaded.quantize.mode == "int8"


@pytest.mark.parametrize("data, message", [
    ({"prune": {"sparsity": 1.0}}, "prune.sparsity must be in [0, 1); got 1.0"),
    ({"prune": {"sparsity": -0.1}}, "prune.sparsity must be in [0, 1); got -0.1"),
    ({"cluster": {"clusters": 1}}, "cluster.clusters must be an integer >= 2; got 1"),
    ({"quantize": {"mode": "int4"}}, "quantize.mode must be one of none, dynamic, float16, int8, int16x8; got 'int4'"),
    ({"quantize": {"mode": "int8", "io_type": "uint16"}}, "quantize.io_type must be one of"),
    ({"quantize": {"mode": "dynamic", "io_type": "int8"}}, "needs quantize.mode int8"),
    ({"prune": {"sparsity": 0.5, "structure": "4:8"}}, "prune.structure must be one of unstructured, 2:4"),
    ({"prune": {"sparsity": 0.7, "structure": "2:4"}}, "2:4 pruning always gives sparsity 0.5"),
    ({"prunning": {"sparsity": 0.5}}, "unknown key 'prunning' in recipe (did you mean 'prune'?)"),
    ({"prune": {"sparsty": 0.5}}, "unknown key 'sparsty' in prune (did you mean 'sparsity'?)"),
    ({"layers": {"fc1": {"quantize": "int8"}}}, "unknown key 'quantize' in layers['fc1']"),
    ({"layers": {"fc[": None}}, "is not a valid regular expression"),
    ({"finetune": {"epochs": 0}}, "finetune.epochs must be an integer >= 1; got 0"),
])
def test_invalid_recipes_name_the_value(data, message):
    with pytest.raises(RecipeError) as error:
        Recipe.from_dict(data)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_flags_override_file_settings():
    base = Recipe.from_dict({"prune": {"sparsity": 0.5, "schedule": "constant"}, "quantize": {"mode": "int8"}})
    recipe = base.with_flags(prune=0.8, cluster=32, quantize="float16")
    assert recipe.prune == PruneSettings(0.8, schedule="constant")
    assert recipe.cluster == ClusterSettings(32)
    assert recipe.quantize.mode == "float16"
    with pytest.raises(RecipeError, match="prune.sparsity must be in"):
        base.with_flags(prune=1.5)


def test_recipe_files_errors(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        Recipe.load(tmp_path / "missing.yaml")
    (tmp_path / "r.txt").write_text("prune: 0.5")
    with pytest.raises(RecipeError, match="must end in .yaml, .yml or .json"):
        Recipe.load(tmp_path / "r.txt")
    (tmp_path / "bad.yaml").write_text("prune: {sparsity: [")
    with pytest.raises(RecipeError, match="cannot parse recipe"):
        Recipe.load(tmp_path / "bad.yaml")
    (tmp_path / "flat.yaml").write_text("prune: 0.5")
    with pytest.raises(RecipeError, match="prune must be a mapping"):
        Recipe.load(tmp_path / "flat.yaml")
