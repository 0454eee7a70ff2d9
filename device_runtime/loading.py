"""A model's bytes, opened safely: read, decrypted, and its signature verified before any interpreter sees them.

The formats (signature files, AES-GCM envelopes, keys) are in ``integrity``;
this is the order a ``Model`` applies them in, so that a refused model never
reaches the interpreter.  ``sdk`` and ``converters`` read model files here too.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import integrity
from .errors import ModelFormatError


def read_model_bytes(source: str | os.PathLike | bytes | bytearray | memoryview) -> bytes:
    """The bytes of a model given as a path or as bytes, with a clear error for a missing file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    if not path.exists():
        raise ModelFormatError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFormatError(f"model path is a directory, expected a .tflite file: {path}")
    data = path.read_bytes()
    if not data:
        raise ModelFormatError(f"model file is empty: {path}")
    return data


def open_model(source: str | os.PathLike | bytes, *, public_key=None, signature: dict | bytes | None = None,
               decryption_key: bytes | str | None = None) -> bytes:
    """The plain model bytes: decrypted in memory with ``decryption_key`` (an encrypted model without one is
    refused), then, with ``public_key``, refused unless the signature (``signature=``, else the ``.sig``
    beside the file) verifies."""
    data = read_model_bytes(source)
    if decryption_key is not None:
        data = integrity.decrypt(data, decryption_key)
    elif integrity.is_encrypted(data):
        raise ModelFormatError("the model is encrypted by `sdk encrypt`; pass decryption_key= (the content "
                               "of the key file from `sdk keygen --aes`, or the raw 32 bytes)")
    if public_key is not None:
        public_key = integrity.load_public_key(public_key)  # a bad key is named before a missing .sig
        if signature is None and not isinstance(source, (str, os.PathLike)):
            raise integrity.SignatureError("a model given as bytes needs signature= to be verified")
        integrity.verify(data, integrity.read_signature(signature if signature is not None else source),
                         public_key)
    return data
