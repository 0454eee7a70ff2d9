"""The capability matrix: every refusal and the README's table come from one table, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from converters.capabilities import FRAMEWORKS, CAPABILITIES, Request, UnsupportedTechniqueError, check_supported, \
    markdown_table
from converters.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]

# One request per technique that asks for it and nothing that another row refuses first.
ASKING = {
    "pruning (unstructured, 2:4, channel)": Request(Recipe.from_dict({"prune": {"sparsity": 0.5}})),
    "k-means clustering": Request(Recipe.from_dict({"cluster": {"clusters": 16}})),
    "post-training quantization": Request(Recipe.from_dict({"quantize": {"mode": "dynamic"}})),
    "mixed precision": Request(Recipe.from_dict({"quantize": {"mode": "int8"}, "layers": {"fc1": {"precision": "float"}}})),
    "automatic mixed precision": Request(Recipe.from_dict({"quantize": {"mode": "int8", "min_cosine": 0.99}})),
    "bias correction": Request(Recipe.from_dict({"quantize": {"mode": "int8", "bias_correction": True}})),
    "data-aware one-shot pruning and clustering": Request(Recipe.from_dict({"prune": {"sparsity": 0.5,
                                                                                      "ranking": "activation"}})),
    "learned weight rounding (AdaRound)": Request(Recipe.from_dict({"quantize": {"mode": "int8",
                                                                                "rounding": "adaround"}})),
    "cross-layer equalization": Request(Recipe.from_dict({"quantize": {"mode": "int8", "equalization": True}})),
    "channel removal": Request(Recipe.from_dict({"channels": {"fraction": 0.5}})),
    "low-rank factorization": Request(Recipe.from_dict({"low_rank": {"rank_ratio": 0.25}})),
    "fine-tuning by distillation": Request(Recipe(), finetune=True),
    "quantization-aware training": Request(Recipe.from_dict({"quantize": {"mode": "int8", "qat": True}})),
    "QAT with clustering": Request(Recipe.from_dict({"quantize": {"mode": "int8", "qat": True},
                                                     "cluster": {"clusters": 16}})),
    "accuracy-budget mode": Request(Recipe(), budget=True),
    "distillation into a smaller student": Request(Recipe(), distill=True),
    "student with fewer blocks": Request(Recipe(), distill=True, keep_layers=True),
}


def test_the_readme_table_is_the_capability_table():
    assert markdown_table() in (ROOT / "README.md").read_text()


def test_every_cell_is_checked():
    """Each "no" cell refuses in one line naming the technique, its recipe key, the source and the fix."""
    assert set(ASKING) == {t.name for t in CAPABILITIES}
    refused = 0
    for technique in CAPABILITIES:
        request = ASKING[technique.name]
        assert technique.asked(request), technique.name
        for framework in FRAMEWORKS:
            if technique.cells[framework] is None:
                continue
            with pytest.raises(UnsupportedTechniqueError) as caught:
                check_supported(request, framework)
            first = next(t for t in CAPABILITIES if t.asked(request) and t.cells[framework] is not None)
            cell = first.cells[framework]
            assert str(caught.value) == (f"{first.name} ({first.recipe_key}) is not available for "
                                         f"{FRAMEWORKS[framework]} sources: {cell.why}; {cell.fix}")
            refused += 1
    assert refused == 11


def test_supported_cells_pass():
    for technique in CAPABILITIES:
        for framework in FRAMEWORKS:
            if technique.cells[framework] is None and all(
                    t.cells[framework] is None for t in CAPABILITIES if t.asked(ASKING[technique.name])):
                check_supported(ASKING[technique.name], framework)


def test_an_onnx_file_with_channel_removal_is_refused_before_any_work(tmp_path):
    """End to end through the CLI: exit 2, one line naming the technique and the source, nothing written."""
    from click.testing import CliRunner

    from sdk.cli import main

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not even read: the recipe is refused first")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("channels: {fraction: 0.5}\n")
    done = CliRunner().invoke(main, ["convert", str(onnx_file), "-o", str(tmp_path / "out.tflite"),
                                     "--recipe", str(recipe)])
    assert done.exit_code == 2, done.output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["error: channel removal (channels) is not available for ONNX sources: it rewrites layers before "
                     "export, and rewrites need the PyTorch model; an ONNX file can be pruned, clustered and "
                     "quantized; convert the PyTorch source for the rest"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.yaml"]


def test_budget_mode_on_an_onnx_file_is_refused_before_any_work(tmp_path):
    import sdk

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"never read")
    with pytest.raises(UnsupportedTechniqueError, match=r"^accuracy-budget mode \(--max-drop\) is not available for "
                                                        r"ONNX sources: .*; convert the PyTorch source"):
        sdk.convert_within_budget(onnx_file, tmp_path / "o.tflite", max_drop=1.0,
                                  finetune_data=tmp_path / "missing.npz", eval_data=tmp_path / "missing.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
