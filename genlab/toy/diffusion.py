"""Denoising diffusion on 2D points (Ho et al., "Denoising Diffusion Probabilistic Models",
arXiv:2006.11239), with diffusers' DDPMScheduler as the noise schedule and reverse step.

Forward: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (their eq. 4), cosine schedule over T steps
(Nichol & Dhariwal, arXiv:2102.09672). An MLP eps_theta(x_t, t) is trained with their simplified
loss ||eps - eps_theta(x_t, t)||² (eq. 14, "mse"); sampling runs all T reverse steps (Algorithm 2),
and each step's x̂0 = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t) (eq. 15) is the scheduler's
`pred_original_sample`. The many steps are the price: T network calls per sample. Trajectories can
also follow DDIM with eta = 0 (Song et al., arXiv:2010.02502): the same model, deterministic paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding

from .core import ToyConfig, ToyModel, check_count, mlp, view

TIME_FEATURES = 32  # sinusoidal features of t given to the noise predictor
X0_RANGE = 5.0  # |x̂0| bound in standardised units (the data's own spread is 1)


@dataclass(frozen=True)
class DiffusionConfig(ToyConfig):
    timesteps: int = 100  # T, the number of noise levels (and of sampling steps)


@dataclass
class Trajectories:
    timesteps: np.ndarray  # (T,) the t of each reverse step, T-1 ... 0
    x_t: np.ndarray  # (T + 1, n, 2): x_T, then each step's output; x_t[-1] is the sample
    pred_x0: np.ndarray  # (T, n, 2): x̂0 at each step


class Diffusion(ToyModel):
    family = "diffusion"
    Config = DiffusionConfig
    loss_names = ("mse",)

    def __init__(self, config: DiffusionConfig, seed: int = 0):
        super().__init__(config, seed)
        self.denoiser = mlp(2 + TIME_FEATURES, 2, config.width, config.depth)  # (x_t, emb t) (B, 34) -> eps (B, 2)
        # x̂0 is clipped to 5 standard deviations of the data (Ho et al. clip images to [-1, 1]): near t = T,
        # abar_t ~ 1e-7 and x̂0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) magnifies eps's error 3000-fold.
        self.scheduler = DDPMScheduler(num_train_timesteps=config.timesteps, beta_schedule="squaredcos_cap_v2",
                                       clip_sample=True, clip_sample_range=X0_RANGE)
        self._ready()

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        features = get_timestep_embedding(t, TIME_FEATURES, flip_sin_to_cos=True, downscale_freq_shift=0)  # (B, 32)
        return self.denoiser(torch.cat([x_t, features], dim=-1))

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        t = torch.randint(self.config.timesteps, (len(batch),), generator=self.generator)  # (B,)
        noise = self.normal(*batch.shape)
        loss = F.mse_loss(self.predict_noise(self.scheduler.add_noise(batch, noise, t), t), noise)
        self.descend(self.optimizers[0], loss)
        return {"mse": loss.item()}

    def _reverse(self, n: int, generator: torch.Generator, record: bool, scheduler=None):
        scheduler = scheduler or self.scheduler
        scheduler.set_timesteps(self.config.timesteps)
        x = self.normal(n, 2, generator=generator)  # x_T (n, 2)
        path, estimates = [x], []
        for t in scheduler.timesteps:
            step = scheduler.step(self.predict_noise(x, t.expand(n)), t, x, generator=generator)
            x = step.prev_sample
            if record:
                path.append(x)
                estimates.append(step.pred_original_sample)
        return x, path, estimates

    def _sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self._reverse(n, generator, record=False)[0]

    @view
    def trajectories(self, n: int = 8, seed: int = 0, sampler: str = "ddpm") -> Trajectories:
        """The reverse process of n points from noise to data, with x̂0 at every step (data units).
        sampler "ddpm" is the one `sample` uses; "ddim" (eta = 0) follows deterministic paths from the same x_T."""
        n = check_count(n, "n", 10_000)
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {sampler!r}; choose 'ddpm' or 'ddim'")
        scheduler = self.scheduler if sampler == "ddpm" else DDIMScheduler.from_config(self.scheduler.config)
        generator = torch.Generator().manual_seed(int(seed))
        _, path, estimates = self._reverse(n, generator, record=True, scheduler=scheduler)
        return Trajectories(scheduler.timesteps.numpy().copy(),
                            np.stack([self.to_data(x) for x in path]), np.stack([self.to_data(x) for x in estimates]))
