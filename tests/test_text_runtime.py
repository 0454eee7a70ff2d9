"""Text models on the device: the pure-Python WordPiece tokenizer (exact ids, and the same ids as Hugging Face's
BertTokenizer where transformers is installed), the vocabulary embedded by `sdk convert/metadata add --vocab`,
``Model.embed_text`` equal to the PyTorch pipeline, ``Model.classify_text`` with labels, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.targets.tflite.text_metadata import VocabError, check_token_inputs, read_vocab
from device_runtime import ArgumentError, MissingMetadataError, Model, ModelFormatError
from device_runtime.text import WordPieceTokenizer
from tests.test_cli import assert_bad_input, run

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "un", "##believ", "##able",
         "##s", "!", ",", ".", "-", "'", "cafe", "naive", "hello", "world", "你", "好", "a", "##b", "##c", "dog",
         "runs", "$", "5"]
ID = {token: i for i, token in enumerate(VOCAB)}
SENTENCES = ["The cat sat on the mat!", "Unbelievable cats, hello-world.", "Café naïve CAFÉ", "a dog runs",
             "unbelievx dogs", "你好 world", "hello [SEP] world", "tab\there\x00 zero-width\u200b cat",
             "$5 mats", "", "   ", "the " * 40, "abc abcc ab", "Hello, World! It's a cat's mat."]
SEQ, DIM = 16, 8
ROOT = Path(__file__).resolve().parents[1]
APP = ("import runpy, sys\n"
       "sys.argv = ['pi_text_app.py', *sys.argv[1:]]\n"
       "try:\n    runpy.run_path('examples/pi_text_app.py', run_name='__main__')\n"
       "except SystemExit as done:\n    code = done.code\n"
       "heavy = {'transformers', 'tokenizers', 'tensorflow', 'torch', 'converters', 'sdk'} & set(sys.modules)\n"
       "assert not heavy, heavy\n"
       "sys.exit(code)\n")
FLOAT_TOLERANCE = 1e-4  # max abs error of unit-norm embeddings / probabilities, float .tflite vs PyTorch
NO_WORK_SECONDS = 10


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer(VOCAB)


# -- the tokenizer -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, pieces", [
    ("The cat sat on the mat!", ["the", "cat", "sat", "on", "the", "mat", "!"]),  # lowercase, punctuation split
    ("Unbelievable cats,", ["un", "##believ", "##able", "cat", "##s", ","]),  # longest match first, ##pieces
    ("Café naïve CAFÉ", ["cafe", "naive", "cafe"]),  # uncased vocabulary: accents stripped
    ("unbelievx dogz dogs", ["[UNK]", "[UNK]", "dog", "##s"]),  # no full cut ("##x", "##z"): the whole word is [UNK]
    ("hello-world.", ["hello", "-", "world", "."]),
    ("你好world", ["你", "好", "world"]),  # CJK characters stand alone
    ("hello [SEP] world", ["hello", "[SEP]", "world"]),  # a special token written in the text stays whole
    ("tab\there\x00 cat\u200b", ["[UNK]", "[UNK]", "cat"]),  # tab splits, NUL and zero-width chars are dropped
    ("$5", ["$", "5"]),  # ASCII symbols are punctuation
    ("abcc", ["a", "##b", "##c", "##c"]),
])
def test_wordpiece_pieces(tokenizer, text, pieces):
    assert tokenizer.tokenize(text) == pieces


def test_word_longer_than_the_limit_is_unknown():
    assert WordPieceTokenizer(VOCAB, max_word_chars=5).tokenize("abcccc abc") == ["[UNK]", "a", "##b", "##c"]


def test_cased_vocabulary_keeps_case_and_accents():
    cased = WordPieceTokenizer(VOCAB + ["Hello", "Café"])
    assert not cased.lowercase
    assert cased.tokenize("Hello hello Café cafe") == ["Hello", "hello", "Café", "cafe"]


def test_encode_truncates_and_pads(tokenizer):
    got = tokenizer.encode(["the cat sat on the mat", "dog"], 6)
    assert got["input_ids"].tolist() == [[ID["[CLS]"], ID["the"], ID["cat"], ID["sat"], ID["on"], ID["[SEP]"]],
                                         [ID["[CLS]"], ID["dog"], ID["[SEP]"], 0, 0, 0]]
    assert got["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert got["token_type_ids"].tolist() == [[0] * 6] * 2 and got["input_ids"].dtype == np.int64
    with pytest.raises(ArgumentError, match="length must be >= 2; got 1"):
        tokenizer.encode(["x"], 1)


def test_vocabulary_without_special_tokens_is_refused():
    with pytest.raises(ModelFormatError, match=r"lacks the special token\(s\) \[CLS\], \[SEP\]"):
        WordPieceTokenizer([t for t in VOCAB if t not in ("[CLS]", "[SEP]")])


def test_same_ids_as_hugging_face(vocab_file, tokenizer):
    transformers = pytest.importorskip(
        "transformers", reason="the Hugging Face comparison needs transformers + tokenizers (pip install "
        "transformers); the exact-id tests above ran without them")
    reference = transformers.BertTokenizer.from_pretrained(str(vocab_file.parent), do_lower_case=True)  # local
    expected = reference(SENTENCES, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    got = tokenizer.encode(SENTENCES, SEQ)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_vocab_from_a_hugging_face_folder(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB + ["Hello"]) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    vocab = read_vocab(tmp_path)  # the config wins over the cased-looking vocabulary
    assert vocab.tokens == tuple(VOCAB + ["Hello"]) and vocab.lowercase
    only_json = tmp_path / "json_only"
    only_json.mkdir()
    (only_json / "tokenizer.json").write_text(json.dumps({
        "normalizer": {"type": "BertNormalizer", "lowercase": False, "strip_accents": None},
        "model": {"type": "WordPiece", "vocab": {t: i for i, t in enumerate(VOCAB)}}}))
    vocab = read_vocab(only_json)
    assert vocab.tokens == tuple(VOCAB) and not vocab.lowercase


# -- text models ---------------------------------------------------------------------------------------
class BagOfTokens(torch.nn.Module):
    """Token embeddings: per-token states (batch, seq, dim), or with a head, class logits of the masked mean."""

    def __init__(self, classes: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.tokens = torch.nn.Embedding(len(VOCAB), DIM)
        self.head = torch.nn.Linear(DIM, classes) if classes else None

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        hidden = self.tokens(input_ids) * mask  # padding states zeroed, so the mask stays an input
        if self.head is None:
            return hidden
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))


def export(module, path):
    example = WordPieceTokenizer(VOCAB).encode(["the cat"], SEQ)
    inputs = (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"]))
    torch.onnx.export(module.eval(), inputs, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["output"], opset_version=17, dynamo=False)
    return path


def pipeline(module, texts):
    """The PyTorch reference: tokenized (ids checked equal above), run, mean-pooled over the mask, normalised."""
    batch = WordPieceTokenizer(VOCAB).encode(texts, SEQ)
    ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
    with torch.no_grad():
        out = module(ids, mask)
        if out.ndim == 2:
            return torch.softmax(out, 1).numpy()
        weights = mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((out * weights).sum(1) / weights.sum(1), dim=1).numpy()


@pytest.fixture(scope="module")
def states_model(tmp_path_factory):
    """Per-token states, converted without a vocabulary (as an existing file would be)."""
    folder = tmp_path_factory.mktemp("states")
    source = export(BagOfTokens(), folder / "states.onnx")
    result = run("convert", source, "-o", folder / "states.tflite")
    assert result.exit_code == 0, result.output
    notes = json.loads((folder / "states.report.json").read_text())["notes"]
    assert any(n.startswith("no tokenizer vocabulary embedded (token-id input)") for n in notes), notes
    return folder / "states.tflite"


def pi_text_app(*args) -> subprocess.CompletedProcess:
    """examples/pi_text_app.py in a fresh interpreter, which must load no workstation package."""
    return subprocess.run([sys.executable, "-c", APP, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_embed_text_needs_the_vocabulary_then_matches_pytorch(states_model, vocab_file, tmp_path):
    done = pi_text_app(states_model, "the cat")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]  # beside the INFO line
    assert done.returncode == 2 and len(errors) == 1, done
    assert errors[0].startswith("error: the model has no tokenizer vocabulary") and "Traceback" not in done.stderr
    with pytest.raises(MissingMetadataError, match=r"no tokenizer vocabulary .* `sdk metadata add MODEL -o OUT "
                                                   r"--vocab vocab.txt`"):
        Model(states_model).embed_text(["the cat"])
    before = states_model.read_bytes()
    out = tmp_path / "with_vocab.tflite"
    result = run("metadata", "add", states_model, "-o", out, "--vocab", vocab_file)
    assert result.exit_code == 0, result.output
    assert "tokenizer: BERT WordPiece, vocab.txt embedded (32 tokens, uncased)" in result.output
    assert states_model.read_bytes() == before  # the input is never changed
    model = Model(out)
    got = model.embed_text(SENTENCES)
    assert got.shape == (len(SENTENCES), DIM)
    np.testing.assert_allclose(got, pipeline(BagOfTokens(), SENTENCES), atol=FLOAT_TOLERANCE)
    assert model.tokenizer.tokenize("Café") == ["cafe"]
    inspected = run("inspect", out)
    assert "tokenizer: BERT WordPiece, vocab.txt (32 tokens, uncased)" in inspected.output, inspected.output
    with pytest.raises(ArgumentError, match="takes a non-empty list of strings; got one string 'the cat' "
                                            r"\(wrap it in a list\)"):
        model.embed_text("the cat")
    done = pi_text_app(out, "the cat sat", "a dog runs", "hello world")
    assert done.returncode == 0, done.stderr
    assert "'the cat sat': 8 values" in done.stdout and "closest pair: " in done.stdout, done.stdout
    with pytest.raises(ArgumentError, match="got an empty list"):
        model.embed_text([])
    with pytest.raises(ArgumentError, match="got a list holding int 3"):
        model.embed_text(["a", 3])


def test_convert_with_vocab_and_labels_then_classify_text(vocab_file, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("negative\nneutral\npositive\n")
    source = export(BagOfTokens(classes=3), tmp_path / "classifier.onnx")
    out = tmp_path / "classifier.tflite"
    result = run("convert", source, "-o", out, "--vocab", vocab_file, "--labels", labels)
    assert result.exit_code == 0, result.output
    model = Model(out)
    assert model.info.task == "text_classifier" and model.labels == ["negative", "neutral", "positive"]
    schema = pytest.importorskip("tensorflow_lite_support.metadata.metadata_schema_py_generated")
    meta = schema.ModelMetadataT.InitFromPackedBuf(model.spec.metadata_bytes("TFLITE_METADATA"), 0)
    unit = meta.subgraphMetadata[0].inputProcessUnits[0]  # read back as TFLite Support's schema defines it
    assert unit.optionsType == schema.ProcessUnitOptions.BertTokenizerOptions
    assert [(f.name, f.type) for f in unit.options.vocabFile] == [(b"vocab.txt", schema.AssociatedFileType.VOCABULARY)]
    sg = model.spec.main  # tensor metadata is positional: the file's own input order (the converter sorts names)
    assert [t.name.decode() for t in meta.subgraphMetadata[0].inputTensorMetadata] == \
        [next(s.name for s in model.inputs if s.index == i) for i in sg.inputs]
    expected = pipeline(BagOfTokens(classes=3), SENTENCES)
    answers = model.classify_text(SENTENCES, top_k=3)
    for answer, probabilities in zip(answers, expected):
        assert [a.label for a in answer] == [model.labels[i] for i in np.argsort(-probabilities)]
        np.testing.assert_allclose([a.score for a in answer], np.sort(probabilities)[::-1], atol=FLOAT_TOLERANCE)
    one = model.classify_text(SENTENCES[0], top_k=1)  # one string: one list of classifications
    assert len(one) == 1 and one[0].label == answers[0][0].label
    done = pi_text_app(out, "--classify", SENTENCES[0])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{SENTENCES[0]!r}: {answers[0][0].label} {answers[0][0].score:.3f}"), done.stdout
    with pytest.raises(ArgumentError, match="top_k must be an integer >= 1; got 0"):
        model.classify_text("the cat", top_k=0)
    # A rewrite of the metadata (a new version) keeps the vocabulary and the labels.
    again = tmp_path / "v2.tflite"
    result = run("metadata", "add", out, "-o", again, "--labels", labels, "--version", "2")
    assert result.exit_code == 0 and "kept from the model" in result.output, result.output
    np.testing.assert_allclose(Model(again).embed_text(["the cat"]), model.embed_text(["the cat"]))


# -- refusals: one line, exit 2, before any work, nothing written ---------------------------------------------
@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("float") / "float.onnx"
    torch.onnx.export(torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),), str(path), input_names=["x"],
                      opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def text_onnx(tmp_path_factory):
    return export(BagOfTokens(), tmp_path_factory.mktemp("text") / "text.onnx")


def _refused(tmp_path, source, vocab, message):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    started = time.perf_counter()
    assert_bad_input(run("convert", source, "-o", out / "m.tflite", "--vocab", vocab), message, out)
    assert time.perf_counter() - started < NO_WORK_SECONDS


def test_missing_vocab_file(text_onnx, tmp_path):
    _refused(tmp_path, text_onnx, tmp_path / "nope.txt", "nope.txt does not exist; give a BERT vocab.txt")


def test_vocab_without_cls(text_onnx, tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("\n".join(t for t in VOCAB if t != "[CLS]") + "\n")
    _refused(tmp_path, text_onnx, bad, "has no [CLS] token (a BERT vocabulary needs [CLS], [SEP], [UNK], [PAD]")


def test_vocab_not_utf8(text_onnx, tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_bytes("\n".join(VOCAB).encode() + b"\ncaf\xe9\n")
    _refused(tmp_path, text_onnx, bad, "is not UTF-8 text (byte 0xe9")


def test_vocab_larger_than_the_embedding_table(text_onnx, tmp_path):
    big = tmp_path / "vocab.txt"
    big.write_text("\n".join(VOCAB + [f"w{i}" for i in range(10)]) + "\n")
    _refused(tmp_path, text_onnx, big, "has 42 tokens but the embedding table that input_ids indexes has 32 rows")


def test_model_without_integer_input(float_onnx, vocab_file, tmp_path):
    _refused(tmp_path, float_onnx, vocab_file, "--vocab is for text models, which take token ids "
             "(an int32 or int64 input); this model's inputs are x (float32)")


def test_metadata_add_vocab_refusals(states_model, vocab_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert_bad_input(run("metadata", "add", states_model, "-o", out / "m.tflite", "--vocab", vocab_file, "--mean",
                         "0", "--std", "255"), "--mean, --std describe image/audio models, but --vocab", out)
    assert_bad_input(run("metadata", "add", states_model, "-o", out / "m.tflite", "--vocab", out / "none.txt"),
                     "does not exist", out)
    with pytest.raises(VocabError, match="neither vocab.txt nor tokenizer.json"):
        read_vocab(out)


def test_vocab_is_checked_against_the_largest_table_an_input_indexes(vocab_file):
    """Segment ids index a 2-row table: only the token table (the largest) bounds the vocabulary."""
    vocab = read_vocab(vocab_file)
    check_token_inputs(vocab, [("token_type_ids", "int64", 2), ("input_ids", "int64", 32), ("mask", "int64", None)])
    with pytest.raises(VocabError, match="has 32 tokens but the embedding table that ids indexes has 30 rows"):
        check_token_inputs(vocab, [("types", "int32", 2), ("ids", "int32", 30)])


def test_inputs_matched_by_name_else_by_order():
    from types import SimpleNamespace

    from device_runtime import TensorSpec
    from device_runtime.text_tasks import text_roles

    def model(*names):
        return SimpleNamespace(inputs=[TensorSpec(n, i, (1, SEQ), (1, SEQ), np.dtype(np.int64), 0.0, 0)
                                       for i, n in enumerate(names)])

    roles = text_roles(model("attention_mask", "segment_ids", "input_word_ids"))  # the file's (sorted) order
    assert {role: spec.name for role, spec in roles.items()} == {"ids": "input_word_ids", "mask": "attention_mask",
                                                                 "types": "segment_ids"}
    roles = text_roles(model("serving_default_x:0", "serving_default_y:0"))  # unnamed: BERT's order
    assert {role: spec.name for role, spec in roles.items()} == {"ids": "serving_default_x:0",
                                                                 "mask": "serving_default_y:0"}
