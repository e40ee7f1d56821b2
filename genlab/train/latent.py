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
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from . import common


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
                 class_power: float = 1.0, encode_batch: int = 64):
        super().__init__(data, batch_size, seed, class_power, "latent")
        self.scaling_factor = float(vae.config.scaling_factor)
        vae.eval()
        posteriors = {False: ([], []), True: ([], [])}  # flipped -> (means, stds)
        with torch.no_grad():
            for start in range(0, len(data), encode_batch):
                pixels = images_to_tensor(data.images[start:start + encode_batch]).to(vae.device)
                for flipped, (means, stds) in posteriors.items():
                    posterior = vae.encode(pixels.flip(-1) if flipped else pixels).latent_dist
                    means.append(posterior.mean.float().cpu())
                    stds.append(posterior.std.float().cpu())
        self.mean = torch.stack([torch.cat(posteriors[f][0]) for f in (False, True)], dim=1)  # (N, 2, C, h, w)
        self.std = torch.stack([torch.cat(posteriors[f][1]) for f in (False, True)], dim=1)
        self.generator = torch.Generator().manual_seed(seed)

    def value_range(self) -> float:
        """The training latents' range, max |mu| + 3 sigma over every image (scaled): what sampling clips
        x0_hat to, as pixel models clip to [-1, 1]."""
        return float(((self.mean.abs() + 3 * self.std) * self.scaling_factor).max())

    def __iter__(self):
        while True:
            index, flip = self.draw()
            mean, std = self.mean[index, flip], self.std[index, flip]  # (B, C, h, w)
            noise = torch.randn(mean.shape, generator=self.generator)
            yield self.scaling_factor * (mean + std * noise), self.labels[index]


def save_autoencoder(vae: AutoencoderKL, source: Path, target: Path, fp16: bool = False) -> None:
    """The frozen autoencoder into a pipeline's vae/ (or a checkpoint), with its card, run and genlab.json."""
    import shutil

    common.save_network(vae, target, fp16)
    for name in ("README.md", "run.json", "genlab.json", "samples.png"):
        if (Path(source) / name).is_file() and Path(source).resolve() != Path(target).resolve():
            shutil.copy(Path(source) / name, target / name)
    info_path = target / "genlab.json"
    if info_path.is_file() and target.name == "vae":  # listed in the app as "<pipeline>-vae"
        info = json.loads(info_path.read_text())
        info["title"] = f"{target.parent.name}-vae"
        info_path.write_text(json.dumps(info, indent=1))


def write_pipeline_index(out: Path, autoencoder: str = "vae", autoencoder_class: str = "AutoencoderKL") -> None:
    """diffusers' `model_index.json` for unet/ + vae/ (or vqvae/) + scheduler/."""
    import diffusers

    index = {"_class_name": "LDMPipeline" if autoencoder == "vqvae" else "GenLabLatentDiffusionPipeline",
             "_diffusers_version": diffusers.__version__, "scheduler": ["diffusers", "DDPMScheduler"],
             "unet": ["diffusers", "UNet2DModel"], autoencoder: ["diffusers", autoencoder_class]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
