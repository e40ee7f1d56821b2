"""Diffusion models (Ho et al. 2020, arXiv:2006.11239; Song et al. 2021, arXiv:2010.02502), pixel and latent.

- `schedule.py`: the noise-schedule arithmetic over diffusers' schedulers (x0 / eps / v conversions, q(x_t | x_0),
  the timestep of a noise level, the timesteps of a run from t);
- `loop.py`: the one reverse loop (`iterate_reverse`) that serves pixel UNets, latent UNets (over an autoencoder's
  codec) and text-conditioned UNets alike, with classifier-free guidance and RePaint's known region;
- `pipeline.py`: `DiffusionModel` (sample, denoise, inpaint; for text models compare_prompts and img2img), its
  `Frame`s and `DiffusionRun`s;
- `attention.py`: word-level cross-attention maps of text-conditioned runs (DAAM, Tang et al., arXiv:2210.04885).
"""

from .attention import AttentionMaps, AttentionRecorder
from .loop import KnownRegion, Step, Trajectory, iterate_reverse, reverse_process
from .pipeline import DiffusionModel, DiffusionRun, Frame, noise_as_image
from .schedule import SCHEDULERS, estimate_sigma, make_scheduler

__all__ = ["SCHEDULERS", "AttentionMaps", "AttentionRecorder", "DiffusionModel", "DiffusionRun", "Frame", "KnownRegion",
           "Step", "Trajectory", "estimate_sigma", "iterate_reverse", "make_scheduler", "noise_as_image", "reverse_process"]
