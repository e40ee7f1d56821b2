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

Tensors are (B, 3, H, W) in [-1, 1]; timesteps are integers in [0, num_train_timesteps).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

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
    """One reverse step: the sample entering it and the model's predictions there (CPU fp32 tensors)."""

    timestep: int
    x_t: torch.Tensor  # (B, 3, H, W)
    pred_x0: torch.Tensor  # (B, 3, H, W)
    pred_eps: torch.Tensor  # (B, 3, H, W)


@dataclass
class Trajectory:
    steps: list[Step] = field(default_factory=list)
    final: torch.Tensor | None = None  # (B, 3, H, W)


def iterate_reverse(
    unet,
    scheduler,
    x_t: torch.Tensor,
    *,
    class_labels: torch.Tensor | None = None,
    null_class: int | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
):
    """Generator over `scheduler.timesteps` from x_t: yields (Step, next sample) after each step.

    With class labels and guidance_scale != 1, the null class is batched with the requested ones
    (classifier-free guidance). Closing the generator stops the loop (cancel).
    """
    alphas_cumprod = alphas_cumprod_of(scheduler)
    prediction_type = scheduler.config.prediction_type
    device, dtype = unet.device, unet.dtype
    sample = x_t.to(device=device, dtype=torch.float32)
    guided = class_labels is not None and null_class is not None and guidance_scale != 1.0
    labels = None
    if class_labels is not None:
        labels = class_labels.to(device)
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, null_class)])
    step_kwargs = {}
    step_params = inspect.signature(scheduler.step).parameters
    if "eta" in step_params:
        step_kwargs["eta"] = eta
    if "generator" in step_params:
        step_kwargs["generator"] = generator
    for timestep in scheduler.timesteps:
        with torch.inference_mode():
            model_input = scheduler.scale_model_input(sample, timestep)
            model_input = torch.cat([model_input, model_input]) if guided else model_input
            output = unet(model_input.to(dtype), timestep.to(device), class_labels=labels).sample.float()
            if guided:
                conditional, unconditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            pred_x0, pred_eps = predict_x0_and_eps(output, sample, int(timestep), alphas_cumprod, prediction_type)
            step = Step(int(timestep), sample.cpu(), pred_x0.clamp(-1, 1).cpu(), pred_eps.cpu())
            sample = scheduler.step(output, timestep, sample, **step_kwargs).prev_sample
        yield step, sample


def reverse_process(unet, scheduler, x_t: torch.Tensor, record: bool = True, **kwargs) -> Trajectory:
    """Run the whole reverse process; keep every Step when `record`."""
    trajectory = Trajectory()
    sample = x_t
    for step, sample in iterate_reverse(unet, scheduler, x_t, **kwargs):
        if record:
            trajectory.steps.append(step)
    trajectory.final = sample.float().clamp(-1, 1).cpu()
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
    Images are built on first access (a batch becomes a grid)."""

    step: Step

    @property
    def timestep(self) -> int:
        return self.step.timestep

    @property
    def x_t(self):
        return as_image(self.step.x_t)

    @property
    def x0(self):
        return as_image(self.step.pred_x0)

    @property
    def eps(self):
        noise = self.step.pred_eps
        return noise_as_image(noise)


def noise_as_image(noise: torch.Tensor):
    """(B, 3, H, W) predicted noise, scaled per sample to [-1, 1], as one image (a grid for B > 1)."""
    return as_image(noise / noise.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6))


def as_image(tensor: torch.Tensor):
    """(B, 3, H, W) in [-1, 1] -> one PIL image at native resolution (a grid of 4 columns for B > 1)."""
    from .images import image_grid, tensor_to_pil

    images = [tensor_to_pil(t) for t in tensor]
    return images[0] if len(images) == 1 else image_grid(images, columns=min(4, len(images)))


@dataclass
class DiffusionRun:
    """Result of `sample` / `denoise`: the final image, one Frame per step, and the settings used."""

    trajectory: Trajectory
    scheduler: str
    seed: int
    timesteps: list[int]
    noisy: object = None  # PIL: the noised (or given noisy) input, for denoise
    start_timestep: int | None = None
    sigma: float | None = None
    reference: object = None  # PIL: the clean input, for denoise from t

    @property
    def frames(self) -> list[Frame]:
        return [Frame(step) for step in self.trajectory.steps]

    @property
    def images(self):
        from .images import tensor_to_pil

        return [tensor_to_pil(t) for t in self.trajectory.final]

    @property
    def image(self):
        return as_image(self.trajectory.final)

    @property
    def psnr(self) -> float | None:
        """PSNR of the result against the clean input (denoise from t), else None."""
        from .metrics import psnr

        return None if self.reference is None else psnr(self.reference, self.image)


class DiffusionModel:
    """A UNet2DModel, its scheduler config and (optional) class names, with GenLab's operations."""

    def __init__(self, unet, scheduler_config: dict, info: dict | None = None, name: str = "diffusion"):
        self.unet, self.scheduler_config, self.name = unet, dict(scheduler_config), name
        info = info or {}
        self.classes: list[str] = list(info.get("classes", []))
        num_class_embeds = unet.config.num_class_embeds
        self.null_class: int | None = info.get("null_class", None if not self.classes else len(self.classes))
        if num_class_embeds and not self.classes:
            self.classes = [f"class {i}" for i in range(num_class_embeds)]
        self.default_guidance_scale = float(info.get("default_guidance_scale", 1.0))
        self.alphas_cumprod = alphas_cumprod_of(self.scheduler("ddpm"))
        size = unet.config.sample_size
        self.sample_size = size if isinstance(size, int) else tuple(size)[0]
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1)

    @property
    def device(self):
        return self.unet.device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def is_conditional(self) -> bool:
        return bool(self.unet.config.num_class_embeds)

    def scheduler(self, name: str):
        return make_scheduler(self.scheduler_config, name)

    def class_index(self, label) -> int | None:
        if label is None or label == "":
            return self.null_class if self.is_conditional else None
        if not self.is_conditional:
            raise ValueError(f"{self.name} is not class-conditional; leave the class empty")
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in self.classes:
                raise ValueError(f"unknown class {label!r}; choose one of {self.classes}")
            return self.classes.index(label)
        index = int(label)
        if not 0 <= index < len(self.classes):
            raise ValueError(f"class index must be in [0, {len(self.classes) - 1}], got {index}")
        return index

    def _check_steps(self, steps) -> int:
        if not isinstance(steps, (int, np.integer)) or not 1 <= int(steps) <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
        return int(steps)

    def _plan(self, scheduler, x_t, label, guidance_scale, eta, seed) -> dict:
        """Keyword arguments of `iterate_reverse` for one run."""
        guidance = self.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        if not 0 <= guidance <= 30:
            raise ValueError(f"guidance scale must be in [0, 30], got {guidance}")
        if not 0 <= float(eta) <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        labels = None if label is None else torch.full((x_t.shape[0],), label, dtype=torch.long)
        return dict(unet=self.unet, scheduler=scheduler, x_t=x_t, class_labels=labels, null_class=self.null_class,
                    guidance_scale=1.0 if label == self.null_class else guidance,  # unconditional: nothing to guide
                    eta=float(eta), generator=torch.Generator().manual_seed(int(seed) + 1))

    def _stream(self, plan: dict, run: DiffusionRun, crop: tuple[int, int] | None, record: bool):
        """Yield each Step, then the finished DiffusionRun."""
        height, width = crop or plan["x_t"].shape[-2:]
        sample = plan["x_t"]
        for step, sample in iterate_reverse(**plan):
            step.x_t, step.pred_x0, step.pred_eps = (s[..., :height, :width] for s in (step.x_t, step.pred_x0, step.pred_eps))
            if record:
                run.trajectory.steps.append(step)
            yield step
        run.trajectory.final = sample.float().clamp(-1, 1).cpu()[..., :height, :width]
        yield run

    @staticmethod
    def _last(stream) -> DiffusionRun:
        for item in stream:
            pass
        return item

    def sample_stream(self, seed: int = 0, steps: int = 50, scheduler: str = "ddim", batch: int = 1,
                      class_label=None, guidance_scale: float | None = None, eta: float = 0.0,
                      size: int | None = None, record: bool = True):
        """Like `sample`, as a generator: one Step per reverse step, then the DiffusionRun."""
        steps = self._check_steps(steps)
        if not isinstance(batch, (int, np.integer)) or not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be an integer in [1, {MAX_BATCH}], got {batch!r}")
        size = int(size or self.sample_size)
        if size % self.size_multiple or not self.size_multiple <= size <= MAX_SIDE:
            raise ValueError(f"size must be a multiple of {self.size_multiple} up to {MAX_SIDE}, got {size}")
        label = self.class_index(class_label)
        noise = self.initial_noise(seed, batch, size)
        sampler = self.scheduler(scheduler)
        sampler.set_timesteps(steps)
        plan = self._plan(sampler, noise * sampler.init_noise_sigma, label, guidance_scale, eta, seed)
        run = DiffusionRun(Trajectory(), scheduler, int(seed), [int(t) for t in sampler.timesteps])
        return self._stream(plan, run, None, record)

    def initial_noise(self, seed: int = 0, batch: int = 1, size: int | None = None) -> torch.Tensor:
        """(batch, C, size, size): the x_T ~ N(0, I) that `sample(seed=seed, batch=batch)` starts from
        (before the scheduler's `init_noise_sigma`, which is 1 for DDPM, DDIM and DPM-Solver++)."""
        size = int(size or self.sample_size)
        return _seed_noise((batch, self.unet.config.in_channels, size, size), seed)

    def sample(self, *args, **kwargs) -> DiffusionRun:
        """Sample from pure noise; the same seed and settings give the same images.

        seed, steps (1..1000), scheduler ("ddpm", "ddim", "dpm++"), batch (1..16),
        class_label (name or index; None = unconditional), guidance_scale, eta (DDIM), size.
        """
        return self._last(self.sample_stream(*args, **kwargs))

    def _prepare(self, image, max_side: int):
        """(PIL image, padded (1, 3, H', W') pixels, (H, W)); a (1, 3, H, W) float tensor in [-1, 1]
        is taken as is (no 8-bit rounding, e.g. exactly Gaussian-noised evaluation inputs)."""
        from .images import limit_side, open_image, pad_to_multiple, pil_to_tensor, tensor_to_pil

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
        """x_t ~ q(x_t | x_0) for an uploaded image, with no model call; returns a PIL image."""
        from .images import tensor_to_pil

        t = self.check_timestep(t)
        image, pixels, (height, width) = self._prepare(image, max_side)
        x_t = add_noise(self.scheduler("ddpm"), pixels, _seed_noise(pixels.shape, seed), t)
        return tensor_to_pil(x_t[..., :height, :width].clamp(-1, 1)[0])

    def denoise_stream(self, image, t: int | None = None, sigma: float | None = None, steps: int | None = None,
                       seed: int = 0, scheduler: str = "ddim", class_label=None, guidance_scale: float | None = None,
                       eta: float = 0.0, max_side: int = MAX_SIDE, record: bool = True):
        """Like `denoise`, as a generator: one Step per reverse step, then the DiffusionRun."""
        from .images import tensor_to_pil

        if (t is None) == (sigma is None):
            raise ValueError("give exactly one of t (clean image, noise it to t) or sigma (image already noisy)")
        image, pixels, (height, width) = self._prepare(image, max_side)
        reference = None
        if sigma is not None:
            sigma = float(sigma)
            start = timestep_for_sigma(self.alphas_cumprod, sigma)
            x_t = pixels * float(self.alphas_cumprod[start]) ** 0.5  # x0 + 2 sigma eps, rescaled to x_t
            noisy = image
            steps = 1 if steps is None else steps
        else:
            start = self.check_timestep(t)
            x_t = add_noise(self.scheduler("ddpm"), pixels, _seed_noise(pixels.shape, seed), start)
            noisy = tensor_to_pil(x_t[..., :height, :width].clamp(-1, 1)[0])
            reference = image
            steps = max(1, round(50 * (start + 1) / self.num_train_timesteps)) if steps is None else steps
        steps = self._check_steps(steps)
        sampler = self.scheduler(scheduler)
        timesteps = set_timesteps_from(sampler, start, steps)
        plan = self._plan(sampler, x_t, self.class_index(class_label), guidance_scale, eta, seed)
        run = DiffusionRun(Trajectory(), scheduler, int(seed), timesteps, noisy=noisy, start_timestep=start,
                           sigma=sigma if sigma is not None else sigma_for_timestep(self.alphas_cumprod, start),
                           reference=reference)
        return self._stream(plan, run, (height, width), record)

    def denoise(self, *args, **kwargs) -> DiffusionRun:
        """Reverse process from timestep t for an uploaded image.

        t: the image is clean; noise it to t with q(x_t | x_0) (SDEdit) and denoise. Default steps:
           about 50 * t / T.
        sigma: the image already carries Gaussian noise of this std (0..1 pixel scale); start at the
           matching t. Default steps: 1, i.e. the model's x0 estimate (the minimum-MSE answer).
        """
        return self._last(self.denoise_stream(*args, **kwargs))

    def schedule(self) -> dict[str, np.ndarray]:
        """abar_t and log-SNR(t) over the training timesteps, for plots."""
        return {"t": np.arange(len(self.alphas_cumprod)), "alpha_bar": self.alphas_cumprod.numpy(),
                "log_snr": log_snr(self.alphas_cumprod).numpy()}
