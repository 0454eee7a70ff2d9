"""Learned weight rounding for int8 (AdaRound, Nagel et al. 2020): the optimisation kernel, framework-free.

TFLite's converter quantizes weights itself: per output channel, symmetric, scale = max|w_c| / 127, round to
nearest. Rounding to nearest is best per weight, not per layer output: AdaRound chooses floor or ceil of
``w / scale`` for each weight so that the layer's output on calibration inputs moves least. The converter must
then reproduce the choice, so the weights are snapped before conversion to ``scale * q``: each channel's
max-|w| weight is kept (the scale is unchanged) and every other weight lands on a grid point that rounding to
nearest maps back to ``q`` exactly.

A layer is given here in one layout for every framework: weights ``[G, O, K]`` (G groups, O output channels
per group, K inputs per output: ``in/groups * kh * kw``; a Dense is G = 1, a depthwise conv G = channels), and
its inputs as the Gram matrix ``sum x x^T [G, K, K]`` and mean ``[G, K]`` of the input patches over every
output position of the calibration data (``PatchStats``). The loss ``||(W - W_soft) x||^2`` summed over all
patches is ``tr(dW C dW^T)``, so each iteration costs O(G O K^2), whatever the amount of data.
Objective: that loss (relative to rounding to nearest) + ``LAMBDA`` * the rounding regulariser
``1 - |2 h(V) - 1|^beta`` (beta annealed 20 -> 2 after a warm start without it), h the rectified sigmoid; Adam
on V; then hard rounding ``h(V) >= 0.5``. The learned choice is kept only if it beats nearest on that loss.
The routes (``adaround_onnx``, ``adaround_keras``) measure the patches and write the weights back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch
LAMBDA = 10.0  # regulariser (a mean over weights) vs loss (relative to nearest): tuned on synthetic layers
WARM_START = 0.2  # fraction of iterations without the regulariser
BETA = (20.0, 2.0)
LEARNING_RATE = 0.01
ENERGY = 1 - 1e-5  # of the input patches' Gram matrix kept in the loss (see _factor)


@dataclass
class RoundingRecord:
    """Per layer: the output error (the patch loss) with nearest rounding and with the learned rounding."""

    layers: dict[str, tuple[float, float]] = field(default_factory=dict)  # layer -> (nearest, learned)
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    iterations: int = 0
    seconds: float = 0.0
    bias_corrected: int = 0

    def to_dict(self) -> dict:
        return {"layers": {k: list(v) for k, v in self.layers.items()}, "skipped": self.skipped,
                "samples": self.samples, "iterations": self.iterations, "seconds": round(self.seconds, 1),
                "bias_corrected": self.bias_corrected}

    def summary(self) -> str:
        ratios = [learned / nearest for nearest, learned in self.layers.values() if nearest > 0]
        return (f"adaround: {len(self.layers)} layer(s) rounded on {self.samples} calibration samples "
                f"({self.iterations} iterations each, {self.seconds:.0f} s); layer output error vs nearest "
                f"rounding: median x{np.median(ratios) if ratios else 1.0:.2f}"
                + (f"; bias correction of the rounded weights in {self.bias_corrected} layer(s)"
                   if self.bias_corrected else "")
                + (f"; {len(self.skipped)} left ({next(iter(self.skipped.values()))})" if self.skipped else ""))


class PatchStats:
    """Running Gram matrix and sum of one layer's input patches ([G, K, K], [G, K]), in float64."""

    def __init__(self):
        self.gram: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, patches: np.ndarray) -> None:
        """``patches``: [M, G, K] (M patches)."""
        grouped = np.ascontiguousarray(patches.transpose(1, 0, 2), np.float32)  # [G, M, K]
        gram = np.matmul(grouped.transpose(0, 2, 1), grouped).astype(np.float64)
        total = patches.sum(axis=0, dtype=np.float64)
        self.gram = gram if self.gram is None else self.gram + gram
        self.total = total if self.total is None else self.total + total
        self.count += patches.shape[0]

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)


def conv_patches(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...],
                 pads: tuple[int, ...], groups: int) -> np.ndarray:
    """The input patches [M, G, K] of a 1-D or 2-D convolution: ``x`` is [N, C, (H,) W] (channels first),
    ``pads`` (begin..., end...) as ONNX orders them; K is ordered (channel, kh, kw), as weights [O, C/G, kh, kw]
    flatten."""
    x = np.asarray(x, np.float32)
    if x.ndim == 3:  # 1-D: a 2-D conv of height 1
        x, kernel, strides, dilations = x[:, :, None, :], (1, *kernel), (1, *strides), (1, *dilations)
        pads = (0, pads[0], 0, pads[1])
    top, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))
    windows = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))  # [N, C, H', W', sh, sw]
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]
    n, channels, height, width = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * height * width, groups, -1)


def grid_scale(weights: np.ndarray) -> np.ndarray:
    """TFLite's per-output-channel int8 scale of ``weights`` [G, O, K]: max|w| / 127 (1 for an all-zero row)."""
    scale = np.abs(weights).max(axis=-1, keepdims=True) / 127.0
    return np.where(scale > 0, scale, 1.0)


def nearest(weights: np.ndarray) -> np.ndarray:
    """The converter's own int8 values of ``weights`` [G, O, K]."""
    return np.clip(np.round(weights / grid_scale(weights)), -127, 127)


def snapped(weights: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``weights`` [G, O, K] moved to ``scale * q``, each row's max-|w| weight kept as it is (so the converter
    computes the same scale and, rounding to nearest, gets ``q`` back)."""
    scale = grid_scale(weights)
    result = scale * q
    top = np.abs(weights).argmax(axis=-1)[..., None]
    np.put_along_axis(result, top, np.take_along_axis(weights, top, axis=-1), axis=-1)
    return result


def output_error(weights: np.ndarray, rounded: np.ndarray, gram: np.ndarray) -> float:
    """``sum over patches ||(W - W_q) x||^2``, from the patches' Gram matrix."""
    delta = weights - rounded
    return float(np.einsum("goi,gij,goj->", delta, gram, delta))


def learn_rounding(weights: np.ndarray, gram: np.ndarray, iterations: int) -> np.ndarray:
    """The int8 values [G, O, K] (floor or ceil of ``weights / scale``) that AdaRound chooses for a layer whose
    input patches have Gram matrix ``gram`` [G, K, K]; nearest rounding where learning does not beat it."""
    weights = weights.astype(np.float64)
    scale = grid_scale(weights)
    ratio = weights / scale
    floor = np.floor(ratio)
    rest = ratio - floor
    nearest_q = nearest(weights)
    top = np.abs(weights).argmax(axis=-1)[..., None]
    fixed = rest < 1e-9  # on the grid already, or the row's max (its own grid point): not learned
    np.put_along_axis(fixed, top, True, axis=-1)
    rest = np.clip(rest, 1e-4, 1 - 1e-4)
    nearest_error = output_error(weights, scale * nearest_q, gram)
    if nearest_error <= 0 or fixed.all() or iterations < 1:
        return nearest_q
    h = _optimise(weights, scale, floor, rest, fixed, nearest_q, _factor(gram), nearest_error, iterations)
    learned = np.where(fixed, nearest_q, floor + (h >= 0.5))
    learned = np.clip(learned, -127, 127)
    return learned if output_error(weights, scale * learned, gram) < nearest_error else nearest_q


def round_layer(weights: np.ndarray, stats: PatchStats, iterations: int) -> tuple[np.ndarray, np.ndarray,
                                                                                  tuple[float, float]]:
    """(weights snapped to the learned grid [G, O, K], the bias shift ``(W - W_q) . E[patch]`` [G, O] that
    moves the rounded layer's mean output back to float's, (nearest, learned) output error per patch)."""
    weights = weights.astype(np.float64)
    q = learn_rounding(weights, stats.gram, iterations)
    result = snapped(weights, q)
    count = max(stats.count, 1)
    errors = (output_error(weights, grid_scale(weights) * nearest(weights), stats.gram) / count,
              output_error(weights, result, stats.gram) / count)
    shift = np.einsum("goi,gi->go", weights - result, stats.mean)
    return result, shift, errors


def _factor(gram: np.ndarray) -> np.ndarray:
    """F [G, K, r] with ``F F^T = gram`` up to ``1 - ENERGY`` of its trace, so the loss ``||dW F||^2`` costs
    O(G O K r) an iteration (activations are far from full rank: a 1152-input layer keeps a few hundred)."""
    values, vectors = np.linalg.eigh(gram)  # ascending
    values = np.clip(values, 0, None)
    share = np.cumsum(values[:, ::-1], axis=1) / np.maximum(values.sum(axis=1, keepdims=True), 1e-300)
    rank = int(max(1, (share < ENERGY).sum(axis=1).max() + 1))
    rank = min(rank, gram.shape[-1])
    return (vectors[:, :, ::-1][:, :, :rank] * np.sqrt(values[:, ::-1][:, None, :rank]))


def _optimise(weights, scale, floor, rest, fixed, nearest_q, factor, nearest_error, iterations) -> np.ndarray:
    """h(V) [G, O, K] after Adam on the AdaRound objective (see the module docstring); the gradient is written
    out in numpy (a layer's few products an iteration: autograd's overhead would dominate)."""
    factor = (factor / np.sqrt(nearest_error)).astype(np.float32)  # the loss relative to nearest rounding
    gram = factor @ factor.transpose(0, 2, 1) if 2 * factor.shape[-1] >= factor.shape[1] else None
    w, s, lo = (a.astype(np.float32) for a in (weights, scale, floor))
    free = (~fixed).astype(np.float32)
    pinned = np.where(fixed, nearest_q - floor, 0.0).astype(np.float32)
    v = np.where(fixed, 0.0, -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).astype(np.float32)
    first, second = np.zeros_like(v), np.zeros_like(v)
    warm = int(iterations * WARM_START)
    count = max(float(free.sum()), 1.0)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step in range(iterations):
        sig = 1 / (1 + np.exp(-v))
        stretched = sig * (ZETA - GAMMA) + GAMMA
        inside = ((stretched > 0) & (stretched < 1)).astype(np.float32) * free
        h = np.clip(stretched, 0, 1) * free + pinned
        delta = w - s * (lo + h)
        spread = delta @ gram if gram is not None else (delta @ factor) @ factor.transpose(0, 2, 1)
        grad_h = -2 * s * spread  # d ||delta F||^2 / dh
        if step >= warm:
            beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - (step - warm) / max(iterations - warm, 1))
            centred = 2 * h - 1
            grad_h = grad_h - LAMBDA / count * 2 * beta * np.abs(centred) ** (beta - 1) * np.sign(centred) * free
        grad = grad_h * inside * sig * (1 - sig) * (ZETA - GAMMA)
        first = b1 * first + (1 - b1) * grad
        second = b2 * second + (1 - b2) * grad * grad
        v = v - LEARNING_RATE * (first / (1 - b1 ** (step + 1))) / (np.sqrt(second / (1 - b2 ** (step + 1))) + eps)
    sig = 1 / (1 + np.exp(-v))
    return np.clip(sig * (ZETA - GAMMA) + GAMMA, 0, 1) * free + pinned
