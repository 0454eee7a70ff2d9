"""Workstation side of model integrity: make keys, sign, verify and encrypt model files.

The formats are defined in ``device_runtime.integrity`` (the device side), so
the two can never drift apart.  Every output is checked before any work, and
``--force`` replaces an earlier output but never a file the command reads.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from converters.errors import OutputPathError, UserInputError
from converters.files import atomic_write, check_output_path
from device_runtime import integrity
from device_runtime.errors import InvalidKeyError, ModelFormatError
from device_runtime.loading import read_model_bytes
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
    for path in (private_path, public_path):
        check_output_path(path, [], force)
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(private_path, private_pem, mode=0o600)
    atomic_write(public_path, public_pem)
    return KeyPair(private_path, public_path, integrity.key_fingerprint(key.public_key()))


def aes_keygen(path: str | os.PathLike, force: bool = False) -> Path:
    """A random AES-256 key as 64 hex characters and a newline; the runtime takes the file's bytes as they are."""
    path = check_output_path(path, [], force)
    atomic_write(path, secrets.token_hex(integrity.AES_KEY_BYTES).encode() + b"\n", mode=0o600)
    return path


def read_aes_key(path: str | os.PathLike) -> bytes:
    """The 32-byte key in a key file from `sdk keygen --aes` (or holding the raw 32 bytes)."""
    try:
        return integrity.read_aes_key_file(path)
    except InvalidKeyError as exc:  # a file the user named: bad input (exit 2)
        raise UserInputError(str(exc)) from None


def decryption_key(model_path: str | os.PathLike, key_path: str | os.PathLike | None) -> bytes | None:
    """The key for a command that runs MODEL (from --decryption-key), or None for a plain model."""
    try:
        return integrity.key_for_command(model_path, key_path)
    except (InvalidKeyError, ModelFormatError) as exc:  # sdk callers catch sdk.SDKError
        raise UserInputError(str(exc)) from None


def sign(model_path: str | os.PathLike, private_key: str | os.PathLike, force: bool = False) -> Path:
    """Write MODEL.sig: an Ed25519 signature of the model's exact bytes, which stay untouched."""
    sidecar = Path(str(model_path) + integrity.SIGNATURE_SUFFIX)
    _refuse_overwriting_inputs(sidecar, {"private key": private_key})
    check_output_path(sidecar, [model_path], force)
    key = _load_private_key(private_key)
    data = read_model_bytes(model_path)
    if not integrity.is_encrypted(data):
        read_model(data)  # refuse to sign something that is not a model
    document = integrity.signature_document(data, key.sign(data), key.public_key())
    atomic_write(sidecar, json.dumps(document, indent=2).encode() + b"\n")
    return sidecar


def verify(model_path: str | os.PathLike, public_key: str | os.PathLike) -> dict:
    """The signature document when MODEL.sig verifies with ``public_key``; SignatureError otherwise."""
    try:
        key = integrity.load_public_key(public_key)
    except InvalidKeyError as exc:  # a key the user named: bad input, not a failed verification
        raise UserInputError(str(exc)) from None
    data = read_model_bytes(model_path)
    document = integrity.read_signature(model_path)
    integrity.verify(data, document, key)
    return document


def encrypt(model_path: str | os.PathLike, key_path: str | os.PathLike, output: str | os.PathLike,
            force: bool = False) -> Path:
    """Write an AES-256-GCM encrypted copy of the model; the runtime decrypts it in memory only."""
    output = Path(output)
    _refuse_overwriting_inputs(output, {"input model": model_path, "AES key": key_path})
    check_output_path(output, [model_path], force)
    key = read_aes_key(key_path)
    data = read_model_bytes(model_path)
    if integrity.is_encrypted(data):
        raise UserInputError(f"{model_path} is already encrypted by `sdk encrypt`; encrypt the plain .tflite")
    read_model(data)
    atomic_write(output, integrity.encrypt(data, key))
    return output


def _refuse_overwriting_inputs(output: Path, inputs: dict[str, str | os.PathLike]) -> None:
    """--force replaces an earlier output, never a file the command reads (the model or a key)."""
    for what, source in inputs.items():
        if output.exists() and Path(source).exists() and os.path.samefile(output, source):
            raise OutputPathError(f"output {output} is the {what} this command reads; choose another path "
                                  "(--force never overwrites an input)")


def _load_private_key(path: str | os.PathLike):
    """The Ed25519 private key in PATH, with a one-line refusal for a missing file or a public key."""
    serialization, ed25519, *_ = integrity._crypto()
    try:
        pem = integrity.read_key_bytes(path, "private key", "make a key pair with `sdk keygen -o PREFIX` and sign "
                                                            "with PREFIX.pem")
    except InvalidKeyError as exc:
        raise UserInputError(str(exc)) from None
    if b"PUBLIC KEY-----" in pem:
        private = str(path)[:-len(".pub.pem")] + ".pem" if str(path).endswith(".pub.pem") else "PREFIX.pem"
        raise UserInputError(f"{path} is a public key; signing needs the private key: give {private}, which "
                             "`sdk keygen -o PREFIX` wrote beside PREFIX.pub.pem")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise UserInputError(f"{path} is protected by a password; sign with an unencrypted key "
                             "from `sdk keygen`") from None
    except ValueError:
        raise UserInputError(f"{path} is not a PEM-encoded private key (-----BEGIN PRIVATE KEY-----); "
                             "make a key pair with `sdk keygen -o PREFIX`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserInputError(f"{path} must be an Ed25519 private key; got {type(key).__name__} "
                             "(make one with `sdk keygen`)")
    return key
