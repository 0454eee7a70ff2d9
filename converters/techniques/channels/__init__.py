"""Channel removal: whole channel groups cut out, so the model gets thinner (grouping.py; keras.py and torch.py
rewrite each framework's model)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import RecipeError, check_choice
from ..base import GRAPH, GRAPH_NEEDS_SOURCE, Technique

CHANNEL_RANKINGS = ("l2", "l1", "bn_scale")


@dataclass(frozen=True)
class ChannelSettings:
    """Remove this fraction of each prunable channel group (the model gets thinner, not sparser)."""

    fraction: float
    ranking: str = "l2"  # l2 | l1 (norm of each filter) | bn_scale (|gamma| of the following BatchNorm)
    multiple_of: int = 1  # round kept channels up to a multiple (8 suits XNNPACK's int8 kernels)

    def validate(self, where: str) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise RecipeError(f"{where}.fraction must be in (0, 1); got {self.fraction}")
        check_choice(f"{where}.ranking", self.ranking, CHANNEL_RANKINGS)
        if not isinstance(self.multiple_of, int) or self.multiple_of < 1:
            raise RecipeError(f"{where}.multiple_of must be an integer >= 1; got {self.multiple_of!r}")


TECHNIQUE = Technique("channels", ChannelSettings, "channel removal", GRAPH,
                      {"keras": "converters.techniques.channels.keras:remove_channels_keras",
                       "pytorch": "converters.techniques.channels.torch:remove_channels"},
                      {"onnx": GRAPH_NEEDS_SOURCE})
