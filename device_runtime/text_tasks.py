"""The text tasks a ``Model`` answers (``embed_text``, ``classify_text``): text -> token ids with the
vocabulary embedded in the model (``text.WordPieceTokenizer``), the model run, the answer read.

Inputs are matched to the tokenizer's arrays by name (``input_ids``, ``attention_mask``,
``token_type_ids`` and their TF Hub / TFLite Support names), else by order: ids, mask, segment ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import postprocess
from .errors import ArgumentError, MissingMetadataError, UnsupportedModelError
from .text import INPUT_ROLES, WordPieceTokenizer, packed_vocab

if TYPE_CHECKING:
    from .model import Model, TensorSpec

NO_VOCAB = ("the model has no tokenizer vocabulary in its metadata, so {task}() cannot turn text into token ids; "
            "embed the BERT vocab.txt with `sdk metadata add MODEL -o OUT --vocab vocab.txt` (or convert with "
            "`sdk convert ... --vocab vocab.txt`)")


def tokenizer(model: Model, task: str = "embed_text") -> WordPieceTokenizer:
    """The model's tokenizer, built from its embedded vocabulary on first use."""
    if model._tokenizer is None:
        info = model.info
        if info is None or not info.vocab_file:
            raise MissingMetadataError(NO_VOCAB.format(task=task))
        tokens, config = packed_vocab(model._data, info)
        model._tokenizer = WordPieceTokenizer(tokens, lowercase=config.get("do_lower_case"),
                                              strip_accents=config.get("strip_accents"))
    return model._tokenizer


def text_roles(model: Model) -> dict[str, TensorSpec]:
    """{"ids" | "mask" | "types": input} by the inputs' names, else by their order."""
    inputs = model.inputs
    if not 1 <= len(inputs) <= 3 or any(len(s.shape_signature) != 2 for s in inputs):
        raise UnsupportedModelError(
            f"text tasks need a BERT-style model: 1 to 3 inputs of shape (batch, tokens) (ids, then attention "
            f"mask and segment ids); this one takes {[(s.name, s.shape) for s in inputs]}: use run() with a dict")
    roles = {}
    for role, names in INPUT_ROLES.items():
        found = [s for s in inputs if s.name.lower() in names or s.name.lower().split(":")[0] in names]
        if found:
            roles[role] = found[0]
    if len(roles) != len(inputs) or len({s.name for s in roles.values()}) != len(inputs):
        roles = dict(zip(INPUT_ROLES, inputs))  # unnamed (serving_default_x:0): BERT's own order
    return roles


def encode(model: Model, texts, task: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The model's feed for ``texts`` (name -> array in each input's dtype) and the attention mask."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts or \
            not all(isinstance(t, str) for t in texts):
        raise ArgumentError(f"{task}() takes a non-empty list of strings; got {_describe(texts)}")
    roles = text_roles(model)
    words = tokenizer(model, task)
    length = roles["ids"].shape_signature[1]
    if length == -1:  # a dynamic sequence axis: as long as the longest text needs
        length = max(len(words.ids(t)) for t in texts) + 2
    arrays = words.encode(texts, length)
    names = {"ids": "input_ids", "mask": "attention_mask", "types": "token_type_ids"}
    feed = {spec.name: arrays[names[role]].astype(spec.dtype) for role, spec in roles.items()}
    return feed, arrays["attention_mask"]


def embed_text(model: Model, texts: Sequence[str]) -> np.ndarray:
    """Sentence embeddings (``Model.embed_text`` says how they are pooled)."""
    feed, mask = encode(model, texts, "embed_text")
    out = next(iter(model.run(feed).values())).astype(np.float32)
    if out.ndim == 2:
        return out
    if out.ndim == 3 and out.shape[1] == mask.shape[1]:
        weights = mask[:, :, None].astype(np.float32)
        pooled = (out * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
        return postprocess.l2_normalize(pooled)
    raise UnsupportedModelError(f"embed_text() reads a sentence embedding (batch, dim) or per-token states "
                                f"(batch, {mask.shape[1]}, dim); the model's first output has shape {out.shape}")


def classify_text(model: Model, text, top_k: int):
    """Top-k labels per text, scores as probabilities (``Model.classify_text`` says when softmax is applied)."""
    single = isinstance(text, str)
    feed, _ = encode(model, [text] if single else text, "classify_text")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ArgumentError(f"top_k must be an integer >= 1; got {top_k!r}")
    scores = next(iter(model.run(feed).values())).astype(np.float32)
    if scores.ndim != 2:
        raise UnsupportedModelError(f"classify_text() needs one score per class, (batch, classes); the model's "
                                    f"first output has shape {scores.shape}: use embed_text() or run()")
    if not (scores.min() >= 0 and np.allclose(scores.sum(1), 1, atol=1e-3)):  # logits -> probabilities
        shifted = np.exp(scores - scores.max(1, keepdims=True))
        scores = shifted / shifted.sum(1, keepdims=True)
    answers = [postprocess.top_k(row, top_k, model.labels) for row in scores]
    for found in answers:
        model._monitor.record_confidence(found[0].score)
    return answers[0] if single else answers


def _describe(value) -> str:
    if isinstance(value, str):
        return f"one string {value[:40]!r} (wrap it in a list)"
    if isinstance(value, Sequence) and not value:
        return "an empty list"
    if isinstance(value, Sequence):
        bad = next(v for v in value if not isinstance(v, str))
        return f"a list holding {type(bad).__name__} {bad!r:.40}"
    return type(value).__name__

