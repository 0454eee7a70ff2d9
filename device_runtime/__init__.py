"""On-device inference for TFLite models: numpy plus one interpreter, never TensorFlow.

Public surface: ``Model`` and the errors in ``device_runtime.errors``.
"""

from .errors import (ArgumentError, DeviceRuntimeError, InferenceError, InputError, InvalidKeyError,
                     MissingMetadataError, ModelFormatError, NoInterpreterError, UnsupportedModelError)
from .integrity import DecryptionError, SignatureError
from .model import Model, TensorSpec

__all__ = ["Model", "TensorSpec", "SignatureError", "DecryptionError", "ArgumentError", "DeviceRuntimeError",
           "InferenceError", "InputError", "InvalidKeyError", "MissingMetadataError", "ModelFormatError",
           "NoInterpreterError", "UnsupportedModelError"]
