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

`train_vq` is the `vqvae` / `vqgan` run of `python -m genlab.train`; `export_vq` writes the weights folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import VQModel
from torch import nn
from tqdm.auto import tqdm

from ..autoencoders.vq import VQ, Background, perplexity
from ..loading.schema import ModelInfo, write_model_info
from . import cards, common
from .config import VQConfig


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


# ------------------------------------------------------------------------------ the run
def build_vq(config: VQConfig) -> VQModel:
    count = len(config.channels)
    return VQModel(
        down_block_types=("DownEncoderBlock2D",) * count, up_block_types=("UpDecoderBlock2D",) * count,
        block_out_channels=config.channels, layers_per_block=config.layers_per_block, latent_channels=config.code_dim,
        vq_embed_dim=config.code_dim, num_vq_embeddings=config.codes, norm_num_groups=config.groups(),
        mid_block_add_attention=False, sample_size=config.crop,
    )


def vq_losses(config: VQConfig, trainer, pixels: torch.Tensor, discriminator=None, last_layer=None):
    """(generator loss, reconstruction, indices, logs) of one batch (B, 3, H, W): L2 (+ L1) reconstruction,
    commitment, and with a `discriminator` the GAN term, weighted adaptively at the decoder's `last_layer`."""
    reconstruction, indices, commitment = trainer(pixels)
    rec_loss = F.mse_loss(reconstruction.float(), pixels)
    if config.l1_weight:
        rec_loss = rec_loss + config.l1_weight * (reconstruction.float() - pixels).abs().mean()
    loss = rec_loss + config.beta * commitment
    logs = {"rec": rec_loss.item(), "commit": commitment.item()}
    if discriminator is not None:
        gan_loss = -discriminator(reconstruction).mean()
        weight = adaptive_weight(rec_loss, gan_loss, last_layer) * config.disc_weight
        loss = loss + weight * gan_loss
        logs.update(gan=gan_loss.item(), w=weight.item())
    return loss, reconstruction, indices, logs


def train_vq(config: VQConfig, accelerator: Accelerator, data: common.ImageFolder, state: common.RunState) -> None:
    """A VQ-VAE, or a VQGAN (a PatchGAN from `disc_start` on), with EMA codebook, checkpoints and resume."""
    checkpoint = config.run_dir / "checkpoint"
    resuming = config.resume and (checkpoint / "model").exists()
    if resuming:
        model = VQModel.from_pretrained(checkpoint / "model")
    else:
        model = VQModel.from_pretrained(config.init, **config.init_overrides()) if config.init else build_vq(config)
    background = vq_background(config, model, data, checkpoint)
    trainer = VQAutoencoderForTraining(model, config.codebook_decay, config.dead_threshold, background)
    if config.init or resuming:  # the codebook is trained already: no data init
        trainer.quantizer.initialized.fill_(True)
        trainer.quantizer.embed_sum.copy_(model.quantize.embedding.weight.detach())
    if config.freeze_encoder:
        for module in (model.encoder, model.quant_conv):
            module.requires_grad_(False)
    gan = config.kind == "vqgan"
    params = [p for p in trainer.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.5, 0.9) if gan else (0.9, 0.99))
    discriminator = disc_optimizer = None
    if gan:
        discriminator = PatchDiscriminator(config.disc_channels, config.disc_layers)
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=(0.5, 0.9))
    if resuming:
        common.load_optimizer(optimizer, checkpoint)
        common.load_modules({"quantizer": trainer.quantizer}, checkpoint)
        if discriminator is not None and (checkpoint / "discriminator.safetensors").exists():
            common.load_modules({"discriminator": discriminator}, checkpoint)
            common.load_optimizer(disc_optimizer, checkpoint / "disc")
    schedule = common.lr_scheduler(optimizer, config.lr_schedule, config.lr, config.warmup_steps, config.steps,
                                   state.step)
    trainer, optimizer = accelerator.prepare(trainer, optimizer)
    if discriminator is not None:
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    unwrapped = accelerator.unwrap_model(trainer)
    last_layer = unwrapped.vq.decoder.conv_out.weight
    seed = config.seed + state.step + accelerator.process_index
    batches = iter(common.RandomCrops(data, config.crop, config.batch_size, seed))
    fixed, _ = next(iter(common.RandomCrops(data, config.crop, 8, seed=1234)))
    timer = common.Timer(state.wall_seconds)
    usage = torch.zeros(config.codes, device=accelerator.device)
    progress = tqdm(total=config.steps, initial=state.step, disable=not accelerator.is_main_process, desc=config.kind)

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            checkpoint.mkdir(parents=True, exist_ok=True)
            unwrapped.vq.save_pretrained(checkpoint / "model")
            common.save_optimizer(optimizer, checkpoint)
            common.save_modules({"quantizer": unwrapped.quantizer}, checkpoint)
            if discriminator is not None:
                common.save_modules({"discriminator": accelerator.unwrap_model(discriminator)}, checkpoint)
                (checkpoint / "disc").mkdir(exist_ok=True)
                common.save_optimizer(disc_optimizer, checkpoint / "disc")
            state.save(checkpoint)
            if background is not None:
                (checkpoint / "background.json").write_text(json.dumps(background.as_info()))
            export_vq(config, unwrapped.vq, state, fixed, background)

    while common.keep_training(state, timer, config):
        pixels = next(batches)[0].to(accelerator.device)
        trainer.train()
        if config.freeze_encoder:
            unwrapped.quantizer.eval()  # no EMA codebook updates: tokens stay those of --init
        use_gan = discriminator is not None and state.step >= config.disc_start
        critic = (discriminator, last_layer) if use_gan else (None, None)
        with accelerator.autocast():
            loss, reconstruction, indices, logs = vq_losses(config, trainer, pixels, *critic)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        if use_gan:
            with accelerator.autocast():
                d_loss = hinge_d_loss(discriminator(pixels), discriminator(reconstruction.detach()))
            disc_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            disc_optimizer.step()
            logs["disc"] = d_loss.item()
        usage += torch.bincount(indices.flatten(), minlength=config.codes)
        state.step += 1
        progress.update(1)
        if state.step % config.log_every == 0:
            batch_usage = torch.bincount(indices.flatten(), minlength=config.codes).cpu().numpy()
            logs.update(psnr=common.psnr(reconstruction, pixels), used=f"{int((usage > 0).sum())}/{config.codes}",
                        ppl=perplexity(batch_usage))
            progress.set_postfix({k: (round(v, 4) if isinstance(v, float) else v) for k, v in logs.items()})
            usage.zero_()
        if state.step % config.save_every == 0:
            save()
        if state.step % config.sample_every == 0 and accelerator.is_main_process:
            save_vq_samples(unwrapped.vq, fixed, config.run_dir / "samples" / f"{state.step:06d}.png")
    save()
    progress.close()


@torch.no_grad()
def save_vq_samples(model: VQModel, pixels: torch.Tensor, path: Path) -> None:
    model.eval()
    reconstruction = model(pixels.to(model.device)).sample.clamp(-1, 1).cpu()
    model.train()
    common.save_grid(torch.cat([pixels, reconstruction]), path, columns=len(pixels))


def vq_background(config: VQConfig, model: VQModel, data: common.ImageFolder, checkpoint: Path) -> Background | None:
    """The `genlab.autoencoders.vq.Background` of --background-margin (None without it): the code of a resumed
    run, else --background-code, else the commonest nearest code on the background tokens of 256 training crops."""
    if config.background_margin is None:
        return None
    num_codes = model.config.num_vq_embeddings
    if config.resume and (checkpoint / "background.json").is_file():
        return Background.from_info(json.loads((checkpoint / "background.json").read_text()), num_codes)
    options = {"margin": config.background_margin, "tolerance": config.background_tolerance}
    if config.background_code is not None:
        if config.background_code >= num_codes:
            raise SystemExit(f"--background-code {config.background_code}: the model has {num_codes} codes")
        return Background(code=config.background_code, **options)
    probe, nearest = Background(code=0, **options), VQ(model)  # nearest: the encoder's own codes, no override
    counts = torch.zeros(num_codes, dtype=torch.long)
    crops = iter(common.RandomCrops(data, config.crop, 64, seed=4321))
    for _ in range(4):
        pixels = next(crops)[0].to(model.device)  # (64, 3, crop, crop)
        indices = nearest.encode(pixels)  # (64, h, w)
        quiet = probe.mask(pixels, nearest.downsample_factor).to(indices.device)  # (64, h, w)
        counts += torch.bincount(indices[quiet].cpu(), minlength=num_codes)
    if counts.sum() == 0:
        raise SystemExit(f"--background-margin {config.background_margin}: no token of {config.data} has a white "
                         f"neighbourhood that wide (within {config.background_tolerance} levels); pass "
                         "--background-code or a smaller margin")
    return Background(code=int(counts.argmax()), **options)


def export_vq(config: VQConfig, model: VQModel, state: common.RunState, fixed: torch.Tensor,
              background: Background | None = None) -> None:
    """The VQModel folder: weights, genlab.json (`tile`: see genlab.imaging.tiling; the reserved background code,
    which VQ.encode applies), run.json, samples.png and the model card."""
    config.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(config.out, safe_serialization=True)
    write_model_info(config.out, ModelInfo(kind="vq", title=config.out.name, tile=config.crop,
                                           background=background.as_info() if background else None))
    state.save(config.out)
    save_vq_samples(model, fixed, config.out / "samples.png")
    cards.write_vq_card(config, model, state, background)
