"""Safe image input and the image <-> tensor conversions every GenLab op shares.

`open_image` is the only way user files enter GenLab. It decodes with Pillow under a pixel
limit (decompression bombs are refused before any pixel is decoded), accepts an allow-list of
formats, applies the EXIF orientation, composites alpha on white and returns an 8-bit RGB image.
Everything else raises `InputError` with a sentence a person can act on.

Tensors follow diffusers' convention: float (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# 64 megapixels: a 8000x8000 photo still opens, a 50k x 50k "bomb" does not.
MAX_PIXELS = int(os.environ.get("GENLAB_MAX_PIXELS", 64_000_000))
MAX_FILE_BYTES = int(os.environ.get("GENLAB_MAX_FILE_MB", 10)) * 1024 * 1024
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # multi-picture JPEGs open as JPEG


class InputError(ValueError):
    """Raised for input a person sent that GenLab cannot use; the message says why and what to do."""


def _read_bytes(source, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read"):
        return source.read()
    path = Path(source)
    if not path.is_file():
        raise InputError(f"No image file at {str(path)!r}.")
    if path.stat().st_size > max_bytes:
        raise InputError(_too_big(path.stat().st_size, max_bytes))
    return path.read_bytes()


def _too_big(size: int, max_bytes: int) -> str:
    return f"The file is {size / 2**20:.1f} MB; GenLab accepts images up to {max_bytes / 2**20:.0f} MB."


def open_image(source, max_bytes: int | None = None) -> Image.Image:
    """Decode a path, bytes or file object into an 8-bit RGB PIL image, or raise InputError.

    `max_bytes` defaults to the upload limit (GENLAB_MAX_FILE_MB, 10 MB); the data recipes,
    which read trusted package files, raise it.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    max_bytes = max_bytes or MAX_FILE_BYTES
    data = _read_bytes(source, max_bytes)
    if len(data) == 0:
        raise InputError("The file is empty: upload a PNG, JPEG, WebP, BMP, GIF or TIFF image.")
    if len(data) > max_bytes:
        raise InputError(_too_big(len(data), max_bytes))
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        raise InputError("SVG is a vector format GenLab cannot read: export it as PNG first.")
    try:
        with warnings.catch_warnings():
            # Pillow warns between MAX_PIXELS and 2*MAX_PIXELS; GenLab refuses those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InputError(
                    f"The image is {width}x{height} = {width * height / 1e6:.0f} megapixels; "
                    f"GenLab accepts at most {MAX_PIXELS / 1e6:.0f} megapixels."
                )
            image.seek(0)  # first frame of GIF / animated WebP / multi-page TIFF
            image.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(
            f"The image is too large to decode safely: GenLab accepts at most {MAX_PIXELS / 1e6:.0f} megapixels ({error})."
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            "This file is not an image GenLab can read: upload a PNG, JPEG, WebP, BMP, GIF or TIFF."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, KeyError) as error:
        raise InputError(f"The image file is damaged or truncated and cannot be decoded ({error}).") from None
    if min(image.size) < 1:
        raise InputError("The image has no pixels.")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        pass
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; alpha composited on white, 16-bit scaled down, CMYK converted."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode != "I" or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        array = np.asarray(image, dtype=np.float64)
        peak = 1.0 if array.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def limit_side(image: Image.Image, max_side: int | None) -> tuple[Image.Image, bool]:
    """Downscale so the longer side is at most `max_side` (aspect kept); returns (image, was_resized)."""
    if not max_side or max(image.size) <= max_side:
        return image, False
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS), True


def prepare_input(image, max_side: int | None, multiple: int):
    """An upload as an autoencoder takes it: (PIL image after downscaling, (1, 3, H', W') pixels padded to
    multiples of `multiple`, (H, W), the original (width, height) when downscaled else None)."""
    image = open_image(image)
    original_size = image.size
    image, resized = limit_side(image, max_side)
    pixels, (height, width) = pad_to_multiple(pil_to_tensor(image), multiple)
    return image, pixels, (height, width), original_size if resized else None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    if tensor.ndim == 4:
        tensor = tensor[0]
    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return array.permute(1, 2, 0).to(torch.uint8).cpu().numpy()


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    return Image.fromarray(tensor_to_uint8(tensor), "RGB")


def pad_to_multiple(x: torch.Tensor, multiple: int, min_side: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) on the bottom/right to multiples of `multiple`, at least `min_side`; returns (x, (H, W)).

    `min_side` defaults to 2 * multiple, so the deepest feature map of a network that downsamples
    by `multiple` is at least 2x2 (GroupNorm cannot normalise a single value per channel).
    Reflect padding where the image is large enough, replicate padding otherwise.
    """
    min_side = 2 * multiple if min_side is None else min_side
    height, width = x.shape[-2:]
    target_h = max(-(-height // multiple), -(-min_side // multiple)) * multiple
    target_w = max(-(-width // multiple), -(-min_side // multiple)) * multiple
    pad_h, pad_w = target_h - height, target_w - width
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (height, width)


def image_grid(images: list[Image.Image], columns: int | None = None, gap: int = 2) -> Image.Image:
    """Tile same-sized images into one grid image on a white background."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), "white")
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid.paste(image, (column * (width + gap), row * (height + gap)))
    return grid


def as_image(pixels: torch.Tensor) -> Image.Image:
    """(B, 3, H, W) in [-1, 1] -> one PIL image at native resolution (a grid of 4 columns for B > 1)."""
    images = [tensor_to_pil(p) for p in pixels]
    return images[0] if len(images) == 1 else image_grid(images, columns=min(4, len(images)))


def mask_of(mask, size: tuple[int, int]) -> torch.Tensor:
    """A mask (PIL image, array or tensor; non-zero = repaint) -> (1, 1, H, W) float {0, 1} of the image's size.

    A PIL mask of another size than the (downscaled) image is resized with nearest neighbours when
    its aspect ratio matches; anything else raises ValueError."""
    height, width = size
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGBA", "LA"):
            mask = mask.getchannel("A") if mask.getextrema()[-1][1] > 0 else mask.convert("L")
        if mask.size != (width, height):
            if abs(mask.width / mask.height - width / height) > 0.02:
                raise ValueError(f"the mask is {mask.width}x{mask.height} but the image is {width}x{height}")
            mask = mask.convert("L").resize((width, height), Image.Resampling.NEAREST)
        array = np.asarray(mask.convert("L"))
    elif isinstance(mask, (np.ndarray, torch.Tensor)):
        array = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
            array = array.max(axis=-1)
        if array.ndim != 2:
            raise ValueError(f"a mask array must be (H, W), got shape {array.shape}")
        if array.shape != (height, width):
            raise ValueError(f"the mask is {array.shape[1]}x{array.shape[0]} but the image is {width}x{height}")
    else:
        raise ValueError(f"a mask must be an image or an (H, W) array, got {type(mask).__name__}")
    if not np.isfinite(array.astype(np.float64)).all():
        raise ValueError("the mask holds NaN or infinite values")
    repaint = torch.from_numpy(array != 0).float()[None, None]  # (1, 1, H, W)
    if not repaint.any():
        raise ValueError("the mask is empty: paint the region the model should repaint")
    return repaint
