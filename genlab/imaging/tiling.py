"""Apply a fully convolutional network in tiles of the size it was trained on.

diffusers' VQModel and UNet2DModel normalise with GroupNorm, whose statistics span the whole
input. A network trained on 64x64 crops therefore sees different statistics on a 256x256 image
and shifts its colours (GenLab's vqvae-photo: 31.6 dB held-out PSNR on 64x64 tiles, 20.5 dB on
whole 256x256 images). Like diffusers' tiled VAE decoding, GenLab runs such networks on windows
of their training size: the image is cut into `core` tiles, each window adds `margin` pixels of
context on every side (reflect-padded at the borders), and only each window's core is kept, so
the cores tile the output exactly.

VQ models declare their tile in `genlab.json` ("tile": training crop in input pixels); checkpoints
without one (Hub models trained on whole images) run on the whole image. (The photo denoiser, a
UNet trained on 64 px crops too, measured no better in tiles: 31.65 vs 31.8 dB at sigma 25.) GenLab's embedded models
use no margin: measured on vqvae-photo's held-out photos, windows of exactly the 64 px training
size give 31.6 dB, while 80, 96 and 128 px windows give 18.2, 17.7 and 25.1 dB. These small
networks depend on the exact training geometry (zero padding and normalisation statistics), so
context from a margin costs more than the seams it prevents.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F


def apply_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, core: int, margin: int,
                scale: float = 1.0, batch: int = 16) -> torch.Tensor:
    """fn maps (N, C, a, b) -> (N, ..., a*scale, b*scale); returns fn applied to (B, C, H, W) in tiles.

    `core` and `margin` are in input units; core*scale and margin*scale must be whole numbers.
    """
    height, width = x.shape[-2:]
    if height <= core + 2 * margin and width <= core + 2 * margin:
        return fn(x)
    rows, cols = math.ceil(height / core), math.ceil(width / core)
    pad = (margin, margin + cols * core - width, margin, margin + rows * core - height)
    if any(pad):
        mode = "reflect" if max(pad) < min(height, width) else "replicate"
        padded = F.pad(x.float(), pad, mode=mode).to(x.dtype)
    else:  # the image is a whole number of windows
        padded = x
    side = core + 2 * margin
    windows = [padded[..., r * core:r * core + side, c * core:c * core + side] for r in range(rows) for c in range(cols)]
    stacked = torch.cat(windows)  # (rows*cols*B, C, side, side)
    outputs = torch.cat([fn(stacked[i:i + batch]) for i in range(0, len(stacked), batch)])
    out_core, out_margin = round(core * scale), round(margin * scale)
    cores = outputs[..., out_margin:out_margin + out_core, out_margin:out_margin + out_core]
    batch_size = x.shape[0]
    cores = cores.reshape(rows, cols, batch_size, *cores.shape[1:])  # (rows, cols, B, ..., core, core)
    rows_joined = torch.cat([torch.cat(list(cores[r]), dim=-1) for r in range(rows)], dim=-2)  # (B, ..., R, C)
    return rows_joined[..., : round(height * scale), : round(width * scale)]
