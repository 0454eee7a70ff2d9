"""Accuracy-budget mode: measure each layer's sensitivity, then find the smallest per-layer recipe in budget.

Sensitivity is the accuracy drop (top-1 agreement with the source when the
data has no labels) when only that layer is pruned or clustered, one-shot, at
each level.  A greedy multiple-choice knapsack then picks per-layer settings
that save the most estimated bytes per point of estimated drop, up to an
allowance.  The estimate ignores fine-tuning, which recovers much of it, so
the allowance starts generous (4x the budget) and every candidate is
verified by a real conversion (fine-tuning + int8), tightening until the
measured drop on the held-out data is within budget.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..capabilities import Request, check_supported
from ..data import DataSource, Dataset
from ..errors import DataError, RecipeError
from ..files import atomic_write, check_output_path
from ..techniques.cluster import kmeans_1d
from ..techniques.prune import magnitude_prune
from ..recipe import QuantizeSettings, Recipe
from .subjects import KerasSubject, TorchSubject

PRUNE_LEVELS = (0.5, 0.75, 0.9)
CLUSTER_LEVELS = (32, 16, 8)
CHANNEL_LEVELS = (0.25, 0.5, 0.75)
ALLOWANCE_FACTORS = (4.0, 2.0, 1.0, 0.5)  # estimated-drop allowances, in budgets, tried in this order
OPTIMIZE_TARGETS = ("size", "latency")


@dataclass
class LayerSensitivity:
    name: str
    layer_type: str
    params: int
    prune: dict[float, float] = field(default_factory=dict)  # level -> accuracy drop in points
    cluster: dict[int, float] = field(default_factory=dict)
    channels: dict[float, float] = field(default_factory=dict)  # fraction removed -> drop (latency mode)
    macs_saved: dict[float, int] = field(default_factory=dict)  # fraction removed -> MACs it saves


@dataclass
class LayerOptions:
    """One layer's choices for the knapsack: (setting, estimated saving, estimated drop), "as is" first."""

    name: str
    options: list[tuple[Any, float, float]]


@dataclass
class BudgetResult:
    result: Any  # the ConversionResult of the chosen recipe
    recipe: Recipe
    recipe_path: Path
    sensitivity: list[LayerSensitivity]
    attempts: list[dict]
    max_drop: float

    def render(self) -> str:
        if any(s.channels for s in self.sensitivity):
            header = "  ".join(f"remove{int(f * 100):>3}%" for f in CHANNEL_LEVELS)
            rows = [(s, "  ".join(f"{s.channels[f]:+10.2f}" if f in s.channels else f"{'-':>10}"
                                  for f in CHANNEL_LEVELS)) for s in self.sensitivity]
        else:
            header = "  ".join(f"prune{int(p * 100):>3}" for p in PRUNE_LEVELS) + "  " + \
                "  ".join(f"cluster{c:>3}" for c in CLUSTER_LEVELS)
            rows = [(s, "  ".join(f"{s.prune[p]:+8.2f}" for p in PRUNE_LEVELS) + "  "
                     + "  ".join(f"{s.cluster[c]:+10.2f}" for c in CLUSTER_LEVELS)) for s in self.sensitivity]
        lines = ["layer sensitivity (accuracy drop in points when only that layer is compressed, one-shot):",
                 f"layer       params   {header}"]
        lines += [f"{s.name:<10} {s.params:>8}   {cells}" for s, cells in rows]
        lines.append("attempts (estimated allowance -> measured after fine-tuning and int8):")
        for a in self.attempts:
            speed = f", {a['latency_ms']:.3f} ms ({a['speedup_vs_int8']:.2f}x vs int8)" if "latency_ms" in a else ""
            lines.append(f"  allowance {a['allowance']:.2f}: gzip {a['gzip_size']:,} bytes{speed}, drop "
                         f"{a['drop']:+.2f} points -> {'within' if a['within'] else 'over'} budget {self.max_drop}")
        lines.append(f"chosen recipe written to {self.recipe_path} (reusable with --recipe)")
        return "\n".join(lines)


def _quality(subject, data: Dataset, reference: np.ndarray) -> float:
    """Accuracy in percent, or top-1 agreement with ``reference`` when the data has no labels."""
    return _score(subject.predict(data.x).argmax(-1), data, reference)


def _score(predictions: np.ndarray, data: Dataset, reference: np.ndarray) -> float:
    target = data.y if data.labelled else reference
    return float((predictions == target).mean() * 100)


def _baseline(subject, data: Dataset) -> tuple[np.ndarray, float]:
    """The source's own predictions (the reference without labels) and its quality, from one pass."""
    reference = subject.predict(data.x).argmax(-1)
    return reference, _score(reference, data, reference)


def measure_sensitivity(subject, data: Dataset, progress: Callable | None = None) -> list[LayerSensitivity]:
    """The drop of every weight layer at every prune and cluster level, each applied alone.

    ``subject``: a ``KerasSubject`` or ``TorchSubject`` (converters/search/subjects.py)."""
    reference, base = _baseline(subject, data)
    layers = subject.weight_layers()
    out = []
    for i, (name, layer_type, kernel) in enumerate(layers):
        sensitivity = LayerSensitivity(name, layer_type, int(kernel.size))
        trials = [("prune", p, magnitude_prune(kernel, p)) for p in PRUNE_LEVELS]
        trials += [("cluster", c, kmeans_1d(kernel, c)) for c in CLUSTER_LEVELS]
        for kind, level, values in trials:
            subject.set_kernel(name, values)
            getattr(sensitivity, kind)[level] = base - _quality(subject, data, reference)
        subject.set_kernel(name, kernel)
        out.append(sensitivity)
        if progress:
            progress("sensitivity", i + 1, len(layers))
    return out


def estimated_bytes(params: int, sparsity: float, clusters: int | None) -> float:
    """gzip-ish bytes of an int8 weight: nonzeros at log2(clusters) bits plus the zero mask's entropy."""
    mask = 0.0 if sparsity in (0.0, 1.0) else -(sparsity * math.log2(sparsity)
                                                + (1 - sparsity) * math.log2(1 - sparsity))
    value_bits = math.log2(clusters) if clusters else 8.0
    return params * ((1 - sparsity) * value_bits + mask) / 8


def size_options(sensitivity: list[LayerSensitivity]) -> list[LayerOptions]:
    """Per layer: every (sparsity, clusters) pair, saving estimated bytes at the sum of its two drops."""
    out = []
    for s in sensitivity:
        full = estimated_bytes(s.params, 0.0, None)
        out.append(LayerOptions(s.name, [((p, c), full - estimated_bytes(s.params, p, c),
                                          max(0.0, s.prune.get(p, 0.0)) + (max(0.0, s.cluster[c]) if c else 0.0))
                                         for p in (0.0, *PRUNE_LEVELS) for c in (None, *CLUSTER_LEVELS)]))
    return out


def latency_options(sensitivity: list[LayerSensitivity]) -> list[LayerOptions]:
    """Per layer whose channels can be removed: each fraction, saving the MACs it measured."""
    return [LayerOptions(s.name, [(0.0, 0.0, 0.0)] + [(f, float(s.macs_saved[f]), max(0.0, s.channels[f]))
                                                      for f in CHANNEL_LEVELS])
            for s in sensitivity if s.channels]


def choose(layers: list[LayerOptions], allowance: float) -> dict[str, Any]:
    """Per-layer settings saving the most per estimated point of drop, within ``allowance`` points
    (a greedy multiple-choice knapsack: each step takes the best saving-per-point upgrade)."""
    chosen = {layer.name: 0 for layer in layers}
    spent = 0.0
    while True:
        best, best_score = None, 0.0
        for layer in layers:
            _, saving_now, drop_now = layer.options[chosen[layer.name]]
            for index, (_, saving, drop) in enumerate(layer.options):
                saved, cost = saving - saving_now, drop - drop_now
                if saved <= 0 or spent + cost > allowance + 1e-9:
                    continue
                score = saved / (max(cost, 0.0) + 0.01)
                if score > best_score:
                    best, best_score = (layer.name, index, cost), score
        if best is None:
            return {layer.name: layer.options[chosen[layer.name]][0] for layer in layers}
        name, index, cost = best
        chosen[name] = index
        spent += cost


def recipe_for(choice: dict[str, Any], base: Recipe, optimize: str) -> Recipe:
    """The recipe of a choice: per-layer prune/cluster (size) or channel fractions (latency), int8."""
    layers = {}
    for name, setting in choice.items():
        if optimize == "size":
            sparsity, clusters = setting
            layers[name] = {"prune": {"sparsity": sparsity} if sparsity else None,
                            "cluster": {"clusters": clusters} if clusters else None}
        elif setting:
            layers[name] = {"channels": {"fraction": setting}}
    data = base.to_dict()
    data.update(prune=None, cluster=None, channels=None, layers=layers,
                quantize=dataclasses.asdict(base.quantize) if base.quantize.mode != "none"
                else dataclasses.asdict(QuantizeSettings(mode="int8")))
    return Recipe.from_dict(data)


def measure_channel_sensitivity(subject, data: Dataset, progress: Callable | None = None
                                ) -> list[LayerSensitivity]:
    """The drop and the MACs saved when only one layer loses each fraction of its channels (one-shot)."""
    reference, base = _baseline(subject, data)
    base_macs = subject.macs()
    layers = subject.channel_layers()
    out = []
    for i, (name, layer_type, params) in enumerate(layers):
        sensitivity = LayerSensitivity(name, layer_type, params)
        for fraction in CHANNEL_LEVELS:
            thinner = subject.without_channels(name, fraction)
            if thinner is None:
                break
            sensitivity.channels[fraction] = base - _quality(thinner, data, reference)
            sensitivity.macs_saved[fraction] = base_macs - thinner.macs()
        out.append(sensitivity)
        if progress:
            progress("sensitivity", i + 1, len(layers))
    return out


def _median_latency_ms(path) -> float:
    from device_runtime.bench import benchmark

    return benchmark(path, threads=(1,), warmup=10, runs=50)["results"][0]["p50_ms"]


def run_budget(source: Any, output: str | os.PathLike, *, max_drop: float, optimize: str = "size",
               finetune_data: DataSource | None = None, calib_data: DataSource | None = None,
               eval_data: DataSource | None = None, recipe: Recipe | None = None, force: bool = False,
               progress: Callable | None = None, verbose: bool = False, metadata=None,
               source_options: dict[str, Any] | None = None) -> BudgetResult:
    """The smallest recipe whose measured drop on ``eval_data`` is within ``max_drop`` points.

    ``source`` is a Keras or PyTorch source; ``source_options`` carries a PyTorch source's
    ``example_input``, ``input_shapes``, ``weights`` and ``keep_nchw`` (as ``sdk.convert`` takes them).
    """
    from ..data import datasets
    from ..sources import framework_of

    if optimize not in OPTIMIZE_TARGETS:
        raise RecipeError(f"--optimize must be one of {', '.join(OPTIMIZE_TARGETS)}; got {optimize!r}")
    if max_drop < 0:
        raise RecipeError(f"--max-drop must be >= 0 points; got {max_drop}")
    base = recipe or Recipe()
    framework = framework_of(source)
    check_supported(Request(base, finetune=finetune_data is not None, budget=True), framework)
    if finetune_data is None or eval_data is None:
        raise DataError("accuracy-budget mode needs --finetune DATA (to fine-tune) and --eval DATA (held out, "
                        "to measure the drop)")
    source_paths = [p for p in (source, (source_options or {}).get("weights"))
                    if isinstance(p, (str, os.PathLike)) and Path(p).exists()]
    output = check_output_path(output, source_paths, force)
    subject, convert_source = _subject(source, framework, source_options or {})
    known = _known_normalisation(subject, metadata)  # image folders load as the conversions will load them
    _, _, evaluation, _ = datasets(subject.input_shape, None, None, eval_data, channels_first=subject.channels_first,
                                   pixels=known)
    if optimize == "size":
        sensitivity = measure_sensitivity(subject, evaluation, progress)
        options = size_options(sensitivity)
    else:
        sensitivity = measure_channel_sensitivity(subject, evaluation, progress)
        options = latency_options(sensitivity)
        if not options:
            raise RecipeError("--optimize latency found no layer whose channels can be removed (see `channels` "
                              "in the README for what blocks a layer)")
    work = Path(tempfile.mkdtemp(prefix="sdk-budget-"))
    convert = functools.partial(convert_source, finetune_data=finetune_data, calib_data=calib_data or finetune_data,
                                eval_data=eval_data, progress=progress, verbose=verbose, metadata=metadata)
    attempts, passing, seen = [], None, []
    try:
        baseline_ms = None
        if optimize == "latency":  # the same int8 recipe without channel removal, timed in this run
            baseline_ms = _median_latency_ms(convert(work / "int8.tflite", recipe_for({}, base, optimize)).path)
        for factor in ALLOWANCE_FACTORS:
            choice = choose(options, factor * max_drop)
            if choice in seen:
                continue
            seen.append(choice)
            candidate = recipe_for(choice, base, optimize)
            result = convert(work / f"attempt{len(attempts)}.tflite", candidate)
            fidelity = result.report.fidelity
            drop = fidelity.accuracy_source - fidelity.accuracy_tflite if fidelity.accuracy_source is not None \
                else 100.0 - fidelity.top1_agreement
            attempt = {"allowance": factor * max_drop, "choice": choice,
                       "gzip_size": result.report.compressed.gzip_size, "drop": drop, "within": drop <= max_drop}
            if baseline_ms is not None:
                attempt["latency_ms"] = _median_latency_ms(result.path)
                attempt["speedup_vs_int8"] = baseline_ms / attempt["latency_ms"]
            attempts.append(attempt)
            if drop <= max_drop:
                passing = (result, candidate)
                break
        if passing is None:
            raise DataError(f"no per-layer recipe stayed within {max_drop} points (best measured drop "
                            f"{min(a['drop'] for a in attempts):.2f}); raise --max-drop or add fine-tuning epochs")
        result, chosen = passing
        report = result.report
        report.output = str(output)
        report.notes.append(f"accuracy-budget mode ({optimize}): {len(attempts)} candidate(s) converted; chosen "
                            f"drop {attempts[-1]['drop']:+.2f} within {max_drop} points")
        from ..pipeline import write_result

        final = write_result(output, result.path.read_bytes(), report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import yaml

    recipe_path = output.with_name(output.stem + ".recipe.yaml")
    atomic_write(recipe_path, yaml.safe_dump(chosen.to_dict(), sort_keys=False).encode())
    atomic_write(output.with_name(output.stem + ".sensitivity.json"), json.dumps(
        {"max_drop": max_drop, "attempts": attempts, "layers": [dataclasses.asdict(s) for s in sensitivity]},
        indent=2).encode())
    return BudgetResult(final, chosen, recipe_path, sensitivity, attempts, max_drop)


def _known_normalisation(subject: Any, metadata):
    """The input normalisation the conversions will know before loading data (see routes.keras.keras_normalisation)."""
    from ..routes.keras import keras_normalisation
    from ..targets.tflite import normalisation

    if isinstance(subject, KerasSubject):
        return keras_normalisation(subject.model, metadata)[0]
    return normalisation.given(metadata, [(1, *subject.input_shape)])


def _subject(source: Any, framework: str, options: dict[str, Any]) -> tuple[Any, Callable]:
    """The model to measure, and the conversion each candidate goes through: ``convert(output, recipe, ...)``."""
    from ..pipeline import convert

    if framework == "pytorch":
        from ..sources.torch import load_torch_source

        torch_source = load_torch_source(source, options.get("example_input"), options.get("input_shapes"),
                                         options.get("weights"), options.get("input_dtypes"))
        return TorchSubject(torch_source.module, torch_source.example_inputs), \
            functools.partial(convert, source, **options)
    from ..recipe import Recipe
    from ..sources.keras import load_keras_model
    from ..sources.keras_nested import open_nested

    flat = open_nested(load_keras_model(source), Recipe(), [])[0]  # the layers of nested models are candidates too
    return KerasSubject(flat), functools.partial(convert, source)
