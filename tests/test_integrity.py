"""Signed and encrypted models: every changed byte is refused, keys and files behave as documented."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from device_runtime import DecryptionError, InvalidKeyError, Model, ModelFormatError, SignatureError
from device_runtime import integrity
from sdk import integrity as tools
from sdk.cli import main
from tests.fuzzing import fuzz_models


@pytest.fixture(scope="module")
def seeds() -> list[bytes]:
    """The small int8 and float CNNs, converted once for the module (each conversion takes seconds)."""
    return fuzz_models()


@pytest.fixture(scope="module")
def signed(tmp_path_factory, seeds):
    folder = tmp_path_factory.mktemp("signed")
    model = folder / "m.tflite"
    model.write_bytes(seeds[0])
    pair = tools.keygen(folder / "key")
    tools.sign(model, pair.private_path)
    return model, pair


def test_keys_and_sidecar(signed):
    model, pair = signed
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.public_path.stat().st_mode) == 0o644
    document = json.loads((model.parent / "m.tflite.sig").read_text())
    assert document["algorithm"] == "Ed25519" and document["public_key_sha256"] == pair.fingerprint
    assert tools.verify(model, pair.public_path)["model_sha256"] == document["model_sha256"]


def test_every_single_byte_flip_is_refused(signed):
    model, pair = signed
    data = model.read_bytes()
    document = integrity.read_signature(model)
    key = integrity.load_public_key(pair.public_path)
    Model(data, public_key=key, signature=document)  # the untouched file loads
    refused = 0
    for position in range(len(data)):  # every byte of the model
        changed = bytearray(data)
        changed[position] ^= 0x01
        with pytest.raises(SignatureError):
            integrity.verify(bytes(changed), document, key)
        with pytest.raises(SignatureError):
            Model(bytes(changed), public_key=key, signature=document)
        refused += 1
    assert refused == len(data) > 2000


def test_unsigned_wrong_key_and_bad_sidecar(signed, tmp_path):
    model, pair = signed
    other = tools.keygen(tmp_path / "other")
    with pytest.raises(SignatureError, match="signed by a different key"):
        Model(model, public_key=other.public_path)
    copy = tmp_path / "copy.tflite"
    copy.write_bytes(model.read_bytes())
    with pytest.raises(SignatureError, match="the model is unsigned: copy.tflite.sig not found"):
        Model(copy, public_key=pair.public_path)
    (tmp_path / "copy.tflite.sig").write_text("{not json")
    with pytest.raises(SignatureError, match="not valid JSON"):
        Model(copy, public_key=pair.public_path)
    with pytest.raises(SignatureError, match="needs signature="):
        Model(model.read_bytes(), public_key=pair.public_path)
    assert Model(model, public_key=pair.public_path).inputs[0].dtype == np.int8


def test_encrypted_model_runs_from_memory_only(signed, tmp_path):
    model, _ = signed
    key_file = tools.aes_keygen(tmp_path / "app.key")
    encrypted = tools.encrypt(model, key_file, tmp_path / "m.enc")
    blob = encrypted.read_bytes()
    assert integrity.is_encrypted(blob) and model.read_bytes() not in blob
    key = tools.read_aes_key(key_file)
    before = sorted(p.name for p in tmp_path.iterdir())
    x = np.zeros((1, 8, 8, 1), np.float32)
    np.testing.assert_array_equal(Model(encrypted, decryption_key=key)(x), Model(model)(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing decrypted to disk
    with pytest.raises(DecryptionError, match="wrong key, or the file was changed"):
        Model(encrypted, decryption_key=bytes(32))
    changed = bytearray(blob)
    changed[len(blob) // 2] ^= 0x80
    with pytest.raises(DecryptionError):
        Model(bytes(changed), decryption_key=key)
    with pytest.raises(ModelFormatError, match="the model is encrypted by `sdk encrypt`; pass decryption_key="):
        Model(encrypted)


def test_cli_keygen_sign_verify_encrypt(tmp_path, seeds):
    model = tmp_path / "m.tflite"
    model.write_bytes(seeds[1])
    runner = CliRunner()
    assert runner.invoke(main, ["keygen", "-o", str(tmp_path / "k")]).exit_code == 0
    again = runner.invoke(main, ["keygen", "-o", str(tmp_path / "k")])
    assert again.exit_code == 2 and "exists; pass --force" in again.stderr
    assert runner.invoke(main, ["sign", str(model), "--key", str(tmp_path / "k.pem")]).exit_code == 0
    ok = runner.invoke(main, ["verify", str(model), "--key", str(tmp_path / "k.pub.pem")])
    assert ok.exit_code == 0 and ok.stdout.startswith("OK: ")
    data = bytearray(model.read_bytes())
    data[100] ^= 1
    model.write_bytes(bytes(data))
    bad = runner.invoke(main, ["verify", str(model), "--key", str(tmp_path / "k.pub.pem")])
    assert bad.exit_code == 1 and "changed after signing" in bad.stderr and "Traceback" not in bad.output
    assert runner.invoke(main, ["keygen", "--aes", "-o", str(tmp_path / "a.key")]).exit_code == 0
    (tmp_path / "short.key").write_text("abcd")
    short = runner.invoke(main, ["encrypt", str(model), "--key", str(tmp_path / "short.key"), "-o",
                                 str(tmp_path / "m.enc")])
    assert short.exit_code == 2 and "is not an AES-256 key: got 4 bytes (4 hex characters)" in short.stderr


# issue #19 (3, 13, 14, 16, 17): each refusal is exit 2, one stderr line, and no file written or changed.

ACCEPTED = ("the content of the key file `sdk keygen --aes` writes (64 hex characters, a trailing newline allowed, "
            "as bytes or str) or the raw 32 bytes")


@pytest.fixture
def folder(tmp_path, seeds, monkeypatch):
    """The working folder: m.tflite, app.key from `sdk keygen --aes`, m.enc encrypted with it, a pair k.*."""
    monkeypatch.chdir(tmp_path)
    Path("m.tflite").write_bytes(seeds[1])
    for args in (["keygen", "--aes", "-o", "app.key"], ["encrypt", "m.tflite", "--key", "app.key", "-o", "m.enc"],
                 ["keygen", "-o", "k"]):
        assert CliRunner().invoke(main, args).exit_code == 0
    return tmp_path


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _refused(folder, args: list[str], message: str) -> None:
    """`sdk ARGS` exits 2 with exactly one stderr line, ``error: MESSAGE``, and writes or changes no file."""
    before = _files(folder)
    result = CliRunner().invoke(main, args)
    assert (result.exit_code, result.stderr.splitlines()) == (2, [f"error: {message}"]), result.output
    assert _files(folder) == before


def test_key_file_content_opens_an_encrypted_model(folder):
    plain = Model(folder / "m.tflite")
    x = np.random.default_rng(0).random(plain.inputs[0].shape).astype(plain.inputs[0].dtype)
    expected = plain(x)
    content = (folder / "app.key").read_bytes()
    assert len(content) == 65  # 64 hex characters and a newline, as `sdk keygen --aes` writes it
    raw = bytes.fromhex(content.decode())
    before = _files(folder)
    for key in (open(folder / "app.key", "rb").read(), content.strip(), content.decode(),
                content.strip() + b"\r\n", bytearray(raw), raw):  # the README's line first
        np.testing.assert_array_equal(Model(folder / "m.enc", decryption_key=key)(x), expected)
    cases = {b"abcd": "got 4 bytes (4 hex characters)", content[:-3]: "got 62 bytes (62 hex characters)",
             b"g" * 64: "got 64 bytes (64 characters, not all hex)", raw.hex()[:32].encode(): "got 32 bytes "
             "(32 hex characters)", "ab" * 16: "got a str of 32 characters (32 hex characters)"}
    for key, received in cases.items():
        with pytest.raises(InvalidKeyError) as caught:
            Model(folder / "m.enc", decryption_key=key)
        assert str(caught.value) == f"decryption_key is not an AES-256 key: {received}; accepted: {ACCEPTED}"
    with pytest.raises(InvalidKeyError, match=r"^decryption_key must be bytes or str: .*; got int$"):
        Model(folder / "m.enc", decryption_key=42)
    with pytest.raises(InvalidKeyError, match="^public key file nope.pem not found; give the signer's .pub.pem"):
        Model(folder / "m.tflite", public_key="nope.pem")
    with pytest.raises(InvalidKeyError, match=f"^{folder / 'k.pem'} is a private key; verifying needs the public "
                                              f"key: give {folder / 'k.pub.pem'}, the public key beside it$"):
        Model(folder / "m.tflite", public_key=folder / "k.pem")
    assert _files(folder) == before


def test_encrypt_never_writes_over_the_model_or_the_key(folder):
    for target, what in (("app.key", "AES key"), ("m.tflite", "input model")):
        _refused(folder, ["encrypt", "m.tflite", "--key", "app.key", "-o", target, "--force"],
                 f"output {target} is the {what} this command reads; choose another path "
                 "(--force never overwrites an input)")
    _refused(folder, ["encrypt", "m.tflite", "--key", "missing.key", "-o", "x.enc"],
             "AES key file missing.key not found; give the file `sdk keygen --aes` wrote "
             "(make one with `sdk keygen --aes -o missing.key`)")
    _refused(folder, ["encrypt", "m.enc", "--key", "app.key", "-o", "x.enc"],
             "m.enc is already encrypted by `sdk encrypt`; encrypt the plain .tflite")


def test_verify_names_a_missing_or_private_key(folder):
    assert CliRunner().invoke(main, ["sign", str(folder / "m.tflite"), "--key", str(folder / "k.pem")]).exit_code == 0
    _refused(folder, ["verify", "m.tflite", "--key", "nope.pem"],
             "public key file nope.pem not found; give the signer's .pub.pem (`sdk keygen -o PREFIX` writes "
             "PREFIX.pub.pem)")
    _refused(folder, ["verify", "m.tflite", "--key", "k.pem"],
             "k.pem is a private key; verifying needs the public key: give k.pub.pem, the public key beside it")
    (folder / "k.pub.pem").rename(folder / "elsewhere.pem")
    _refused(folder, ["verify", "m.tflite", "--key", "k.pem"],
             "k.pem is a private key; verifying needs the public key: give the .pub.pem `sdk keygen` wrote beside "
             "it, or derive one with `openssl pkey -in k.pem -pubout -out k.pub.pem`")


def test_sign_replaces_a_signature_only_with_force(folder):
    sidecar = folder / "m.tflite.sig"
    sidecar.write_text("an earlier signature")
    _refused(folder, ["sign", "m.tflite", "--key", "k.pem"],
             "output m.tflite.sig exists; pass --force (force=True) to overwrite it")
    _refused(folder, ["sign", "m.tflite", "--key", "k.pub.pem", "--force"],
             "k.pub.pem is a public key; signing needs the private key: give k.pem, which `sdk keygen -o PREFIX` "
             "wrote beside PREFIX.pub.pem")
    forced = CliRunner().invoke(main, ["sign", str(folder / "m.tflite"), "--key", str(folder / "k.pem"), "--force"])
    assert forced.exit_code == 0, forced.output
    assert tools.verify(folder / "m.tflite", folder / "k.pub.pem")["algorithm"] == "Ed25519"


def test_encrypted_model_bench_and_inspect(folder, capsys):
    _refused(folder, ["bench", "m.enc"], "m.enc is encrypted by `sdk encrypt`; pass --decryption-key FILE (the key "
                                         "file from `sdk keygen --aes` it was encrypted with)")
    _refused(folder, ["inspect", "m.enc"], "m.enc is encrypted by `sdk encrypt`, so its structure is hidden; "
                                           "inspect the plain .tflite it was made from")
    before = _files(folder)
    result = CliRunner().invoke(main, ["bench", str(folder / "m.enc"), "--decryption-key", str(folder / "app.key"),
                                       "--runs", "3", "--warmup", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["runs"] == 3 and _files(folder) == before
    from device_runtime.bench import main as device_bench  # the runtime's own command, for the device

    assert device_bench(["m.enc", "--runs", "2", "--warmup", "0", "--decryption-key", "app.key", "--json"]) == 0
    assert device_bench(["m.enc"]) == 2
    assert capsys.readouterr().err.splitlines()[-1:] == [
        "error: m.enc is encrypted by `sdk encrypt`; pass --decryption-key FILE (the key file from "
        "`sdk keygen --aes` it was encrypted with)"]
    assert _files(folder) == before
