"""Camera frame / image file / waveform -> model input tensor, vectorised.

Normalisation follows the TFLite metadata convention: ``(pixel - mean) / std``
on 0..255 pixels, so mean=0, std=255 gives [0, 1] and mean=std=127.5 gives
[-1, 1].  Resizing is bilinear with half-pixel centres (as OpenCV and TF do).

- ``geometry``: the image spec, how a frame fits it, and the map back (``Letterbox``).
- ``engines``: the numpy reference resampler and the faster OpenCV one.
- ``image``: reading frames and ``ImagePreprocessor``, which ties the two together.
- ``yuv``: a camera's YUV 4:2:0 frame -> RGB.  ``audio``: a waveform -> frames.
"""

from .audio import frame_audio
from .engines import ENGINES, check_engine, resize_bilinear, resolve_engine
from .geometry import LAYOUTS, RESIZE_MODES, ImageSpec, Letterbox
from .image import COLOR_ORDERS, ImagePreprocessor, load_image, preprocess_image
from .yuv import yuv420_to_rgb

__all__ = ["COLOR_ORDERS", "ENGINES", "LAYOUTS", "RESIZE_MODES", "ImagePreprocessor", "ImageSpec", "Letterbox",
           "check_engine", "frame_audio", "load_image", "preprocess_image", "resize_bilinear", "resolve_engine",
           "yuv420_to_rgb"]
