"""Noise-schedule arithmetic of variance-preserving diffusion, on diffusers' discrete schedulers.

DDPM: Ho et al., "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239).
  forward process (eq. 4):  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
  predicted clean image (eq. 15):  x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
  v-prediction (Salimans & Ho, arXiv:2202.00512):  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
DDIM: Song et al. (arXiv:2010.02502); DPM-Solver++: Lu et al. (arXiv:2211.01095); both are
  diffusers' scheduler classes, built from the checkpoint's own scheduler config (`make_scheduler`).
SDEdit: Meng et al. (arXiv:2108.01073): an image that already carries Gaussian noise of std sigma (pixel
  scale 0..1, i.e. 2 sigma in the model's [-1, 1] scale) is x_0 + 2 sigma eps, which is x_t / sqrt(abar_t)
  for the t with (1 - abar_t) / abar_t = (2 sigma)^2 (`timestep_for_sigma`).

Sample-space tensors are (B, C, h, w); timesteps are integers in [0, num_train_timesteps).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SCHEDULERS: dict[str, tuple[type, dict]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}
# Only variance-preserving schedulers, whose sample is x_t itself: sigma-space ones (Euler, Heun)
# keep x_t / sqrt(abar_t) and would need their own conversions of every recorded frame.


def make_scheduler(config: dict, name: str):
    """A fresh scheduler of kind `name` built from a checkpoint's scheduler config."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)


def alphas_cumprod_of(scheduler) -> torch.Tensor:
    """abar_t for t = 0..T-1, float64 on CPU, from any diffusers discrete scheduler."""
    return torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64).cpu()


def predict_x0_and_eps(model_output, x_t, timestep: int, alphas_cumprod, prediction_type: str):
    """(x0_hat, eps_hat) from the UNet output, for epsilon, v or sample prediction (fp32)."""
    abar = float(alphas_cumprod[int(timestep)])
    a, s = abar ** 0.5, (1 - abar) ** 0.5
    model_output, x_t = model_output.float(), x_t.float()
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif prediction_type == "v_prediction":
        x0 = a * x_t - s * model_output
        eps = s * x_t + a * model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - a * x0) / s
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return x0, eps


def clip_range(x: torch.Tensor, bounds) -> torch.Tensor:
    """Clamp (B, C, h, w) to [-bounds, bounds] (a number) or per channel to bounds = (low, high), each a
    length-C sequence."""
    if isinstance(bounds, (int, float)):
        return x.clamp(-bounds, bounds)
    low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for b in bounds)
    return torch.maximum(torch.minimum(x, high), low)


def model_output_for(x0: torch.Tensor, x_t: torch.Tensor, timestep: int, alphas_cumprod, prediction_type: str):
    """The UNet output (epsilon, v or sample) whose x0_hat is `x0` at x_t: the inverse of predict_x0_and_eps."""
    abar = float(alphas_cumprod[int(timestep)])
    a, s = abar ** 0.5, (1 - abar) ** 0.5
    if prediction_type == "epsilon":
        return (x_t - a * x0) / s
    if prediction_type == "v_prediction":
        return (a * x_t - x0) / s
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
    """q(x_t | x_0) through the scheduler's own `add_noise` (eq. 4)."""
    t = torch.full((x0.shape[0],), int(timestep), dtype=torch.long)
    return scheduler.add_noise(x0.float(), noise.float(), t)


def timestep_for_sigma(alphas_cumprod: torch.Tensor, sigma: float) -> int:
    """The t whose noise-to-signal ratio sqrt((1 - abar_t) / abar_t) is closest to 2 sigma."""
    if not 0 < sigma < 10:
        raise ValueError(f"sigma must be in (0, 10) on the 0..1 pixel scale, got {sigma!r}")
    ratio = torch.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    return int(torch.argmin((ratio - 2 * sigma).abs()))


def sigma_for_timestep(alphas_cumprod: torch.Tensor, timestep: int) -> float:
    abar = float(alphas_cumprod[int(timestep)])
    return 0.5 * ((1 - abar) / abar) ** 0.5


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return torch.log(alphas_cumprod / (1 - alphas_cumprod))


def estimate_sigma(image: np.ndarray) -> float:
    """Noise std (0..1 scale) of an (H, W, 3) uint8 image, by wavelet MAD (Donoho & Johnstone)."""
    from skimage.restoration import estimate_sigma as skimage_estimate

    return float(np.mean(skimage_estimate(image.astype(np.float64) / 255.0, channel_axis=-1)))


def set_timesteps_from(scheduler, start: int, steps: int) -> list[int]:
    """Configure `scheduler` to run from timestep `start` down to 0 in about `steps` uniform steps.

    DDIM derives each previous timestep from a fixed stride T // num_inference_steps, so the
    schedule is built on that stride for every scheduler; those that take custom timesteps get
    the same list, so they all visit the same timesteps.
    """
    total = scheduler.config.num_train_timesteps
    steps = max(1, min(int(steps), start + 1))
    inference_steps = max(1, total // max(1, round((start + 1) / steps)))
    stride = total // inference_steps
    timesteps = list(range(start, -1, -stride))[:steps]
    accepts_custom = "timesteps" in inspect.signature(scheduler.set_timesteps).parameters
    if accepts_custom and not isinstance(scheduler, DDIMScheduler):
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(inference_steps)
        scheduler.timesteps = torch.tensor(timesteps, dtype=torch.long)
    return [int(t) for t in scheduler.timesteps]
