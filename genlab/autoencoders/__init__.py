"""Autoencoders: the first stage of every latent and token model.

- `vq.py`: VQ-VAE / VQGAN (van den Oord et al. 2017, arXiv:1711.00937; Esser et al. 2021, arXiv:2012.09841):
  encode, quantize, decode, codebook statistics and token edits over a diffusers `VQModel`.
- `kl.py`: KL autoencoders (Kingma & Welling 2014; Rombach et al. 2022, arXiv:2112.10752) over a diffusers
  `AutoencoderKL`, and the codecs that scale their latents for a diffusion model.
"""

from .kl import KLAutoencoder, KLReconstruction, LatentCodec, PixelCodec
from .vq import VQ, Background, Reconstruction, perplexity

__all__ = ["VQ", "Background", "KLAutoencoder", "KLReconstruction", "LatentCodec", "PixelCodec", "Reconstruction",
           "perplexity"]
