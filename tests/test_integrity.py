"""Signed and encrypted models: every changed byte is refused, keys and files behave as documented."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from device_runtime import DecryptionError, Model, ModelFormatError, SignatureError
from device_runtime import integrity
from sdk import integrity as tools
from sdk.cli import main
from tests.fuzzing import fuzz_models


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signed")
    model = folder / "m.tflite"
    model.write_bytes(fuzz_models()[0])
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
    with pytest.raises(ModelFormatError, match="the model is encrypted; pass decryption_key"):
        Model(encrypted)


def test_cli_keygen_sign_verify_encrypt(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(fuzz_models()[1])
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
    assert short.exit_code == 2 and "AES-256 needs 32 bytes" in short.stderr
