"""The numpy compression kernels, against hand-checkable expectations."""

import numpy as np
import pytest

from converters.techniques.cluster import kmeans_1d
from converters.techniques.prune import m_by_n_prune, magnitude_prune, sparsity_of


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 0.9])
def test_magnitude_prune_hits_target_and_keeps_largest(sparsity):
    w = np.random.default_rng(1).normal(size=(64, 3, 3, 32)).astype(np.float32)
    pruned = magnitude_prune(w, sparsity)
    assert sparsity_of(pruned) == pytest.approx(np.floor(w.size * sparsity) / w.size)
    kept = pruned != 0
    if sparsity:
        assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()
    np.testing.assert_array_equal(pruned[kept], w[kept])


def test_two_of_four_along_input_channels():
    w = np.arange(1, 2 * 8 * 3 + 1, dtype=np.float32).reshape(2, 8, 3)  # (h, in, out)
    w[0, 1, 0] = -100  # a large negative weight must survive
    pruned = m_by_n_prune(w)
    groups = np.moveaxis(pruned, -2, -1).reshape(-1, 4)
    assert (np.count_nonzero(groups, axis=1) == 2).all()
    assert pruned[0, 1, 0] == -100
    assert sparsity_of(pruned) == 0.5


def test_kmeans_gives_at_most_k_values_and_low_error():
    w = np.random.default_rng(2).normal(size=5000).astype(np.float32)
    clustered = kmeans_1d(w, 16)
    assert np.unique(clustered).size == 16
    # Lloyd-optimal 16-level quantizer of a unit Gaussian has MSE ~0.0095 (Max, 1960).
    assert np.mean((clustered - w) ** 2) < 0.012


def test_kmeans_preserves_zeros():
    w = magnitude_prune(np.random.default_rng(3).normal(size=(128, 64)).astype(np.float32), 0.75)
    clustered = kmeans_1d(w, 8, preserve_zeros=True)
    np.testing.assert_array_equal(clustered == 0, w == 0)
    assert np.unique(clustered).size == 8  # zero is one of the 8 values, as in tfmot
    assert np.unique(clustered[clustered != 0]).size == 7
