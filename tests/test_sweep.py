"""`sdk sweep` on a local Ray instance, its cache and failed rows, and the plots."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from converters.errors import UserInputError
from sdk.cli import main
from sdk.sweep import SweepEntry, load_grid, pareto_front, recommend, run_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_grid_expands_axes_and_merges_base():
    entries = load_grid({"base": {"finetune": {"epochs": 2}},
                         "grid": {"prune": [0, 0.5], "cluster": [0, 16], "quantize": ["none", "int8"]},
                         "recipes": [{"name": "2of4", "prune": {"sparsity": 0.5, "structure": "2:4"}}]})
    names = [e.name for e in entries]
    assert len(names) == 9 and names[0] == "2of4" and "float32" in names and "prune50+cluster16+int8" in names
    combo = next(e for e in entries if e.name == "prune50+cluster16+int8").recipe
    assert combo == {"finetune": {"epochs": 2}, "prune": {"sparsity": 0.5}, "cluster": {"clusters": 16},
                     "quantize": {"mode": "int8"}}
    with pytest.raises(UserInputError, match="sweep recipe 'bad': .*cluster"):
        load_grid({"recipes": [{"name": "bad", "cluster": {"clusters": 1}}]})
    with pytest.raises(UserInputError, match="unknown grid axis \\['prunes'\\]"):
        load_grid({"grid": {"prunes": [0.5]}})
    with pytest.raises(UserInputError, match="repeated: \\['x'\\]"):
        load_grid({"recipes": [{"name": "x"}, {"name": "x"}]})


def test_pareto_front_and_recommendation_by_hand():
    # (size, score): b beats a (smaller, better); c is larger but the best; d is the smallest
    points = [(10, 90.0), (8, 95.0), (20, 99.0), (2, 60.0), (20, 95.0)]
    assert pareto_front(points) == [1, 2, 3]
    rows = [{"name": n, "status": "ok", "gzip_size": s, "accuracy": q, "accuracy_source": 99.5}
            for n, (s, q) in zip("abcde", points)] + [{"name": "f", "status": "failed", "error": "x"}]
    assert recommend(rows, 1.0)[0] == "c"  # the only one within 1 point
    assert recommend(rows, 5.0)[0] == "b"  # 95.0 is 4.5 below: smaller wins
    assert recommend(rows, 0.1)[0] is None


@pytest.fixture(scope="module")
def sweep_run(digits_model_path, digits_npz, tmp_path_factory):
    train, test = digits_npz
    out = tmp_path_factory.mktemp("sweep")
    entries = [SweepEntry("float32", {}), SweepEntry("dynamic", {"quantize": {"mode": "dynamic"}}),
               # Keras channel pruning with fine-tuning raises RecipeError inside the Ray task
               SweepEntry("channel-finetuned", {"prune": {"sparsity": 0.5, "structure": "channel"},
                                                "finetune": {"epochs": 1}})]
    first = run_sweep(digits_model_path, entries, out, data=train, eval_data=test, workers=2, latency_runs=5)
    second = run_sweep(digits_model_path, entries, out, data=train, eval_data=test, workers=2, latency_runs=5)
    return first, second, out


def test_failed_recipe_is_a_row_and_the_others_complete(sweep_run):
    first, _, out = sweep_run
    rows = {r["name"]: r for r in first.rows}
    assert rows["float32"]["status"] == rows["dynamic"]["status"] == "ok"
    assert rows["channel-finetuned"]["status"] == "failed"
    assert rows["channel-finetuned"]["error"].startswith("RecipeError: ")
    assert first.workers == 2
    float_row, dynamic = rows["float32"], rows["dynamic"]
    assert abs(float_row["accuracy"] - float_row["accuracy_source"]) < 0.3  # float32 .tflite == the source
    assert dynamic["gzip_size"] < float_row["gzip_size"] / 2.5  # int8 weights: about 4x smaller
    assert dynamic["latency"]["1"]["p50_ms"] > 0 and set(dynamic["latency"]) == {"1", "2"}
    qualifying = [r for r in first.rows if r["status"] == "ok" and r["accuracy_source"] - r["accuracy"] <= 1.0]
    assert first.recommended == min(qualifying, key=lambda r: r["gzip_size"])["name"]
    table = (out / "sweep.md").read_text()
    assert "| channel-finetuned | failed: RecipeError" in table and f"**{first.recommended}**" in table
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "sweep.json").read_text())["recommended"] == first.recommended
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".tmp-")]  # no half-written runs


def test_rerun_skips_finished_recipes_and_retries_failed_ones(sweep_run):
    first, second, _ = sweep_run
    again = {r["name"]: r for r in second.rows}
    assert again["float32"].get("cached") and again["dynamic"].get("cached")
    assert not again["channel-finetuned"].get("cached") and again["channel-finetuned"]["status"] == "failed"
    assert again["dynamic"]["gzip_size"] == {r["name"]: r for r in first.rows}["dynamic"]["gzip_size"]


def test_sweep_cli_bad_input_is_one_line(tmp_path, digits_model_path):
    (tmp_path / "grid.yaml").write_text("grid: {quantize: [int9]}\n")
    done = CliRunner().invoke(main, ["sweep", str(digits_model_path), "--grid", str(tmp_path / "grid.yaml"),
                                     "-o", str(tmp_path / "out")])
    assert done.exit_code == 2 and "quantize.mode must be one of" in done.output
    assert len(done.output.strip().splitlines()) == 1
    (tmp_path / "good.yaml").write_text("grid: {quantize: [none]}\n")
    done = CliRunner().invoke(main, ["sweep", str(tmp_path / "missing.h5"), "--grid", str(tmp_path / "good.yaml"),
                                     "-o", str(tmp_path / "out")])
    assert done.exit_code == 2 and "source model not found" in done.output
    assert not (tmp_path / "out").exists()


def test_convert_plot_writes_per_layer_bars(digits_model_path, digits_npz, tmp_path):
    train, _ = digits_npz
    out = tmp_path / "d.tflite"
    done = CliRunner().invoke(main, ["convert", str(digits_model_path), "-o", str(out), "--cluster", "8",
                                     "--plot", str(tmp_path / "layers.png")])
    assert done.exit_code == 0, done.output
    image = (tmp_path / "layers.png").read_bytes()
    assert image[:8] == PNG_MAGIC and len(image) > 5000
