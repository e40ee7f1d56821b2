"""Autoencoders as latent spaces: KL autoencoders (VAE) and the codec a latent diffusion model runs through.

KL autoencoder: Kingma & Welling, "Auto-Encoding Variational Bayes" (arXiv:1312.6114), as the first
stage of latent diffusion (Rombach et al., arXiv:2112.10752, sec. 3.1, "KL-reg."). The encoder gives a
diagonal Gaussian posterior q(z | x) = N(mu, sigma^2); its rate is the KL term against the prior,

    KL(q(z | x) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)   nats,

reported as bits per pixel: KL / ln 2 / (H W), the cost of sending z with the prior as the code
(bits-back), the KL model's counterpart of a VQ model's log2 K / f^2.

Latent scaling (diffusers' conventions), so the diffusion model sees unit-variance latents:
    z_scaled = (z - shift_factor) * scaling_factor                          (SD 1.x/2.x, SD3)
    z_scaled = (z - latents_mean) * scaling_factor / latents_std            (per channel, where given)
A VQ config without `scaling_factor` predates it and its latents are unscaled (factor 1): diffusers'
default of 0.18215 is wrong there (CompVis/ldm-celebahq-256; diffusers issue #6725).

Preview decode: a linear map latent -> RGB fitted by least squares on the decoder's own outputs
(the "latent preview" of Stable Diffusion UIs), so streamed frames cost no decoder call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..imaging import metrics
from ..imaging.io import prepare_input, tensor_to_uint8

LATENT_RANGE = 3.0  # scaled latents are ~N(0, 1): channel images show [-3, 3]


# ------------------------------------------------------------------------- KL autoencoder
@dataclass
class KLReconstruction(metrics.ComparedToInput):
    """What `KLAutoencoder.reconstruct` returns: the fields of `vq.Reconstruction` plus the posterior's."""

    input: Image.Image  # the image that was encoded (after any downscaling)
    image: Image.Image  # decode of the posterior mean, same size as `input`
    sample: Image.Image  # decode of one posterior sample z ~ q(z | x)
    std_map: np.ndarray  # (h, w) posterior std, averaged over latent channels
    kl_bits: float  # KL(q(z | x) || N(0, I)) in bits, over the visible latent
    latent_shape: tuple[int, int, int]  # (C, h, w)
    latency_s: float
    resized_from: tuple[int, int] | None = None
    psnr: float = field(init=False)

    def __post_init__(self):
        self.psnr = metrics.psnr(self.input, self.image)

    @property
    def bits_per_pixel(self) -> float:
        """The rate: KL bits over the image's pixels."""
        return self.kl_bits / (self.input.width * self.input.height)

    @property
    def compression_ratio(self) -> float:
        return 24.0 / max(self.bits_per_pixel, 1e-9)

    @cached_property
    def sample_psnr(self) -> float:
        return metrics.psnr(self.input, self.sample)



class KLAutoencoder:
    """A loaded diffusers `AutoencoderKL` with GenLab's reconstruction view."""

    kind = "kl"

    def __init__(self, model, name: str = "vae"):
        self.model, self.name = model, name
        self.downsample_factor: int = 2 ** (len(model.config.block_out_channels) - 1)
        self.latent_channels: int = model.config.latent_channels

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def posterior(self, pixels: torch.Tensor):
        """(B, 3, H, W) in [-1, 1] -> diffusers' DiagonalGaussianDistribution over (B, C, H/f, W/f)."""
        return self.model.encode(pixels.to(self.device, self.model.dtype)).latent_dist

    @torch.inference_mode()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) unscaled latents -> (B, 3, h f, w f) in [-1, 1], fp32."""
        return self.model.decode(z.to(self.device, self.model.dtype)).sample.float().clamp(-1, 1)

    def reconstruct(self, image, max_side: int | None = 512, seed: int = 0) -> KLReconstruction:
        """Encode, then decode the posterior mean and one posterior sample (seeded)."""
        start = time.perf_counter()
        image, pixels, (height, width), resized_from = prepare_input(image, max_side, self.downsample_factor)
        posterior = self.posterior(pixels)
        mean, std = posterior.mean.float(), posterior.std.float()  # (1, C, h, w)
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(int(seed))).to(mean.device)
        decoded = self.decode_latents(torch.cat([mean, mean + std * noise]))[..., :height, :width].cpu()
        f = self.downsample_factor
        h, w = -(-height // f), -(-width // f)
        kl_nats = 0.5 * (mean.pow(2) + std.pow(2) - 1 - 2 * torch.log(std.clamp(min=1e-12)))[..., :h, :w].sum()
        return KLReconstruction(
            image, Image.fromarray(tensor_to_uint8(decoded[0]), "RGB"), Image.fromarray(tensor_to_uint8(decoded[1]), "RGB"),
            std[0, :, :h, :w].mean(dim=0).cpu().numpy(), float(kl_nats) / math.log(2), (self.latent_channels, h, w),
            time.perf_counter() - start, resized_from,
        )


# ---------------------------------------------------------------------------- latent codecs
class PixelCodec:
    """The identity codec of pixel-space models: the sample space is the image."""

    is_latent = False
    factor = 1

    def __init__(self, channels: int = 3):
        self.channels = channels

    def encode(self, pixels: torch.Tensor, generator=None) -> torch.Tensor:
        return pixels.float()

    def decode(self, sample: torch.Tensor) -> torch.Tensor:
        return sample.float().clamp(-1, 1)

    preview = decode


class LatentCodec:
    """Pixels <-> the scaled latents a latent diffusion model samples, for a KL or a VQ autoencoder.

    `encode` gives the posterior mean (KL) or the pre-quantization latent (VQ), scaled; `decode` undoes
    the scaling and runs the real decoder (a VQ decoder snaps to the codebook first, as diffusers'
    `VQModel.decode` does); `preview` is the least-squares linear map, fitted on first use.
    """

    is_latent = True

    def __init__(self, model, kind: str, scaling_factor: float, shift_factor: float | None = None,
                 latents_mean=None, latents_std=None):
        if kind not in ("kl", "vq"):
            raise ValueError(f"unknown autoencoder kind {kind!r}; choose 'kl' or 'vq'")
        if not scaling_factor or not math.isfinite(scaling_factor):
            raise ValueError(f"scaling_factor must be a finite non-zero number, got {scaling_factor!r}")
        self.model, self.kind = model, kind
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor or 0.0)
        self.channels: int = model.config.latent_channels
        self.factor: int = 2 ** (len(model.config.block_out_channels) - 1)
        shape = (1, self.channels, 1, 1)
        self.latents_mean = None if latents_mean is None else torch.tensor(latents_mean, dtype=torch.float32).view(shape)
        self.latents_std = None if latents_std is None else torch.tensor(latents_std, dtype=torch.float32).view(shape)
        self._preview: torch.Tensor | None = None  # (C + 1, 3) least-squares map

    @property
    def device(self) -> torch.device:
        return self.model.device

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        if self.latents_mean is not None and self.latents_std is not None:
            return (z - self.latents_mean.to(z.device)) * self.scaling_factor / self.latents_std.to(z.device)
        return (z - self.shift_factor) * self.scaling_factor

    def unscale(self, z_scaled: torch.Tensor) -> torch.Tensor:
        if self.latents_mean is not None and self.latents_std is not None:
            return z_scaled * self.latents_std.to(z_scaled.device) / self.scaling_factor + self.latents_mean.to(z_scaled.device)
        return z_scaled / self.scaling_factor + self.shift_factor

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, generator=None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f) scaled latents (fp32, on CPU)."""
        encoded = self.model.encode(pixels.to(self.device, self.model.dtype))
        z = encoded.latent_dist.mode() if self.kind == "kl" else encoded.latents
        return self.scale(z.float()).cpu()

    @torch.inference_mode()
    def decode(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, h f, w f) in [-1, 1] (fp32, on CPU)."""
        z = self.unscale(sample.float()).to(self.device, self.model.dtype)
        return self.model.decode(z).sample.float().clamp(-1, 1).cpu()

    @torch.inference_mode()
    def fit_preview(self, count: int = 8, side: int = 16, seed: int = 0) -> torch.Tensor:
        """(C + 1, 3): RGB ~ [z_scaled, 1] @ W over decodes of N(0, I) latents, each pixel patch averaged."""
        latents = torch.randn((count, self.channels, side, side), generator=torch.Generator().manual_seed(seed))
        rgb = F.avg_pool2d(self.decode(latents), self.factor)  # (count, 3, side, side)
        inputs = torch.cat([latents, torch.ones_like(latents[:, :1])], dim=1)  # (count, C + 1, side, side)
        a = inputs.permute(0, 2, 3, 1).reshape(-1, self.channels + 1).double()
        b = rgb.permute(0, 2, 3, 1).reshape(-1, 3).double()
        self._preview = torch.linalg.lstsq(a, b).solution.float()
        return self._preview

    def preview(self, sample: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, h f, w f): the linear map, upsampled, no decoder call."""
        weights = self._preview if self._preview is not None else self.fit_preview()
        sample = sample.float().cpu()
        rgb = torch.einsum("bchw,cd->bdhw", sample, weights[:-1]) + weights[-1].view(1, 3, 1, 1)
        return F.interpolate(rgb, scale_factor=self.factor, mode="bilinear", align_corners=False).clamp(-1, 1)


def channels_image(sample: torch.Tensor, scale: float = LATENT_RANGE, upscale: int = 1) -> Image.Image:
    """(B, C, h, w) latents -> one grey image: the channels side by side (a row per sample), [-scale, scale]
    mapped to black..white, each cell repeated `upscale` times (nearest) so it shows at pixel size."""
    sample = sample.float().cpu().clamp(-scale, scale) / scale  # (B, C, h, w) in [-1, 1]
    batch, channels, height, width = sample.shape
    strip = sample.permute(0, 2, 1, 3).reshape(batch * height, channels * width)  # (B h, C w)
    grey = ((strip + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(grey, "L")
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.Resampling.NEAREST)
    return image.convert("RGB")


__all__ = ["KLAutoencoder", "KLReconstruction", "LatentCodec", "PixelCodec", "channels_image"]
