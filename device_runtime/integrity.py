"""Signed and encrypted models: prove a file is the one that was built, keep it private at rest.

Signature: Ed25519 over the exact model bytes, kept in a JSON sidecar
``MODEL.tflite.sig`` so the interpreter sees the file unchanged.  Encryption:
AES-256-GCM with a key the app supplies; the file is ``ENCRYPTED_MAGIC + nonce
+ ciphertext`` and is decrypted in memory only.  Both use the ``cryptography``
package (imported only when a key is given), never hand-written crypto.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from .errors import DeviceRuntimeError, ModelFormatError

SIGNATURE_SUFFIX = ".sig"
SIGNATURE_FORMAT = "edge-deploy-signature/1"
ENCRYPTED_MAGIC = b"EDGEAES1"
NONCE_BYTES = 12


class SignatureError(DeviceRuntimeError):
    """The model is unsigned, signed by another key, or was changed after signing."""


class DecryptionError(DeviceRuntimeError):
    """The key is wrong or the encrypted model was changed."""


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature, InvalidTag
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise DeviceRuntimeError("signed or encrypted models need the cryptography package: "
                                 "pip install cryptography") from None
    return serialization, ed25519, AESGCM, InvalidSignature, InvalidTag


def load_public_key(key):
    """An Ed25519 public key from a PEM file path, PEM bytes, or a key object."""
    serialization, ed25519, *_ = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    pem = Path(key).read_bytes() if isinstance(key, (str, os.PathLike)) else bytes(key)
    try:
        loaded = serialization.load_pem_public_key(pem)
    except ValueError:
        raise SignatureError("the public key is not a PEM-encoded key") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise SignatureError(f"the public key must be Ed25519; got {type(loaded).__name__}")
    return loaded


def key_fingerprint(public_key) -> str:
    """SHA-256 of the raw 32-byte public key: names the signer in the sidecar."""
    serialization, *_ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def signature_document(data: bytes, signature: bytes, public_key) -> dict:
    return {"format": SIGNATURE_FORMAT, "algorithm": "Ed25519",
            "model_sha256": hashlib.sha256(data).hexdigest(), "public_key_sha256": key_fingerprint(public_key),
            "signature": base64.b64encode(signature).decode()}


def read_signature(source) -> dict:
    """The sidecar of a model path (``path + .sig``), or a document given as dict/JSON bytes."""
    if isinstance(source, dict):
        return source
    if isinstance(source, (str, os.PathLike)):
        sidecar = Path(str(source) + SIGNATURE_SUFFIX)
        if not sidecar.is_file():
            raise SignatureError(f"the model is unsigned: {sidecar.name} not found beside it "
                                 "(sign it with `sdk sign`)")
        source = sidecar.read_bytes()
    try:
        document = json.loads(bytes(source))
    except ValueError:
        raise SignatureError("the signature file is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != SIGNATURE_FORMAT:
        raise SignatureError(f"the signature file is not in the {SIGNATURE_FORMAT} format")
    return document


def verify(data: bytes, document: dict, public_key) -> None:
    """Raise SignatureError unless ``document`` is a valid signature of ``data`` by ``public_key``."""
    *_, InvalidSignature, _ = _crypto()
    key = load_public_key(public_key)
    if document.get("public_key_sha256") != key_fingerprint(key):
        raise SignatureError("the model was signed by a different key (fingerprint mismatch)")
    try:
        signature = base64.b64decode(document.get("signature", ""), validate=True)
        key.verify(signature, data)
    except (InvalidSignature, ValueError):
        raise SignatureError("signature check failed: the model was changed after signing") from None


def encrypt(data: bytes, key: bytes) -> bytes:
    """AES-256-GCM: magic + 12-byte random nonce + ciphertext with tag; the magic is authenticated."""
    *_, AESGCM, _, _ = _crypto()
    _check_key(key)
    nonce = os.urandom(NONCE_BYTES)
    return ENCRYPTED_MAGIC + nonce + AESGCM(key).encrypt(nonce, data, ENCRYPTED_MAGIC)


def is_encrypted(data: bytes) -> bool:
    return data[:len(ENCRYPTED_MAGIC)] == ENCRYPTED_MAGIC


def decrypt(blob: bytes, key: bytes) -> bytes:
    """The plaintext model, in memory only; DecryptionError for a wrong key or a changed file."""
    *_, AESGCM, _, InvalidTag = _crypto()
    _check_key(key)
    if not is_encrypted(blob):
        raise ModelFormatError("a decryption key was given but the model is not encrypted by `sdk encrypt`")
    start = len(ENCRYPTED_MAGIC)
    nonce, ciphertext = blob[start:start + NONCE_BYTES], blob[start + NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, ENCRYPTED_MAGIC)
    except (InvalidTag, ValueError):
        raise DecryptionError("cannot decrypt the model: wrong key, or the file was changed") from None


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        raise ValueError(f"an AES-256 key is 32 bytes; got {len(key) if hasattr(key, '__len__') else key!r}")
