"""Images in and out: safe decoding of uploads, tensor conversions, quality metrics and tiled application."""

from .io import InputError, open_image

__all__ = ["InputError", "open_image"]
