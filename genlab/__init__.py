"""GenLab: an interactive lab for VQ-VAE, VQGAN and diffusion models (diffusers checkpoints).

    import genlab
    vq = genlab.load_vq("weights/vqvae-photo")            # or a Hub repo id, subfolder=...
    rec = vq.reconstruct(genlab.open_image("photo.jpg"))  # .image .indices .psnr .bits_per_pixel
    dm = genlab.load_diffusion("weights/ddpm-emoji")
    run = dm.sample(seed=0, steps=50, scheduler="ddim")   # .image .frames[i].timestep/.x_t/.x0
    ldm = genlab.load_diffusion("weights/ldm-emoji")      # latent: ldm.is_latent, ldm.latent_shape
    vae = genlab.load_autoencoder("weights/ldm-emoji")    # its AutoencoderKL: .reconstruct(image)
    prior = genlab.load_prior("weights/maskgit-emoji")    # a token prior over prior.vq's codes
    run = prior.sample(seed=0, steps=12, order="confidence", class_label="Animals & Nature")  # .image .tokens .frames

Nothing here imports gradio: the UI lives in `genlab.ui`.
"""

from .autoencoders import VQ, KLAutoencoder, KLReconstruction, LatentCodec, Reconstruction, perplexity
from .diffusion import SCHEDULERS, DiffusionModel, DiffusionRun
from .imaging import InputError, open_image
from .loading import (ModelLoadError, ModelSpec, embedded_status, load_autoencoder, load_diffusion, load_prior,
                      load_vq)
from .priors import CodeLength, TokenPrior, TokenRun

__version__ = "0.1.0"
__all__ = [
    "DiffusionModel", "DiffusionRun", "InputError", "KLAutoencoder", "KLReconstruction", "LatentCodec", "ModelLoadError",
    "CodeLength", "ModelSpec", "Reconstruction", "SCHEDULERS", "VQ", "TokenPrior", "TokenRun", "embedded_status", "load_autoencoder", "load_diffusion",
    "load_prior", "load_vq", "open_image", "perplexity",
]
