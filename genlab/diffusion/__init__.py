"""Diffusion models (Ho et al. 2020, arXiv:2006.11239; Song et al. 2021, arXiv:2010.02502), pixel and latent.

- `pipeline.py`: `DiffusionModel`, the one reverse loop over diffusers' schedulers that serves pixel UNets,
  latent UNets (over an autoencoder's codec) and text-conditioned UNets alike, with its frames and runs.
"""

from .pipeline import SCHEDULERS, DiffusionModel, DiffusionRun, Frame

__all__ = ["SCHEDULERS", "DiffusionModel", "DiffusionRun", "Frame"]
