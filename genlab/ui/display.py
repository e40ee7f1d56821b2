"""How the tabs show small images, without gradio: whole-number enlargement, and word heat maps over an image.

Word heat maps: DAAM (Tang et al., "What the DAAM: Interpreting Stable Diffusion Using Cross Attention",
arXiv:2210.04885) shows each word's aggregated cross-attention as a colour map laid over the generated image;
`genlab.diffusion.attention` computes the maps ((H, W) in [0, 1] per word), `overlay_heat` draws one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DISPLAY_SIDE = 256
HEAT_ALPHA = 0.55  # the heat colour's share of each pixel: the image stays readable under it
# (level, RGB) stops of the heat colours, dark violet (no attention) through blue, green and amber to red
HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
HEAT_COLOURS = np.array([[48, 18, 59], [40, 120, 230], [50, 200, 120], [245, 185, 40], [200, 20, 20]], np.float32)


def upscale_factor(size: tuple[int, int]) -> int:
    """The whole-number scale that makes an image of `size` (width, height) at least DISPLAY_SIDE on its longer
    side: 8 for a 32 px emoji, 2 for a 134 px grid of them, 1 for anything already that large."""
    longest = max(size)
    return -(-DISPLAY_SIDE // longest) if 0 < longest < DISPLAY_SIDE else 1


def upscale(image: Image.Image) -> Image.Image:
    """A small output (a 32 px emoji, a grid of them, a 64 px sample) enlarged by nearest neighbour to fill its
    panel: every pixel becomes an equal square block, so the model's pixels stay visible instead of a thumbnail
    in a large empty box or a browser's blur. The one helper for every small sample the app shows."""
    scale = upscale_factor(image.size)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """(H, W) levels in [0, 1] (clipped) -> (H, W, 3) float32 RGB in 0..255, by linear steps between HEAT_STOPS."""
    level = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    return np.stack([np.interp(level, HEAT_STOPS, HEAT_COLOURS[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def overlay_heat(image: Image.Image, heat: np.ndarray, alpha: float = HEAT_ALPHA) -> Image.Image:
    """`image` enlarged (`upscale`) with `heat` ((h, w) in [0, 1], any size: resized bilinearly to the enlarged
    image) blended over it in HEAT_COLOURS, each pixel (1 - alpha) image + alpha colour."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    heat = np.asarray(heat, np.float32)
    if heat.ndim != 2 or min(heat.shape) < 1:
        raise ValueError(f"a heat map must be a non-empty (H, W) array, got shape {heat.shape}")
    shown = upscale(image.convert("RGB"))
    smooth = np.asarray(Image.fromarray(heat).resize(shown.size, Image.Resampling.BILINEAR))  # (H', W')
    blended = (1.0 - alpha) * np.asarray(shown, np.float32) + alpha * heat_colours(smooth)
    return Image.fromarray(np.clip(blended.round(), 0, 255).astype(np.uint8))


def word_overlays(image: Image.Image, maps: dict[str, np.ndarray]) -> list[tuple[Image.Image, str]]:
    """A gallery's items: one (heat map over `image`, word) per word of `maps`, in its order (the prompt's)."""
    return [(overlay_heat(image, heat), word) for word, heat in maps.items()]
