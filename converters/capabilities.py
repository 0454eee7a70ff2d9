"""Which technique each source framework supports: one table, read by every refusal and by the README.

A cell is either supported (None) or a ``Refusal`` that says why and what to do instead. The rows of the
registered techniques (``techniques/registry.py``) come from their entries: a framework with a backend is
supported, one without is refused with the entry's reason. ``check_supported`` runs before any work, so a recipe
never asks for something that would silently do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import RecipeError
from .recipe import Recipe
from .techniques.base import Refusal
from .techniques.data_aware import asked_explicitly
from .techniques.registry import TECHNIQUES as REGISTERED

FRAMEWORKS = {"keras": "Keras", "pytorch": "PyTorch", "onnx": "ONNX"}


class UnsupportedTechniqueError(RecipeError):
    """The recipe asks for a technique that this source framework does not support."""


@dataclass(frozen=True)
class Request:
    """What one conversion asks for, beyond the recipe itself."""

    recipe: Recipe
    finetune: bool = False
    budget: bool = False
    distill: bool = False  # into a smaller student (`sdk distill`)
    keep_layers: bool = False  # a student with fewer blocks (`sdk distill --keep-layers`)


@dataclass(frozen=True)
class Capability:
    name: str
    recipe_key: str
    asked: Callable[[Request], bool]
    cells: dict[str, Refusal | None]


def _registered(technique) -> Capability:
    """A registered technique's row: supported where it has a backend, else refused with its entry's reason."""
    cells = {f: None if f in technique.backends else technique.refusals[f] for f in FRAMEWORKS}
    return Capability(technique.title, technique.key, lambda r: r.recipe.asks(technique.key), cells)


_TRAINS = Refusal("trains the model, which needs the PyTorch model",
                  "drop it, or convert the PyTorch source (package.module:factory with --weights, or an nn.Module)")
_ALL = {"keras": None, "pytorch": None, "onnx": None}

CAPABILITIES: tuple[Capability, ...] = (
    *(_registered(t) for t in REGISTERED),
    Capability("post-training quantization", "quantize.mode", lambda r: r.recipe.quantize.mode != "none", _ALL),
    Capability("mixed precision", "layers: {NAME: {precision: float}}", lambda r: r.recipe.keeps_float_layers, _ALL),
    Capability("automatic mixed precision", "quantize.min_cosine / min_agreement",
               lambda r: r.recipe.quantize.searches_precision, _ALL),
    Capability("bias correction", "quantize.bias_correction", lambda r: r.recipe.quantize.bias_correction is True,
               _ALL),
    Capability("data-aware one-shot pruning and clustering", "prune.allocation/ranking, cluster.weighting, "
               "*.bias_correction", lambda r: bool(asked_explicitly(r.recipe)),
               {"keras": Refusal("it measures ONNX layers on calibration data, on the PyTorch/ONNX route only",
                                 "drop the option (Keras one-shot pruning ranks by magnitude) or fine-tune with "
                                 "--finetune DATA"), "pytorch": None, "onnx": None}),
    Capability("learned weight rounding (AdaRound)", "quantize.rounding: adaround",
               lambda r: r.recipe.quantize.rounding == "adaround", _ALL),
    Capability("cross-layer equalization", "quantize.equalization", lambda r: r.recipe.quantize.equalization is True,
               {"keras": Refusal("it rescales ONNX initializers, on the PyTorch/ONNX route only",
                                 "drop quantize.equalization, or convert the model from PyTorch/ONNX"),
                "pytorch": None, "onnx": None}),
    Capability("accuracy-budget mode", "--max-drop", lambda r: r.budget,
               {"keras": None, "pytorch": None,
                "onnx": Refusal("it fine-tunes every candidate, which needs the PyTorch model",
                                "convert the PyTorch source, or run `sdk sweep` with per-layer recipes")}),
    Capability("distillation into a smaller student", "sdk distill / distill", lambda r: r.distill,
               {"keras": None, "pytorch": None,
                "onnx": Refusal("training a student needs the teacher's framework model",
                                "give the PyTorch or Keras source")}),
    Capability("student with fewer blocks", "distill.keep_layers", lambda r: r.distill and r.keep_layers,
               {"keras": Refusal("blocks are found in PyTorch stacks (nn.ModuleList/Sequential) only",
                                 "give --student (a Keras model, .keras/.h5 file or package.module:factory) or "
                                 "--width-ratio"),
                "pytorch": None,
                "onnx": Refusal("training a student needs the teacher's framework model",
                                "give the PyTorch or Keras source")}),
    Capability("fine-tuning by distillation", "--finetune DATA", lambda r: r.finetune,
               {"keras": None, "pytorch": None,
                "onnx": Refusal("fine-tuning needs the PyTorch model; an ONNX file is compressed one-shot",
                                "drop --finetune (use --calib for int8) or convert the PyTorch source")}),
    Capability("quantization-aware training", "quantize.qat", lambda r: r.recipe.quantize.qat,
               {"keras": None, "pytorch": None, "onnx": _TRAINS}),
    Capability("QAT with clustering", "quantize.qat + cluster", lambda r: r.recipe.quantize.qat and r.recipe.clusters,
               {"keras": None, "pytorch": None, "onnx": _TRAINS}),
)


def check_supported(request: Request, framework: str) -> None:
    """Refuse, naming the technique and the framework, the first thing ``request`` asks that ``framework``
    does not support."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {', '.join(FRAMEWORKS)}; got {framework!r}")
    for technique in CAPABILITIES:
        refusal = technique.cells[framework]
        if refusal is not None and technique.asked(request):
            raise UnsupportedTechniqueError(f"{technique.name} ({technique.recipe_key}) is not available for "
                                            f"{FRAMEWORKS[framework]} sources: {refusal.why}; {refusal.fix}")


def markdown_table() -> str:
    """The README's capability table, made from the same cells as the refusals."""
    rows = ["| technique | recipe | " + " | ".join(FRAMEWORKS.values()) + " |",
            "|---|---|" + "---|" * len(FRAMEWORKS)]
    for technique in CAPABILITIES:
        cells = ["yes" if technique.cells[f] is None else f"no: {technique.cells[f].why}" for f in FRAMEWORKS]
        rows.append(f"| {technique.name} | `{technique.recipe_key}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)
