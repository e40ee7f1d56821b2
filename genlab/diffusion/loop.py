"""The one reverse loop of GenLab's diffusion models, for pixel and latent UNets alike.

Reverse process: Ho et al. (arXiv:2006.11239, Algorithm 2), stepped by a diffusers scheduler
  (`scheduler.step`), which computes x_{t-1} from x_t and the UNet's output.
Classifier-free guidance: Ho & Salimans (arXiv:2207.12598), eps = eps_uncond + w (eps_cond - eps_uncond);
  both branches run in one batch; with a guidance interval (Kynkäänniemi et al., arXiv:2404.07724) only at the
  steps whose noise level sigma_t = sqrt((1 - abar_t) / abar_t) lies in it, the conditional branch alone elsewhere.
Autoguidance: Karras et al. (arXiv:2406.02507), guiding away from a weaker network of the same task (smaller or
  less trained, the model's `unet_guide/`) on the same conditioning,
      eps = eps_uncond + w (eps_cond - eps_uncond) + (w_ag - 1)(eps_cond - eps_guide),
  which at w = 1 is their D_0 + w_ag (D_1 - D_0) (D_1 the model, D_0 the guide) and otherwise adds to
  classifier-free guidance (both inside the guidance interval when there is one). diffusers' `guiders.AutoGuidance`
  builds its weak model by skipping layers inside a modular pipeline; GenLab's loop takes a trained guide network
  instead, as the paper does.
Inpainting by replacement: after every step the known region is re-imposed from q(x_{t-1} | x_0) and only
  the masked region keeps the model's sample (the conditioning step of RePaint, Lugmayr et al.,
  arXiv:2201.09865, eq. 8, without its resampling jumps).
Latent diffusion: Rombach et al. (arXiv:2112.10752). The loop sees only sample-space tensors, (B, 3, H, W)
  pixels in [-1, 1] or (B, C, H/f, W/f) scaled latents: it does not know which space it runs in.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from ..conditioning.guidance import Conditioning
from ..sampling import SamplingSettings, guides_at
from .schedule import add_noise, alphas_cumprod_of, clip_range, model_output_for, predict_x0_and_eps


@dataclass
class Step:
    """One reverse step: the sample entering it and the model's predictions there (CPU fp32 tensors,
    in the sample space: pixels, or scaled latents for a latent model)."""

    timestep: int
    x_t: torch.Tensor  # (B, C, h, w)
    pred_x0: torch.Tensor  # (B, C, h, w)
    pred_eps: torch.Tensor  # (B, C, h, w)
    attention: object = None  # this step's cross-attention (`genlab.diffusion.attention.AttentionMaps`) when recorded


@dataclass
class Trajectory:
    steps: list[Step] = field(default_factory=list)
    final: torch.Tensor | None = None  # (B, C, h, w) x_0 in the sample space


@dataclass
class KnownRegion:
    """Inpainting: the sample-space x_0 of the input and where it is kept (1) or repainted (0)."""

    x0: torch.Tensor  # (B, C, h, w)
    keep: torch.Tensor  # (1, 1, h, w) in {0, 1}


def _step_kwargs(scheduler, eta: float, generator) -> dict:
    """The keyword arguments this scheduler's `step` takes: DDIM's eta, a generator for stochastic steps."""
    parameters = inspect.signature(scheduler.step).parameters
    return {name: value for name, value in (("eta", eta), ("generator", generator)) if name in parameters}


def _guided_output(unet, sample, timestep, unet_kwargs: dict, guidance_scale: float | None,
                   placement: tuple[torch.device, torch.dtype]) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, conditional output), the UNet's fp32 outputs at (sample, timestep); with a `guidance_scale` both
    branches in one batch, mixed. `placement`: the UNet's (device, dtype), read once per run (diffusers walks every
    module to find them)."""
    device, dtype = placement
    model_input = torch.cat([sample, sample]) if guidance_scale is not None else sample  # (2B or B, C, h, w)
    output = unet(model_input.to(dtype), timestep.to(device), **unet_kwargs).sample.float()
    if guidance_scale is None:
        return output, output
    conditional, unconditional = output.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional), conditional


def _autoguided(output: torch.Tensor, conditional: torch.Tensor, guide, sample, timestep, guide_kwargs: dict,
                scale: float, placement: tuple[torch.device, torch.dtype]) -> torch.Tensor:
    """output + (w_ag - 1)(eps_cond - eps_guide): the guide network's prediction on the conditional branch's input."""
    device, dtype = placement
    away = guide(sample.to(dtype), timestep.to(device), **guide_kwargs).sample.float().to(output.device)
    return output + (scale - 1.0) * (conditional - away)


def iterate_reverse(unet, scheduler, x_t: torch.Tensor, settings: SamplingSettings, *,
                    conditioning: Conditioning | None = None, generator: torch.Generator | None = None,
                    known: KnownRegion | None = None, clip_x0: float | tuple | None = 1.0, enforce_clip: bool = False,
                    guide=None):
    """Generator over `scheduler.timesteps` from x_t: yields (Step, next sample) after each step.

    `conditioning` gives the UNet's keyword arguments; with an unconditional branch and
    settings.guidance_scale != 1 both branches run in one batch (CFG), at the steps inside
    settings.guidance_interval when it is set (the conditional branch alone at the others); settings.eta goes to DDIM.
    `guide` (a weaker UNet of the same sample space and conditioning) with settings.autoguidance_scale != 1 adds
    autoguidance at the same steps, conditioned as the conditional branch (an unconditional run too).
    `known` re-imposes q(x_{t-1} | x_0) outside the mask after every step (inpainting). The recorded
    x0_hat is clipped to [-clip_x0, clip_x0] or per channel to clip_x0 = (lows, highs) (pixels: 1; latents:
    their training range, or None). With `enforce_clip` the scheduler steps with that clipped x0_hat too,
    whatever the scheduler (the model output is re-derived from it, as DDIM's clip_sample does): near t = T
    of a cosine schedule, abar_t ~ 1e-6 and x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    magnifies any error of eps_hat a thousandfold. Closing the generator stops the loop (cancel).
    """
    alphas_cumprod = alphas_cumprod_of(scheduler)
    prediction_type = scheduler.config.prediction_type
    placement = (unet.device, unet.dtype)
    sample = x_t.to(device=placement[0], dtype=torch.float32)
    guided = conditioning is not None and conditioning.uncond is not None and settings.guidance_scale != 1.0

    def kwargs(both: bool, where: tuple[torch.device, torch.dtype] = placement) -> dict:
        batched = conditioning.batched(both, where[0]) if conditioning is not None else {}
        return {k: (v.to(where[1]) if v.is_floating_point() else v) for k, v in batched.items()}

    # (2B or B) rows of conditioning; the B rows alone too where an interval leaves steps unguided
    modes = {guided, False} if settings.guidance_interval is not None else {guided}
    unet_kwargs = {both: kwargs(both) for both in modes}
    autoguided = guide is not None and settings.autoguidance_scale != 1.0
    if autoguided:
        guide_placement = (guide.device, guide.dtype)
        guide_kwargs = kwargs(False, guide_placement)  # the conditional branch's B rows, on the guide's side
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()  # (T,) noise level of each training timestep
    step_kwargs = _step_kwargs(scheduler, settings.eta, generator)
    timesteps = [int(t) for t in scheduler.timesteps]
    for index, timestep in enumerate(scheduler.timesteps):
        t = int(timestep)
        with torch.inference_mode():
            model_input = scheduler.scale_model_input(sample, timestep)
            inside = guides_at(settings, float(sigmas[t]))  # guidance acts at this noise level
            guides = guided and inside
            output, conditional = _guided_output(unet, model_input, timestep, unet_kwargs[guides],
                                                 settings.guidance_scale if guides else None, placement)
            if autoguided and inside:
                output = _autoguided(output, conditional, guide, model_input, timestep, guide_kwargs,
                                     settings.autoguidance_scale, guide_placement)
            pred_x0, pred_eps = predict_x0_and_eps(output, sample, t, alphas_cumprod, prediction_type)
            if clip_x0 is not None:
                clipped = clip_range(pred_x0, clip_x0)
                if enforce_clip and not torch.equal(clipped, pred_x0):
                    output = model_output_for(clipped, sample, t, alphas_cumprod, prediction_type)
                    pred_x0, pred_eps = predict_x0_and_eps(output, sample, t, alphas_cumprod, prediction_type)
                pred_x0 = clipped
            step = Step(t, sample.cpu(), pred_x0.cpu(), pred_eps.cpu())
            sample = scheduler.step(output, timestep, sample, **step_kwargs).prev_sample
            if known is not None:
                following = timesteps[index + 1] if index + 1 < len(timesteps) else None
                sample = reimpose_known(scheduler, sample, known, following, generator)
        yield step, sample


def reimpose_known(scheduler, sample: torch.Tensor, known: KnownRegion, timestep: int | None, generator=None):
    """x_{t-1} = keep * q(x_{t-1} | x_0) + (1 - keep) * x_{t-1}: fresh forward noise for the known part
    (x_0 itself after the last step)."""
    x0 = known.x0.to(sample.device)
    if timestep is not None:
        noise = torch.randn(x0.shape, generator=generator).to(sample.device)
        x0 = add_noise(scheduler, x0.cpu(), noise.cpu(), timestep).to(sample.device)
    keep = known.keep.to(sample.device)
    return keep * x0 + (1 - keep) * sample


def reverse_process(unet, scheduler, x_t: torch.Tensor, record: bool = True, *, guidance_scale: float = 1.0,
                    class_labels: torch.Tensor | None = None, null_class: int | None = None,
                    clip_x0: float | tuple | None = 1.0, enforce_clip: bool = False) -> Trajectory:
    """Run the whole reverse process from x_t (training's sample grids): class labels (B,) and the null class
    give the conditioning; keep every Step when `record`."""
    settings = SamplingSettings(guidance_scale=guidance_scale)
    trajectory = Trajectory()
    sample = x_t
    for step, sample in iterate_reverse(unet, scheduler, x_t, settings, clip_x0=clip_x0, enforce_clip=enforce_clip,
                                        conditioning=Conditioning.classes(class_labels, null_class)):
        if record:
            trajectory.steps.append(step)
    trajectory.final = sample.float().cpu()
    return trajectory
