"""Model outputs -> answers: top-k classes, detections (SSD or raw YOLO + NMS), masks, embeddings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import ArgumentError, InputError
from .preprocess import Letterbox


@dataclass(frozen=True)
class Classification:
    index: int
    score: float
    label: str


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels
    score: float
    class_id: int
    label: str


def _label(labels: Sequence[str] | None, index: int) -> str:
    return labels[index] if labels is not None and 0 <= index < len(labels) else str(index)


def top_k(scores: np.ndarray, k: int = 5, labels: Sequence[str] | None = None,
          quantization: tuple[float, int] | None = None) -> list[Classification]:
    """The k highest scores of a 1-D score vector (a (1, C) batch of one is accepted).

    ``quantization`` (scale, zero_point) marks ``scores`` as stored int values:
    they rank as their float values do, so only the k best are dequantized.
    """
    scores = np.asarray(scores)
    if scores.ndim == 2 and scores.shape[0] == 1:
        scores = scores[0]
    if scores.ndim != 1:
        raise InputError(f"top_k needs one score vector; got shape {scores.shape}")
    k = max(0, min(k, scores.size))
    if not k:
        return []
    # Every index scoring at least the k-th best, in index order; a stable sort of those by score then
    # breaks ties by the lower index, as the C helper does, without sorting all the classes.
    kth = np.partition(scores, scores.size - k)[scores.size - k]
    candidates = np.flatnonzero(scores >= kth)
    best = candidates[np.argsort(-scores[candidates].astype(np.float64), kind="stable")[:k]]  # -int8(-128) overflows
    values = scores[best]
    if quantization:
        values = dequantize(values, quantization)
    return [Classification(i, score, _label(labels, i)) for i, score in zip(best.tolist(), values.tolist())]


def dequantize(stored: np.ndarray, quantization: tuple[float, int]) -> np.ndarray:
    """Stored int values -> float32: (q - zero_point) * scale, in float32 as TFLite's kernels do."""
    scale, zero_point = quantization
    if not scale > 0:
        raise ArgumentError(f"a quantization scale must be positive; got {scale}")
    return (stored.astype(np.float32) - zero_point) * np.float32(scale)


def stored_threshold(threshold: float, quantization: tuple[float, int]) -> int:
    """The lowest stored value whose float32 dequantization reaches ``threshold``: comparing stored
    values with it picks exactly the values a float comparison after dequantizing would."""
    scale, zero_point = quantization
    if not math.isfinite(threshold):
        raise ArgumentError(f"a score threshold must be a finite number; got {threshold}")
    level = math.ceil(threshold / scale + zero_point)  # within a step of the answer: float32 rounds
    if abs(level - zero_point) >= 2 ** 24:  # past float32's whole numbers, and past any 16-bit value
        return level
    target = np.float32(threshold)

    def reaches(value: int) -> bool:  # a 1-element array: 0-d arithmetic would be done in float64
        return bool(dequantize(np.array([value]), quantization)[0] >= target)

    while reaches(level - 1):
        level -= 1
    while not reaches(level):
        level += 1
    return level


# cx, cy, w, h -> x1, y1, x2, y2 as one product: x1 = cx - w / 2 exactly (the other terms are zeros).
_CORNERS = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [-0.5, 0.0, 0.5, 0.0], [0.0, -0.5, 0.0, 0.5]])
MAX_CLASS_ID = 65535  # non-negative int class ids up to this are table indices; others are relabelled
_TINY = float(np.finfo(np.float64).tiny)  # the smallest positive union: a zero-area pair has IoU 0


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_detections: int = 300
        ) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first."""
    return batched_nms(boxes, scores, np.zeros(len(scores), np.intp), iou_threshold, max_detections)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                max_detections: int = 300) -> np.ndarray:
    """Class-aware greedy NMS: boxes of different classes never suppress each other.

    Every class runs its own greedy loop, all of them at once: each round keeps
    the best remaining box of every class and drops the boxes of that class
    overlapping it by more than ``iou_threshold``.  So the rounds are the most
    boxes kept in any one class, not all the boxes kept.  Returns kept indices,
    best score first; equal scores keep the lower index first.
    """
    count = len(scores)
    if not count:
        return np.zeros(0, np.intp)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")  # ties: the lower index first
    table = np.empty((5, count))  # per box in score order: x1, y1, x2, y2, area
    table[:4] = np.asarray(boxes, np.float64)[order].T
    table[4] = (table[2] - table[0]) * (table[3] - table[1])
    labels = np.asarray(classes)[order]
    top_label = labels.max()
    if labels.dtype.kind not in "iu" or labels.min() < 0 or top_label > MAX_CLASS_ID:  # relabel 0..K-1
        labels = np.unique(labels, return_inverse=True)[1].reshape(-1)
        top_label = labels.max()
    positions = np.arange(count)
    head_of = np.empty(top_label + 1, np.intp)  # per class: the local position of its best remaining box
    alive, alive_labels, ours = positions, labels, table  # still in play, by position in score order
    kept: list[np.ndarray] = []
    total = 0
    while True:
        local = positions[:len(alive)]
        head_of.fill(len(alive))
        np.minimum.at(head_of, alive_labels, local)  # alive is in score order: the first of each class
        head_local = head_of[alive_labels]  # each box's class head
        is_head = head_local == local
        kept.append(alive[is_head])
        total += len(kept[-1])
        head = ours[:, head_local]
        overlap = np.minimum(ours[2:4], head[2:4]) - np.maximum(ours[:2], head[:2])
        np.maximum(overlap, 0.0, out=overlap)
        inter = overlap[0] * overlap[1]
        union = np.maximum(head[4] + ours[4] - inter, _TINY)  # 0/0 -> IoU 0
        survivors = inter / union <= iou_threshold
        survivors[is_head] = False
        alive = alive[survivors]
        if not alive.size:
            break
        if total >= max_detections and alive[0] > np.sort(np.concatenate(kept))[max_detections - 1]:
            break  # whatever is kept later ranks below the first max_detections
        alive_labels, ours = labels[alive], table[:, alive]
    return order[np.sort(np.concatenate(kept))[:max_detections]]


def decode_yolo(output: np.ndarray, letterbox: Letterbox, *, score_threshold: float = 0.25,
                iou_threshold: float = 0.45, max_detections: int = 100, has_objectness: bool = False,
                normalized: bool | None = None, input_size: tuple[int, int] | None = None,
                labels: Sequence[str] | None = None, quantization: tuple[float, int] | None = None
                ) -> list[Detection]:
    """Raw anchor-free/anchor outputs: (1, 4[+1]+C, N) or (1, N, 4[+1]+C), boxes as cx, cy, w, h.

    Boxes in model pixels, or in [0, 1] when ``normalized`` (guessed when None:
    all coordinates <= 1.5), which then needs ``input_size`` (height, width).
    ``quantization`` (scale, zero_point) marks ``output`` as stored int values:
    anchors are thresholded in that domain and only survivors are dequantized.
    """
    pred = np.asarray(output)
    pred = pred[0] if pred.ndim == 3 else pred
    if not quantization:  # compared and ranked as the float32 scores returned are (no copy for float32)
        pred = pred.astype(np.float32, copy=False)
    if pred.ndim != 2:
        raise InputError(f"YOLO output must be (1, 4+C, N) or (1, N, 4+C); got {np.shape(output)}")
    channels_first = pred.shape[0] < pred.shape[1]
    features = pred.shape[0] if channels_first else pred.shape[1]
    first_class = 5 if has_objectness else 4
    if features <= first_class:
        raise InputError(f"detection needs rows of 4 box values{' + objectness' if has_objectness else ''} "
                         f"and at least one class score; the output {np.shape(output)} has {features} values per "
                         "row: is the model a classifier? (then classify, or sdk bench --task classify)")
    # Dequantization is monotonic, so stored values are compared with the threshold's stored level.
    raw_threshold = stored_threshold(score_threshold, quantization) if quantization else score_threshold
    # Prefilter: with objectness the score is obj * class <= obj; without, it is the best class score.
    gate = slice(4, 5) if has_objectness else slice(first_class, None)
    best = (pred[gate] if channels_first else pred[:, gate]).max(axis=0 if channels_first else 1)
    chosen = np.nonzero(best >= raw_threshold)[0]
    # The candidates as (features, M) columns, whichever layout the model has: no transposed copy.
    found = pred[:, chosen] if channels_first else pred[chosen].T
    if has_objectness:  # class score = objectness * class probability, in float
        found = dequantize(found, quantization) if quantization else found
        class_scores = found[first_class:] * found[4]
        class_ids, scores = class_scores.argmax(axis=0), class_scores.max(axis=0)
        keep = np.flatnonzero(scores >= score_threshold)
        scores, class_ids, centred = scores[keep], class_ids[keep], found[:4, keep]
    else:  # the prefilter's best is the score, and the prefilter was exact: every candidate stays
        # Stored values rank as their floats do, so the best class is found before dequantizing.
        class_ids, scores, centred = found[first_class:].argmax(axis=0), best[chosen], found[:4]
        if quantization:
            scores, centred = dequantize(scores, quantization), dequantize(centred, quantization)
    boxes = centred.T.astype(np.float64) @ _CORNERS  # x1, y1, x2, y2
    if normalized is None:
        normalized = bool(boxes.size) and float(np.abs(boxes).max()) <= 1.5
    if normalized:
        if input_size is None:
            raise ArgumentError("normalized YOLO boxes need input_size=(height, width)")
        boxes *= np.array(input_size[::-1] * 2, np.float64)
    keep = batched_nms(boxes, scores, class_ids, iou_threshold, max_detections)
    return _detections(letterbox.to_original(boxes[keep]), scores[keep], class_ids[keep], labels)


SSD_ROLES = ("location", "category", "score", "number of detections")


def ssd_outputs(outputs: Sequence[np.ndarray], roles: Sequence[str] | None = None) -> list[np.ndarray]:
    """The four SSD outputs as (boxes, classes, scores, count), whatever order the model keeps them in.

    ``roles`` are the metadata's tensor names per output; without them, boxes are
    the (1, N, 4) output, the count the one-value output, and of the remaining
    two the one holding only whole numbers is the classes.
    """
    if roles and sorted(roles) == sorted(SSD_ROLES):
        by_role = dict(zip(roles, outputs))
        return [by_role[role] for role in SSD_ROLES]
    arrays = [np.asarray(o) for o in outputs]
    boxes = next((a for a in arrays if a.ndim == 3 and a.shape[-1] == 4), None)
    count = next((a for a in arrays if a.size == 1), None)
    rest = [a for a in arrays if a is not boxes and a is not count]
    if boxes is None or count is None or len(rest) != 2:
        raise InputError(f"cannot tell SSD outputs apart from shapes {[a.shape for a in arrays]}; "
                         "add detector metadata (sdk metadata add --task object_detector)")
    whole = [bool(np.all(np.mod(a, 1) == 0)) for a in rest]
    classes, scores = (rest[0], rest[1]) if whole[0] and not whole[1] else (rest[1], rest[0])
    return [boxes, classes, scores, count]


def decode_ssd(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, count, letterbox: Letterbox,
               input_size: tuple[int, int], *, score_threshold: float = 0.25,
               labels: Sequence[str] | None = None, box_index: Sequence[int] = (1, 0, 3, 2)) -> list[Detection]:
    """TFLite_Detection_PostProcess outputs: normalized boxes; classes; scores; count.

    ``box_index`` gives the positions of left, top, right, bottom within a box
    (the metadata's BoundingBoxProperties.index); the default reads ymin, xmin, ymax, xmax.
    """
    n = int(np.asarray(count).reshape(-1)[0])
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[:n]
    scores = np.asarray(scores, np.float64).reshape(-1)[:n]
    classes = np.asarray(classes).reshape(-1)[:n].astype(np.int64)
    chosen = scores >= score_threshold
    height, width = input_size
    picked = boxes[chosen][:, list(box_index)]  # -> left, top, right, bottom
    xyxy = picked * np.array([width, height, width, height], np.float64)
    return _detections(letterbox.to_original(xyxy), scores[chosen], classes[chosen], labels)


def _detections(boxes, scores, classes, labels) -> list[Detection]:
    return [Detection(tuple(box), s, c, _label(labels, c))
            for box, s, c in zip(np.asarray(boxes, np.float64).tolist(), np.asarray(scores, np.float64).tolist(),
                                 np.asarray(classes).astype(np.int64).tolist())]


def segmentation_mask(output: np.ndarray, letterbox: Letterbox, channels_first: bool = False) -> np.ndarray:
    """Per-pixel class ids at the original image size (the letterbox border is cut away)."""
    scores = np.asarray(output)
    scores = scores[0] if scores.ndim == 4 else scores
    if scores.ndim != 3:
        raise InputError(f"segmentation output must be (1, H, W, C) or (1, C, H, W); got {np.shape(output)}")
    if channels_first:
        scores = scores.transpose(1, 2, 0)
    mask = scores.argmax(axis=2).astype(np.int32)
    top, left = max(int(round(letterbox.pad_y)), 0), max(int(round(letterbox.pad_x)), 0)
    inner_h = int(round(letterbox.source_height * letterbox.scale_y))
    inner_w = int(round(letterbox.source_width * letterbox.scale_x))
    mask = mask[top:top + inner_h, left:left + inner_w]
    ys = np.minimum((np.arange(letterbox.source_height) + 0.5) * mask.shape[0] / letterbox.source_height,
                    mask.shape[0] - 1).astype(np.intp)
    xs = np.minimum((np.arange(letterbox.source_width) + 0.5) * mask.shape[1] / letterbox.source_width,
                    mask.shape[1] - 1).astype(np.intp)
    return mask[ys[:, None], xs[None, :]]


def l2_normalize(embeddings: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(embeddings, np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of the last axis; (N, D) x (M, D) gives (N, M)."""
    a, b = l2_normalize(np.atleast_2d(a)), l2_normalize(np.atleast_2d(b))
    return a @ b.T


__all__ = ["Classification", "Detection", "top_k", "dequantize", "stored_threshold", "nms", "batched_nms",
           "decode_yolo", "decode_ssd", "segmentation_mask", "l2_normalize", "cosine_similarity"]
