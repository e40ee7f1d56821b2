"""The knobs of one sampling run, as one frozen, checked object shared by pixel, latent and token models.

diffusers' pipelines take their settings as keyword arguments and check them at the top of `__call__`;
GenLab's public calls (`DiffusionModel.sample / denoise / inpaint`, `TokenPrior.sample / inpaint`) keep those
keyword arguments and turn them into one `SamplingSettings` before any work, so every range is checked once,
here, and the loops below them (`genlab.diffusion.loop.iterate_reverse`, `genlab.priors.sampling.iterate_unmask`)
take the object instead of a dozen parameters (nanoGPT's `GPTConfig`, diffusers' scheduler configs).

A diffusion run names a `scheduler` ("ddpm", "ddim", "dpm++"); a token run names an `order` ("confidence",
"raster", "random"). Fields the other family does not use keep their defaults.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
MAX_BATCH = 16
MAX_DIFFUSION_STEPS = 1000  # reverse steps of a diffusion run (one per training timestep at most)
MAX_TOKEN_STEPS = 64  # confidence and random orders; raster takes one step per masked token
MAX_GUIDANCE = 30.0  # classifier-free guidance scale, diffusion and token priors alike
MAX_TEMPERATURE = 10.0  # divides a token prior's logits
MAX_CHOICE_TEMPERATURE = 20.0  # the confidence order's annealed Gumbel noise
MAX_REFINE = 8  # refinement rounds after a token run (`genlab.priors.sampling.refine_rounds`)
CHOICE_TEMPERATURE = 2.0  # start of the annealed Gumbel temperature (AmusedScheduler's default): Hub priors
ORDERS = ("confidence", "raster", "random")  # token priors' unmasking orders (`genlab.priors.sampling`)


def is_integer(value) -> bool:
    """An integer of any kind (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite real number of any kind (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(value, name: str, low: int, high: int) -> int:
    """`value` as an int when it is an integer (not a bool) in [low, high], else ValueError naming it."""
    if not is_integer(value) or not low <= int(value) <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def check_number(value, name: str, low: float, high: float, *, open_low: bool = False) -> float:
    """`value` as a float when it is a finite real number (not a bool) in [low, high] ((low, high] with
    `open_low`), else ValueError naming it."""
    above_low = is_number(value) and (low < value if open_low else low <= value)
    if not (above_low and value <= high):
        bounds = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r}")
    return float(value)


def check_guidance_interval(value, name: str = "guidance interval") -> tuple[float, float]:
    """`value` as (low, high) floats when it is a pair of noise levels 0 <= low < high (high may be math.inf), else
    ValueError naming it. Guidance then acts where low < sigma_t <= high (`guides_at`)."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else None
    if (pair is None or len(pair) != 2 or not is_number(pair[0])
            or not (is_number(pair[1]) or (isinstance(pair[1], float) and pair[1] == math.inf))
            or not 0 <= pair[0] < pair[1]):
        raise ValueError(f"{name} must be two noise levels (low, high) with 0 <= low < high, got {value!r}")
    return float(pair[0]), float(pair[1])


def check_choice_temperature(value, name: str = "choice temperature") -> float:
    """`value` as a float when it is a number in [0, MAX_CHOICE_TEMPERATURE], else ValueError."""
    return check_number(value, name, 0.0, MAX_CHOICE_TEMPERATURE)


@dataclass(frozen=True)
class SamplingSettings:
    """One run's settings, checked on construction (ValueError naming the value). Model defaults (guidance scale,
    choice temperature) are resolved by the model before it builds the settings, so every field is concrete."""

    seed: int = 0  # seeds the initial noise (diffusion) or the token draws (priors)
    steps: int = 50  # reverse steps, or unmasking steps (raster order: the masked tokens, not checked)
    scheduler: str | None = None  # diffusion: the diffusers scheduler to step with (`genlab.diffusion.schedule`)
    order: str | None = None  # token priors: which masked tokens each step fixes
    batch: int = 1  # samples drawn at once
    guidance_scale: float = 1.0  # classifier-free guidance w (1: the conditional model alone)
    autoguidance_scale: float = 1.0  # diffusion: autoguidance w_ag against the model's guide network (1: off)
    guidance_interval: tuple[float, float] | None = None  # diffusion: guide only where low < sigma_t <= high
    eta: float = 0.0  # DDIM's stochasticity (0: deterministic)
    temperature: float = 1.0  # token priors: divides the logits
    top_k: int | None = None  # token priors: draw among the k likeliest codes (None: all)
    choice_temperature: float = CHOICE_TEMPERATURE  # confidence order: start of the annealed Gumbel noise
    refine: int = 0  # token priors: rounds of `refine_rounds` after the last step
    num_codes: int | None = None  # a token prior's codebook size K: top_k's upper bound

    def __post_init__(self):
        if self.scheduler is not None and self.order is not None:
            raise ValueError("a run has a scheduler (diffusion) or an order (token priors), not both")
        if self.scheduler is not None:
            from .diffusion.schedule import SCHEDULERS  # the scheduler classes live with the schedule math

            if self.scheduler not in SCHEDULERS:
                raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {sorted(SCHEDULERS)}")
        if self.order is not None and self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r}; choose one of {ORDERS}")
        checked = {"seed": check_int(self.seed, "seed", 0, MAX_SEED),
                   "batch": check_int(self.batch, "batch", 1, MAX_BATCH),
                   "guidance_scale": check_number(self.guidance_scale, "guidance scale", 0.0, MAX_GUIDANCE),
                   "autoguidance_scale": check_number(self.autoguidance_scale, "autoguidance scale", 1.0,
                                                      MAX_GUIDANCE),
                   "eta": check_number(self.eta, "eta", 0.0, 1.0),
                   "temperature": check_number(self.temperature, "temperature", 0.0, MAX_TEMPERATURE, open_low=True),
                   "choice_temperature": check_choice_temperature(self.choice_temperature),
                   "refine": check_int(self.refine, "refine", 0, MAX_REFINE)}
        if self.order != "raster":
            max_steps = MAX_TOKEN_STEPS if self.order is not None else MAX_DIFFUSION_STEPS
            checked["steps"] = check_int(self.steps, "steps", 1, max_steps)
        if self.guidance_interval is not None:
            checked["guidance_interval"] = check_guidance_interval(self.guidance_interval)
        if self.top_k is not None:
            checked["top_k"] = check_int(self.top_k, "top_k", 1, self.num_codes or self.top_k)
        for name, value in checked.items():  # plain Python numbers from here on
            object.__setattr__(self, name, value)


def guides_at(settings: SamplingSettings, sigma: float) -> bool:
    """Whether a guided run applies its guidance at noise level sigma_t = sqrt((1 - abar_t) / abar_t): everywhere
    without an interval, else inside (low, high] (guidance in a limited interval, Kynkäänniemi et al. 2024,
    arXiv:2404.07724: off at the highest noise levels, where it collapses the sample's layout to the class's
    typical one, and at the lowest, where it does little)."""
    if settings.guidance_interval is None:
        return True
    low, high = settings.guidance_interval
    return low < sigma <= high


def last(stream):
    """Run a sampling stream (Steps or frames, then the run) to its end and return its last item, the run."""
    item = None
    for item in stream:
        pass
    return item
