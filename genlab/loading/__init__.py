"""Loading checkpoints: local folders and Hub repos, strict safetensors loading, the embedded models."""

from .loaders import ModelLoadError, ModelSpec, load_autoencoder, load_diffusion, load_prior, load_vq
from .registry import embedded_status

__all__ = ["ModelLoadError", "ModelSpec", "embedded_status", "load_autoencoder", "load_diffusion", "load_prior",
           "load_vq"]
