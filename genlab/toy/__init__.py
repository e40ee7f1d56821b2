"""GenLab's foundations on 2D data: a VAE, a GAN, a normalizing flow and a diffusion model, each a
few tiny MLPs trained on the CPU in seconds, with the same data, the same loop and the same score.

    from genlab import toy
    data = toy.dataset("moons", n=2000, seed=0)      # (n, 2) float32; or your own (n, 2) points
    model = toy.make("vae", seed=0)                  # "vae" | "gan" | "flow" | "diffusion", **settings
    for state in toy.train(model, data, steps=3000, every=100):   # stop iterating to pause; call again to resume
        state.step, state.losses                     # losses averaged since the previous report
    models = {family: toy.make(family) for family in toy.FAMILIES}
    for family, state in toy.train_all(models, data, steps=3000):  # same data, same budget, in turns
    samples = model.sample(n=2000, seed=0)           # (n, 2) float32
    toy.energy_distance(samples, data)               # 2E|X-Y| - E|X-X'| - E|Y-Y'|, 0 when equal
    toy.energy_distance(toy.gaussian_fit(data), data)   # the baseline: one Gaussian fitted to the data

References, one module each: the VAE (Kingma & Welling, arXiv:1312.6114) in `vae.py`, the GAN
(Goodfellow et al., arXiv:1406.2661) in `gan.py`, the normalizing flow (Dinh et al., RealNVP,
arXiv:1605.08803; Durkan et al., neural spline flows, arXiv:1906.04032, through zuko) in `flow.py`,
diffusion (Ho et al., arXiv:2006.11239) in `diffusion.py`. `python -m genlab.toy bench` prints each
family's energy distance against the Gaussian fit's, and its speed. Nothing here imports gradio.
"""

from __future__ import annotations

from .core import LIMITS, MAX_TRAIN_STEPS, ToyConfig, ToyModel, TrainState, train, train_all
from .data import DATASETS, MIN_POINTS, check_points, dataset, energy_distance, gaussian_fit, view_bounds
from .diffusion import Diffusion
from .flow import Flow
from .gan import GAN
from .vae import VAE

FAMILIES: dict[str, type[ToyModel]] = {"vae": VAE, "gan": GAN, "flow": Flow, "diffusion": Diffusion}
DEFAULT_STEPS = 3000  # the budget at which every family, at its defaults, scores a third of the Gaussian fit or better


def make(family: str, seed: int = 0, **settings) -> ToyModel:
    """A fresh model of `family` with its default settings, overridden by `settings` (checked)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {list(FAMILIES)}")
    cls = FAMILIES[family]
    return cls(cls.Config.checked(settings), seed)


__all__ = [
    "DATASETS", "FAMILIES", "LIMITS", "MAX_TRAIN_STEPS", "MIN_POINTS", "Diffusion", "Flow", "GAN", "ToyConfig",
    "ToyModel", "TrainState", "VAE", "DEFAULT_STEPS", "check_points", "dataset", "energy_distance", "gaussian_fit",
    "make", "train", "train_all", "view_bounds",
]
