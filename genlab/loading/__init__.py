"""Loading checkpoints: local folders and Hub repos, strict safetensors loading, genlab.json, the embedded models.

- `hub.py`: `ModelSpec`, revisions, `resolve_source` (a folder or a Hub snapshot of JSON + safetensors), and the
  conversion bot's safetensors pull requests for Hub repos with only pickle weights on main;
- `checkpoints.py`: `ModelLoadError`, the pickle refusal, `read_config`, `model_info`, strict
  `load_diffusers_model`, device choice and placement, the model cache;
- `schema.py`: genlab.json as one typed, checked `ModelInfo`, read and written only there;
- `loaders.py`: `load_vq`, `load_autoencoder`, `load_diffusion`, `load_prior` and their component builders;
- `registry.py`: the models shipped in weights/ and the example images.
"""

from .checkpoints import ModelLoadError, clear_cache, pick_device
from .hub import ModelSpec, resolve_source
from .loaders import load_autoencoder, load_diffusion, load_prior, load_vq
from .registry import embedded_status
from .schema import ModelInfo, read_model_info, write_model_info

__all__ = ["ModelInfo", "ModelLoadError", "ModelSpec", "clear_cache", "embedded_status", "load_autoencoder",
           "load_diffusion", "load_prior", "load_vq", "pick_device", "read_model_info", "resolve_source",
           "write_model_info"]
