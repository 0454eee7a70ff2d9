"""What every technique shares: its registry entry, and for weight passes layer selection and a record.

A pass decides per layer from the recipe, applies itself one-shot to the
weights (no data) or wraps layers with tfmot for fine-tuning (data given), and
strips its wrappers before export.  Layers the recipe asks for but tfmot
cannot handle are recorded as skipped with the reason, never silently ignored.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from ..recipe import LayerPlan, Recipe

KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")


GRAPH = "graph"  # rewrites layers (a thinner or factorized model): runs first, on the source framework's model
WEIGHTS = "weights"  # changes weight values in place: runs after the graph techniques
FRAMEWORKS = ("keras", "pytorch", "onnx")


@dataclass(frozen=True)
class Refusal:
    """Why a framework does not offer a technique (short: the README's cell), and what to do instead."""

    why: str
    fix: str


# For the techniques that rewrite layers: an ONNX file's graph is not rewritten.
GRAPH_NEEDS_SOURCE = Refusal("it rewrites layers before export, and rewrites need the PyTorch model",
                             "an ONNX file can be pruned, clustered and quantized; convert the PyTorch source for "
                             "the rest")


@dataclass(frozen=True)
class Technique:
    """One compression technique a recipe names: its settings, its stage, and a backend per framework.

    ``settings`` is a frozen dataclass with ``validate(where)``; the recipe takes it globally under ``key`` and per
    layer (``layers``/``layer_types``). ``backends`` map a framework to ``"module:attribute"``, imported only when
    the technique runs, so reading a recipe imports no framework. A framework without a backend is refused, before
    any work, with ``refusals[framework]``.
    Graph backends: ``(model, recipe, example_inputs) -> (model, PassRecord)``. Weight backends: a ``WeightPass``
    class (Keras, one-shot and fine-tuning) or ``(weights, recipe, records) -> PassRecord`` on
    ``arrays.WeightArray`` lists (PyTorch, ONNX, one-shot); ``trainers["pytorch"]``, a phase of PyTorch
    fine-tuning (``training.torch.PrunePhase`` shows the hooks).
    """

    key: str
    settings: type
    title: str
    stage: str
    backends: Mapping[str, str]
    refusals: Mapping[str, Refusal] = field(default_factory=dict)
    trainers: Mapping[str, str] = field(default_factory=dict)

    def backend(self, framework: str) -> Any:
        return _resolve(self.backends[framework])

    def trainer(self, framework: str) -> Any:
        return _resolve(self.trainers[framework])


def _resolve(where: str) -> Any:
    """The attribute named by ``"module:attribute"``, imported now."""
    module, _, attribute = where.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass
class PassRecord:
    """Which layers a pass compressed, with what settings, and which it skipped and why."""

    name: str
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    fine_tuned: bool = False
    summary: dict[str, Any] = field(default_factory=dict)  # whole-model effect, e.g. MACs before/after

    def to_dict(self) -> dict[str, Any]:
        out = {"layers": self.layers, "skipped": self.skipped, "fine_tuned": self.fine_tuned}
        return {**out, "summary": self.summary} if self.summary else out


def _short_name(weight) -> str:
    return weight.name.split("/")[-1].split(":")[0]


def kernel_weights(layer) -> list:
    return [w for w in layer.weights if _short_name(w) in KERNEL_NAMES]


def leaf_layers(model, within: tuple[str, ...] = ()) -> list[tuple[Any, tuple[str, ...]]]:
    """(layer, names of the models it is nested in) for every layer, nested models opened (a
    keras.applications base inside a classifier is one layer of the classifier, but many ops in the file)."""
    found = []
    for layer in model.layers:
        nested = hasattr(layer, "layers") and type(layer).__name__ in ("Functional", "Sequential", "Model")
        found += leaf_layers(layer, (*within, layer.name)) if nested else [(layer, within)]
    return found


class WeightPass(ABC):
    """One compression technique applied to the kernels of a Keras model."""

    name: str

    @abstractmethod
    def settings(self, plan: LayerPlan) -> Any | None:
        """This pass's settings from a layer plan, or None when the layer is not asked for."""

    @abstractmethod
    def registry(self):
        """tfmot's registry of the layers and weights this technique supports."""

    def weight_names(self, layer) -> list[str] | None:
        """tfmot's compressible weights of the layer; None when tfmot does not support it."""
        registry = self.registry()
        if not registry.supports(layer):
            return None
        return list(registry._weight_names(layer))  # the registry's own lookup, not public API

    @abstractmethod
    def one_shot(self, layer, settings, after: dict[str, PassRecord]) -> None:
        """Compress the layer's weights in place, without data."""

    @abstractmethod
    def measure(self, layer, settings) -> dict[str, Any]:
        """Facts about the layer's compressed weights, for the record."""

    @abstractmethod
    def wrap(self, model, targets: dict[str, Any], steps: int, after: dict[str, PassRecord]):
        """The model with tfmot wrappers on ``targets``, ready for fine-tuning."""

    @abstractmethod
    def callbacks(self) -> list:
        """Keras callbacks the wrapped model needs during fine-tuning."""

    @abstractmethod
    def strip(self, model):
        """The model without this pass's wrappers (plain layers, compressed weights)."""

    def select(self, model, recipe: Recipe) -> tuple[dict[str, Any], PassRecord]:
        record = PassRecord(self.name)
        targets = {}
        for layer in model.layers:
            if not kernel_weights(layer) and not hasattr(layer, "layers"):
                continue
            plan = recipe.plan_for(layer.name, type(layer).__name__)
            settings = None if plan is None else self.settings(plan)
            if settings is None:
                continue
            if hasattr(layer, "layers"):
                record.skipped[layer.name] = "nested model: tfmot works on flat models; flatten it"
                continue
            reason = self.unsupported_reason(layer, settings)
            if reason:
                record.skipped[layer.name] = reason
                continue
            targets[layer.name] = settings
        return targets, record

    def weights_of(self, layer) -> list:
        names = set(self.weight_names(layer) or ())
        return [w for w in layer.weights if _short_name(w) in names]

    def unsupported_reason(self, layer, settings) -> str | None:
        names = self.weight_names(layer)
        if not names:
            return f"tfmot cannot {self.name} {type(layer).__name__} weights"
        return None
