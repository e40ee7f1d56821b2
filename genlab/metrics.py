"""Image quality metrics and the JPEG baseline at a matched bit rate.

PSNR and SSIM are scikit-image's (`skimage.metrics`), on 8-bit RGB with data_range 255; SSIM is
Wang et al. 2004 with a 7x7 uniform window per channel. The JPEG baseline encodes the same image
at the highest quality whose size stays within the target bits per pixel, so comparisons with a
VQ model's log2(K) / f^2 bits per pixel are at no more than the same rate.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means


def as_uint8(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)


def psnr(reference, test) -> float:
    reference, test = as_uint8(reference), as_uint8(test)
    if np.array_equal(reference, test):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, test, data_range=255))


def ssim(reference, test) -> float:
    reference, test = as_uint8(reference), as_uint8(test)
    window = min(7, *reference.shape[:2])
    window -= 1 - window % 2  # odd, and no larger than the image
    if window < 3:
        return float(np.nan)
    return float(structural_similarity(reference, test, data_range=255, channel_axis=-1, win_size=window))


def abs_error_map(reference, test) -> np.ndarray:
    """(H, W) mean absolute error over channels, 0..255."""
    return np.abs(as_uint8(reference).astype(np.int16) - as_uint8(test).astype(np.int16)).mean(axis=-1)


@dataclass
class JpegResult:
    image: Image.Image
    quality: int
    bits_per_pixel: float
    psnr: float
    within_budget: bool  # False when even quality 1 needs more bits than the target


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    rgb.save(buffer, format="JPEG", quality=int(quality), optimize=True)
    return buffer.getvalue()


def jpeg_encode(image: Image.Image, quality: int) -> tuple[bytes, Image.Image]:
    data = jpeg_bytes(image, quality)
    return data, Image.open(io.BytesIO(data)).convert("RGB")


def jpeg_at_bpp(image: Image.Image, target_bpp: float) -> JpegResult:
    """Binary search on JPEG quality 1..95 for the best quality with bits per pixel <= target.

    The search needs only sizes; the chosen encoding is decoded once at the end."""
    pixels = image.width * image.height
    low, high, best = 1, 95, None
    while low <= high:
        quality = (low + high) // 2
        data = jpeg_bytes(image, quality)
        if len(data) * 8 / pixels <= target_bpp:
            best, low = (quality, data), quality + 1
        else:
            high = quality - 1
    within = best is not None
    quality, data = best if within else (1, jpeg_bytes(image, 1))
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    return JpegResult(decoded, quality, len(data) * 8 / pixels, psnr(image, decoded), within)


def non_local_means(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """The denoising baseline: scikit-image's non-local means on an (H, W, 3) float image in [0, 1],
    noise std `sigma` on the same scale, with the settings its documentation recommends (h = 0.8 sigma)."""
    return denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6,
                            channel_axis=-1)


class ComparedToInput:
    """Mixin of reconstruction results holding `input` and `image` (PIL): the comparisons every view shows,
    computed on first access."""

    input: Image.Image
    image: Image.Image

    @cached_property
    def ssim(self) -> float:
        return ssim(self.input, self.image)

    @cached_property
    def error_map(self) -> np.ndarray:
        return abs_error_map(self.input, self.image)
