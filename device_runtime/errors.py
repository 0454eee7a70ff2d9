"""Exception types raised by the device runtime.

Every failure an app can cause maps to one of these, with a one-line message
naming the cause and the fix, so an app can catch ``RuntimeErrorBase`` and
keep running.
"""


class DeviceRuntimeError(Exception):
    """Base class of every error the device runtime raises on purpose."""


class ModelFormatError(DeviceRuntimeError):
    """The bytes are not a well-formed TFLite model (missing, truncated, corrupt)."""


class MissingMetadataError(ModelFormatError):
    """The model lacks metadata a task needs to be answered right (e.g. classify() without a normalisation)."""


class UnsupportedModelError(DeviceRuntimeError):
    """The model is well-formed but needs something this runtime lacks (custom op, delegate)."""


class InputError(DeviceRuntimeError):
    """An input has the wrong name, rank, shape, dtype or holds NaN/inf."""


class InferenceError(DeviceRuntimeError):
    """The interpreter failed while running the model (a kernel refused its inputs or shapes)."""


class NoInterpreterError(DeviceRuntimeError):
    """No TFLite interpreter package is installed."""


class InvalidKeyError(DeviceRuntimeError):
    """A key given to the runtime (decryption or public key) is missing or not in a form it accepts."""


class ArgumentError(DeviceRuntimeError, ValueError):
    """An argument of the runtime's API is outside its allowed values (also a ValueError, as before)."""
