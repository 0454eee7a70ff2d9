"""One-shot pruning and clustering that use calibration data (PyTorch/ONNX route, no fine-tuning).

Given unlabelled calibration samples, the one-shot passes of ``arrays.py`` are steered by what the
data shows, each choice measured in onnxruntime on the batch-norm-folded graph that gets converted:

- **allocation: sensitivity** -- the first weight layer(s) and layers holding under ``SMALL_FRACTION`` of
  the prunable weights stay dense (reason in the report); the rest get per-layer sparsities chosen
  greedily from each layer's measured output error at a few sparsities, so that the pruned count
  still equals the target over all prunable weights (the spared weights are made up by the big layers).
- **ranking: activation** -- a weight's saliency is ``|w|`` times the RMS of its input channel on the
  data (Wanda, Sun et al. 2023), compared within each output channel.
- **weighting: activation** -- k-means centres are means weighted by each weight's input energy, so
  the clusters fit the weights that move the output most.
- **bias correction** -- each Conv/Gemm's mean output per channel on the data is moved back to the
  dense model's, layer after layer, through its bias (empirical bias correction, Nagel et al. 2019).

Per-layer overrides keep their own sparsity; only layers on the global prune settings are allocated.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import RecipeError
from .activations import Probe, Site, channel_axis, channel_sums, layer_sites
from .arrays import WeightArray, compress_weights, prune_one
from .base import PassRecord
from .cluster import ClusterSettings
from .prune import PruneSettings

if TYPE_CHECKING:
    from ..recipe import Recipe

SMALL_FRACTION = 0.01  # layers with fewer of the prunable weights than this stay dense under sensitivity
STAT_SAMPLES = 512  # calibration samples for activation statistics and bias correction
SENSITIVITY_SAMPLES = 128  # ... for the per-layer error curves
LEVELS = (0.25, 0.5, 0.75, 0.9)  # sparsities at which each layer's output error is measured
STEP = 0.05  # the allocation's sparsity grid
MAX_SPARSITY = 0.95
CORRECTION_PASSES = 3  # all layers' means re-measured and corrected together, this many times


@dataclasses.dataclass
class Choices:
    """What the one-shot passes do for this run, resolved from the recipe's ``auto`` values."""

    allocation: bool = False
    ranking: bool = False
    weighting: bool = False
    correction: bool = False

    @property
    def any(self) -> bool:
        return self.allocation or self.ranking or self.weighting or self.correction


def asked_explicitly(recipe: Recipe) -> list[str]:
    """The data-aware options a recipe sets explicitly (``name value``), for the refusals."""
    asked = []
    for where, settings in _all_settings(recipe):
        if isinstance(settings, PruneSettings):
            asked += [f"{where}.allocation sensitivity"] * (settings.allocation == "sensitivity")
            asked += [f"{where}.ranking activation"] * (settings.ranking == "activation")
        if isinstance(settings, ClusterSettings):
            asked += [f"{where}.weighting activation"] * (settings.weighting == "activation")
        if isinstance(settings, (PruneSettings, ClusterSettings)):
            asked += [f"{where}.bias_correction true"] * (settings.bias_correction is True)
    return asked


def check_data_aware(recipe: Recipe, calibration: bool, finetune: bool) -> None:
    """Refuse, before any work, a data-aware option that would do nothing: without calibration data or
    with fine-tuning (which trains the weights instead)."""
    asked = asked_explicitly(recipe)
    if not asked:
        return
    if finetune:
        raise RecipeError(f"{asked[0]} applies to one-shot compression, and --finetune data trains the "
                          "compressed weights instead; drop the option or the --finetune data")
    if not calibration:
        raise RecipeError(f"{asked[0]} measures activations on calibration data, and none was given; pass "
                          "--calib DATA, or drop the option")


def resolve(recipe: Recipe, data: bool) -> Choices:
    """Which data-aware steps run: an explicit value, else (auto) on when calibration data is given."""
    def on(value, yes) -> bool:
        return value == yes or value is True or (value == "auto" and data)

    choices = Choices()
    for _, settings in _all_settings(recipe):
        if isinstance(settings, PruneSettings) and settings.structure == "unstructured":
            choices.allocation |= on(settings.allocation, "sensitivity")
            choices.ranking |= on(settings.ranking, "activation")
        if isinstance(settings, ClusterSettings):
            choices.weighting |= on(settings.weighting, "activation")
        if isinstance(settings, (PruneSettings, ClusterSettings)):
            choices.correction |= on(settings.bias_correction, True)
    return choices


def _all_settings(recipe: Recipe):
    yield "prune", recipe.prune
    yield "cluster", recipe.cluster
    for section, overrides in (("layers", recipe.layers), ("layer_types", recipe.layer_types)):
        for key, override in overrides.items():
            if override is not None:
                for kind in ("prune", "cluster"):
                    value = getattr(override, kind)
                    if isinstance(value, (PruneSettings, ClusterSettings)):
                        yield f"{section}[{key!r}].{kind}", value


class DataEvidence:
    """What the calibration data shows about each layer, measured once, for the weight techniques' array backends
    (``arrays.prune_arrays``, ``arrays.cluster_arrays``) to steer their one-shot choices by."""

    def __init__(self, model, sources: dict[str, str], specs, data: dict[str, np.ndarray], choices: Choices):
        self.choices = choices
        self.sites = layer_sites(model, sources)
        count = len(next(iter(data.values())))
        self.data = _subset(data, np.random.default_rng(0).permutation(count)[:STAT_SAMPLES])
        self.samples = len(next(iter(self.data.values())))
        self.probe = Probe(model, specs, [s.input for s in self.sites.values()],
                           [s.weight for s in self.sites.values()])
        self.energy = _input_energy(self.probe, self.data, self.sites)

    def saliency(self, targets: dict[str, PruneSettings], weights: list[WeightArray],
                 record: PassRecord) -> dict[str, np.ndarray]:
        """|w| x the RMS of its input channel, for the layers whose ranking is (or resolves to) activation."""
        by_name = {w.name: w for w in weights}
        scores = {name: np.abs(by_name[name].values) * np.sqrt(self._per_weight(name, by_name[name]))
                  for name, s in targets.items() if _layer_asks(s, "ranking", "activation", self.choices.ranking)}
        if scores:
            record.summary["ranking"] = (f"activation (|w| x its input channel's RMS on {self.samples} calibration "
                                         "samples, within each output channel)")
        return scores

    def allocate(self, targets: dict[str, PruneSettings], weights: list[WeightArray],
                 scores: dict[str, np.ndarray], recipe: Recipe, record: PassRecord) -> dict[str, PruneSettings]:
        """Per-layer sparsities by measured sensitivity (``allocation``), or ``targets`` as they are."""
        if not self.choices.allocation:
            return targets
        data = _subset(self.data, np.arange(min(SENSITIVITY_SAMPLES, self.samples)))
        return allocate(targets, weights, self.sites, scores, self.probe, data, recipe, record)

    def weighting(self, targets: dict[str, ClusterSettings], weights: list[WeightArray],
                  record: PassRecord) -> dict[str, np.ndarray]:
        """Each weight's input energy, for the layers whose cluster weighting is (or resolves to) activation."""
        by_name = {w.name: w for w in weights}
        weighted = {name: self._per_weight(name, by_name[name]) for name, s in targets.items()
                    if _layer_asks(s, "weighting", "activation", self.choices.weighting)}
        if weighted:
            record.summary["weighting"] = (f"activation (centres weighted by input energy on {self.samples} "
                                           "calibration samples)")
        return weighted

    def _per_weight(self, name: str, weight: WeightArray) -> np.ndarray:
        return _broadcast(self.energy[name], weight, self.sites[name])


def compress_with_data(model, weights: list[WeightArray], sources: dict[str, str], recipe: Recipe, framework: str,
                       data: dict[str, np.ndarray] | None, specs) -> tuple[Any, dict[str, PassRecord]]:
    """Every weight technique one-shot on ``weights`` (the registry's loop), steered by what ``data``
    (calibration inputs by name) shows where the recipe allows, then the biases corrected; returns the model
    with the compressed weights and the records."""
    from ..sources.onnx import set_weights

    choices = resolve(recipe, data is not None)
    steered = data is not None and choices.any and recipe.compresses_weights
    started = time.perf_counter()
    evidence = DataEvidence(model, sources, specs, data, choices) if steered else None
    dense = _copy(model) if steered and choices.correction else None
    records = compress_weights(weights, recipe, framework, evidence)
    set_weights(model, weights, sources)
    if evidence is None:
        return model, records
    if dense is not None:
        corrected = [name for name in evidence.sites if name in records["prune"].layers
                     or name in records["cluster"].layers]
        model, records["bias_correction"] = correct_biases(dense, model, specs, evidence.sites, corrected,
                                                           evidence.data)
    records["prune" if records["prune"].layers else "cluster"].summary["data_aware_seconds"] = \
        round(time.perf_counter() - started, 2)
    return model, records


def _layer_asks(settings, key: str, value: str, resolved_on: bool) -> bool:
    own = getattr(settings, key)
    return own == value or (own == "auto" and resolved_on)


def _subset(data: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[np.sort(index)] for k, v in data.items()}


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _input_energy(probe: Probe, data, sites: dict[str, Site]) -> dict[str, np.ndarray]:
    """Each layer's mean square input per channel on ``data``."""
    tensors = list(dict.fromkeys(s.input for s in sites.values()))
    axes = {s.input: channel_axis(s.op_type) for s in sites.values()}
    sums = probe.run(data, tensors, reduce=lambda name, value, real: channel_sums(value, axes[name]))
    by_tensor = {t: total[1] / np.maximum(total[2], 1) for t, total in zip(tensors, sums)}
    return {name: by_tensor[s.input] for name, s in sites.items()}


def _broadcast(per_channel: np.ndarray, weight: WeightArray, site: Site) -> np.ndarray:
    """A per-input-channel statistic laid out like the weight array (grouped convolutions included)."""
    values = weight.values
    if site.op_type == "Conv" and site.groups > 1:
        per_group_in, out = values.shape[1], values.shape[0]
        index = (np.arange(out)[:, None] // (out // site.groups)) * per_group_in + np.arange(per_group_in)[None, :]
        return np.broadcast_to(per_channel[index].reshape(out, per_group_in, *[1] * (values.ndim - 2)),
                               values.shape)
    shape = [1] * values.ndim
    shape[weight.in_axis] = len(per_channel)
    if per_channel.size != values.shape[weight.in_axis]:  # e.g. a MatMul on a tensor whose last axis differs
        return np.ones(values.shape)
    return np.broadcast_to(per_channel.reshape(shape), values.shape)


# -- sensitivity allocation ------------------------------------------------------------------------------


def allocate(targets: dict[str, PruneSettings], weights: list[WeightArray], sites: dict[str, Site],
             scores: dict[str, np.ndarray], probe: Probe, data, recipe: Recipe,
             record: PassRecord) -> dict[str, PruneSettings]:
    """Per-layer sparsities meeting the global target over the layers on the global settings, the first
    and small layers spared, the rest chosen by measured output error per pruned weight."""
    by_name = {w.name: w for w in weights}
    pool = [name for name, s in targets.items() if s is recipe.prune and s.structure == "unstructured"
            and s.allocation != "uniform" and name in sites]
    if len(pool) < 2:
        return targets
    target = recipe.prune.sparsity
    sizes = {name: by_name[name].values.size for name in pool}
    total = sum(sizes.values())
    needed = target * total
    spared = {}
    for name in pool:
        if sites[name].first:
            spared[name] = f"kept dense: first layer ({sizes[name]} weights)"
        elif sizes[name] < SMALL_FRACTION * total:
            spared[name] = (f"kept dense: small layer ({sizes[name]} weights, "
                            f"{100 * sizes[name] / total:.2f}% of the prunable weights)")
    free = [name for name in pool if name not in spared]
    if sum(sizes[n] for n in free) * MAX_SPARSITY < needed:  # too few big weights: spare nothing
        spared, free = {}, pool
    reference = probe.run(data, probe.output_names[:1])[0]
    scale = float(np.mean(np.square(reference - reference.mean(axis=0)))) or 1.0
    curves = {}
    for name in free:
        errors = [0.0]
        for level in LEVELS:
            trial = prune_one(by_name[name], dataclasses.replace(targets[name], sparsity=level), scores.get(name))
            output = probe.run(data, probe.output_names[:1], {sites[name].weight: trial})[0]
            errors.append(float(np.mean(np.square(output - reference))) / scale)
        curves[name] = np.interp(np.arange(0, MAX_SPARSITY + 1e-9, STEP), (0.0, *LEVELS),
                                 np.maximum.accumulate(errors), right=None)
    chosen = _greedy(curves, sizes, needed)
    out = dict(targets)
    for name in pool:
        sparsity = chosen.get(name, 0.0)
        if name in spared:
            record.skipped[name] = spared[name]
            out.pop(name)
            continue
        out[name] = dataclasses.replace(targets[name], sparsity=float(sparsity))
        step = min(int(round(sparsity / STEP)), len(curves[name]) - 1)
        record.layers[name] = {"allocated": round(float(sparsity), 4),
                               "measured_error": round(float(curves[name][step]), 5)}
    pruned = sum(chosen.get(n, 0.0) * sizes[n] for n in pool)
    record.summary["allocation"] = (
        f"sensitivity: target {target:g} over {int(total):,} prunable weights, met {pruned / total:.4f} ("
        + ", ".join(f"{n} {chosen.get(n, 0.0):.3f}" for n in pool if n not in spared)
        + f"); first layer and layers under {SMALL_FRACTION:.0%} of them kept dense, the rest chosen by the output "
        f"error per pruned weight measured at sparsities {', '.join(map(str, LEVELS))} on {len(reference)} "
        "calibration samples")
    return out


def _greedy(curves: dict[str, np.ndarray], sizes: dict[str, int], needed: float) -> dict[str, float]:
    """Raise one layer's sparsity by ``STEP`` at a time, the one whose error grows least per weight, until
    ``needed`` weights are pruned; the last step is trimmed so the count is met exactly."""
    steps = {name: 0 for name in curves}
    pruned = 0.0
    last = None
    while pruned < needed:
        best, best_cost = None, np.inf
        for name, curve in curves.items():
            if steps[name] + 1 < len(curve):
                cost = (curve[steps[name] + 1] - curve[steps[name]]) / (STEP * sizes[name])
                if cost < best_cost:
                    best, best_cost = name, cost
        if best is None:
            break
        steps[best] += 1
        pruned += STEP * sizes[best]
        last = best
    chosen = {name: steps[name] * STEP for name in curves}
    if last is not None and pruned > needed:
        chosen[last] -= (pruned - needed) / sizes[last]
    return chosen


# -- bias correction ---------------------------------------------------------------------------------------


def correct_biases(dense, model, specs, sites: dict[str, Site], names: list[str], data
                   ) -> tuple[Any, PassRecord]:
    """``model`` whose listed layers' mean outputs per channel match ``dense``'s on ``data``, through their
    biases (added as zeros where a Conv/Gemm has none); measured again after each of a few passes."""
    from onnx import numpy_helper

    record = PassRecord("bias_correction")
    model = _own_biases(model, sites, names, record)
    sites = layer_sites(model, {s.name: s.weight for s in sites.values()})
    targets = [n for n in names if n in sites and sites[n].bias is not None]
    outputs = [sites[n].output for n in targets]
    axes = {sites[n].output: channel_axis(sites[n].op_type) for n in targets}

    def means(probe: Probe, feeds: dict | None = None) -> list[np.ndarray]:
        sums = probe.run(data, outputs, feeds, reduce=lambda name, value, real: channel_sums(value, axes[name]))
        return [total[0] / np.maximum(total[2], 1) for total in sums]

    wanted = means(Probe(dense, specs, outputs, []))
    initializers = {init.name: init for init in model.graph.initializer}
    biases = {n: numpy_helper.to_array(initializers[sites[n].bias]).astype(np.float64) for n in targets}
    probe = Probe(model, specs, outputs, [sites[n].bias for n in targets])
    shifts = {n: np.zeros_like(b) for n, b in biases.items()}
    before = None
    for _ in range(CORRECTION_PASSES):
        got = means(probe, {sites[n].bias: biases[n] + shifts[n] for n in targets})
        gaps = [w - g for w, g in zip(wanted, got)]
        before = before or [float(np.abs(g).mean()) for g in gaps]
        for name, gap in zip(targets, gaps):
            if gap.shape == shifts[name].shape:
                shifts[name] += gap
    got = means(probe, {sites[n].bias: biases[n] + shifts[n] for n in targets})
    for name, want, have, first in zip(targets, wanted, got, before):
        init = initializers[sites[name].bias]
        init.CopyFrom(numpy_helper.from_array((biases[name] + shifts[name]).astype(np.float32), init.name))
        record.layers[name] = {"mean_shift_before": round(first, 6),
                               "mean_shift_after": round(float(np.abs(want - have).mean()), 6)}
    shifts_before = [r["mean_shift_before"] for r in record.layers.values()]
    shifts_after = [r["mean_shift_after"] for r in record.layers.values()]
    record.summary = {"layers": len(record.layers), "samples": len(next(iter(data.values()))),
                      "mean |output shift| per channel": f"{np.mean(shifts_before):.4g} -> {np.mean(shifts_after):.4g}"
                      if record.layers else "none"}
    return model, record


def _own_biases(model, sites: dict[str, Site], names: list[str], record: PassRecord):
    """Every listed Conv/Gemm gets a bias initializer of its own (zeros when it had none; shared ones
    copied), so correcting one layer moves no other."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for tensor in node.input:
            uses[tensor] = uses.get(tensor, 0) + 1
    by_weight = {sites[n].weight: n for n in names}
    for node in model.graph.node:
        name = by_weight.get(node.input[1]) if len(node.input) > 1 else None
        if name is None:
            continue
        if node.op_type not in ("Conv", "Gemm"):
            record.skipped[name] = f"{node.op_type} is not corrected (Conv and Gemm are)"
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Gemm" and any(attrs[k].i for k in ("transA",) if k in attrs):
            record.skipped[name] = "Gemm with transA"
            continue
        if node.op_type == "Gemm" and "beta" in attrs and attrs["beta"].f != 1.0:
            record.skipped[name] = f"Gemm with beta {attrs['beta'].f}"
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        channels = weight.shape[0] if node.op_type == "Conv" or _trans_b(attrs) else weight.shape[1]
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias_name is not None and bias_name not in initializers:
            record.skipped[name] = "its bias is computed, not an initializer"
            continue
        if bias_name is not None and uses.get(bias_name, 0) <= 1:
            if numpy_helper.to_array(initializers[bias_name]).shape != (channels,):
                record.skipped[name] = "its bias is broadcast, not one value per channel"
            continue
        values = numpy_helper.to_array(initializers[bias_name]) if bias_name else np.zeros(channels, np.float32)
        if values.shape != (channels,):
            record.skipped[name] = "its bias is broadcast, not one value per channel"
            continue
        new = model.graph.initializer.add()
        new.CopyFrom(numpy_helper.from_array(values.astype(np.float32), f"{node.input[1]}.bias_corrected"))
        if len(node.input) < 3:
            node.input.append(new.name)
        else:
            uses[bias_name or ""] = uses.get(bias_name or "", 1) - 1
            node.input[2] = new.name
    return model


def _trans_b(attrs) -> bool:
    return "transB" in attrs and attrs["transB"].i == 1
