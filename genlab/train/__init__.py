"""Training for GenLab's embedded models: `python -m genlab.train vqvae|vqgan|ddpm ...` (see __main__)."""
