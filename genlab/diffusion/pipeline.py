"""Diffusion operations: reverse trajectories, forward noising and denoise-from-t, on diffusers' schedulers.

DDPM: Ho et al., "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239).
  forward process (eq. 4):  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
  predicted clean image (eq. 15):  x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
DDIM: Song et al. (arXiv:2010.02502); DPM-Solver++: Lu et al. (arXiv:2211.01095); both are
  diffusers' scheduler classes, built from the checkpoint's own scheduler config.
Classifier-free guidance: Ho & Salimans (arXiv:2207.12598),
  eps = eps_uncond + w (eps_cond - eps_uncond).
SDEdit: Meng et al. (arXiv:2108.01073): noise an image to t with q(x_t | x_0), then run the reverse
  process from t. An image that already carries Gaussian noise of std sigma (pixel scale 0..1,
  i.e. 2 sigma in the model's [-1, 1] scale) is x_0 + 2 sigma eps, which is x_t / sqrt(abar_t) for
  the t with (1 - abar_t) / abar_t = (2 sigma)^2.

Latent diffusion: Rombach et al. (arXiv:2112.10752). The same loop runs on the scaled latents of an
  autoencoder (`genlab.autoencoders.kl.LatentCodec`): pixels -> encode -> reverse process -> decode.
  Pixel models use the identity codec, so nothing in the loop knows which space it runs in.
Inpainting by replacement: at every step the known region is re-imposed from q(x_{t-1} | x_0) and
  only the masked region keeps the model's sample (the conditioning step of RePaint, Lugmayr et al.,
  arXiv:2201.09865, eq. 8, without its resampling jumps); the final image takes the input's pixels
  outside the mask.

Sample-space tensors are (B, C, h, w): (B, 3, H, W) pixels in [-1, 1], or (B, C, H/f, W/f) scaled
latents; timesteps are integers in [0, num_train_timesteps).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from ..autoencoders.kl import PixelCodec, channels_image
from ..conditioning.guidance import Conditioning, ConditionalModel
from ..imaging.io import mask_of

SCHEDULERS: dict[str, tuple[type, dict]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}
# Only variance-preserving schedulers, whose sample is x_t itself: sigma-space ones (Euler, Heun)
# keep x_t / sqrt(abar_t) and would need their own conversions of every recorded frame.
MAX_STEPS = 1000


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


@dataclass
class Step:
    """One reverse step: the sample entering it and the model's predictions there (CPU fp32 tensors,
    in the sample space: pixels, or scaled latents for a latent model)."""

    timestep: int
    x_t: torch.Tensor  # (B, C, h, w)
    pred_x0: torch.Tensor  # (B, C, h, w)
    pred_eps: torch.Tensor  # (B, C, h, w)


@dataclass
class Trajectory:
    steps: list[Step] = field(default_factory=list)
    final: torch.Tensor | None = None  # (B, C, h, w) x_0 in the sample space


@dataclass
class KnownRegion:
    """Inpainting: the sample-space x_0 of the input and where it is kept (1) or repainted (0)."""

    x0: torch.Tensor  # (B, C, h, w)
    keep: torch.Tensor  # (1, 1, h, w) in {0, 1}


def iterate_reverse(
    unet,
    scheduler,
    x_t: torch.Tensor,
    *,
    conditioning: Conditioning | None = None,
    class_labels: torch.Tensor | None = None,
    null_class: int | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    known: KnownRegion | None = None,
    clip_x0: float | None = 1.0,
    enforce_clip: bool = False,
):
    """Generator over `scheduler.timesteps` from x_t: yields (Step, next sample) after each step.

    `conditioning` (or the shorthand class_labels + null_class) gives the UNet's keyword arguments;
    with an unconditional branch and guidance_scale != 1 both branches run in one batch (CFG).
    `known` re-imposes q(x_{t-1} | x_0) outside the mask after every step (inpainting). The recorded
    x0_hat is clipped to [-clip_x0, clip_x0] or per channel to clip_x0 = (low, high) (pixels: 1; latents:
    their training range, or None). With
    `enforce_clip` the scheduler steps with that clipped x0_hat too, whatever the scheduler (the model
    output is re-derived from it, as DDIM's clip_sample does): near t = T of a cosine schedule,
    abar_t ~ 1e-6 and x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) magnifies any error of
    eps_hat a thousandfold; pixel models clip to [-1, 1], latent models to their training range.
    Closing the generator stops the loop (cancel).
    """
    alphas_cumprod = alphas_cumprod_of(scheduler)
    prediction_type = scheduler.config.prediction_type
    device, dtype = unet.device, unet.dtype
    sample = x_t.to(device=device, dtype=torch.float32)
    conditioning = conditioning or Conditioning.classes(class_labels, null_class)
    guided = conditioning is not None and conditioning.uncond is not None and guidance_scale != 1.0
    unet_kwargs = conditioning.batched(guided, device) if conditioning is not None else {}
    unet_kwargs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in unet_kwargs.items()}
    step_kwargs = {}
    step_params = inspect.signature(scheduler.step).parameters
    if "eta" in step_params:
        step_kwargs["eta"] = eta
    if "generator" in step_params:
        step_kwargs["generator"] = generator
    timesteps = [int(t) for t in scheduler.timesteps]
    for index, timestep in enumerate(scheduler.timesteps):
        with torch.inference_mode():
            model_input = scheduler.scale_model_input(sample, timestep)
            model_input = torch.cat([model_input, model_input]) if guided else model_input
            output = unet(model_input.to(dtype), timestep.to(device), **unet_kwargs).sample.float()
            if guided:
                conditional, unconditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            pred_x0, pred_eps = predict_x0_and_eps(output, sample, int(timestep), alphas_cumprod, prediction_type)
            if clip_x0 is not None:
                clipped = clip_range(pred_x0, clip_x0)
                if enforce_clip and not torch.equal(clipped, pred_x0):
                    output = model_output_for(clipped, sample, int(timestep), alphas_cumprod, prediction_type)
                    pred_x0, pred_eps = predict_x0_and_eps(output, sample, int(timestep), alphas_cumprod, prediction_type)
                pred_x0 = clipped
            step = Step(int(timestep), sample.cpu(), pred_x0.cpu(), pred_eps.cpu())
            sample = scheduler.step(output, timestep, sample, **step_kwargs).prev_sample
            if known is not None:
                sample = reimpose_known(scheduler, sample, known, timesteps[index + 1] if index + 1 < len(timesteps) else None,
                                        generator)
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


def reverse_process(unet, scheduler, x_t: torch.Tensor, record: bool = True, **kwargs) -> Trajectory:
    """Run the whole reverse process; keep every Step when `record`."""
    trajectory = Trajectory()
    sample = x_t
    for step, sample in iterate_reverse(unet, scheduler, x_t, **kwargs):
        if record:
            trajectory.steps.append(step)
    trajectory.final = sample.float().cpu()
    return trajectory


# ----------------------------------------------------------------------- public wrapper
MAX_BATCH = 16
MAX_SIDE = 512


def _seed_noise(shape, seed: int) -> torch.Tensor:
    if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


@dataclass
class Frame:
    """One reverse step as images: x_t entering the step, predicted x0 and predicted noise.

    For a latent model `latent` shows the latent channels of x_t, and `x_t` / `x0` are decoded to
    pixels: by the real decoder, or by the codec's linear preview when `preview` (streaming). Images
    are built on first access (a batch becomes a grid), cropped to `crop` pixels.
    """

    step: Step
    codec: object = field(default_factory=PixelCodec)
    preview: bool = False
    crop: tuple[int, int] | None = None  # (H, W) in pixels

    @property
    def timestep(self) -> int:
        return self.step.timestep

    def _decode(self, sample: torch.Tensor) -> torch.Tensor:
        pixels = self.codec.preview(sample) if self.preview else self.codec.decode(sample)
        return pixels if self.crop is None else pixels[..., : self.crop[0], : self.crop[1]]

    @cached_property
    def x_t_pixels(self) -> torch.Tensor:
        return self._decode(self.step.x_t)

    @cached_property
    def x0_pixels(self) -> torch.Tensor:
        return self._decode(self.step.pred_x0)

    @property
    def x_t(self):
        return as_image(self.x_t_pixels)

    @property
    def x0(self):
        return as_image(self.x0_pixels)

    @property
    def latent(self):
        """Latent models: the channels of x_t side by side (grey, [-3, 3]); None for pixel models."""
        return channels_image(self.step.x_t, upscale=self.codec.factor) if self.codec.is_latent else None

    @property
    def eps(self):
        if self.codec.is_latent:
            return channels_image(self.step.pred_eps, upscale=self.codec.factor)
        return noise_as_image(self.step.pred_eps)


def noise_as_image(noise: torch.Tensor):
    """(B, 3, H, W) predicted noise, scaled per sample to [-1, 1], as one image (a grid for B > 1)."""
    return as_image(noise / noise.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6))


def as_image(tensor: torch.Tensor):
    """(B, 3, H, W) in [-1, 1] -> one PIL image at native resolution (a grid of 4 columns for B > 1)."""
    from ..imaging.io import image_grid, tensor_to_pil

    images = [tensor_to_pil(t) for t in tensor]
    return images[0] if len(images) == 1 else image_grid(images, columns=min(4, len(images)))


@dataclass
class DiffusionRun:
    """Result of `sample` / `denoise` / `inpaint`: the final image, one Frame per step, and the settings used."""

    trajectory: Trajectory
    scheduler: str
    seed: int
    timesteps: list[int]
    noisy: object = None  # PIL: the noised (or given noisy) input, for denoise
    start_timestep: int | None = None
    sigma: float | None = None
    reference: object = None  # PIL: the clean input, for denoise from t
    codec: object = field(default_factory=PixelCodec)
    crop: tuple[int, int] | None = None  # (H, W) in pixels
    known_pixels: torch.Tensor | None = None  # inpainting: (1, 3, H, W) input and (1, 1, H, W) keep mask
    keep_pixels: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)  # e.g. a truncated prompt

    @property
    def frames(self) -> list[Frame]:
        """One Frame per step, decoded by the real decoder."""
        return [Frame(step, self.codec, False, self.crop) for step in self.trajectory.steps]

    @cached_property
    def final_pixels(self) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1]: the decoded x_0 (inpainting: the input's pixels outside the mask)."""
        pixels = self.codec.decode(self.trajectory.final)
        if self.crop is not None:
            pixels = pixels[..., : self.crop[0], : self.crop[1]]
        if self.keep_pixels is not None:
            pixels = self.keep_pixels * self.known_pixels + (1 - self.keep_pixels) * pixels
        return pixels

    @property
    def images(self):
        from ..imaging.io import tensor_to_pil

        return [tensor_to_pil(t) for t in self.final_pixels]

    @property
    def image(self):
        return as_image(self.final_pixels)

    @property
    def psnr(self) -> float | None:
        """PSNR of the result against the clean input (denoise from t), else None."""
        from ..imaging.metrics import psnr

        return None if self.reference is None else psnr(self.reference, self.image)


class DiffusionModel(ConditionalModel):
    """A UNet over pixels or over an autoencoder's latents, its scheduler config and conditioning, with
    GenLab's operations.

    `codec`: `PixelCodec` (pixel models) or `LatentCodec` (latent models; `autoencoder` is then the
    loaded KL or VQ autoencoder). `text`: a `genlab.conditioning.text.TextEncoder` for text-conditioned UNets
    (`UNet2DConditionModel`), else None. Sizes given to the methods are in pixels.
    """

    def __init__(self, unet, scheduler_config: dict, info: dict | None = None, name: str = "diffusion",
                 codec=None, autoencoder=None, text=None):
        self.unet, self.scheduler_config, self.name = unet, dict(scheduler_config), name
        self.codec = codec or PixelCodec(unet.config.in_channels)
        self.autoencoder, self.text = autoencoder, text
        info = info or {}
        self.classes: list[str] = list(info.get("classes", []))
        num_class_embeds = getattr(unet.config, "num_class_embeds", None)
        self.null_class: int | None = info.get("null_class", None if not self.classes else len(self.classes))
        if num_class_embeds and not self.classes:
            self.classes = [f"class {i}" for i in range(num_class_embeds)]
        default_guidance = 7.5 if text is not None else 1.0  # Stable Diffusion's default
        self.default_guidance_scale = float(info.get("default_guidance_scale", default_guidance))
        # latent models may name their training range (genlab.json: a number, or per-channel [low, high]);
        # x0_hat is clipped to it at every step
        clip = info.get("clip_sample_range") if self.codec.is_latent else None
        self.latent_clip = tuple(clip) if isinstance(clip, list) else clip
        self.alphas_cumprod = alphas_cumprod_of(self.scheduler("ddpm"))
        size = unet.config.sample_size
        self.latent_size = size if isinstance(size, int) else tuple(size)[0]
        self.sample_size = self.latent_size * self.codec.factor  # pixels
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1) * self.codec.factor

    @property
    def device(self):
        return self.unet.device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def is_latent(self) -> bool:
        return self.codec.is_latent

    @property
    def latent_shape(self) -> tuple[int, int, int] | None:
        """(C, h, w) of the latent a default-size sample runs in; None for pixel models."""
        return (self.unet.config.in_channels, self.latent_size, self.latent_size) if self.is_latent else None

    @property
    def is_conditional(self) -> bool:
        return bool(getattr(self.unet.config, "num_class_embeds", None))

    @property
    def is_text_conditional(self) -> bool:
        return self.text is not None

    def scheduler(self, name: str):
        return make_scheduler(self.scheduler_config, name)

    def _check_steps(self, steps) -> int:
        if not isinstance(steps, (int, np.integer)) or not 1 <= int(steps) <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
        return int(steps)

    def _plan(self, scheduler, x_t, guidance_scale, eta, seed, *, batch: int, class_label=None, prompt=None,
              negative_prompt=None, notes: list[str] | None = None, known: KnownRegion | None = None) -> dict:
        """Keyword arguments of `iterate_reverse` for one run."""
        guidance = self.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        if not 0 <= guidance <= 30:
            raise ValueError(f"guidance scale must be in [0, 30], got {guidance}")
        if not 0 <= float(eta) <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        conditioning, unconditional = self._conditioning(batch, class_label, prompt, negative_prompt,
                                                         notes if notes is not None else [])
        return dict(unet=self.unet, scheduler=scheduler, x_t=x_t, conditioning=conditioning,
                    guidance_scale=1.0 if unconditional else guidance,  # unconditional: nothing to guide
                    eta=float(eta), generator=torch.Generator().manual_seed(int(seed) + 1), known=known,
                    clip_x0=self.latent_clip if self.is_latent else 1.0, enforce_clip=self.latent_clip is not None)

    def _stream(self, plan: dict, run: DiffusionRun, record: bool):
        """Yield each Step (sample space, cropped to the visible latent), then the finished DiffusionRun."""
        crop = None
        if run.crop is not None:
            f = self.codec.factor
            crop = (-(-run.crop[0] // f), -(-run.crop[1] // f))
        sample = plan["x_t"]
        for step, sample in iterate_reverse(**plan):
            if crop is not None:
                step.x_t, step.pred_x0, step.pred_eps = (s[..., : crop[0], : crop[1]] for s in (step.x_t, step.pred_x0, step.pred_eps))
            if record:
                run.trajectory.steps.append(step)
            yield step
        final = sample.float().cpu() if self.is_latent else sample.float().clamp(-1, 1).cpu()  # latents are unbounded
        run.trajectory.final = final if crop is None else final[..., : crop[0], : crop[1]]
        yield run

    @staticmethod
    def _last(stream) -> DiffusionRun:
        for item in stream:
            pass
        return item

    def frame(self, step: Step, preview: bool = False, crop: tuple[int, int] | None = None) -> Frame:
        """A streamed Step as a Frame; `preview` decodes latents by the codec's linear map (no decoder call)."""
        return Frame(step, self.codec, preview, crop)

    def _check_size(self, size) -> int:
        size = int(size or self.sample_size)
        if size % self.size_multiple or not self.size_multiple <= size <= MAX_SIDE:
            raise ValueError(f"size must be a multiple of {self.size_multiple} up to {MAX_SIDE}, got {size}")
        return size

    def sample_stream(self, seed: int = 0, steps: int = 50, scheduler: str = "ddim", batch: int = 1,
                      class_label=None, guidance_scale: float | None = None, eta: float = 0.0,
                      size: int | None = None, record: bool = True, prompt: str | None = None,
                      negative_prompt: str | None = None):
        """Like `sample`, as a generator: one Step per reverse step, then the DiffusionRun."""
        steps = self._check_steps(steps)
        if not isinstance(batch, (int, np.integer)) or not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be an integer in [1, {MAX_BATCH}], got {batch!r}")
        size = self._check_size(size)
        noise = self.initial_noise(seed, batch, size)
        sampler = self.scheduler(scheduler)
        sampler.set_timesteps(steps)
        run = DiffusionRun(Trajectory(), scheduler, int(seed), [int(t) for t in sampler.timesteps], codec=self.codec)
        plan = self._plan(sampler, noise * sampler.init_noise_sigma, guidance_scale, eta, seed, batch=int(batch),
                          class_label=class_label, prompt=prompt, negative_prompt=negative_prompt, notes=run.notes)
        return self._stream(plan, run, record)

    def initial_noise(self, seed: int = 0, batch: int = 1, size: int | None = None) -> torch.Tensor:
        """(batch, C, size / f, size / f): the x_T ~ N(0, I) that `sample(seed=seed, batch=batch)` starts from
        (before the scheduler's `init_noise_sigma`, which is 1 for DDPM, DDIM and DPM-Solver++); `size` in pixels."""
        side = int(size or self.sample_size) // self.codec.factor
        return _seed_noise((batch, self.unet.config.in_channels, side, side), seed)

    def sample(self, *args, **kwargs) -> DiffusionRun:
        """Sample from pure noise; the same seed and settings give the same images.

        seed, steps (1..1000), scheduler ("ddpm", "ddim", "dpm++"), batch (1..16),
        class_label (name or index; None = unconditional), prompt / negative_prompt (text models),
        guidance_scale (classifier-free), eta (DDIM), size (pixels).
        """
        return self._last(self.sample_stream(*args, **kwargs))

    def _prepare(self, image, max_side: int):
        """(PIL image, padded (1, 3, H', W') pixels, (H, W)); a (1, 3, H, W) float tensor in [-1, 1]
        is taken as is (no 8-bit rounding, e.g. exactly Gaussian-noised evaluation inputs)."""
        from ..imaging.io import limit_side, open_image, pad_to_multiple, pil_to_tensor, tensor_to_pil

        if isinstance(image, torch.Tensor):
            if image.ndim != 4 or image.shape[:2] != (1, 3):
                raise ValueError(f"a tensor image must be (1, 3, H, W) in [-1, 1], got {tuple(image.shape)}")
            pixels = image.float()
            image = tensor_to_pil(pixels.clamp(-1, 1)[0])
        else:
            image, _ = limit_side(open_image(image), max_side)
            pixels = pil_to_tensor(image)
        pixels, (height, width) = pad_to_multiple(pixels, self.size_multiple)
        return image, pixels, (height, width)

    def check_timestep(self, t) -> int:
        if not isinstance(t, (int, np.integer)) or not 0 <= int(t) < self.num_train_timesteps:
            raise ValueError(f"t must be an integer in [0, {self.num_train_timesteps - 1}], got {t!r}")
        return int(t)

    def forward_noise(self, image, t: int, seed: int = 0, max_side: int = MAX_SIDE):
        """x_t ~ q(x_t | x_0) for an uploaded image as a PIL image (latent models: noised in the latent
        space, then decoded)."""
        from ..imaging.io import tensor_to_pil

        t = self.check_timestep(t)
        image, pixels, (height, width) = self._prepare(image, max_side)
        x0 = self.codec.encode(pixels)
        x_t = add_noise(self.scheduler("ddpm"), x0, _seed_noise(x0.shape, seed), t)
        return tensor_to_pil(self.codec.decode(x_t)[..., :height, :width][0])

    def denoise_stream(self, image, t: int | None = None, sigma: float | None = None, steps: int | None = None,
                       seed: int = 0, scheduler: str = "ddim", class_label=None, guidance_scale: float | None = None,
                       eta: float = 0.0, max_side: int = MAX_SIDE, record: bool = True, prompt: str | None = None,
                       negative_prompt: str | None = None):
        """Like `denoise`, as a generator: one Step per reverse step, then the DiffusionRun."""
        from ..imaging.io import tensor_to_pil

        if (t is None) == (sigma is None):
            raise ValueError("give exactly one of t (clean image, noise it to t) or sigma (image already noisy)")
        image, pixels, (height, width) = self._prepare(image, max_side)
        reference = None
        x0 = self.codec.encode(pixels)  # (1, C, h, w) sample space
        if sigma is not None and not self.is_latent:
            sigma = float(sigma)
            start = timestep_for_sigma(self.alphas_cumprod, sigma)
            x_t = x0 * float(self.alphas_cumprod[start]) ** 0.5  # x0 + 2 sigma eps, rescaled to x_t
            noisy = image
            steps = 1 if steps is None else steps
        else:
            if sigma is not None:
                # latent model: pixel noise is not Gaussian noise of the latent, so the noisy upload is
                # encoded and taken through SDEdit from the t whose noise level matches sigma
                sigma = float(sigma)
                start = timestep_for_sigma(self.alphas_cumprod, sigma)
                noisy = image
            else:
                start = self.check_timestep(t)
                reference = image
            x_t = add_noise(self.scheduler("ddpm"), x0, _seed_noise(x0.shape, seed), start)
            if sigma is None:
                noisy = tensor_to_pil(self.codec.decode(x_t)[..., :height, :width].clamp(-1, 1)[0])
            steps = max(1, round(50 * (start + 1) / self.num_train_timesteps)) if steps is None else steps
        steps = self._check_steps(steps)
        sampler = self.scheduler(scheduler)
        timesteps = set_timesteps_from(sampler, start, steps)
        run = DiffusionRun(Trajectory(), scheduler, int(seed), timesteps, noisy=noisy, start_timestep=start,
                           sigma=sigma if sigma is not None else sigma_for_timestep(self.alphas_cumprod, start),
                           reference=reference, codec=self.codec, crop=(height, width))
        plan = self._plan(sampler, x_t, guidance_scale, eta, seed, batch=1, class_label=class_label, prompt=prompt,
                          negative_prompt=negative_prompt, notes=run.notes)
        return self._stream(plan, run, record)

    def denoise(self, *args, **kwargs) -> DiffusionRun:
        """Reverse process from timestep t for an uploaded image.

        t: the image is clean; noise it to t with q(x_t | x_0) (SDEdit; latent models in their latent
           space: encode, noise, reverse, decode) and denoise. Default steps: about 50 * t / T.
        sigma: the image already carries Gaussian noise of this std (0..1 pixel scale); start at the
           matching t. Pixel models: default steps 1, i.e. the model's x0 estimate (the minimum-MSE
           answer). Latent models: the noisy image is encoded and taken through SDEdit from that t.
        """
        return self._last(self.denoise_stream(*args, **kwargs))

    def inpaint_stream(self, image, mask, steps: int = 50, seed: int = 0, scheduler: str = "ddim", class_label=None,
                       guidance_scale: float | None = None, eta: float = 0.0, max_side: int = MAX_SIDE,
                       record: bool = True, prompt: str | None = None, negative_prompt: str | None = None):
        """Like `inpaint`, as a generator: one Step per reverse step, then the DiffusionRun."""
        steps = self._check_steps(steps)
        image, pixels, (height, width) = self._prepare(image, max_side)
        repaint = mask_of(mask, (height, width))  # (1, 1, H, W)
        padded = F.pad(repaint, (0, pixels.shape[-1] - width, 0, pixels.shape[-2] - height))
        # a latent cell is repainted when any pixel of its f x f patch is (max pooling)
        repaint_sample = F.max_pool2d(padded, self.codec.factor) if self.is_latent else padded
        known = KnownRegion(self.codec.encode(pixels), 1 - repaint_sample)
        noise = _seed_noise(known.x0.shape, seed)
        sampler = self.scheduler(scheduler)
        sampler.set_timesteps(steps)
        start = int(sampler.timesteps[0])
        x_t = known.keep * add_noise(sampler, known.x0, noise, start) + (1 - known.keep) * noise * sampler.init_noise_sigma
        run = DiffusionRun(Trajectory(), scheduler, int(seed), [int(t) for t in sampler.timesteps], codec=self.codec,
                           crop=(height, width), known_pixels=pixels[..., :height, :width], keep_pixels=1 - repaint)
        plan = self._plan(sampler, x_t, guidance_scale, eta, seed, batch=1, class_label=class_label, prompt=prompt,
                          negative_prompt=negative_prompt, notes=run.notes, known=known)
        return self._stream(plan, run, record)

    def inpaint(self, *args, **kwargs) -> DiffusionRun:
        """Repaint the masked region of an image (mask white / non-zero where the model paints).

        Every step re-imposes the known region from q(x_{t-1} | x_0) (RePaint's conditioning, without
        resampling jumps); latent models repaint every latent cell the mask touches, and the result
        keeps the input's pixels outside the mask. Same settings as `sample`.
        """
        return self._last(self.inpaint_stream(*args, **kwargs))

    def schedule(self) -> dict[str, np.ndarray]:
        """abar_t and log-SNR(t) over the training timesteps, for plots."""
        return {"t": np.arange(len(self.alphas_cumprod)), "alpha_bar": self.alphas_cumprod.numpy(),
                "log_snr": log_snr(self.alphas_cumprod).numpy()}
