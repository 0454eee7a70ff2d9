"""How a recipe's ``layers`` keys name layers that sit inside nested models.

A Keras classifier often holds a whole model as one layer (a ``keras.applications`` base inside a Functional
classifier). The Keras route opens such models (``sources/keras_nested.py``), so every technique sees their
layers; a key then names a layer by

- its path, ``outer/inner`` (``mobilenetv2_1.00_224/block_1_expand``; a top-level layer's path is its name),
- its bare name (``block_1_expand``) when no other layer or nested model has that name (else the key is
  refused as ambiguous, listing the paths to use),
- the name it has in the opened model (the report's), or
- the path or name of a model it is nested in, which then applies to all its layers; the layer's own key wins.

Regular expressions match the whole of any of those names. Strongest first: the layer's own names (exact,
then patterns in the recipe's order), then each enclosing model's, innermost first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

SEPARATOR = "/"


@dataclass(frozen=True)
class LayerPaths:
    """{name in the opened model: path (enclosing model names..., the layer's own name)} for every layer."""

    paths: Mapping[str, tuple[str, ...]]
    _bare_counts: Counter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nodes = {path[:i] for path in self.paths.values() for i in range(1, len(path) + 1)}
        object.__setattr__(self, "_bare_counts", Counter(node[-1] for node in nodes))

    @property
    def nested(self) -> bool:
        """Whether any layer came from inside a nested model."""
        return any(len(path) > 1 for path in self.paths.values())

    def _names(self, node: tuple[str, ...], flat: str | None = None) -> list[str]:
        names = [SEPARATOR.join(node)]
        if flat is not None and flat not in names:
            names.append(flat)
        if self._bare_counts[node[-1]] == 1 and node[-1] not in names:
            names.append(node[-1])
        return names

    def groups(self, flat: str) -> list[list[str]]:
        """The names layer ``flat`` answers to, strongest first: its own, then each enclosing model's."""
        path = self.paths.get(flat)
        if path is None:
            return [[flat]]
        return [self._names(path, flat)] + [self._names(path[:i]) for i in range(len(path) - 1, 0, -1)]

    def ambiguous(self, key: str) -> list[str]:
        """The paths of the nodes a bare ``key`` could mean, when it means several and names nothing else."""
        if self._bare_counts[key] < 2 or key in self.paths:
            return []
        nodes = {path[:i] for path in self.paths.values() for i in range(1, len(path) + 1)}
        if (key,) in nodes:
            return []
        return sorted(SEPARATOR.join(node) for node in nodes if node[-1] == key)

    def offered(self) -> list[str]:
        """Every name a key may use, for the close-match hint of an unknown key."""
        nodes = {path[:i] for path in self.paths.values() for i in range(1, len(path) + 1)}
        flat = {path: name for name, path in self.paths.items()}
        return sorted({n for node in nodes for n in self._names(node, flat.get(node))})
