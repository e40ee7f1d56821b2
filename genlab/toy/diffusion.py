"""Denoising diffusion on 2D points (Ho et al., "Denoising Diffusion Probabilistic Models",
arXiv:2006.11239), with diffusers' DDPMScheduler as the noise schedule and reverse step.

Forward: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (their eq. 4), cosine schedule over T steps
(Nichol & Dhariwal, arXiv:2102.09672). An MLP eps_theta(x_t, t) is trained with their simplified
loss ||eps - eps_theta(x_t, t)||² (eq. 14, "mse"); sampling runs all T reverse steps (Algorithm 2),
and each step's x̂0 = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t) (eq. 15) is the scheduler's
`pred_original_sample`. The many steps are the price: T network calls per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding

from .core import ToyConfig, ToyModel, check_count, mlp

TIME_FEATURES = 32  # sinusoidal features of t given to the noise predictor


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
        self.scheduler = DDPMScheduler(num_train_timesteps=config.timesteps, beta_schedule="squaredcos_cap_v2",
                                       clip_sample=False)
        self._ready()

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        features = get_timestep_embedding(t, TIME_FEATURES, flip_sin_to_cos=True, downscale_freq_shift=0)  # (B, 32)
        return self.denoiser(torch.cat([x_t, features], dim=-1))

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        t = torch.randint(self.config.timesteps, (len(batch),), generator=self.generator)  # (B,)
        noise = self.normal(*batch.shape)
        loss = F.mse_loss(self.predict_noise(self.scheduler.add_noise(batch, noise, t), t), noise)
        optimizer, = self.optimizers
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"mse": loss.item()}

    def _reverse(self, n: int, generator: torch.Generator, record: bool):
        self.scheduler.set_timesteps(self.config.timesteps)
        x = self.normal(n, 2, generator=generator)  # x_T (n, 2)
        path, estimates = [x], []
        for t in self.scheduler.timesteps:
            step = self.scheduler.step(self.predict_noise(x, t.expand(n)), t, x, generator=generator)
            x = step.prev_sample
            if record:
                path.append(x)
                estimates.append(step.pred_original_sample)
        return x, path, estimates

    def _sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self._reverse(n, generator, record=False)[0]

    @torch.no_grad()
    def trajectories(self, n: int = 8, seed: int = 0) -> Trajectories:
        """The reverse process of n points from noise to data, with x̂0 at every step (data units)."""
        n = check_count(n, "n", 10_000)
        _, path, estimates = self._reverse(n, torch.Generator().manual_seed(int(seed)), record=True)
        return Trajectories(self.scheduler.timesteps.numpy().copy(),
                            np.stack([self.to_data(x) for x in path]), np.stack([self.to_data(x) for x in estimates]))
