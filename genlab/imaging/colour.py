"""The colour a person names for an emoji drawing: its dominant hue over the drawn (non-background) pixels.

Hue, saturation and value as in Smith's hexcone model (1978); the hue bins are the six basic colour terms of
Berlin and Kay (1969) that have a hue, plus brown (a dark orange), black and white for achromatic drawings.
`python -m genlab.eval sd` names each sample's colour with `colour_name`, and `python -m genlab.data emoji` names
each training emoji's colour with the same rule for its colour caption ("yellow banana").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

COLOUR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white")

# Hue bins in degrees over the saturated pixels; red wraps around 0.
HUE_BINS = (("red", 330, 360), ("red", 0, 15), ("orange", 15, 40), ("yellow", 40, 70), ("green", 70, 170),
            ("blue", 170, 255), ("purple", 255, 330))
BACKGROUND_S, BACKGROUND_V = 0.12, 0.88  # near white: saturation below, value above
SATURATED_S, SATURATED_V = 0.3, 0.25  # a pixel with a hue: saturation and value at least these
MIN_DRAWN = 0.02  # less of the image drawn than this: blank, no colour
MIN_SATURATED = 0.25  # share of the drawn pixels that must have a hue for the drawing to have one
BROWN_V = 0.8  # an orange whose saturated pixels have a median value below this is brown
BLACK_V, WHITE_V = 0.45, 0.8  # an achromatic drawing darker than BLACK_V is black, lighter than WHITE_V white


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W, 3) RGB in [0, 1] -> hue in degrees [0, 360), saturation, value, each (H, W)."""
    value = rgb.max(-1)
    chroma = value - rgb.min(-1)
    saturation = np.where(value > 0, chroma / np.maximum(value, 1e-12), 0.0)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(chroma, 1e-12)
    hue = np.where(value == red, ((green - blue) / safe) % 6,
                   np.where(value == green, (blue - red) / safe + 2, (red - green) / safe + 4)) * 60.0
    return np.where(chroma > 0, hue, 0.0), saturation, value


def colour_name(image: np.ndarray) -> str | None:
    """The colour a person would name for an emoji drawing, or None (blank, grey, or no single colour).

    `image`: uint8 (H, W, 3). The background is the near-white region connected to the image's border (so the
    white inside an outlined white heart counts as drawn). If at least MIN_SATURATED of the drawn pixels are
    saturated, the colour is the hue bin holding most of them, and an orange that is dark (median value below
    BROWN_V: brown heart about 0.7, orange heart 1.0) is brown. Otherwise the drawing is achromatic: black when its
    mean value is below BLACK_V (black heart 0.31), white above WHITE_V (white heart 0.87: white inside a grey
    outline), and grey between, which names no colour."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise ValueError(f"colour_name reads uint8 (H, W, 3) images, got {getattr(image, 'shape', type(image))}")
    hue, saturation, value = rgb_to_hsv(image / 255.0)
    near_white = (saturation < BACKGROUND_S) & (value > BACKGROUND_V)
    regions, _ = ndimage.label(near_white)
    border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    drawn = ~np.isin(regions, border[border > 0])  # (H, W)
    if drawn.mean() < MIN_DRAWN:
        return None
    saturated = drawn & (saturation >= SATURATED_S) & (value >= SATURATED_V)
    if saturated.sum() >= MIN_SATURATED * drawn.sum():
        hues = hue[saturated]
        counts: dict[str, int] = {}
        for name, low, high in HUE_BINS:
            counts[name] = counts.get(name, 0) + int(((hues >= low) & (hues < high)).sum())
        colour = max(counts, key=counts.get)
        if colour == "orange":
            in_bin = saturated & (hue >= 15) & (hue < 40)
            if np.median(value[in_bin]) < BROWN_V:
                return "brown"
        return colour
    brightness = value[drawn].mean()
    return "black" if brightness < BLACK_V else "white" if brightness > WHITE_V else None


def describe_rule() -> str:
    """`colour_name` in words, for reports."""
    return (f"the background is the near-white (S < {BACKGROUND_S}, V > {BACKGROUND_V}) region touching the border; "
            f"if ≥ {MIN_SATURATED:.0%} of the drawn pixels are saturated (S ≥ {SATURATED_S}, V ≥ {SATURATED_V}), the "
            f"hue bin with most of them (red < 15° or ≥ 330°, orange < 40°, yellow < 70°, green < 170°, blue < 255°, "
            f"purple < 330°), and a dark orange (median V < {BROWN_V}) is brown; else black if the drawn pixels' mean "
            f"V < {BLACK_V}, white if > {WHITE_V}, grey (no colour) between; under {MIN_DRAWN:.0%} drawn: blank "
            f"(no colour).")
