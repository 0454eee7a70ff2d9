"""What channel removal shares across frameworks: groups of layers whose channels are cut together,
how many channels a group keeps, and which ones (the ranking).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...errors import RecipeError
from . import ChannelSettings
from ..base import PassRecord


@dataclass
class ChannelGroup:
    producers: list[str] = field(default_factory=list)
    channels: int = 0
    slices: dict[tuple[str, str], None] = field(default_factory=dict)  # (module, "out"|"in"|"both"), ordered set
    blocked: str | None = None


def merge_groups(walks: dict[str, ChannelGroup], joins: list[list[str | None]], record: PassRecord) -> list[ChannelGroup]:
    """Join the walks whose channels meet at residual adds; return the groups that may be cut.

    ``joins`` lists, per add, the producer that owns each operand (None: channels that no
    prunable layer produced, such as the model input, which blocks the whole group).
    """
    parent = {name: name for name in walks}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    blocked_adds: dict[str, str] = {}
    for origins in joins:
        known = [o for o in origins if o is not None]
        for other in known[1:]:
            parent[find(other)] = find(known[0])
        if len(known) < len(origins):
            for origin in known:
                blocked_adds[origin] = "a residual add joins it with channels that cannot be pruned"
    merged: dict[str, ChannelGroup] = {}
    for name, walk in walks.items():
        root = find(name)
        group = merged.setdefault(root, ChannelGroup(channels=walk.channels))
        group.producers.append(name)
        group.slices.update(walk.slices)
        group.blocked = group.blocked or walk.blocked or blocked_adds.get(name)
        if walk.channels != group.channels:
            group.blocked = group.blocked or "the joined layers have different channel counts"
    for group in merged.values():
        if group.blocked and group.blocked != "not asked for by the recipe":
            for name in group.producers:
                record.skipped[name] = group.blocked
    return [g for g in merged.values() if not g.blocked]


def keep_count(channels: int, settings: ChannelSettings) -> int:
    keep = math.ceil(channels * (1.0 - settings.fraction))
    multiple = settings.multiple_of
    keep = max(multiple, int(math.ceil(keep / multiple) * multiple)) if multiple > 1 else max(1, keep)
    return min(channels, keep)


def channel_scores(weights: Sequence[np.ndarray], bn_scales: Sequence[np.ndarray], ranking: str,
                   producers: Sequence[str]) -> np.ndarray:
    """One score per output channel of a group of ``producers``; the highest are kept.

    ``weights`` holds each producer's weights as (channels, -1); ``bn_scales`` the gammas of the BatchNorms
    that follow them. ``bn_scale`` without a BatchNorm is refused rather than quietly ranked by another rule.
    """
    if ranking == "bn_scale":
        if not bn_scales:
            raise RecipeError(f"channels.ranking bn_scale ranks by the |gamma| of the BatchNorm after a layer, and "
                              f"{', '.join(producers)} has none; use ranking l1 or l2 for it (per-layer override) "
                              "or for the whole recipe")
        return np.sum(np.abs(np.asarray(bn_scales, np.float64)), axis=0)
    norms = [np.abs(w).sum(1) if ranking == "l1" else np.sqrt((w.astype(np.float64) ** 2).sum(1)) for w in weights]
    return np.sum(norms, axis=0)
