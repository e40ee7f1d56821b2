"""What the four toy families share: checked config, MLPs with seeded initialisation, standardisation,
and the resumable training loop (a generator the UI can stop between any two reports).

Every model owns one torch.Generator, seeded at `make`, that draws its minibatches and its training
noise; its weights are initialised from another generator of the same seed (overwriting what
nn.Linear drew from torch's global RNG). No result depends on the global RNG, so the same seed gives
the same model in any thread, and training 1000 + 1000 steps gives the same weights as 2000 at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from .data import check_points

MAX_TRAIN_STEPS = 1_000_000  # per call of train(); the UI caps a request far lower
MAX_SAMPLES = 100_000
MAX_HISTORY = 1_000  # loss reports kept per model (older ones are thinned to every other), a memory bound
# Samples and views use an exponential moving average of the weights (Polyak averaging, as Ho et al.
# and most GANs since Karras et al. 2018 do): the last iterate of a constant-rate Adam jitters, and on
# 2D data that jitter is visible as a wobbling sample cloud. 0.995 averages over about 200 steps.
AVERAGE_DECAY = 0.995

# (low, high) for every numeric setting any family has; the message names the bad value.
LIMITS = {
    "lr": (1e-6, 0.1), "width": (4, 512), "depth": (1, 6), "batch_size": (8, 2048),
    "latent": (1, 16), "kl_warmup": (0, 100_000), "transforms": (1, 12), "bins": (2, 32), "timesteps": (2, 1000),
}
CHOICES = {"loss": ("nonsaturating", "hinge")}


@dataclass(frozen=True)
class ToyConfig:
    """Settings every family has; each family's Config adds its own and may change the defaults."""

    lr: float = 1e-3  # Adam learning rate
    width: int = 128  # hidden units per MLP layer
    depth: int = 3  # hidden layers per MLP
    batch_size: int = 256  # points per training step, drawn with replacement

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in CHOICES:
                if value not in CHOICES[field.name]:
                    raise ValueError(f"unknown {field.name} {value!r}; choose one of {list(CHOICES[field.name])}")
                continue
            low, high = LIMITS[field.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{field.name} must be a number; got {value!r}")
            if field.type in (int, "int") and value != int(value):
                raise ValueError(f"{field.name} must be a whole number; got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{field.name} must be between {low:g} and {high:g}; got {value:g}")
            if field.type in (int, "int"):
                object.__setattr__(self, field.name, int(value))

    @classmethod
    def checked(cls, settings: dict) -> "ToyConfig":
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown} for this family; choose from {names}")
        return cls(**settings)


def mlp(inputs: int, outputs: int, width: int, depth: int, activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """inputs -> depth hidden layers of `width` -> outputs."""
    layers, size = [], inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), activation()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, outputs))


def init_linear_(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Linear initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from `generator`."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                if layer.bias is not None:
                    layer.bias.uniform_(-bound, bound, generator=generator)


@dataclass
class TrainState:
    step: int  # steps the model has taken in all, across calls of train()
    losses: dict[str, float]  # each loss averaged over the steps since the previous report
    seconds: float  # the model's training wall time in all


class ToyModel(nn.Module):
    """A 2D generative model. Subclasses build their networks, then call `_ready()`, and define
    `train_step` (one optimiser step on a standardised batch) and `_sample` (standardised samples).

    Data is standardised by one centre and one scale (isotropic, so shapes are kept) fitted to the
    first data the model trains on: every family then sees points of about unit spread, which is
    what their initialisations and, for diffusion, the unit-variance noise assume.
    """

    family: ClassVar[str]
    Config: ClassVar[type[ToyConfig]] = ToyConfig
    loss_names: ClassVar[tuple[str, ...]]

    def __init__(self, config: ToyConfig, seed: int = 0):
        super().__init__()
        self.config, self.seed = config, int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.register_buffer("center", torch.zeros(2))
        self.register_buffer("scale", torch.ones(()))
        self.fitted = False
        self.step, self.seconds = 0, 0.0
        self.history: list[tuple[int, dict[str, float]]] = []

    def _ready(self) -> None:
        init_linear_(self, torch.Generator().manual_seed(self.seed))
        self.optimizers = self.make_optimizers()
        self.average = [parameter.detach().clone() for parameter in self.parameters()]

    @torch.no_grad()
    def update_average(self) -> None:
        decay = min(AVERAGE_DECAY, (1 + self.step) / (10 + self.step))  # early on, follow the weights closely
        for average, parameter in zip(self.average, self.parameters()):
            average.lerp_(parameter, 1 - decay)

    @contextlib.contextmanager
    def averaged(self):
        """Within the block the model holds its averaged weights (samples and views use them)."""
        parameters = list(self.parameters())
        current = [parameter.detach().clone() for parameter in parameters]
        with torch.no_grad():
            for parameter, average in zip(parameters, self.average):
                parameter.copy_(average)
        try:
            yield self
        finally:
            with torch.no_grad():
                for parameter, value in zip(parameters, current):
                    parameter.copy_(value)

    def make_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=self.config.lr)]

    @staticmethod
    def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # ------------------------------------------------------------------ standardisation
    def fit_scaling(self, points: np.ndarray) -> None:
        if self.fitted:
            return
        self.center.copy_(torch.from_numpy(points.mean(axis=0)))
        self.scale.fill_(float(points.std(axis=0).mean()))
        self.fitted = True

    def to_model(self, points) -> torch.Tensor:
        return (torch.as_tensor(points, dtype=torch.float32) - self.center) / self.scale

    def to_data(self, standardized: torch.Tensor) -> np.ndarray:
        return (standardized * self.scale + self.center).numpy().astype(np.float32)

    @property
    def log_jacobian(self) -> float:
        """log |det d(standardised)/d(data)| = -2 log scale: turns a standardised density into a data one."""
        return -2 * math.log(float(self.scale))

    # ------------------------------------------------------------------ the family's parts
    def train_step(self, batch: torch.Tensor) -> dict[str, float]:  # batch: (B, 2) standardised
        raise NotImplementedError

    def _sample(self, n: int, generator: torch.Generator) -> torch.Tensor:  # -> (n, 2) standardised
        raise NotImplementedError

    def normal(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator if generator is None else generator)

    @torch.no_grad()
    def sample(self, n: int = 2000, seed: int = 0) -> np.ndarray:
        """(n, 2) float32 samples in data coordinates; the same seed gives the same samples."""
        check_count(n, "n", MAX_SAMPLES)
        with self.averaged():
            return self.to_data(self._sample(int(n), torch.Generator().manual_seed(int(seed))))


def view(method):
    """A read-only view of the model: no gradients, and the averaged weights the samples come from."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch.no_grad(), self.averaged():
            return method(self, *args, **kwargs)
    return wrapper


def check_count(value, name: str, high: int, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or value != int(value):
        raise ValueError(f"{name} must be a whole number; got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}; got {value}")
    return int(value)


def train(model: ToyModel, data, steps: int = 1000, every: int = 100) -> Iterator[TrainState]:
    """Train `model` for `steps` more steps on `data` ((n, 2) points), yielding a TrainState every
    `every` steps and after the last. Stop iterating to pause; call again to resume where it stopped."""
    points = check_points(data)
    steps = check_count(steps, "steps", MAX_TRAIN_STEPS)
    every = check_count(every, "every", MAX_TRAIN_STEPS)
    model.fit_scaling(points)
    standardized = model.to_model(points)  # (n, 2)
    totals: dict[str, float] = {}
    count = 0
    started = time.perf_counter()
    for index in range(steps):
        rows = torch.randint(len(standardized), (model.config.batch_size,), generator=model.generator)
        losses = model.train_step(standardized[rows])
        model.step += 1
        model.update_average()
        for name, value in losses.items():
            if not math.isfinite(value):
                raise ValueError(f"{model.family} training diverged at step {model.step} ({name} = {value}); "
                                 "lower the learning rate and reset the model.")
            totals[name] = totals.get(name, 0.0) + value
        count += 1
        if count == every or index == steps - 1:
            model.seconds += time.perf_counter() - started
            state = TrainState(model.step, {name: total / count for name, total in totals.items()}, model.seconds)
            model.history.append((state.step, state.losses))
            if len(model.history) > MAX_HISTORY:
                model.history = model.history[::2]
            totals, count = {}, 0
            yield state
            started = time.perf_counter()  # time spent by the consumer between reports is not training time


def train_all(models: dict[str, ToyModel], data, steps: int = 1000,
              every: int = 100) -> Iterator[tuple[str, TrainState]]:
    """Train several models on the same data with the same budget, in turns of `every` steps, so
    their progress can be shown side by side; yields (name, TrainState) after each turn."""
    streams = {name: train(model, data, steps, every) for name, model in models.items()}
    while streams:
        for name in list(streams):
            state = next(streams[name], None)
            if state is None:
                del streams[name]
            else:
                yield name, state
