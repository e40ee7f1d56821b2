"""Images in and out: safe decoding of uploads, tensor conversions, quality metrics, tiled application, and the
nearest training image of a sample (nearest.py)."""

from .io import InputError, as_image, open_image
from .nearest import TrainingIndex, write_training_index

__all__ = ["InputError", "TrainingIndex", "as_image", "open_image", "write_training_index"]
