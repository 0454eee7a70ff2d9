"""Workstation side of model integrity: make keys, sign, verify and encrypt model files.

The formats are defined in ``device_runtime.integrity`` (the device side), so
the two can never drift apart.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from converters.errors import OutputPathError, UserInputError
from converters.files import atomic_write
from device_runtime import integrity
from device_runtime.model import read_model_bytes
from device_runtime.tflite_format import read_model


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    fingerprint: str


def keygen(prefix: str | os.PathLike, force: bool = False) -> KeyPair:
    """An Ed25519 key pair: PREFIX.pem (private, mode 600) and PREFIX.pub.pem (ship it with the app)."""
    serialization, ed25519, *_ = integrity._crypto()
    private_path, public_path = Path(f"{prefix}.pem"), Path(f"{prefix}.pub.pem")
    _refuse_existing([private_path, public_path], force)
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(private_path, private_pem, mode=0o600)
    atomic_write(public_path, public_pem)
    return KeyPair(private_path, public_path, integrity.key_fingerprint(key.public_key()))


def aes_keygen(path: str | os.PathLike, force: bool = False) -> Path:
    """A random AES-256 key as 64 hex characters (give its bytes to the app, keep it out of the model)."""
    path = Path(path)
    _refuse_existing([path], force)
    atomic_write(path, secrets.token_hex(32).encode() + b"\n", mode=0o600)
    return path


def read_aes_key(path: str | os.PathLike) -> bytes:
    try:
        text = Path(path).read_text().strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError):
        raise UserInputError(f"cannot read an AES key from {path}: expected 64 hex characters "
                             "(make one with `sdk keygen --aes`)") from None
    if len(key) != 32:
        raise UserInputError(f"{path} holds a {len(key)}-byte key; AES-256 needs 32 bytes (64 hex characters)")
    return key


def sign(model_path: str | os.PathLike, private_key: str | os.PathLike) -> Path:
    """Write MODEL.sig: an Ed25519 signature of the model's exact bytes, which stay untouched."""
    serialization, ed25519, *_ = integrity._crypto()
    data = read_model_bytes(model_path)
    if not integrity.is_encrypted(data):
        read_model(data)  # refuse to sign something that is not a model
    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UserInputError(f"cannot read the private key {private_key}: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserInputError(f"{private_key} is not an Ed25519 private key (make one with `sdk keygen`)")
    document = integrity.signature_document(data, key.sign(data), key.public_key())
    sidecar = Path(str(model_path) + integrity.SIGNATURE_SUFFIX)
    atomic_write(sidecar, json.dumps(document, indent=2).encode() + b"\n")
    return sidecar


def verify(model_path: str | os.PathLike, public_key: str | os.PathLike) -> dict:
    """The signature document when MODEL.sig verifies with ``public_key``; SignatureError otherwise."""
    data = read_model_bytes(model_path)
    document = integrity.read_signature(model_path)
    integrity.verify(data, document, public_key)
    return document


def encrypt(model_path: str | os.PathLike, key_path: str | os.PathLike, output: str | os.PathLike,
            force: bool = False) -> Path:
    """Write an AES-256-GCM encrypted copy of the model; the runtime decrypts it in memory only."""
    output = Path(output)
    if output.exists() and output.resolve() == Path(model_path).resolve():
        raise OutputPathError(f"output {output} is the input model; choose another -o path")
    _refuse_existing([output], force)
    data = read_model_bytes(model_path)
    read_model(data)
    atomic_write(output, integrity.encrypt(data, read_aes_key(key_path)))
    return output


def _refuse_existing(paths: list[Path], force: bool) -> None:
    for path in paths:
        if path.exists() and not force:
            raise OutputPathError(f"{path} exists; pass --force to overwrite it")
