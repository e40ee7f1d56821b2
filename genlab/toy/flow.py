"""Normalizing flow on 2D points: a neural spline flow (Durkan et al., arXiv:1906.04032) from zuko.

A bijection f maps data x to z = f(x) with a standard Gaussian base, so the density is exact
(change of variables, Dinh et al., RealNVP, arXiv:1605.08803, eq. 3):

    log p(x) = log N(f(x); 0, I) + log |det df/dx|

and training minimises -log p(x) on the data ("nll", nats per point, in data units). Each of the
`transforms` layers is a monotonic rational-quadratic spline of one coordinate whose `bins` knots an
MLP computes from the other (with two coordinates, zuko's autoregressive layers are couplings, and
the order alternates). A flow cannot tear space: between separate modes it must stretch a thin
bridge of density, the failure mode this view shows.

Why zuko (https://github.com/probabilists/zuko): a small, maintained library in pure PyTorch whose
only dependencies are torch and numpy, with splines, coupling/autoregressive flows and exact
inverses; `flow().log_prob`, `.transform` and `.transform.inv` are the three operations GenLab shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import zuko

from .core import ToyConfig, ToyModel, view


@dataclass(frozen=True)
class FlowConfig(ToyConfig):
    width: int = 64  # hidden units of each layer's spline-parameter MLP
    depth: int = 2  # hidden layers of that MLP
    transforms: int = 3  # spline layers
    bins: int = 8  # spline segments per layer (knots on [-5, 5], identity outside)


class Flow(ToyModel):
    family = "flow"
    Config = FlowConfig
    loss_names = ("nll",)

    def __init__(self, config: FlowConfig, seed: int = 0):
        super().__init__(config, seed)
        self.flow = zuko.flows.NSF(features=2, transforms=config.transforms, bins=config.bins,
                                   hidden_features=[config.width] * config.depth)
        self._ready()

    def train_step(self, batch: torch.Tensor) -> dict[str, float]:
        loss = -self.flow().log_prob(batch).mean()
        self.descend(self.optimizers[0], loss)
        return {"nll": loss.item() - self.log_jacobian}

    def _sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.flow().transform.inv(self.normal(n, 2, generator=generator))  # z (n, 2) -> x (n, 2)

    @view
    def log_density(self, points) -> np.ndarray:
        """Exact log p(x) (n,) at data points (n, 2), in data units."""
        return (self.flow().log_prob(self.to_model(points)) + self.log_jacobian).numpy()

    @view
    def to_base(self, points) -> np.ndarray:
        """z = f(x) (n, 2): the data pulled back to the base Gaussian."""
        return self.flow().transform(self.to_model(points)).numpy()
