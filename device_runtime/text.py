"""BERT's WordPiece tokenizer in plain Python, so a device needs neither ``transformers`` nor ``tokenizers``.

It follows Hugging Face's ``BertTokenizer`` step by step: clean the text (drop control characters, map
whitespace to spaces), put spaces around CJK characters, lowercase and strip accents for uncased
vocabularies, split on whitespace and punctuation, then cut each word into the longest vocabulary
pieces from the left (continuations carry ``##``); a word with no such cut, or longer than
``max_word_chars``, becomes ``[UNK]``.  Special tokens written in the text ("[SEP]") are kept whole.
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from .errors import ArgumentError, ModelFormatError
from .metadata import associated_file

if TYPE_CHECKING:
    from .metadata import ModelInfo

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[UNK]", "[PAD]")
OPTIONAL_SPECIAL_TOKENS = ("[MASK]",)
DROP, SPACE, CJK, PUNCT, KEEP = range(5)  # what basic tokenization does with a character
INPUT_ROLES = {  # the names BERT-class exports give their inputs (Hugging Face, TF Hub, TFLite Model Maker)
    "ids": ("input_ids", "input_word_ids", "ids", "word_ids", "input"),
    "mask": ("attention_mask", "input_mask", "mask"),
    "types": ("token_type_ids", "segment_ids", "input_type_ids", "type_ids"),
}


def vocab_lines(text: str) -> list[str]:
    """A vocab.txt's tokens, line i holding id i: split on line ends only (``str.splitlines`` would also
    split inside tokens at characters such as U+2028 and shift every id after them)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def packed_vocab(data: bytes, info: ModelInfo) -> tuple[list[str], dict]:
    """The vocabulary packed in a model file (``info.vocab_file``) and its tokenizer settings (may be {})."""
    try:
        tokens = vocab_lines(associated_file(data, info.vocab_file, "vocabulary").decode("utf-8"))
        config = json.loads(associated_file(data, info.tokenizer_config, "tokenizer settings")) \
            if info.tokenizer_config else {}
    except (UnicodeDecodeError, ValueError):
        raise ModelFormatError(f"the model's embedded {info.vocab_file} or {info.tokenizer_config} is not UTF-8 "
                               "text / JSON; re-embed it with sdk metadata add --vocab") from None
    return tokens, config if isinstance(config, dict) else {}


def missing_special_tokens(tokens: Iterable[str]) -> list[str]:
    """The special tokens BERT's inputs need that a vocabulary lacks."""
    present = set(tokens)
    return [t for t in SPECIAL_TOKENS if t not in present]


def looks_uncased(tokens: Sequence[str]) -> bool:
    """An uncased vocabulary has no upper-case letters outside its [BRACKETED] special tokens."""
    return not any(t != t.lower() for t in tokens if not (t.startswith("[") and t.endswith("]")))


class WordPieceTokenizer:
    """Text -> BERT input ids: ``tokenize(text)`` gives pieces, ``encode(texts, length)`` the model's arrays.

    ``lowercase`` None: decided by the vocabulary (no upper-case tokens: uncased, as BERT's uncased
    vocabularies are); ``strip_accents`` None: as ``lowercase`` (Hugging Face's default).
    """

    def __init__(self, vocab: Sequence[str], *, lowercase: bool | None = None, strip_accents: bool | None = None,
                 max_word_chars: int = 100):
        missing = missing_special_tokens(vocab)
        if missing:
            raise ModelFormatError(f"the vocabulary lacks the special token(s) {', '.join(missing)} that BERT "
                                   f"inputs need ({', '.join(SPECIAL_TOKENS)}); embed a BERT vocab.txt "
                                   "(sdk metadata add MODEL -o OUT --vocab vocab.txt)")
        self.vocab = {token: i for i, token in enumerate(vocab)}  # a repeated token keeps its last id, as in HF
        self.lowercase = looks_uncased(vocab) if lowercase is None else bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.max_word_chars = max_word_chars
        self.specials = [t for t in SPECIAL_TOKENS + OPTIONAL_SPECIAL_TOKENS if t in self.vocab]
        self.cls, self.sep, self.unk, self.pad = (self.vocab[t] for t in SPECIAL_TOKENS)
        self._specials = re.compile("(" + "|".join(re.escape(t) for t in self.specials) + ")")
        self._kinds: dict[str, int] = {}

    @classmethod
    def from_text(cls, text: str, **options) -> WordPieceTokenizer:
        """From a vocab.txt's content: one token per line, the line number is the id."""
        return cls(vocab_lines(text), **options)

    # -- text -> pieces -------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of ``text`` (no [CLS]/[SEP])."""
        return list(self._pieces(text))

    def _pieces(self, text: str) -> Iterator[str]:
        """The tokens one by one, so that truncation stops the work at the model's length."""
        for i, part in enumerate(self._specials.split(text)):
            if i % 2:  # a special token written in the text ("[SEP]") is kept whole
                yield part
                continue
            for word in self._basic(part):
                yield from self._wordpiece(word)

    def _kind(self, ch: str) -> int:
        """DROP, SPACE, CJK, PUNCT or KEEP for one character (memoised: text repeats its characters)."""
        kind = self._kinds.get(ch)
        if kind is None:
            cp = ord(ch)
            kind = self._kinds[ch] = DROP if cp == 0 or cp == 0xFFFD or _is_control(ch) else \
                SPACE if _is_whitespace(ch) else CJK if _is_cjk(cp) else PUNCT if _is_punctuation(ch) else KEEP
        return kind

    def _basic(self, text: str) -> Iterator[str]:
        """BERT's basic tokenization: clean, CJK apart, (lowercase, strip accents), split on punctuation."""
        for chunk in re.finditer(r"[^ ]+", text):  # chunk by chunk, so that truncation stops early
            yield from self._basic_chunk(unicodedata.normalize("NFC", chunk.group()))

    def _basic_chunk(self, text: str) -> Iterator[str]:
        spaced = "".join(ch if kind in (KEEP, PUNCT) else " " if kind == SPACE else f" {ch} " if kind == CJK else ""
                         for ch, kind in ((ch, self._kind(ch)) for ch in text))
        for word in spaced.split():
            if self.lowercase:
                word = word.lower()
            if self.strip_accents and not word.isascii():
                word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            start = 0
            for i, ch in enumerate(word):
                if self._kind(ch) == PUNCT:
                    if i > start:
                        yield word[start:i]
                    yield ch
                    start = i + 1
            if start < len(word):
                yield word[start:]

    def _wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first pieces of one word; [UNK] when any part has no match."""
        if len(word) > self.max_word_chars:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    # -- pieces -> model inputs -------------------------------------------------------------------
    def ids(self, text: str, limit: int | None = None) -> list[int]:
        """Vocabulary ids of ``text``'s tokens (no [CLS]/[SEP]), the first ``limit`` of them when given."""
        return [self.vocab.get(piece, self.unk) for piece in itertools.islice(self._pieces(text), limit)]

    def encode(self, texts: Sequence[str], length: int) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, [len(texts), length]):
        [CLS] tokens [SEP], truncated to ``length`` and padded with [PAD] (mask 0)."""
        if length < 2:
            raise ArgumentError(f"a BERT sequence holds at least [CLS] and [SEP], so length must be >= 2; "
                                f"got {length}")
        ids = np.full((len(texts), length), self.pad, np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        for row, text in enumerate(texts):
            tokens = [self.cls] + self.ids(text, length - 2) + [self.sep]
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    """ASCII symbols count as punctuation (BERT splits "$" and "^"), as does every Unicode P* character."""
    cp = ord(ch)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or \
        unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    """The CJK Unified Ideographs blocks BERT puts spaces around (not Hiragana, Katakana or Hangul)."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)
