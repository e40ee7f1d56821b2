"""Train a noise-prediction diffusers `UNet2DModel` (DDPM, Ho et al., arXiv:2006.11239, eq. 14).

loss = w(t) * ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, y)||^2
- w(t) = min(SNR(t), gamma) / SNR(t): Min-SNR-gamma weighting (Hang et al., arXiv:2303.09556),
  which converges several times faster than uniform weighting; gamma = 0 turns it off.
- Class-conditional models drop the label to the null class with probability `label_dropout`, so
  one network gives both eps(x, y) and eps(x) for classifier-free guidance (arXiv:2207.12598).
- A denoiser can focus training on the low-noise timesteps it is used at (`t_focus`).
- EMA weights (diffusers' `EMAModel`) are what gets exported.

`train_ddpm` is the `ddpm` (pixels) and `ldm` (a frozen KL autoencoder's latents, see `genlab.train.latent`) run
of `python -m genlab.train`: one loop; `export_ddpm` writes a pixel model's folder or a latent pipeline's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from ..diffusion import make_scheduler, reverse_process
from ..loading.schema import ModelInfo, write_model_info
from . import cards, common, latent
from .config import DiffusionConfig


def sample_timesteps(batch: int, total: int, focus_max: int, focus_share: float, generator=None) -> torch.Tensor:
    """Uniform t in [0, total), except a `focus_share` of the batch drawn from [0, focus_max)."""
    uniform = torch.randint(0, total, (batch,), generator=generator)
    if focus_share <= 0 or focus_max <= 0:
        return uniform
    focused = torch.randint(0, focus_max, (batch,), generator=generator)
    pick = torch.rand(batch, generator=generator) < focus_share
    return torch.where(pick, focused, uniform)


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights for epsilon prediction: min(SNR, gamma) / SNR."""
    if gamma <= 0:
        return torch.ones_like(timesteps, dtype=torch.float32)
    abar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = abar / (1 - abar)
    return torch.clamp(snr, max=gamma) / snr


def drop_labels(labels: torch.Tensor, null_class: int, probability: float, generator=None) -> torch.Tensor:
    drop = torch.rand(labels.shape, generator=generator) < probability
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def diffusion_loss(unet, scheduler, clean: torch.Tensor, timesteps, labels, gamma: float) -> torch.Tensor:
    """Weighted eps-prediction MSE for a batch of clean images (B, 3, H, W)."""
    noise = torch.randn_like(clean)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction = unet(noisy, timesteps, class_labels=labels).sample
    per_sample = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
    weights = min_snr_weights(scheduler.alphas_cumprod, timesteps, gamma)
    return (per_sample * weights).mean()


# ------------------------------------------------------------------------------ the run
def build_unet(config, num_classes: int, in_channels: int = 3, sample_size: int | None = None) -> UNet2DModel:
    attention = config.attention or (False,) * len(config.channels)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(
        sample_size=sample_size or config.sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=config.channels, layers_per_block=config.layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=config.groups(),
        add_attention=any(attention), attention_head_dim=32,
        num_class_embeds=num_classes + 1 if num_classes else None,  # the last class is "no label" (CFG)
    )


def build_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """Pixels are clipped to [-1, 1] on the way; latents are unbounded, so latent models never clip."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=config.beta_schedule, prediction_type="epsilon",
                              clip_sample=True, timestep_spacing="trailing")
    return latent_sampling(scheduler) if config.kind == "ldm" else scheduler


def latent_sampling(scheduler: DDPMScheduler) -> DDPMScheduler:
    """The sampling settings of a latent model's scheduler: no clipping to [-1, 1], and "leading" timesteps
    (50 DDIM steps: 980, 960, ..., 0). The cosine schedule caps its last beta at 0.999, so abar_999 is
    2.4e-9: an eps model's x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) there magnifies its error
    20,000-fold, which pixel models survive by clipping x0_hat to [-1, 1] and latent models do not
    (their samples at 4k steps: colour blobs from t = 999, faces from t = 980). Training is unaffected."""
    scheduler.register_to_config(clip_sample=False, timestep_spacing="leading", steps_offset=0)
    return scheduler


def load_unet(config: DiffusionConfig, checkpoint: Path, resuming: bool, num_classes: int,
              vae: AutoencoderKL | None) -> tuple[UNet2DModel, UNet2DModel | None, DDPMScheduler]:
    """(UNet, the network its EMA starts from when not the UNet itself, scheduler): resumed from `checkpoint`,
    else from --init (a model or a pipeline folder), else new (on the latents of `vae` when given)."""
    init = config.init / "unet" if config.init and (config.init / "unet").is_dir() else config.init
    if resuming:
        unet, ema_start = UNet2DModel.from_pretrained(checkpoint / "model"), UNet2DModel.from_pretrained(checkpoint / "ema")
    elif config.init:
        unet = UNet2DModel.from_pretrained(init, **config.init_overrides())
        ema_start = UNet2DModel.from_pretrained(init, **config.init_overrides())
    elif vae is not None:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        unet, ema_start = build_unet(config, num_classes, vae.config.latent_channels, config.crop // factor), None
    else:
        unet, ema_start = build_unet(config, num_classes), None
    scheduler_folder = config.init / "scheduler" if config.init and (config.init / "scheduler").is_dir() else config.init
    if resuming:
        scheduler = DDPMScheduler.from_pretrained(checkpoint / "model")
    else:
        scheduler = DDPMScheduler.from_pretrained(scheduler_folder) if config.init else build_scheduler(config)
    return unet, ema_start, latent_sampling(scheduler) if vae is not None else scheduler


def train_ddpm(config: DiffusionConfig, accelerator: Accelerator, data: common.ImageFolder,
               state: common.RunState) -> None:
    """DDPM on pixels (kind ddpm) or on a frozen KL autoencoder's scaled latents (kind ldm): one loop."""
    classes = data.classes if config.label_dropout > 0 and data.classes else []
    null_class = len(classes) if classes else None
    checkpoint = config.run_dir / "checkpoint"
    resuming = config.resume and (checkpoint / "model").exists()
    vae = vae_source = None
    if config.kind == "ldm":
        vae_source = checkpoint / "vae" if resuming else config.vae
        vae = AutoencoderKL.from_pretrained(vae_source).to(accelerator.device)
        vae.requires_grad_(False)
    unet, ema_start, scheduler = load_unet(config, checkpoint, resuming, len(classes), vae)
    guide = load_guide(config, unet)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    unet, optimizer, ema, schedule = common.prepare_ema_training(accelerator, unet, ema_start, optimizer, config, state,
                                                                 checkpoint, resuming)
    class_power = config.class_power if classes else 1.0
    seed = config.seed + state.step + accelerator.process_index
    latent_range = None
    if vae is not None:  # x_0 is the scaled latent of an image, drawn from the autoencoder's posterior
        bank = latent.LatentBank(vae, data, config.batch_size, seed, class_power=class_power)
        latent_range = round(bank.value_range(), 2)
        batches = iter(bank)
    else:
        batches = iter(common.RandomCrops(data, config.crop, config.batch_size, seed, class_power=class_power))
    generator = torch.Generator().manual_seed(config.seed + state.step)
    timer = common.Timer(state.wall_seconds)
    progress = tqdm(total=config.steps, initial=state.step, disable=not accelerator.is_main_process, desc="ddpm")
    running = None

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            savers = [lambda folder: scheduler.save_pretrained(folder / "model")]
            if vae is not None:
                savers.append(lambda folder: latent.save_autoencoder(vae, vae_source, folder / "vae"))
            ema_model = common.save_ema_checkpoint(accelerator, unet, ema, optimizer, state, checkpoint, *savers)
            export_ddpm(config, ema_model, scheduler, classes, state, vae, vae_source, latent_range, guide)

    while common.keep_training(state, timer, config):
        clean, labels = next(batches)
        clean = clean.to(accelerator.device)
        timesteps = sample_timesteps(len(clean), scheduler.config.num_train_timesteps, config.t_focus_max,
                                     config.t_focus_share, generator).to(accelerator.device)
        class_labels = None
        if classes:
            class_labels = drop_labels(labels, null_class, config.label_dropout, generator).to(accelerator.device)
        with accelerator.autocast():
            loss = diffusion_loss(unet, scheduler, clean, timesteps, class_labels, config.min_snr_gamma)
        running = common.ema_step(accelerator, unet, loss, optimizer, schedule, ema, state, running)
        common.end_step(accelerator, progress, state, config, running, schedule, ema, save, lambda: save_ddpm_samples(
            common.ema_copy(accelerator, unet, ema), scheduler, classes, config.run_dir / "samples" / f"{state.step:06d}.png",
            guidance_scale=config.guidance_scale, vae=vae, latent_range=latent_range))
    save()
    progress.close()


def save_ddpm_samples(unet: UNet2DModel, scheduler, classes: list[str], path: Path, *, guidance_scale: float,
                      count: int = 16, vae: AutoencoderKL | None = None, latent_range: float | None = None) -> None:
    """16 samples at 50 DDIM steps, seed 0, classes in order; latents are decoded by `vae`."""
    generator = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    noise = torch.randn((count, unet.config.in_channels, size, size), generator=generator)
    sampler = make_scheduler(scheduler.config, "ddim")
    sampler.set_timesteps(50)
    labels = torch.arange(count) % len(classes) if classes else None
    unet.eval()
    run = reverse_process(unet, sampler, noise, class_labels=labels, null_class=len(classes) if classes else None,
                          guidance_scale=guidance_scale, record=False,
                          **({} if vae is None else dict(clip_x0=latent_range, enforce_clip=latent_range is not None)))
    images = run.final
    if vae is not None:
        with torch.no_grad():
            images = vae.decode(run.final.to(vae.device) / vae.config.scaling_factor).sample.float().clamp(-1, 1).cpu()
    common.save_grid(images, path, columns=4)


def load_guide(config: DiffusionConfig, unet):
    """The UNet of --guide (a folder with config.json, or a weights folder with unet/), checked to denoise the same
    samples under the same conditioning as `unet`; None without --guide. Read once, before the first step, so a
    wrong guide stops the run before it trains."""
    if config.guide is None:
        return None
    from ..diffusion.pipeline import check_guide

    source = config.guide / "unet" if (config.guide / "unet" / "config.json").is_file() else config.guide
    if not (source / "config.json").is_file():
        raise SystemExit(f"--guide {config.guide}: no UNet there (config.json, or unet/config.json)")
    guide = type(unet).from_pretrained(source)
    try:
        check_guide(unet, guide)
    except ValueError as error:
        raise SystemExit(f"--guide {config.guide}: {error}") from None
    return guide


def export_guide(config: DiffusionConfig, guide, out: Path) -> float | None:
    """`guide` (from `load_guide`) as `out`/unet_guide/, the loader's autoguidance network (fp16 with
    --export-fp16); the default autoguidance scale to export (None: no guide, and a stale unet_guide/ is removed)."""
    from ..loading.loaders import GUIDE_FOLDER

    if guide is None:
        if (out / GUIDE_FOLDER).is_dir():  # a guide left by an earlier export would outlive its genlab.json entry
            shutil.rmtree(out / GUIDE_FOLDER)
        return None
    common.save_network(guide, out / GUIDE_FOLDER, config.export_fp16)
    return config.autoguidance_scale


def export_ddpm(config: DiffusionConfig, unet: UNet2DModel, scheduler, classes: list[str], state: common.RunState,
                vae: AutoencoderKL | None = None, vae_source: Path | None = None,
                latent_range: float | None = None, guide: UNet2DModel | None = None) -> None:
    """A pixel model: one folder. A latent model: diffusers' pipeline layout, unet/ + vae/ (from `vae_source`) +
    scheduler/ + model_index.json, with genlab.json and the model card at its root."""
    config.out.mkdir(parents=True, exist_ok=True)
    if vae is None:
        unet.save_pretrained(config.out, safe_serialization=True)
        scheduler.save_pretrained(config.out)
    else:  # the cards' measurements are of these files, fp16 with --export-fp16
        common.save_network(unet, config.out / "unet", config.export_fp16)
        scheduler.save_pretrained(config.out / "scheduler")
        latent.save_autoencoder(vae, vae_source, config.out / "vae", config.export_fp16)
        latent.write_pipeline_index(config.out)
    autoguidance = export_guide(config, guide, config.out)
    write_model_info(config.out, ModelInfo(
        kind="diffusion", title=config.out.name,
        clip_sample_range=latent_range,  # sampling clips x0_hat to the training latents' range
        classes=tuple(classes), null_class=len(classes) if classes else None,
        default_guidance_scale=config.guidance_scale if classes else None,
        default_autoguidance_scale=autoguidance))
    state.save(config.out)
    save_ddpm_samples(unet, scheduler, classes, config.out / "samples.png", guidance_scale=config.guidance_scale,
                      vae=vae, latent_range=latent_range)
    cards.write_diffusion_card(config, unet, classes, state, vae, vae_source)
