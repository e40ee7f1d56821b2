"""Train a diffusers `VQModel` as a VQ-VAE or a VQGAN.

VQ-VAE: van den Oord et al., "Neural Discrete Representation Learning" (arXiv:1711.00937).
  loss = ||x - D(z_q)||^2 + beta * ||E(x) - sg(z_q)||^2, with the codebook learnt by exponential
  moving averages of k-means statistics (their appendix A.1) instead of the codebook loss.
  Dead codes (EMA usage below a threshold) restart on random encoder outputs of the batch
  (as in Jukebox, arXiv:2005.00341), and the codebook starts from encoder outputs (data init),
  which keeps nearly every code in use.
VQGAN: Esser et al., "Taming Transformers for High-Resolution Image Synthesis" (arXiv:2012.09841).
  Adds a PatchGAN discriminator with hinge loss, switched on at `disc_start`, and the adaptive
  generator weight lambda = ||grad_L rec|| / (||grad_L gan|| + 1e-4) on the decoder's last layer
  (their eq. 7). No pretrained perceptual network can be downloaded here, so there is no LPIPS
  term: the reconstruction term is L2 (+ optional L1).

The trained weights are a plain `VQModel`: diffusers' own `VectorQuantizer` (nearest code by
`cdist`) reproduces the training-time quantization exactly; with a reserved background code
(`genlab.autoencoders.vq.Background`), GenLab's `VQ.encode` applies the same override after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EMAVectorQuantizer(nn.Module):
    """Nearest-code quantization of (B, D, h, w) latents with an EMA codebook and dead-code restarts.

    `codebook` is the diffusers `VectorQuantizer.embedding.weight` (K, D); it is updated in place
    and never receives gradients.
    """

    def __init__(self, codebook: nn.Parameter, decay: float = 0.99, dead_threshold: float = 0.03, eps: float = 1e-5):
        super().__init__()
        self.codebook = codebook
        self.codebook.requires_grad_(False)
        num_codes, dim = codebook.shape
        self.decay, self.dead_threshold, self.eps = decay, dead_threshold, eps
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", codebook.detach().clone())
        self.register_buffer("initialized", torch.tensor(False))

    @staticmethod
    def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(tensor)
        return tensor

    def _random_latents(self, flat: torch.Tensor, count: int) -> torch.Tensor:
        index = torch.randint(0, flat.shape[0], (count,), device=flat.device)
        picked = flat[index].detach().clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(picked, src=0)  # every process restarts to the same vectors
        return picked

    def forward(self, latents: torch.Tensor, forced: torch.Tensor | None = None, forced_code: int = 0):
        """(B, D, h, w) latents -> (straight-through quantized latents, (B, h, w) indices, commitment loss).
        `forced`: (B, h, w) bool, the tokens that take `forced_code` whatever their nearest code (the
        reserved background code); their latents are pulled towards that code by the commitment loss."""
        batch, dim, height, width = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, dim).float()  # (B*h*w, D)
        codebook = self.codebook
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                codebook.data.copy_(self._random_latents(flat, codebook.shape[0]))
                self.embed_sum.copy_(codebook.data)
                self.initialized.fill_(True)
        indices = torch.cdist(flat, codebook.float()).argmin(dim=1)  # (B*h*w,)
        if forced is not None:
            indices = indices.masked_fill(forced.reshape(-1).to(indices.device), forced_code)
        quantized = codebook[indices].float()  # (B*h*w, D)

        if self.training:
            with torch.no_grad():
                counts = torch.bincount(indices, minlength=codebook.shape[0]).float()
                sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)
                self._all_reduce(counts), self._all_reduce(sums)
                self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
                self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
                total = self.cluster_size.sum()
                smoothed = (self.cluster_size + self.eps) / (total + codebook.shape[0] * self.eps) * total
                codebook.data.copy_(self.embed_sum / smoothed[:, None])
                dead = self.cluster_size < self.dead_threshold
                if dead.any():
                    fresh = self._random_latents(flat, int(dead.sum()))
                    codebook.data[dead] = fresh
                    self.embed_sum[dead] = fresh
                    self.cluster_size[dead] = 1.0

        commitment = F.mse_loss(flat, quantized.detach())
        quantized = flat + (quantized - flat).detach()  # straight-through estimator
        quantized = quantized.view(batch, height, width, dim).permute(0, 3, 1, 2).to(latents.dtype)
        return quantized, indices.view(batch, height, width), commitment


class VQAutoencoderForTraining(nn.Module):
    """Wraps a diffusers VQModel so one forward() does encode -> EMA quantize -> decode (DDP-friendly)."""

    def __init__(self, vq_model, decay: float = 0.99, dead_threshold: float = 0.03, background=None):
        """`background`: a `genlab.autoencoders.vq.Background` whose tokens take its code in training as in `VQ.encode`."""
        super().__init__()
        self.vq = vq_model
        self.quantizer = EMAVectorQuantizer(vq_model.quantize.embedding.weight, decay, dead_threshold)
        self.background = background
        self.factor = 2 ** (len(vq_model.config.block_out_channels) - 1)  # pixels per token

    def forward(self, pixels: torch.Tensor):
        latents = self.vq.quant_conv(self.vq.encoder(pixels))  # (B, D, H/f, W/f)
        if self.background is None:
            quantized, indices, commitment = self.quantizer(latents)
        else:
            quiet = self.background.mask(pixels, self.factor)  # (B, H/f, W/f)
            quantized, indices, commitment = self.quantizer(latents, quiet, self.background.code)
        decoder_input = self.vq.post_quant_conv(quantized)
        spatial = quantized if self.vq.config.norm_type == "spatial" else None
        reconstruction = self.vq.decoder(decoder_input, spatial)  # (B, 3, H, W)
        return reconstruction, indices, commitment


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al., pix2pix, arXiv:1611.07004), as used by taming-transformers."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        blocks = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = channels
        for index in range(1, layers):
            previous, width = width, channels * min(2 ** index, 8)
            blocks += [nn.Conv2d(previous, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, True)]
        previous, width = width, channels * min(2 ** layers, 8)
        blocks += [nn.Conv2d(previous, width, 4, 1, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, True)]
        blocks += [nn.Conv2d(width, 1, 4, 1, 1)]  # (B, 1, h, w) logits, one per patch
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """Taming eq. 7: balance the GAN gradient against the reconstruction gradient at the last layer."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def perplexity(indices: torch.Tensor, num_codes: int) -> float:
    """exp(entropy) of the code distribution: num_codes when all codes are equally used, 1 when one is."""
    probs = torch.bincount(indices.flatten(), minlength=num_codes).float()
    probs = probs / probs.sum()
    return float(torch.exp(-(probs * torch.log(probs + 1e-10)).sum()))
