"""Training a masked-token prior over a frozen VQ model's codes (a VQGAN's second stage).

MaskGIT (Chang et al., arXiv:2202.04200, sec. 3.1): mask a share r = cos(pi/2 u), u ~ U(0, 1), of
the tokens (the same cosine schedule sampling uses) and minimise the cross-entropy of the masked
tokens given the rest. A share of each batch (`raster_share`) instead masks every token from a
random raster position on: the masks an autoregressive reading of the grid meets (raster-order
sampling, and the chain-rule code length of `TokenPrior.bits_per_pixel`), which random masks
seldom look like. Class labels are dropped to the null class with probability `label_dropout`, so
one network also gives the unconditional prediction classifier-free guidance needs.

Guidance distillation (Meng et al., "On Distillation of Guided Diffusion Models", arXiv:2210.03142,
stage 1, here for a token prior): a student told the scale w ~ U(1, w_max) matches, at the masked
tokens of the same masks, the distribution of the frozen teacher's guided logits
uncond + w (cond - uncond), by KL(teacher || student); rows whose label was dropped match the
teacher's unconditional logits, so the student still has an unconditional model of its own (the
exported prior keeps the teacher for the code length and for scales outside [1, w_max]). Guided
sampling then costs one call of the student instead of two of the teacher.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..autoencoders.vq import VQ
from . import common
from .latent import EncodedBank, images_to_tensor


def mask_for_training(tokens: torch.Tensor, mask_id: int, generator: torch.Generator,
                      raster_share: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, h, w) tokens -> (inputs with mask_id where masked, (B, h, w) bool mask); >= 1 token masked per sample."""
    batch, count = tokens.shape[0], tokens[0].numel()
    scores = torch.rand(batch, count, generator=generator)  # (B, N) a random order per sample
    ratio = torch.cos(math.pi / 2 * torch.rand(batch, generator=generator))  # (B,) MaskGIT's cosine
    masked_count = (ratio * count).ceil().clamp(1, count)  # (B,)
    masked = scores.argsort(dim=1).argsort(dim=1) < masked_count[:, None]  # the masked_count lowest scores
    raster = torch.rand(batch, generator=generator) < raster_share
    start = torch.randint(0, count, (batch,), generator=generator)
    suffix = torch.arange(count)[None] >= start[:, None]  # (B, N) from a raster position on
    masked = torch.where(raster[:, None], suffix, masked).view_as(tokens).to(tokens.device)
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked


def masked_token_loss(model, tokens: torch.Tensor, class_labels: torch.Tensor | None, generator: torch.Generator,
                      raster_share: float = 0.25) -> torch.Tensor:
    """Mean cross-entropy (nats) of the masked tokens of (B, h, w) `tokens` under `model` (a MaskedTokenTransformer)."""
    inputs, masked = mask_for_training(tokens, model.mask_token_id, generator, raster_share)
    logits = model(inputs, class_labels=class_labels)  # (B, K, h, w)
    per_token = F.cross_entropy(logits.float(), tokens, reduction="none")  # (B, h, w)
    return per_token[masked].mean()


SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)]  # (dx, dy) in tokens
SHIFT_FILL = 255  # what a shift uncovers: white, the emoji's background


def shift_images(images: list[np.ndarray], dx: int, dy: int, fill: int = SHIFT_FILL) -> list[np.ndarray]:
    """(H, W, 3) uint8 images moved by (dx, dy) pixels (right, down), the uncovered border filled, the far one cut."""
    shifted = []
    for image in images:
        out = np.full_like(image, fill)
        height, width = image.shape[:2]
        source_y, target_y = slice(max(0, -dy), height - max(0, dy)), slice(max(0, dy), height - max(0, -dy))
        source_x, target_x = slice(max(0, -dx), width - max(0, dx)), slice(max(0, dx), width - max(0, -dx))
        out[target_y, target_x] = image[source_y, source_x]
        shifted.append(out)
    return shifted


class TokenBank(EncodedBank):
    """The frozen VQ model's tokens of every image of a folder and of its mirror image, encoded once
    (see `EncodedBank` for how images are drawn; 64 px emoji -> 16 x 16 tokens).

    With `shift_share` > 0, also of each image moved by one token (f pixels) in the 8 directions of SHIFTS,
    white filling what the move uncovers: a draw takes one of those, picked uniformly, with probability
    `shift_share`, else the image itself (mirrored or not either way). More grids for the same drawings, in
    other places: the prior sees each motif at more positions than the few emoji that hold it.

    `background`: the VQ's reserved background code (genlab.json), applied as `VQ.encode` applies it."""

    def __init__(self, vq_model, data: common.ImageFolder, batch_size: int, seed: int, class_power: float = 1.0,
                 encode_batch: int = 64, shift_share: float = 0.0, background=None):
        super().__init__(data, batch_size, seed, class_power, "prior")
        if not 0 <= shift_share <= 1:
            raise ValueError(f"shift_share must be in [0, 1], got {shift_share}")
        self.shift_share = shift_share
        factor = 2 ** (len(vq_model.config.block_out_channels) - 1)  # pixels per token
        moves = SHIFTS if shift_share > 0 else SHIFTS[:1]
        chunks = [[] for _ in range(2 * len(moves))]  # variant 2 * move + flipped: its tokens, chunk by chunk
        vq_model.eval()
        tokenizer = VQ(vq_model, background=background)
        with torch.no_grad():
            for start in range(0, len(data), encode_batch):
                images = data.images[start:start + encode_batch]
                for move, (dx, dy) in enumerate(moves):
                    moved = shift_images(images, dx * factor, dy * factor) if (dx, dy) != (0, 0) else images
                    pixels = images_to_tensor(moved).to(vq_model.device)
                    for flipped in (0, 1):
                        indices = tokenizer.encode(pixels.flip(-1) if flipped else pixels)  # (B, h, w)
                        chunks[2 * move + flipped].append(indices.cpu())
        self.tokens = torch.stack([torch.cat(variant) for variant in chunks], dim=1)  # (N, 2 or 2 * len(SHIFTS), h, w)

    def distinct_codes(self) -> int:
        """How many codes the encoded images use."""
        return int(np.unique(self.tokens.numpy()).size)

    def __iter__(self):
        while True:
            index, flip = self.draw()
            if self.shift_share > 0:
                shift = torch.from_numpy(self.rng.integers(1, len(SHIFTS), size=self.batch_size))  # (B,) a move
                moved = torch.from_numpy(self.rng.random(self.batch_size) < self.shift_share)  # (B,) taken or not
                flip = torch.where(moved, 2 * shift + flip, flip)  # (B,) variant index
            yield self.tokens[index, flip], self.labels[index]


def guidance_distillation_loss(student, teacher, tokens: torch.Tensor, class_labels: torch.Tensor,
                               generator: torch.Generator, raster_share: float = 0.25,
                               guidance_max: float = 8.0) -> torch.Tensor:
    """Mean KL(teacher's guided || student) in nats over the masked tokens of (B, h, w) `tokens`; labels
    equal to the null class (dropped) take the teacher's unconditional logits as the target."""
    inputs, masked = mask_for_training(tokens, student.mask_token_id, generator, raster_share)
    batch, null = tokens.shape[0], student.null_class
    scale = 1 + (guidance_max - 1) * torch.rand(batch, generator=generator).to(tokens.device)  # (B,) w
    with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):  # fp32 targets: w up to 8 scales errors
        labels = torch.cat([class_labels, torch.full_like(class_labels, null)])  # (2B,) cond, then uncond
        both = teacher(torch.cat([inputs, inputs]), class_labels=labels)
        cond, uncond = both.float().chunk(2)  # (B, K, h, w) each
        weight = torch.where(class_labels == null, 0.0, scale)[:, None, None, None]
        target = (uncond + weight * (cond - uncond)).log_softmax(dim=1)  # (B, K, h, w) log-probabilities
    logits = student(inputs, class_labels=class_labels, guidance=scale).float().log_softmax(dim=1)
    kl = (target.exp() * (target - logits)).sum(dim=1)  # (B, h, w)
    return kl[masked].mean()
