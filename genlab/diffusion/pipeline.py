"""`DiffusionModel`: sample, denoise (SDEdit) and inpaint (RePaint) with a diffusers UNet, pixel or latent.

The pipeline glue over `genlab.diffusion.loop` (the one reverse loop) and `genlab.diffusion.schedule` (the
noise-schedule math), as diffusers' `pipelines/` sit over its schedulers: it turns the public keyword
arguments into one checked `genlab.sampling.SamplingSettings`, prepares x_T (pure noise, a noised upload, or
a partly known image), runs the loop, and presents the steps as `Frame`s and the result as a `DiffusionRun`.

SDEdit: Meng et al. (arXiv:2108.01073): noise an image to t with q(x_t | x_0) (Ho et al., arXiv:2006.11239,
  eq. 4), then run the reverse process from t. An image already noisy with std sigma starts at the matching t.
Latent diffusion: Rombach et al. (arXiv:2112.10752). The same loop runs on the scaled latents of an
  autoencoder (`genlab.autoencoders.kl.LatentCodec`): pixels -> encode -> reverse process -> decode.
  Pixel models use the identity codec, so nothing in the loop knows which space it runs in.
Inpainting (RePaint, Lugmayr et al., arXiv:2201.09865, eq. 8): the loop re-imposes the known region at every
  step; the final image takes the input's pixels outside the mask.
Text-to-image (Stable Diffusion layouts): `compare_prompts` runs 2 to 4 prompts from one x_T in one batch;
  `img2img` is SDEdit with a prompt, strength s in [0, 1] starting at t = s T and running about s of the steps
  (as diffusers' `StableDiffusionImg2ImgPipeline`); `attention_maps=True` records DAAM's word-level
  cross-attention maps (Tang et al., arXiv:2210.04885; `genlab.diffusion.attention`) on each Frame and the run.

Sizes given to the methods are in pixels; sample-space tensors are (B, C, h, w).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from ..autoencoders.kl import PixelCodec, channels_image
from ..conditioning.guidance import ConditionalModel
from ..imaging.io import as_image, limit_side, mask_of, open_image, pad_to_multiple, pil_to_tensor, tensor_to_pil
from ..loading.schema import ModelInfo
from ..sampling import MAX_SEED, SamplingSettings, check_int, last
from .attention import AttentionMaps, AttentionRecorder
from .text_to_image import MAX_COMPARE_PROMPTS, TextToImage  # noqa: F401 (MAX_COMPARE_PROMPTS: re-exported)
from .loop import KnownRegion, Step, Trajectory, iterate_reverse
from .schedule import (add_noise, alphas_cumprod_of, log_snr, make_scheduler, set_timesteps_from,
                       sigma_for_timestep, timestep_for_sigma)

MAX_SIDE = 512
DEFAULT_STEPS = 50  # a denoise from t runs about DEFAULT_STEPS * t / T steps unless told


def _seed_noise(shape, seed: int) -> torch.Tensor:
    """N(0, I) of `shape` from a checked seed."""
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
    def attention_maps(self) -> dict[str, np.ndarray] | None:
        """This step's word-level cross-attention maps {word: (H, W) float32 in [0, 1]} (the first image of a
        batch), when the run records them; else None."""
        return None if self.step.attention is None else self.step.attention.maps(0)

    @property
    def eps(self):
        if self.codec.is_latent:
            return channels_image(self.step.pred_eps, upscale=self.codec.factor)
        return noise_as_image(self.step.pred_eps)


def check_guide(unet, guide) -> None:
    """A guide network must denoise the same samples under the same conditioning: ValueError naming what differs."""
    if type(guide) is not type(unet):
        raise ValueError(f"the guide network (unet_guide/) is a {type(guide).__name__}, the model a "
                         f"{type(unet).__name__}; autoguidance needs the same kind of UNet")
    for key in ("in_channels", "out_channels", "sample_size", "num_class_embeds", "cross_attention_dim"):
        mine, theirs = getattr(unet.config, key, None), getattr(guide.config, key, None)
        if mine != theirs:
            raise ValueError(f"the guide network (unet_guide/) has {key} {theirs}, the model {mine}; autoguidance "
                             "needs a guide of the same sample space and conditioning")


def noise_as_image(noise: torch.Tensor):
    """(B, 3, H, W) predicted noise, scaled per sample to [-1, 1], as one image (a grid for B > 1)."""
    return as_image(noise / noise.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6))


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
    attention: AttentionMaps | None = None  # the run's cross-attention, when asked for (attention_maps=True)

    @property
    def attention_maps(self) -> dict[str, np.ndarray] | None:
        """The run's word-level cross-attention maps {word: (H, W) float32 in [0, 1]}, the words in prompt order,
        averaged over the steps; for a batch the first image's (`run.attention.maps(i)`: image i's). None when
        the run did not record them."""
        return None if self.attention is None else self.attention.maps(0)

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
        return [tensor_to_pil(t) for t in self.final_pixels]

    @property
    def image(self):
        return as_image(self.final_pixels)

    @property
    def psnr(self) -> float | None:
        """PSNR of the result against the clean input (denoise from t), else None."""
        from ..imaging.metrics import psnr

        return None if self.reference is None else psnr(self.reference, self.image)


class DiffusionModel(TextToImage, ConditionalModel):
    """A UNet over pixels or over an autoencoder's latents, its scheduler config and conditioning, with
    GenLab's operations.

    `codec`: `PixelCodec` (pixel models) or `LatentCodec` (latent models; `autoencoder` is then the
    loaded KL or VQ autoencoder). `text`: a `genlab.conditioning.text.TextEncoder` for text-conditioned UNets
    (`UNet2DConditionModel`), else None. `info`: the model's genlab.json (`genlab.loading.schema.ModelInfo`,
    or its dict). `guide`: a weaker UNet of the same sample space and conditioning (`unet_guide/`, smaller or less
    trained) for autoguidance, or None. Sizes given to the methods are in pixels.
    """

    def __init__(self, unet, scheduler_config: dict, info: ModelInfo | dict | None = None, name: str = "diffusion",
                 codec=None, autoencoder=None, text=None, guide=None):
        self.unet, self.scheduler_config, self.name = unet, dict(scheduler_config), name
        self.guide = guide
        self.codec = codec or PixelCodec(unet.config.in_channels)
        self.autoencoder, self.text = autoencoder, text
        info = ModelInfo.of(info)
        self.classes: list[str] = list(info.classes)
        num_class_embeds = getattr(unet.config, "num_class_embeds", None)
        self.null_class: int | None = info.null_class if info.null_class is not None else (
            len(self.classes) if self.classes else None)
        if num_class_embeds and not self.classes:
            self.classes = [f"class {i}" for i in range(num_class_embeds)]
        default_guidance = 7.5 if text is not None else 1.0  # Stable Diffusion's default
        self.default_guidance_scale = (default_guidance if info.default_guidance_scale is None
                                       else info.default_guidance_scale)
        self.default_guidance_interval = info.default_guidance_interval  # None: guidance at every step
        self.default_autoguidance_scale = info.default_autoguidance_scale or 1.0  # 1: no autoguidance
        if guide is not None:
            check_guide(unet, guide)
        elif self.default_autoguidance_scale != 1.0:
            raise ValueError(f"genlab.json sets default_autoguidance_scale {self.default_autoguidance_scale:g}, but "
                             "the model has no guide network (unet_guide/)")
        self.latent_clip = self._latent_clip(info.clip_sample_range) if self.codec.is_latent else None
        self.alphas_cumprod = alphas_cumprod_of(self.scheduler("ddpm"))
        size = unet.config.sample_size
        self.latent_size = size if isinstance(size, int) else tuple(size)[0]
        self.sample_size = self.latent_size * self.codec.factor  # pixels
        self.size_multiple = 2 ** (len(unet.config.block_out_channels) - 1) * self.codec.factor

    def _latent_clip(self, clip_sample_range):
        """genlab.json's training range of a latent model (x0_hat is clipped to it at every step): a number, or
        per channel (low, high) pairs, turned into the (lows, highs) that `clip_range` takes."""
        if clip_sample_range is None or isinstance(clip_sample_range, float):
            return clip_sample_range
        channels = self.unet.config.in_channels
        if len(clip_sample_range) != channels:
            raise ValueError(f"clip_sample_range gives {len(clip_sample_range)} (low, high) pairs for a "
                             f"{channels}-channel latent")
        lows, highs = zip(*clip_sample_range)
        return lows, highs

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

    # ------------------------------------------------------------------ one run
    @property
    def has_guide(self) -> bool:
        """Whether the model ships a guide network, so that autoguidance can run."""
        return self.guide is not None

    def _settings(self, seed, steps, scheduler, batch=1, guidance_scale=None, eta=0.0,
                  guidance_interval=None, autoguidance_scale=None) -> SamplingSettings:
        """The run's checked settings, the model's default guidance scale, interval and autoguidance scale where
        none is given."""
        guidance = self.default_guidance_scale if guidance_scale is None else guidance_scale
        interval = self.default_guidance_interval if guidance_interval is None else guidance_interval
        auto = self.default_autoguidance_scale if autoguidance_scale is None else autoguidance_scale
        settings = SamplingSettings(seed=seed, steps=steps, scheduler=scheduler, batch=batch, guidance_scale=guidance,
                                    eta=eta, guidance_interval=interval, autoguidance_scale=auto)
        if settings.autoguidance_scale != 1.0 and self.guide is None:
            raise ValueError(f"{self.name} has no guide network (unet_guide/), which autoguidance needs; leave the "
                             "autoguidance scale at 1")
        return settings

    def _condition(self, settings: SamplingSettings, class_label, prompt, negative_prompt, notes: list[str]):
        """(Conditioning or None, the settings to run with): an unconditional run has no classifier-free guidance
        (autoguidance, which needs no condition, stays)."""
        conditioning, unconditional = self._conditioning(settings.batch, class_label, prompt, negative_prompt, notes)
        if unconditional and settings.guidance_scale != 1.0:
            settings = dataclasses.replace(settings, guidance_scale=1.0)
        return conditioning, settings

    def _attention_words(self, attention_maps, prompts: list) -> list | None:
        """Each image's (word, token positions) when the run records attention maps, else None; checked now."""
        if not isinstance(attention_maps, (bool, np.bool_)):
            raise ValueError(f"attention_maps must be True or False, got {attention_maps!r}")
        if not attention_maps:
            return None
        if not self.is_text_conditional:
            raise ValueError(f"{self.name} is not text-conditioned: attention maps show where a prompt's words act, "
                             "and it takes no prompt")
        if any(prompt is None for prompt in prompts):
            raise ValueError("attention maps show where the prompt's words act; give a prompt")
        words = {prompt: self.text.words(prompt) for prompt in set(prompts)}  # a batch repeats one prompt
        return [words[prompt] for prompt in prompts]

    def _stream(self, run: DiffusionRun, sampler, x_t: torch.Tensor, settings: SamplingSettings, conditioning,
                known: KnownRegion | None = None, record: bool = True, words: list | None = None):
        """Yield each Step (sample space, cropped to the visible latent), then the finished DiffusionRun.
        `words`: each image's (word, token positions) to record attention maps for (None: the fused processors,
        untouched)."""
        crop = None
        if run.crop is not None:
            f = self.codec.factor
            crop = (-(-run.crop[0] // f), -(-run.crop[1] // f))
        sample = x_t
        steps = iterate_reverse(self.unet, sampler, x_t, settings, conditioning=conditioning, known=known,
                                generator=torch.Generator().manual_seed(settings.seed + 1),
                                clip_x0=self.latent_clip if self.is_latent else 1.0,
                                enforce_clip=self.latent_clip is not None, guide=self.guide)
        recorder = None
        if words is not None:
            recorder = AttentionRecorder(self.unet, len(words), words, tuple(x_t.shape[-2:]), self.codec.factor,
                                         run.crop)
            steps = recorder.steps(steps)
        try:
            for step, sample in steps:
                if crop is not None:
                    step.x_t, step.pred_x0, step.pred_eps = (s[..., : crop[0], : crop[1]]
                                                             for s in (step.x_t, step.pred_x0, step.pred_eps))
                if record:
                    run.trajectory.steps.append(step)
                yield step
        finally:  # a cancelled run puts the UNet's attention processors back now
            steps.close()
        if recorder is not None:
            run.attention = recorder.total
        final = sample.float().cpu() if self.is_latent else sample.float().clamp(-1, 1).cpu()  # latents are unbounded
        run.trajectory.final = final if crop is None else final[..., : crop[0], : crop[1]]
        yield run

    def frame(self, step: Step, preview: bool = False, crop: tuple[int, int] | None = None) -> Frame:
        """A streamed Step as a Frame; `preview` decodes latents by the codec's linear map (no decoder call)."""
        return Frame(step, self.codec, preview, crop)

    def _check_size(self, size) -> int:
        size = int(size or self.sample_size)
        if size % self.size_multiple or not self.size_multiple <= size <= MAX_SIDE:
            raise ValueError(f"size must be a multiple of {self.size_multiple} up to {MAX_SIDE}, got {size}")
        return size

    # ------------------------------------------------------------------ sample
    def sample_stream(self, seed: int = 0, steps: int = 50, scheduler: str = "ddim", batch: int = 1,
                      class_label=None, guidance_scale: float | None = None, eta: float = 0.0,
                      size: int | None = None, record: bool = True, prompt: str | None = None,
                      negative_prompt: str | None = None, attention_maps: bool = False,
                      guidance_interval: tuple[float, float] | None = None, autoguidance_scale: float | None = None):
        """Like `sample`, as a generator: one Step per reverse step, then the DiffusionRun. The settings are
        checked now, before the first step."""
        settings = self._settings(seed, steps, scheduler, batch, guidance_scale, eta, guidance_interval,
                                  autoguidance_scale)
        size = self._check_size(size)
        run = DiffusionRun(Trajectory(), scheduler, settings.seed, [], codec=self.codec)
        conditioning, settings = self._condition(settings, class_label, prompt, negative_prompt, run.notes)
        words = self._attention_words(attention_maps, [prompt] * settings.batch)
        noise = self._noise(settings.seed, settings.batch, size)
        sampler = self.scheduler(scheduler)
        sampler.set_timesteps(settings.steps)
        run.timesteps = [int(t) for t in sampler.timesteps]
        return self._stream(run, sampler, noise * sampler.init_noise_sigma, settings, conditioning, record=record,
                            words=words)

    def _noise(self, seed: int, batch: int, size: int | None) -> torch.Tensor:
        side = int(size or self.sample_size) // self.codec.factor
        return _seed_noise((batch, self.unet.config.in_channels, side, side), seed)  # (B, C, h, w)

    def initial_noise(self, seed: int = 0, batch: int = 1, size: int | None = None) -> torch.Tensor:
        """(batch, C, size / f, size / f): the x_T ~ N(0, I) that `sample(seed=seed, batch=batch)` starts from
        (before the scheduler's `init_noise_sigma`, which is 1 for DDPM, DDIM and DPM-Solver++); `size` in pixels."""
        return self._noise(check_int(seed, "seed", 0, MAX_SEED), batch, size)

    def sample(self, seed: int = 0, steps: int = 50, scheduler: str = "ddim", batch: int = 1, class_label=None,
               guidance_scale: float | None = None, eta: float = 0.0, size: int | None = None, record: bool = True,
               prompt: str | None = None, negative_prompt: str | None = None,
               attention_maps: bool = False, guidance_interval: tuple[float, float] | None = None,
               autoguidance_scale: float | None = None) -> DiffusionRun:
        """Sample from pure noise; the same seed and settings give the same images.

        seed, steps (1..1000), scheduler ("ddpm", "ddim", "dpm++"), batch (1..16),
        class_label (name or index; None = unconditional), prompt / negative_prompt (text models),
        guidance_scale (classifier-free; None: the model's default), guidance_interval ((low, high): guide only
        at the steps whose noise level sigma_t = sqrt((1 - abar_t) / abar_t) is in (low, high]; None: the model's
        default from genlab.json, else every step; (0, math.inf): every step), autoguidance_scale (w_ag >= 1 against
        the model's guide network, `has_guide`, at the same steps; None: the model's default, 1: off), eta (DDIM),
        size (pixels),
        attention_maps (text models: word-level cross-attention maps on `run.attention_maps` and on each
        Frame's `attention_maps`; the images are the same as without).
        """
        return last(self.sample_stream(seed, steps, scheduler, batch, class_label, guidance_scale, eta, size, record,
                                       prompt, negative_prompt, attention_maps, guidance_interval,
                                       autoguidance_scale))

    # ------------------------------------------------------------------ denoise and inpaint
    def _prepare(self, image, max_side: int):
        """(PIL image, padded (1, 3, H', W') pixels, (H, W)); a (1, 3, H, W) float tensor in [-1, 1]
        is taken as is (no 8-bit rounding, e.g. exactly Gaussian-noised evaluation inputs)."""
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
        return check_int(t, "t", 0, self.num_train_timesteps - 1)

    def forward_noise(self, image, t: int, seed: int = 0, max_side: int = MAX_SIDE):
        """x_t ~ q(x_t | x_0) for an uploaded image as a PIL image (latent models: noised in the latent
        space, then decoded)."""
        t = self.check_timestep(t)
        seed = check_int(seed, "seed", 0, MAX_SEED)
        image, pixels, (height, width) = self._prepare(image, max_side)
        x0 = self.codec.encode(pixels)
        x_t = add_noise(self.scheduler("ddpm"), x0, _seed_noise(x0.shape, seed), t)
        return tensor_to_pil(self.codec.decode(x_t)[..., :height, :width][0])

    def _noised_start(self, image, pixels, crop, start: int, already_noisy: bool, seed: int):
        """(x_t (1, C, h, w), the noisy image as PIL, the clean reference or None) of a denoise from `start`.

        Pixel models given a noisy upload: it is x_0 + 2 sigma eps = x_t / sqrt(abar_t) at the matching t.
        Latent models given a noisy upload: pixel noise is not Gaussian noise of the latent, so the upload is
        encoded and taken through SDEdit from that t. A clean upload is noised to t (SDEdit)."""
        x0 = self.codec.encode(pixels)  # (1, C, h, w) sample space
        if already_noisy and not self.is_latent:
            return x0 * float(self.alphas_cumprod[start]) ** 0.5, image, None
        x_t = add_noise(self.scheduler("ddpm"), x0, _seed_noise(x0.shape, seed), start)
        if already_noisy:
            return x_t, image, None
        return x_t, tensor_to_pil(self.codec.decode(x_t)[..., :crop[0], :crop[1]].clamp(-1, 1)[0]), image

    def denoise_stream(self, image, t: int | None = None, sigma: float | None = None, steps: int | None = None,
                       seed: int = 0, scheduler: str = "ddim", class_label=None, guidance_scale: float | None = None,
                       eta: float = 0.0, max_side: int = MAX_SIDE, record: bool = True, prompt: str | None = None,
                       negative_prompt: str | None = None, attention_maps: bool = False):
        """Like `denoise`, as a generator: one Step per reverse step, then the DiffusionRun."""
        if (t is None) == (sigma is None):
            raise ValueError("give exactly one of t (clean image, noise it to t) or sigma (image already noisy)")
        if sigma is not None:
            sigma = float(sigma)
            start = timestep_for_sigma(self.alphas_cumprod, sigma)
        else:
            start = self.check_timestep(t)
        if steps is None:  # a pixel model's one step from sigma is its x0 estimate, the minimum-MSE answer
            steps = 1 if sigma is not None and not self.is_latent else max(
                1, round(DEFAULT_STEPS * (start + 1) / self.num_train_timesteps))
        settings = self._settings(seed, steps, scheduler, 1, guidance_scale, eta)
        image, pixels, crop = self._prepare(image, max_side)
        run = DiffusionRun(Trajectory(), scheduler, settings.seed, [], codec=self.codec, crop=crop, start_timestep=start,
                           sigma=sigma if sigma is not None else sigma_for_timestep(self.alphas_cumprod, start))
        conditioning, settings = self._condition(settings, class_label, prompt, negative_prompt, run.notes)
        words = self._attention_words(attention_maps, [prompt])
        x_t, run.noisy, run.reference = self._noised_start(image, pixels, crop, start, sigma is not None, settings.seed)
        sampler = self.scheduler(scheduler)
        run.timesteps = set_timesteps_from(sampler, start, settings.steps)
        return self._stream(run, sampler, x_t, settings, conditioning, record=record, words=words)

    def denoise(self, image, t: int | None = None, sigma: float | None = None, steps: int | None = None,
                seed: int = 0, scheduler: str = "ddim", class_label=None, guidance_scale: float | None = None,
                eta: float = 0.0, max_side: int = MAX_SIDE, record: bool = True, prompt: str | None = None,
                negative_prompt: str | None = None, attention_maps: bool = False) -> DiffusionRun:
        """Reverse process from timestep t for an uploaded image.

        t: the image is clean; noise it to t with q(x_t | x_0) (SDEdit; latent models in their latent
           space: encode, noise, reverse, decode) and denoise. Default steps: about 50 * t / T.
        sigma: the image already carries Gaussian noise of this std (0..1 pixel scale); start at the
           matching t. Pixel models: default steps 1, i.e. the model's x0 estimate (the minimum-MSE
           answer). Latent models: the noisy image is encoded and taken through SDEdit from that t.
        Text models take a prompt, and record attention maps as `sample` does.
        """
        return last(self.denoise_stream(image, t, sigma, steps, seed, scheduler, class_label, guidance_scale, eta,
                                        max_side, record, prompt, negative_prompt, attention_maps))

    def inpaint_stream(self, image, mask, steps: int = 50, seed: int = 0, scheduler: str = "ddim", class_label=None,
                       guidance_scale: float | None = None, eta: float = 0.0, max_side: int = MAX_SIDE,
                       record: bool = True, prompt: str | None = None, negative_prompt: str | None = None,
                       attention_maps: bool = False):
        """Like `inpaint`, as a generator: one Step per reverse step, then the DiffusionRun."""
        settings = self._settings(seed, steps, scheduler, 1, guidance_scale, eta)
        image, pixels, (height, width) = self._prepare(image, max_side)
        repaint = mask_of(mask, (height, width))  # (1, 1, H, W)
        padded = F.pad(repaint, (0, pixels.shape[-1] - width, 0, pixels.shape[-2] - height))  # (1, 1, H', W')
        # a latent cell is repainted when any pixel of its f x f patch is (max pooling): (1, 1, h, w)
        repaint_sample = F.max_pool2d(padded, self.codec.factor) if self.is_latent else padded
        known = KnownRegion(self.codec.encode(pixels), 1 - repaint_sample)
        run = DiffusionRun(Trajectory(), scheduler, settings.seed, [], codec=self.codec, crop=(height, width),
                           known_pixels=pixels[..., :height, :width], keep_pixels=1 - repaint)
        conditioning, settings = self._condition(settings, class_label, prompt, negative_prompt, run.notes)
        words = self._attention_words(attention_maps, [prompt])
        noise = _seed_noise(known.x0.shape, settings.seed)
        sampler = self.scheduler(scheduler)
        sampler.set_timesteps(settings.steps)
        run.timesteps = [int(t) for t in sampler.timesteps]
        start = run.timesteps[0]
        x_t = known.keep * add_noise(sampler, known.x0, noise, start) + (1 - known.keep) * noise * sampler.init_noise_sigma
        return self._stream(run, sampler, x_t, settings, conditioning, known=known, record=record, words=words)

    def inpaint(self, image, mask, steps: int = 50, seed: int = 0, scheduler: str = "ddim", class_label=None,
                guidance_scale: float | None = None, eta: float = 0.0, max_side: int = MAX_SIDE, record: bool = True,
                prompt: str | None = None, negative_prompt: str | None = None,
                attention_maps: bool = False) -> DiffusionRun:
        """Repaint the masked region of an image (mask white / non-zero where the model paints).

        Every step re-imposes the known region from q(x_{t-1} | x_0) (RePaint's conditioning, without
        resampling jumps); latent models repaint every latent cell the mask touches, and the result
        keeps the input's pixels outside the mask. Same settings as `sample`.
        """
        return last(self.inpaint_stream(image, mask, steps, seed, scheduler, class_label, guidance_scale, eta,
                                        max_side, record, prompt, negative_prompt, attention_maps))

    def schedule(self) -> dict[str, np.ndarray]:
        """abar_t and log-SNR(t) over the training timesteps, for plots."""
        return {"t": np.arange(len(self.alphas_cumprod)), "alpha_bar": self.alphas_cumprod.numpy(),
                "log_snr": log_snr(self.alphas_cumprod).numpy()}
