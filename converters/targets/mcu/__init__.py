"""Microcontroller export: TFLite Micro C/C++ sources with a measured tensor arena."""

from .boards import BOARDS, Board
from .export import McuExport, export_mcu

__all__ = ["BOARDS", "Board", "McuExport", "export_mcu"]
