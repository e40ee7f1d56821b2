"""Train a noise-prediction diffusers `UNet2DModel` (DDPM, Ho et al., arXiv:2006.11239, eq. 14).

loss = w(t) * ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, y)||^2
- w(t) = min(SNR(t), gamma) / SNR(t): Min-SNR-gamma weighting (Hang et al., arXiv:2303.09556),
  which converges several times faster than uniform weighting; gamma = 0 turns it off.
- Class-conditional models drop the label to the null class with probability `label_dropout`, so
  one network gives both eps(x, y) and eps(x) for classifier-free guidance (arXiv:2207.12598).
- A denoiser can focus training on the low-noise timesteps it is used at (`t_focus`).
- EMA weights (diffusers' `EMAModel`) are what gets exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_timesteps(batch: int, total: int, focus_max: int, focus_share: float, generator=None) -> torch.Tensor:
    """Uniform t in [0, total), except a `focus_share` of the batch drawn from [0, focus_max)."""
    uniform = torch.randint(0, total, (batch,), generator=generator)
    if focus_share <= 0 or focus_max <= 0:
        return uniform
    focused = torch.randint(0, focus_max, (batch,), generator=generator)
    pick = torch.rand(batch, generator=generator) < focus_share
    return torch.where(pick, focused, uniform)


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights for epsilon prediction: min(SNR, gamma) / SNR."""
    if gamma <= 0:
        return torch.ones_like(timesteps, dtype=torch.float32)
    abar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = abar / (1 - abar)
    return torch.clamp(snr, max=gamma) / snr


def drop_labels(labels: torch.Tensor, null_class: int, probability: float, generator=None) -> torch.Tensor:
    drop = torch.rand(labels.shape, generator=generator) < probability
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def diffusion_loss(unet, scheduler, clean: torch.Tensor, timesteps, labels, gamma: float) -> torch.Tensor:
    """Weighted eps-prediction MSE for a batch of clean images (B, 3, H, W)."""
    noise = torch.randn_like(clean)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction = unet(noisy, timesteps, class_labels=labels).sample
    per_sample = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
    weights = min_snr_weights(scheduler.alphas_cumprod, timesteps, gamma)
    return (per_sample * weights).mean()
