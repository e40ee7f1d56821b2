"""Images in and out: safe decoding of uploads, tensor conversions, quality metrics and tiled application."""

from .io import InputError, as_image, open_image

__all__ = ["InputError", "as_image", "open_image"]
