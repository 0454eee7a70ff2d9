"""A BERT tokenizer inside the .tflite: the vocabulary as an associated file of TFLite Support's
BertTokenizerOptions (the standard metadata's tokenizer, read by its Task library's BERT models and by
``device_runtime``), plus the casing in a small JSON file beside it.

``--vocab`` takes a ``vocab.txt`` or a Hugging Face model folder (``vocab.txt``, or a WordPiece
``tokenizer.json``; ``tokenizer_config.json`` tells ``do_lower_case`` and ``strip_accents``).  Every
check runs before any conversion: the file exists, is UTF-8, holds [CLS], [SEP], [UNK] and [PAD];
the model has an integer (token id) input, and its embedding table has a row for every token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from device_runtime.metadata import TENSOR_AXIS_LABELS, TOKENIZER_CONFIG, VOCABULARY
from device_runtime.text import SPECIAL_TOKENS, looks_uncased, missing_special_tokens, packed_vocab, vocab_lines

from ...errors import UserInputError
from ...labels import read_labels

if TYPE_CHECKING:
    from device_runtime.metadata import ModelInfo
    from device_runtime.tflite_format import TFLiteModel

    from .metadata import MetadataSpec

VOCAB_FILE = "vocab.txt"
TOKEN_ID_DTYPES = ("int32", "int64")


class VocabError(UserInputError):
    """A --vocab file or folder cannot be read, is not a BERT vocabulary, or does not fit the model."""


@dataclass(frozen=True)
class Vocab:
    """A WordPiece vocabulary (line i = id i) and how text is normalised before it is looked up."""

    tokens: tuple[str, ...]
    lowercase: bool
    strip_accents: bool | None  # None: as lowercase (Hugging Face's default)
    source: str

    def files(self) -> dict[str, bytes]:
        """The associated files that carry it: vocab.txt and the tokenizer settings."""
        config = {"do_lower_case": self.lowercase, "strip_accents": self.strip_accents}
        return {VOCAB_FILE: ("\n".join(self.tokens) + "\n").encode("utf-8"),
                TOKENIZER_CONFIG: json.dumps(config).encode()}

    def describe(self) -> str:
        return f"{len(self.tokens):,} tokens, {'uncased' if self.lowercase else 'cased'}"


def read_vocab(path: str | os.PathLike) -> Vocab:
    """The vocabulary at ``path`` (vocab.txt, or a Hugging Face folder), checked as the module says."""
    path = Path(path)
    if not path.exists():
        raise VocabError(f"--vocab {path} does not exist; give a BERT vocab.txt or a Hugging Face model folder "
                         "holding vocab.txt or tokenizer.json")
    config = {}
    if path.is_dir():
        config = _json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
        if (path / VOCAB_FILE).is_file():
            tokens = vocab_lines(_text(path / VOCAB_FILE))
        elif (path / "tokenizer.json").is_file():
            tokens, normaliser = _tokenizer_json(path / "tokenizer.json")
            config = {**{k: normaliser.get(v) for k, v in (("do_lower_case", "lowercase"),
                                                             ("strip_accents", "strip_accents")) if v in normaliser},
                      **config}
        else:
            raise VocabError(f"--vocab folder {path} holds neither vocab.txt nor tokenizer.json; give the BERT "
                             "model's vocab.txt, or the folder its tokenizer was saved to")
    else:
        tokens = vocab_lines(_text(path))
    missing = missing_special_tokens(tokens)
    if missing:
        raise VocabError(f"--vocab {path} has no {', '.join(missing)} token (a BERT vocabulary needs "
                         f"{', '.join(SPECIAL_TOKENS)}, one token per line); give the model's own vocab.txt")
    lowercase = config.get("do_lower_case")
    strip = config.get("strip_accents")
    if not isinstance(lowercase, bool):
        lowercase = looks_uncased(tokens)
    return Vocab(tuple(tokens), lowercase, strip if isinstance(strip, bool) else None, str(path))


def vocab_in_model(data: bytes, info: ModelInfo) -> Vocab | None:
    """The vocabulary a model already carries (kept when its metadata is rewritten), or None."""
    if info is None or not info.vocab_file:
        return None
    tokens, config = packed_vocab(data, info)
    lowercase = config.get("do_lower_case")
    return Vocab(tuple(tokens), lowercase if isinstance(lowercase, bool) else looks_uncased(tokens),
                 config.get("strip_accents"), "the model")


def check_token_inputs(vocab: Vocab, inputs: Sequence[tuple[str, str, int | None]]) -> None:
    """Refuse a vocabulary for a model without a token-id input, or with fewer embedding rows than tokens.

    ``inputs``: (name, dtype name, rows of the embedding table it indexes, or None when unknown).
    """
    ids = [(name, rows) for name, dtype, rows in inputs if dtype in TOKEN_ID_DTYPES]
    if not ids:
        raise VocabError(f"--vocab is for text models, which take token ids (an int32 or int64 input); this "
                         f"model's inputs are {', '.join(f'{n} ({d})' for n, d, _ in inputs)}. Fix: drop --vocab, "
                         "or export the model with integer input_ids")
    known = [(rows, name) for name, rows in ids if rows is not None]  # segment ids index a 2-row table
    rows, name = max(known) if known else (None, "")
    if rows is not None and rows < len(vocab.tokens):
        raise VocabError(f"--vocab {vocab.source} has {len(vocab.tokens):,} tokens but the embedding table that "
                         f"{name} indexes has {rows:,} rows, so ids past {rows - 1} would read outside it; give "
                         "the vocabulary the model was trained with")


def text_metadata(model: TFLiteModel, spec: MetadataSpec, tensor, schema) -> tuple[bytes, dict[str, bytes]]:
    """(TFLITE_METADATA, associated files) of a text model: one entry per input and output (the model's
    names and order), the tokenizer in the subgraph's input process units, labels on the first output."""
    import flatbuffers

    from .metadata import LABELS_FILE, METADATA_IDENTIFIER, MIN_PARSER_VERSION, _labels_file

    sg = model.main
    names = {index: name for s in model.signatures[:1] for name, index in {**s.inputs, **s.outputs}.items()}
    check_token_inputs(spec.vocab, [(names.get(i, sg.tensors[i].name), sg.tensors[i].dtype_name, None)
                                    for i in sg.inputs])
    if spec.labels:
        read_labels(spec.labels, sg.tensors[sg.outputs[0]].shape[-1])
    feature = schema.ContentProperties.FeatureProperties
    subgraph = schema.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [tensor(schema, names.get(i, sg.tensors[i].name), "Token ids, attention mask "
                                           "or segment ids of the BERT tokenizer's output.", feature,
                                           schema.FeaturePropertiesT()) for i in sg.inputs]
    outputs = [tensor(schema, names.get(i, sg.tensors[i].name), "Scores per class." if spec.labels and not n
                      else "Model output.", feature, schema.FeaturePropertiesT()) for n, i in enumerate(sg.outputs)]
    if spec.labels:
        outputs[0].associatedFiles = _labels_file(schema, TENSOR_AXIS_LABELS)
    subgraph.outputTensorMetadata = outputs
    vocab_file = schema.AssociatedFileT()
    vocab_file.name, vocab_file.type = VOCAB_FILE, VOCABULARY
    vocab_file.description = "WordPiece vocabulary: line i is token id i."
    options = schema.BertTokenizerOptionsT()
    options.vocabFile = [vocab_file]
    unit = schema.ProcessUnitT()
    unit.optionsType, unit.options = schema.ProcessUnitOptions.BertTokenizerOptions, options
    subgraph.inputProcessUnits = [unit]
    settings = schema.AssociatedFileT()
    settings.name, settings.type = TOKENIZER_CONFIG, schema.AssociatedFileType.UNKNOWN
    settings.description = "Tokenizer settings: do_lower_case and strip_accents, as Hugging Face names them."
    subgraph.associatedFiles = [settings]
    meta = schema.ModelMetadataT()
    meta.name, meta.description, meta.version = spec.name, spec.description or "BERT-class text model.", spec.version
    meta.author, meta.license = spec.author, spec.license
    meta.subgraphMetadata, meta.minParserVersion = [subgraph], MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(meta.Pack(builder), file_identifier=METADATA_IDENTIFIER)
    files = spec.vocab.files()
    if spec.labels:
        files[LABELS_FILE] = ("\n".join(spec.labels) + "\n").encode()
    return bytes(builder.Output()), files


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise VocabError(f"--vocab {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                         f"{exc.start}); give the model's vocab.txt as saved by its tokenizer (UTF-8)") from None
    except OSError as exc:
        raise VocabError(f"cannot read --vocab {path}: {exc.strerror or exc}") from None


def _json(path: Path) -> dict:
    try:
        value = json.loads(_text(path))
    except ValueError as exc:
        raise VocabError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(value, dict):
        raise VocabError(f"{path} must hold a JSON object; got {type(value).__name__}")
    return value


def _tokenizer_json(path: Path) -> tuple[list[str], dict]:
    """A WordPiece tokenizer.json's tokens in id order, and its normaliser's settings."""
    spec = _json(path)
    model = spec.get("model") or {}
    vocab = model.get("vocab")
    if model.get("type") != "WordPiece" or not isinstance(vocab, dict):
        raise VocabError(f"{path} describes a {model.get('type') or 'unknown'} tokenizer, not BERT's WordPiece; "
                         "give a WordPiece vocab.txt")
    tokens = sorted(vocab, key=vocab.get)
    ids = np.array(sorted(vocab.values()))
    if not np.array_equal(ids, np.arange(len(ids))):
        raise VocabError(f"{path} gives token ids with gaps or repeats (expected 0..{len(ids) - 1}); give the "
                         "model's vocab.txt")
    normaliser = spec.get("normalizer") or {}
    return tokens, normaliser if normaliser.get("type") == "BertNormalizer" else {}
