"""Weight-compression passes, registered by name in the order they run."""

from .base import PassRecord, WeightPass
from .cluster import ClusterPass
from .prune import PrunePass

PASSES: dict[str, type[WeightPass]] = {"prune": PrunePass, "cluster": ClusterPass}

__all__ = ["PASSES", "PassRecord", "WeightPass"]
