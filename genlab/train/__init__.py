"""Training for GenLab's models: `python -m genlab.train {vqvae,vqgan,vae,ddpm,ldm,prior} ...` (see __main__).

    config.py   a frozen, checked config per kind, and the presets      cli.py     the options -> a config
    vq.py       VQ-VAE / VQGAN: quantizer, discriminator, losses, loop, export
    latent.py   KL autoencoder (loss, loop, export) and the encoded-image banks latent and token models draw from
    ddpm.py     pixel and latent diffusion: losses, loop, export
    prior.py    masked-token prior: masks, loss, token bank, loop, export     distill.py  its guidance distillation
    cards.py    the model cards every export writes                        common.py  data, checkpoints, run record
"""
