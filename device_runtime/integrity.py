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

from .errors import DeviceRuntimeError, InvalidKeyError, ModelFormatError

SIGNATURE_SUFFIX = ".sig"
SIGNATURE_FORMAT = "edge-deploy-signature/1"
ENCRYPTED_MAGIC = b"EDGEAES1"
NONCE_BYTES = 12
AES_KEY_BYTES = 32
AES_KEY_FORMS = ("the content of the key file `sdk keygen --aes` writes (64 hex characters, a trailing newline "
                 "allowed, as bytes or str) or the raw 32 bytes")


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


def load_public_key(key, name: str = "public_key"):
    """An Ed25519 public key from a PEM file path, PEM bytes or text, or a key object.

    InvalidKeyError for a missing file, a private key (with where its public half is) or another kind of key.
    """
    serialization, ed25519, *_ = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, str) and key.lstrip().startswith("-----BEGIN"):
        pem = key.encode()
    elif isinstance(key, (str, os.PathLike)):
        name = str(key)
        pem = read_key_bytes(key, "public key", "give the signer's .pub.pem (`sdk keygen -o PREFIX` writes "
                                                "PREFIX.pub.pem)")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        pem = bytes(key)
    else:
        raise InvalidKeyError(f"{name} must be a .pub.pem path, PEM bytes or an Ed25519PublicKey; "
                              f"got {type(key).__name__}")
    if b"PRIVATE KEY-----" in pem:
        raise InvalidKeyError(f"{name} is a private key; verifying needs the public key: "
                              f"{_public_half(name)}")
    try:
        loaded = serialization.load_pem_public_key(pem)
    except ValueError:
        raise InvalidKeyError(f"{name} is not a PEM-encoded public key (-----BEGIN PUBLIC KEY-----); "
                              "give the .pub.pem that `sdk keygen` wrote") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise InvalidKeyError(f"{name} must be an Ed25519 public key (from `sdk keygen`); "
                              f"got {type(loaded).__name__}")
    return loaded


def _public_half(private_path: str) -> str:
    """Where the public key of a private key file is: `sdk keygen`'s sibling file, or how to derive it."""
    if private_path.endswith(".pem") and not private_path.endswith(".pub.pem"):
        sibling = private_path[:-len(".pem")] + ".pub.pem"
        if Path(sibling).is_file():
            return f"give {sibling}, the public key beside it"
        return (f"give the .pub.pem `sdk keygen` wrote beside it, or derive one with "
                f"`openssl pkey -in {private_path} -pubout -out {sibling}`")
    return ("give the .pub.pem `sdk keygen` wrote beside the private key, or derive one with "
            "`openssl pkey -in PRIVATE.pem -pubout -out PUBLIC.pub.pem`")


def aes_key(key: bytes | str, name: str = "decryption_key") -> bytes:
    """The 32-byte AES-256 key from what an app has at hand: the key file's content or the raw bytes.

    ``open("app.key", "rb").read()`` (64 hex characters and a newline) works as it is, so an app never
    decodes the file itself.  Anything else raises InvalidKeyError, which names the length received,
    never the key's content.
    """
    if isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
        if len(raw) == AES_KEY_BYTES and not all(c in b"0123456789abcdefABCDEF" for c in raw):
            return raw  # 32 random bytes are all hex digits with odds of (22/256)**32: that is hex text
        received = f"{len(raw)} bytes"
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            text = None
    elif isinstance(key, str):
        text, received = key, f"a str of {len(key)} characters"
    else:
        raise InvalidKeyError(f"{name} must be bytes or str: {AES_KEY_FORMS}; got {type(key).__name__}")
    if text is not None:
        stripped = text.strip()
        hex_only = all(c in "0123456789abcdefABCDEF" for c in stripped)
        if len(stripped) == 2 * AES_KEY_BYTES and hex_only:
            return bytes.fromhex(stripped)
        if stripped:
            received += f" ({len(stripped)} {'hex characters' if hex_only else 'characters, not all hex'})"
    raise InvalidKeyError(f"{name} is not an AES-256 key: got {received}; accepted: {AES_KEY_FORMS}")


def read_aes_key_file(path: str | os.PathLike) -> bytes:
    """The 32-byte key in a file from `sdk keygen --aes` (or holding the raw 32 bytes); InvalidKeyError if not."""
    content = read_key_bytes(path, "AES key", f"give the file `sdk keygen --aes` wrote (make one with "
                                              f"`sdk keygen --aes -o {path}`)")
    return aes_key(content, f"key file {path}")


def read_key_bytes(path: str | os.PathLike, kind: str, fix: str) -> bytes:
    """A key file's bytes; InvalidKeyError naming the file and ``fix`` when it is missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidKeyError(f"{kind} file {path} not found; {fix}") from None
    except OSError as exc:
        raise InvalidKeyError(f"cannot read the {kind} file {path}: {exc.strerror or exc}") from None


def key_for_command(model_path: str | os.PathLike, key_path: str | os.PathLike | None) -> bytes | None:
    """What a command that runs MODEL passes as ``decryption_key``: the key in --decryption-key FILE, or None.

    An encrypted model without the option is refused here, naming the option rather than the Python argument.
    """
    if key_path is not None:
        return read_aes_key_file(key_path)
    try:
        with open(model_path, "rb") as file:
            header = file.read(len(ENCRYPTED_MAGIC))
    except OSError:
        return None  # a missing or unreadable model is reported by the loader, as for a plain one
    if is_encrypted(header):
        raise ModelFormatError(f"{model_path} is encrypted by `sdk encrypt`; pass --decryption-key FILE (the key "
                               "file from `sdk keygen --aes` it was encrypted with)")
    return None


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
        try:
            source = sidecar.read_bytes()
        except OSError as exc:
            raise SignatureError(f"cannot read {sidecar.name}: {exc.strerror or exc}") from None
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


def encrypt(data: bytes, key: bytes | str) -> bytes:
    """AES-256-GCM: magic + 12-byte random nonce + ciphertext with tag; the magic is authenticated."""
    *_, AESGCM, _, _ = _crypto()
    key = aes_key(key, "the encryption key")
    nonce = os.urandom(NONCE_BYTES)
    return ENCRYPTED_MAGIC + nonce + AESGCM(key).encrypt(nonce, data, ENCRYPTED_MAGIC)


def is_encrypted(data: bytes) -> bool:
    return data[:len(ENCRYPTED_MAGIC)] == ENCRYPTED_MAGIC


def decrypt(blob: bytes, key: bytes | str) -> bytes:
    """The plaintext model, in memory only; DecryptionError for a wrong key or a changed file.

    ``key`` is anything ``aes_key`` accepts: the key file's content or the raw 32 bytes.
    """
    *_, AESGCM, _, InvalidTag = _crypto()
    key = aes_key(key)
    if not is_encrypted(blob):
        raise ModelFormatError("a decryption key was given but the model is not encrypted by `sdk encrypt`")
    start = len(ENCRYPTED_MAGIC)
    nonce, ciphertext = blob[start:start + NONCE_BYTES], blob[start + NONCE_BYTES:]
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, ENCRYPTED_MAGIC)
    except (InvalidTag, ValueError):
        raise DecryptionError("cannot decrypt the model: wrong key, or the file was changed") from None

