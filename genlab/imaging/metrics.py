"""Image quality metrics and the JPEG baseline at a matched bit rate.

PSNR is scikit-image's (`skimage.metrics`), on 8-bit RGB with data_range 255. SSIM is Wang et al.
2004 with a 7x7 uniform window per channel, computed as `skimage.metrics.structural_similarity`
does (data_range 255, channel_axis=-1; equal to it within float rounding) by `SsimReference`,
which keeps the reference image's statistics: the reconstruction tab compares three images (two
models and JPEG) with one input, and the reference's share (its window means and variances, 2 of the
5 filtered maps) is then computed once. The JPEG baseline encodes the same image at the highest quality
whose size stays within the target bits per pixel, so comparisons with a VQ model's log2(K) / f^2 bits
per pixel are at no more than the same rate.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter
from skimage.metrics import peak_signal_noise_ratio
from skimage.restoration import denoise_nl_means


def as_uint8(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)


def psnr(reference, test) -> float:
    reference, test = as_uint8(reference), as_uint8(test)
    if np.array_equal(reference, test):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, test, data_range=255))


def ssim(reference, test) -> float:
    return SsimReference(reference).ssim(test)


class SsimReference:
    """SSIM of test images against one reference, whose statistics are computed once.

    `SsimReference(reference).ssim(test)` is skimage's structural_similarity(reference, test,
    data_range=255, channel_axis=-1, win_size=w) with w = 7, or the largest odd window that fits the
    image (NaN below 3 pixels): window means, variances and covariance (sample covariance, w^2 / (w^2 - 1))
    from a w x w uniform filter, K1 = 0.01, K2 = 0.03, the SSIM map cropped by the window radius, its
    mean per channel, averaged over channels. Float64 throughout, as skimage (float32 would be ~1e-7 off);
    one channel at a time, as skimage, so that a 256² map (0.5 MB) stays in the CPU's L2 cache."""

    K1, K2, DATA_RANGE = 0.01, 0.03, 255.0

    def __init__(self, reference):
        self.pixels = as_uint8(reference)  # (H, W, C)
        window = min(7, *self.pixels.shape[:2])
        self.window = window - (1 - window % 2)  # odd, and no larger than the image
        if self.window < 3:
            return
        self.cov_norm = self.window ** 2 / (self.window ** 2 - 1)  # sample covariance
        # per channel, all (H, W): x, its window means and their squares, its window variances
        self.channels = []
        for x in self._planes(self.pixels):
            mean = self._window_mean(x)
            mean_sq = mean * mean
            variance = self._window_mean(x * x)
            variance -= mean_sq
            variance *= self.cov_norm
            self.channels.append((x, mean, mean_sq, variance))

    @staticmethod
    def _planes(pixels: np.ndarray) -> list[np.ndarray]:
        """(H, W, C) uint8 -> C float64 (H, W) planes."""
        return [pixels[..., channel].astype(np.float64) for channel in range(pixels.shape[-1])]

    def _window_mean(self, plane: np.ndarray) -> np.ndarray:
        """(H, W) -> (H, W): the w x w window mean at each pixel, borders reflected (skimage's filter)."""
        return uniform_filter(plane, size=self.window)

    def matches(self, image) -> bool:
        """Whether `image` has exactly the reference's pixels."""
        return np.array_equal(as_uint8(image), self.pixels)

    def ssim(self, test) -> float:
        if self.window < 3:
            return float(np.nan)
        test = as_uint8(test)
        if test.shape != self.pixels.shape:
            raise ValueError(f"SSIM compares images of one size, got {self.pixels.shape} and {test.shape}")
        c1, c2 = (self.K1 * self.DATA_RANGE) ** 2, (self.K2 * self.DATA_RANGE) ** 2
        radius = self.window // 2  # the border whose windows were reflected: left out of the mean, as skimage does
        means = []
        for (x, mean_x, mean_x_sq, var_x), y in zip(self.channels, self._planes(test)):
            mean_y = self._window_mean(y)  # (H, W), as every map below (contiguous: faster than cropped views)
            mean_xy, mean_y_sq = mean_x * mean_y, mean_y * mean_y
            var_y = self._window_mean(y * y)
            var_y -= mean_y_sq
            var_y *= self.cov_norm
            covariance = self._window_mean(x * y)
            covariance -= mean_xy
            covariance *= self.cov_norm
            ssim_map = ((2 * mean_xy + c1) * (2 * covariance + c2)
                        / ((mean_x_sq + mean_y_sq + c1) * (var_x + var_y + c2)))
            means.append(ssim_map[radius:-radius, radius:-radius].mean())
        return float(np.mean(means))


def abs_error_map(reference, test) -> np.ndarray:
    """(H, W) mean absolute error over channels, 0..255 (float64, multiples of 1/3 for RGB)."""
    reference, test = as_uint8(reference), as_uint8(test)
    error = np.maximum(reference, test) - np.minimum(reference, test)  # (H, W, C) |difference|, still uint8
    return error.sum(axis=-1, dtype=np.uint16) / error.shape[-1]


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
