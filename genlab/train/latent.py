"""Train the two halves of a latent diffusion model (Rombach et al., arXiv:2112.10752).

Stage 1, the KL autoencoder (their sec. 3.1, "KL-reg."): a diffusers `AutoencoderKL` whose encoder
gives a diagonal Gaussian posterior q(z | x) = N(mu, sigma^2). The loss is

    L = ||x - D(z)||^2 + l1 * |x - D(z)| + kl_weight * KL(q(z | x) || N(0, I)) / (3 H W),   z ~ q(z | x)

with a small KL weight: the KL only keeps the latents near a Gaussian scale, it is not a rate the
model must pay for. The exported `scaling_factor` is 1 / std of the posterior samples over the
training set, so the diffusion model sees unit-variance latents (SD: 0.18215 for its VAE).

Stage 2, diffusion in the latent space: the same DDPM loss and loop as pixel models
(`genlab.train.ddpm`), on `scaling_factor * z` with z sampled from the frozen autoencoder's
posterior. The posterior (mean, std) of every training image and its mirror image is computed
once (`LatentBank`), so a step costs the UNet alone.

`train_vae` is the `vae` run of `python -m genlab.train` and `export_vae` writes its weights folder; the latent
diffusion run itself is `genlab.train.ddpm.train_ddpm`. `EncodedBank` is shared with the token prior's bank.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from ..loading.schema import ModelInfo, read_model_info, write_model_info
from . import cards, common
from .config import VAEConfig


def vae_loss(model: AutoencoderKL, pixels: torch.Tensor, kl_weight: float, l1_weight: float, generator=None):
    """(loss, reconstruction, logs) for a batch (B, 3, H, W) in [-1, 1]."""
    posterior = model.encode(pixels).latent_dist
    latents = posterior.sample(generator=generator)  # (B, C, H/f, W/f)
    reconstruction = model.decode(latents).sample.float()  # (B, 3, H, W)
    rec_loss = torch.nn.functional.mse_loss(reconstruction, pixels)
    if l1_weight:
        rec_loss = rec_loss + l1_weight * (reconstruction - pixels).abs().mean()
    kl = posterior.kl().float().mean() / pixels[0].numel()  # (B,) nats summed over z -> nats per pixel value
    loss = rec_loss + kl_weight * kl
    return loss, reconstruction, {"rec": rec_loss.item(), "kl": kl.item()}


@torch.no_grad()
def latent_statistics(model: AutoencoderKL, data: common.ImageFolder, batch: int = 64) -> dict:
    """Per-channel mean and std, and the overall std, of posterior samples z over `data` (unflipped)."""
    model.eval()
    generator = torch.Generator().manual_seed(0)
    samples = []
    for start in range(0, len(data), batch):
        pixels = images_to_tensor(data.images[start:start + batch]).to(model.device)
        samples.append(model.encode(pixels).latent_dist.sample(generator=generator).float().cpu())
    z = torch.cat(samples)  # (N, C, h, w)
    return {"std": float(z.std()), "channel_mean": z.mean(dim=(0, 2, 3)).tolist(), "channel_std": z.std(dim=(0, 2, 3)).tolist()}


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) arrays of one size -> (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class EncodedBank:
    """What a frozen first stage makes of every image of a folder and of its mirror image, encoded once;
    batches draw (image, mirrored or not) with `common.RandomCrops`' per-image weights (class_power
    included). All images must share one size (the first stage's training crop)."""

    def __init__(self, data: common.ImageFolder, batch_size: int, seed: int, class_power: float, kind: str):
        sizes = {image.shape for image in data.images}
        if len(sizes) != 1:
            raise SystemExit(f"{kind} training needs images of one size, found {sorted(sizes)[:4]}")
        crops = common.RandomCrops(data, next(iter(sizes))[0], batch_size, seed, class_power=class_power)
        self.weights, self.rng, self.batch_size = crops.weights, crops.rng, batch_size
        self.labels = torch.from_numpy(data.labels_array)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) image indices and (B,) 0/1: mirrored."""
        index = torch.from_numpy(self.rng.choice(len(self.weights), size=self.batch_size, p=self.weights))
        return index, torch.from_numpy(self.rng.integers(0, 2, size=self.batch_size))


class LatentBank(EncodedBank):
    """The frozen autoencoder's posterior for every image of a folder and its mirror image.

    Each draw takes a fresh posterior sample z = mu + sigma * e, scaled by the autoencoder's
    `scaling_factor` (see `EncodedBank` for how images are drawn).
    """

    def __init__(self, vae: AutoencoderKL, data: common.ImageFolder, batch_size: int, seed: int,
                 class_power: float = 1.0, encode_batch: int = 64, mirrored: bool = True):
        super().__init__(data, batch_size, seed, class_power, "latent")
        self.scaling_factor = float(vae.config.scaling_factor)
        vae.eval()
        # flipped -> (means, stds); without mirror images (captions that name directions) only the images
        posteriors = {False: ([], []), True: ([], [])} if mirrored else {False: ([], [])}
        with torch.no_grad():
            for start in range(0, len(data), encode_batch):
                pixels = images_to_tensor(data.images[start:start + encode_batch]).to(vae.device)
                for flipped, (means, stds) in posteriors.items():
                    posterior = vae.encode(pixels.flip(-1) if flipped else pixels).latent_dist
                    means.append(posterior.mean.float().cpu())
                    stds.append(posterior.std.float().cpu())
        self.mean = torch.stack([torch.cat(means) for means, _ in posteriors.values()], dim=1)  # (N, 2 or 1, C, h, w)
        self.std = torch.stack([torch.cat(stds) for _, stds in posteriors.values()], dim=1)
        self.generator = torch.Generator().manual_seed(seed)

    def value_range(self) -> float:
        """The training latents' range, max |mu| + 3 sigma over every image (scaled): what sampling clips
        x0_hat to, as pixel models clip to [-1, 1]."""
        return float(((self.mean.abs() + 3 * self.std) * self.scaling_factor).max())

    def __iter__(self):
        while True:
            index, flip = self.draw()
            flip = flip % self.mean.shape[1]  # a bank without mirror images draws the image itself
            mean, std = self.mean[index, flip], self.std[index, flip]  # (B, C, h, w)
            noise = torch.randn(mean.shape, generator=self.generator)
            yield self.scaling_factor * (mean + std * noise), self.labels[index]


def save_autoencoder(vae, source: Path, target: Path, fp16: bool = False) -> None:
    """The frozen first stage (an AutoencoderKL or a VQModel) into a pipeline's vae/ or vqvae/ (or a checkpoint),
    with its card, run, samples and genlab.json; a pipeline's vae/ is listed in the app as "<pipeline>-vae"."""
    source, target = Path(source), Path(target)
    common.save_network(vae, target, fp16)
    if source.resolve() != target.resolve():
        for name in ("README.md", "run.json", "samples.png"):
            if (source / name).is_file():
                shutil.copy(source / name, target / name)
        if (source / "genlab.json").is_file():
            write_model_info(target, read_model_info(source))
    if (target / "genlab.json").is_file() and target.name == "vae":
        write_model_info(target, dataclasses.replace(read_model_info(target), title=f"{target.parent.name}-vae"))


def write_pipeline_index(out: Path, autoencoder: str = "vae", autoencoder_class: str = "AutoencoderKL") -> None:
    """diffusers' `model_index.json` for unet/ + vae/ (or vqvae/) + scheduler/."""
    import diffusers

    index = {"_class_name": "LDMPipeline" if autoencoder == "vqvae" else "GenLabLatentDiffusionPipeline",
             "_diffusers_version": diffusers.__version__, "scheduler": ["diffusers", "DDPMScheduler"],
             "unet": ["diffusers", "UNet2DModel"], autoencoder: ["diffusers", autoencoder_class]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


# ------------------------------------------------------------------------------ the vae run
def build_vae(config: VAEConfig) -> AutoencoderKL:
    count = len(config.channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * count, up_block_types=("UpDecoderBlock2D",) * count,
        block_out_channels=config.channels, layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels, norm_num_groups=config.groups(),
        mid_block_add_attention=False, sample_size=config.crop, scaling_factor=1.0,
    )


def train_vae(config: VAEConfig, accelerator: Accelerator, data: common.ImageFolder, state: common.RunState) -> None:
    """The KL autoencoder on random crops, with checkpoints and resume."""
    checkpoint = config.run_dir / "checkpoint"
    resuming = config.resume and (checkpoint / "model").exists()
    if resuming:
        model = AutoencoderKL.from_pretrained(checkpoint / "model")
    elif config.init:
        model = AutoencoderKL.from_pretrained(config.init, **config.init_overrides())
    else:
        model = build_vae(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.99))
    if resuming:
        common.load_optimizer(optimizer, checkpoint)
    schedule = common.lr_scheduler(optimizer, config.lr_schedule, config.lr, config.warmup_steps, config.steps,
                                   state.step)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    seed = config.seed + state.step + accelerator.process_index
    batches = iter(common.RandomCrops(data, config.crop, config.batch_size, seed))
    fixed, _ = next(iter(common.RandomCrops(data, config.crop, 8, seed=1234)))
    generator = torch.Generator(device=accelerator.device).manual_seed(config.seed + state.step)
    timer = common.Timer(state.wall_seconds)
    progress = tqdm(total=config.steps, initial=state.step, disable=not accelerator.is_main_process, desc="vae")

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            checkpoint.mkdir(parents=True, exist_ok=True)
            unwrapped.save_pretrained(checkpoint / "model")
            common.save_optimizer(optimizer, checkpoint)
            state.save(checkpoint)
            export_vae(config, unwrapped, data, state, fixed)
            unwrapped.train()

    while common.keep_training(state, timer, config):
        pixels = next(batches)[0].to(accelerator.device)
        model.train()
        with accelerator.autocast():
            loss, reconstruction, logs = vae_loss(unwrapped, pixels, config.kl_weight, config.l1_weight, generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        state.step += 1
        progress.update(1)
        if state.step % config.log_every == 0:
            progress.set_postfix({**{k: round(v, 5) for k, v in logs.items()},
                                  "psnr": round(common.psnr(reconstruction, pixels), 2),
                                  "lr": f"{schedule.get_last_lr()[0]:.2e}"})
        if state.step % config.save_every == 0:
            save()
        if state.step % config.sample_every == 0 and accelerator.is_main_process:
            save_vae_samples(unwrapped, fixed, config.run_dir / "samples" / f"{state.step:06d}.png")
    save()
    progress.close()


@torch.no_grad()
def save_vae_samples(model: AutoencoderKL, pixels: torch.Tensor, path: Path) -> None:
    """Top row: inputs; bottom row: decodes of the posterior mean."""
    model.eval()
    reconstruction = model.decode(model.encode(pixels.to(model.device)).latent_dist.mode()).sample.float().clamp(-1, 1)
    model.train()
    common.save_grid(torch.cat([pixels, reconstruction.cpu()]), path, columns=len(pixels))


def export_vae(config: VAEConfig, model: AutoencoderKL, data: common.ImageFolder, state: common.RunState,
               fixed: torch.Tensor) -> None:
    """save_pretrained with `scaling_factor` = 1 / std of the posterior samples over the training data."""
    statistics = latent_statistics(model, data)
    model.register_to_config(scaling_factor=1.0 / statistics["std"])
    config.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(config.out, safe_serialization=True)
    write_model_info(config.out, ModelInfo(kind="autoencoder", title=config.out.name, latent_statistics=statistics))
    state.save(config.out)
    save_vae_samples(model, fixed, config.out / "samples.png")
    cards.write_vae_card(config, model, state)
