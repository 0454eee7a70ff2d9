"""The techniques a recipe can name, in the order they run (graph techniques first, then weight techniques).

Adding a technique is one module or folder (its settings, its ``Technique`` entry, a backend per framework) and
one line here; the recipe's keys, per-layer overrides, validation and the capability table all follow from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import channels, cluster, low_rank, prune
from .base import GRAPH, WEIGHTS, PassRecord, Technique

if TYPE_CHECKING:
    from ..recipe import Recipe

TECHNIQUES: tuple[Technique, ...] = (
    channels.TECHNIQUE,
    low_rank.TECHNIQUE,
    prune.TECHNIQUE,
    cluster.TECHNIQUE,
)
TECHNIQUE_KEYS = tuple(t.key for t in TECHNIQUES)


def technique(key: str) -> Technique:
    return next(t for t in TECHNIQUES if t.key == key)


def in_stage(stage: str) -> tuple[Technique, ...]:
    if stage not in (GRAPH, WEIGHTS):
        raise ValueError(f"stage must be {GRAPH} or {WEIGHTS}; got {stage!r}")
    return tuple(t for t in TECHNIQUES if t.stage == stage)


def rewrite_graph(model: Any, recipe: Recipe, framework: str, example_inputs: tuple | None = None
                  ) -> tuple[Any, dict[str, PassRecord]]:
    """Run each graph technique the recipe asks for, in registry order, with ``framework``'s backend: the
    rewritten model and a record per technique run. (Support was checked before any work by
    ``capabilities.check_supported``.)"""
    records = {}
    for entry in in_stage(GRAPH):
        if recipe.asks(entry.key):
            model, records[entry.key] = entry.backend(framework)(model, recipe, example_inputs)
    return model, records
