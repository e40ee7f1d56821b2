"""Generative adversarial network on 2D points (Goodfellow et al., "Generative Adversarial Nets",
arXiv:1406.2661).

Generator G: z ~ N(0, I) -> x; discriminator D: x -> a logit. Losses, per batch:

  nonsaturating (their section 3, "train G to maximise log D(G(z))"):
      L_D = softplus(-D(x)) + softplus(D(G(z)))        L_G = softplus(-D(G(z)))
  hinge (Lim & Ye, arXiv:1705.02894; used by SAGAN and BigGAN):
      L_D = relu(1 - D(x)) + relu(1 + D(G(z)))          L_G = -D(G(z))

One D step then one G step on the same z, Adam with beta1 = 0.5 (Radford et al., DCGAN). Nothing
stops the generator from covering only some modes: that is the mode collapse this view shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .core import ToyConfig, ToyModel, mlp, view


@dataclass(frozen=True)
class GANConfig(ToyConfig):
    lr: float = 2e-4  # Adam learning rate of both networks
    latent: int = 2  # size of z
    loss: str = "nonsaturating"  # "nonsaturating" or "hinge"


class GAN(ToyModel):
    family = "gan"
    Config = GANConfig
    loss_names = ("discriminator", "generator")

    def __init__(self, config: GANConfig, seed: int = 0):
        super().__init__(config, seed)
        activation = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.generator_net = mlp(config.latent, 2, config.width, config.depth, activation)  # (B, L) -> (B, 2)
        self.discriminator_net = mlp(2, 1, config.width, config.depth, activation)  # (B, 2) -> (B, 1) logits
        self._ready()

    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(net.parameters(), lr=self.config.lr, betas=(0.5, 0.999))
                for net in (self.discriminator_net, self.generator_net)]

    def losses(self, real_logits: torch.Tensor | None, fake_logits: torch.Tensor) -> torch.Tensor:
        """L_D when real logits are given, else L_G."""
        if self.config.loss == "hinge":
            if real_logits is None:
                return -fake_logits.mean()
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        if real_logits is None:
            return F.softplus(-fake_logits).mean()
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        d_optimizer, g_optimizer = self.optimizers
        fake = self.generator_net(self.normal(len(batch), self.config.latent))  # (B, 2)
        d_loss = self.losses(self.discriminator_net(batch), self.discriminator_net(fake.detach()))
        self.descend(d_optimizer, d_loss)
        g_loss = self.losses(None, self.discriminator_net(fake))
        self.descend(g_optimizer, g_loss)  # also leaves gradients in D, cleared before D's next step
        return {"discriminator": d_loss.item(), "generator": g_loss.item()}

    def _sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.generator_net(self.normal(n, self.config.latent, generator=generator))

    @view
    def discriminator(self, points) -> np.ndarray:
        """sigma(D(x)) at (n, 2) points: the discriminator's belief that x is real, in (0, 1)."""
        return torch.sigmoid(self.discriminator_net(self.to_model(points)))[:, 0].numpy()
