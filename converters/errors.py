"""Errors the converter layer raises on purpose; the CLI maps them to exit codes.

``UserInputError`` (exit 2): something the user gave is wrong — a path, a flag,
a recipe, data of the wrong shape.  ``ConversionError`` (exit 1): the input was
fine but the model could not be converted as asked.
"""

import difflib
from typing import Any


class SDKError(Exception):
    """Base of every error raised on purpose by the SDK."""


class UserInputError(SDKError):
    """Bad input: the message names the cause and the fix."""


class RecipeError(UserInputError):
    """The compression recipe is invalid."""


class DataError(UserInputError):
    """Fine-tuning, calibration or evaluation data is missing or does not fit the model."""


class SourceModelError(UserInputError):
    """The source model is missing, truncated, corrupt or of an unknown kind."""


class OutputPathError(UserInputError):
    """The output path would overwrite the input or an existing file."""


class ConversionError(SDKError):
    """The model could not be converted or compressed as the recipe asks."""


class FidelityError(ConversionError):
    """The converted model does not reproduce its source (another output shape, or float errors)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception's message (or its type), for one-line errors.

    Blank lines and the TensorFlow converter's location and traceback preambles are skipped.
    """
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith(("<unknown>", "Traceback")):
            return line[:limit]
    return type(exc).__name__


def check_choice(where: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``, naming them (and the closest, if any)."""
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise RecipeError(f"{where} must be one of {', '.join(allowed)}; got {value!r}{suggestion}")


def check_switch(where: str, value: Any) -> None:
    """Refuse a recipe switch that is not true, false or auto."""
    if value not in (True, False, "auto"):
        raise RecipeError(f"{where} must be true, false or auto; got {value!r}")
