"""The deployment SDK: take a trained model to a phone, a Raspberry Pi or a microcontroller.

Public API: ``convert``, ``convert_within_budget``, ``distill``, ``inspect``, ``Recipe`` and the error types.  Anything
not imported here is internal and may change.
"""

from converters.errors import (ConversionError, DataError, OutputPathError, RecipeError, SDKError,
                               SourceModelError, UserInputError)
from converters.recipe import Recipe

from .api import convert, convert_within_budget, distill, inspect

__all__ = ["convert", "convert_within_budget", "distill", "inspect", "Recipe", "SDKError", "UserInputError",
           "ConversionError", "DataError", "OutputPathError", "RecipeError", "SourceModelError"]
