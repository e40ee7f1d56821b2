"""genlab.imaging.io: open_image on bad, odd and ordinary inputs; padding and downscaling helpers."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
import genlab.imaging.io
from genlab.imaging.io import limit_side, pad_to_multiple, pil_to_tensor, tensor_to_uint8


def encode(image: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def noise_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_claiming_size(width: int, height: int) -> bytes:
    """A small valid 1x1 PNG whose IHDR is rewritten to claim width x height (CRC fixed)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ------------------------------------------------------------------------------ refusals
def test_empty_bytes_refused():
    with pytest.raises(genlab.InputError, match="empty"):
        genlab.open_image(b"")


def test_empty_file_refused(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(genlab.InputError, match="empty"):
        genlab.open_image(path)


def test_missing_file_refused(tmp_path):
    with pytest.raises(genlab.InputError, match="No image file"):
        genlab.open_image(tmp_path / "nope.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_refused_as_damaged(fmt):
    data = encode(noise_image(), fmt)
    with pytest.raises(genlab.InputError, match="damaged"):
        genlab.open_image(data[: len(data) // 2])


def test_random_bytes_are_not_an_image():
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(genlab.InputError, match="not an image"):
        genlab.open_image(data)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"  # a misleading suffix must not matter
    path.write_text("hello, this is plain text and not a picture\n" * 20)
    with pytest.raises(genlab.InputError, match="not an image"):
        genlab.open_image(path)


def test_format_outside_allow_list_refused():
    data = encode(noise_image(8, 8), "PPM")  # Pillow decodes PPM, GenLab's allow-list does not
    with pytest.raises(genlab.InputError, match="not an image"):
        genlab.open_image(data)


SVG_BODY = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


@pytest.mark.parametrize(
    "data",
    [SVG_BODY, b'<?xml version="1.0" encoding="UTF-8"?>\n' + SVG_BODY, b"\n  \t" + SVG_BODY],
    ids=["bare", "xml-prolog", "leading-whitespace"],
)
def test_svg_refused_with_svg_message(data):
    with pytest.raises(genlab.InputError, match="SVG"):
        genlab.open_image(data)


def test_xml_that_is_not_svg_is_not_an_image():
    with pytest.raises(genlab.InputError, match="not an image"):
        genlab.open_image(b'<?xml version="1.0"?><note>hi</note>')


@pytest.mark.parametrize(
    "size, keyword",
    [
        ((20000, 20000), "too large"),  # beyond 2x Pillow's limit: DecompressionBombError
        ((10000, 10000), "too large"),  # between 1x and 2x Pillow's limit: its warning, made an error
        ((9000, 8000), "megapixels"),  # under Pillow's limit, over GenLab's 64 MP
    ],
)
def test_decompression_bomb_refused_before_decoding(size, keyword):
    data = png_claiming_size(*size)
    assert len(data) < 100  # the header alone claims the size: refusing must not need the pixels
    with pytest.raises(genlab.InputError, match=keyword):
        genlab.open_image(data)


def test_real_bomb_png_refused():
    """A genuine 20000x20000 PNG that compresses to little on disk."""
    data = encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(data) < 1_000_000
    with pytest.raises(genlab.InputError, match="too large"):
        genlab.open_image(data)


def test_pixel_limit_applies_to_decoded_images(monkeypatch):
    monkeypatch.setattr(genlab.imaging.io, "MAX_PIXELS", 100)
    with pytest.raises(genlab.InputError, match="megapixels"):
        genlab.open_image(encode(noise_image(20, 20), "PNG"))
    assert genlab.open_image(encode(noise_image(10, 10), "PNG")).size == (10, 10)


def test_file_over_size_limit_refused(tmp_path, monkeypatch):
    data = encode(noise_image(64, 64), "PNG")
    path = tmp_path / "big.png"
    path.write_bytes(data)
    limit = len(data) - 1
    with pytest.raises(genlab.InputError, match="MB"):
        genlab.open_image(path, max_bytes=limit)
    with pytest.raises(genlab.InputError, match="MB"):
        genlab.open_image(data, max_bytes=limit)
    monkeypatch.setattr(genlab.imaging.io, "MAX_FILE_BYTES", limit)
    with pytest.raises(genlab.InputError, match="MB"):
        genlab.open_image(path)
    with pytest.raises(genlab.InputError, match="MB"):
        genlab.open_image(io.BytesIO(data))
    assert genlab.open_image(data, max_bytes=len(data)).size == (64, 64)


# ------------------------------------------------------------------------- conversions
def test_sixteen_bit_grayscale_scaled_to_eight_bit():
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = genlab.open_image(data)
    assert image.mode == "RGB" and image.size == (4, 1)
    out = pixels(image)
    assert (out[0, :, 0] == out[0, :, 1]).all() and (out[0, :, 0] == out[0, :, 2]).all()
    np.testing.assert_allclose(out[0, :, 0], np.round(values[0] / 65535 * 255), atol=1)


def test_dark_sixteen_bit_image_is_not_brightened():
    """A 16-bit image whose values all lie below 256 is nearly black, not full range."""
    values = np.array([[0, 100, 200, 255]], dtype=np.uint16)
    image = genlab.open_image(encode(Image.fromarray(values), "PNG"))
    assert pixels(image).max() <= 1


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    image = genlab.open_image(encode(cmyk, "JPEG", quality=95))
    assert image.mode == "RGB"
    np.testing.assert_allclose(pixels(image)[8, 8], [255, 0, 0], atol=12)


def test_palette_png_transparency_composited_on_white():
    palette_image = Image.new("P", (4, 2), 0)
    palette_image.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    palette_image.paste(1, (2, 0, 4, 2))  # right half: colour 1; left half: colour 0, transparent
    data = encode(palette_image, "PNG", transparency=0)
    image = genlab.open_image(data)
    out = pixels(image)
    assert (out[:, :2] == 255).all()
    assert (out[:, 2:] == [200, 30, 40]).all()


def test_rgba_fully_transparent_is_white_and_half_alpha_blends():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # black
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    rgba[1, 1] = [0, 0, 0, 128]
    image = genlab.open_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    out = pixels(image)
    assert (out[0] == 255).all()
    assert (out[1, 0] == 0).all()
    np.testing.assert_allclose(out[1, 1], [127, 127, 127], atol=1)


def test_la_mode_composited_on_white():
    la = np.array([[[0, 0], [50, 255]]], dtype=np.uint8)  # (1, 2, 2): transparent, opaque grey 50
    image = genlab.open_image(encode(Image.fromarray(la, "LA"), "PNG"))
    assert image.mode == "RGB"
    out = pixels(image)
    assert (out[0, 0] == 255).all()
    assert (out[0, 1] == 50).all()


def test_pil_image_input_is_converted_too():
    image = genlab.open_image(Image.new("RGBA", (3, 3), (10, 20, 30, 0)))
    assert image.mode == "RGB" and (pixels(image) == 255).all()


def test_animated_gif_gives_first_frame():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (8, 8), colour) for colour in colours]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image = genlab.open_image(data)
    assert image.mode == "RGB" and image.size == (8, 8)
    assert (pixels(image) == [255, 0, 0]).all()


def test_exif_orientation_applied():
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = [255, 0, 0]  # left half red
    array[:, 20:] = [0, 0, 255]  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = encode(Image.fromarray(array), "JPEG", quality=95, exif=exif)
    image = genlab.open_image(data)
    assert image.size == (20, 40)
    out = pixels(image)
    np.testing.assert_allclose(out[5, 10], [255, 0, 0], atol=20)  # left became top
    np.testing.assert_allclose(out[35, 10], [0, 0, 255], atol=20)


def test_broken_exif_does_not_lose_the_image():
    data = encode(noise_image(16, 8), "JPEG", exif=b"Exif\x00\x00garbage-not-tiff")
    assert genlab.open_image(data).size == (16, 8)


def test_one_pixel_image():
    image = genlab.open_image(encode(Image.new("RGB", (1, 1), (12, 34, 56)), "PNG"))
    assert image.size == (1, 1)
    assert (pixels(image)[0, 0] == [12, 34, 56]).all()


@pytest.mark.parametrize(
    "fmt, kwargs",
    [("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {"compression": "tiff_lzw"})],
)
def test_lossless_formats_round_trip(fmt, kwargs, tmp_path):
    source = noise_image(13, 7, seed=3)
    data = encode(source, fmt, **kwargs)
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(data)
    for given in (data, path, io.BytesIO(data), str(path)):
        image = genlab.open_image(given)
        assert image.mode == "RGB" and image.size == (13, 7)
        assert (pixels(image) == pixels(source)).all()


def test_lossy_webp_and_jpeg_open_close_to_source():
    source = Image.new("RGB", (32, 32), (90, 160, 30))
    for fmt in ("WEBP", "JPEG"):
        image = genlab.open_image(encode(source, fmt, quality=90))
        assert image.size == (32, 32)
        np.testing.assert_allclose(pixels(image).mean(axis=(0, 1)), [90, 160, 30], atol=6)


# ---------------------------------------------------------------------------- helpers
def test_pad_to_multiple_reflects_bottom_and_right():
    x = torch.arange(5 * 7, dtype=torch.float32).view(1, 1, 5, 7).expand(1, 3, 5, 7)
    padded, size = pad_to_multiple(x, 4)
    assert size == (5, 7) and padded.shape == (1, 3, 8, 8)
    assert torch.equal(padded[..., :5, :7], x)
    # reflect (edge excluded): row 5 mirrors row 3, row 7 mirrors row 1; column 7 mirrors column 5
    assert torch.equal(padded[..., 5, :7], x[..., 3, :])
    assert torch.equal(padded[..., 7, :7], x[..., 1, :])
    assert torch.equal(padded[..., :5, 7], x[..., :, 5])


def test_pad_to_multiple_leaves_multiples_alone():
    x = torch.randn(2, 3, 8, 12)
    padded, size = pad_to_multiple(x, 4)
    assert size == (8, 12) and torch.equal(padded, x)


def test_pad_to_multiple_keeps_the_deepest_feature_map_at_least_2x2():
    padded, size = pad_to_multiple(torch.randn(1, 3, 8, 4), 4)
    assert size == (8, 4) and padded.shape[-2:] == (8, 8)  # 4 px wide would be 1 token after f = 4
    padded, _ = pad_to_multiple(torch.randn(1, 3, 3, 3), 4, min_side=1)
    assert padded.shape[-2:] == (4, 4)


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (2, 5)])
def test_pad_to_multiple_handles_inputs_too_small_to_reflect(shape):
    x = torch.randn(1, 3, *shape)
    padded, size = pad_to_multiple(x, 4)
    assert size == shape
    assert padded.shape[-2] % 4 == 0 and padded.shape[-1] % 4 == 0
    assert torch.equal(padded[..., : shape[0], : shape[1]], x)
    assert min(padded.shape[-2:]) >= 8  # at least two tokens per side at f = 4
    if shape == (1, 1):
        assert torch.equal(padded, x.expand(1, 3, 8, 8))


def test_limit_side():
    wide = Image.new("RGB", (100, 50))
    resized, was_resized = limit_side(wide, 40)
    assert was_resized and resized.size == (40, 20)
    same, was_resized = limit_side(wide, 100)
    assert same is wide and not was_resized
    unlimited, was_resized = limit_side(wide, None)
    assert unlimited is wide and not was_resized
    sliver, _ = limit_side(Image.new("RGB", (1000, 1)), 10)
    assert sliver.size == (10, 1)  # never rounds a side down to 0


def test_tensor_round_trip_is_exact():
    image = noise_image(9, 5, seed=4)
    tensor = pil_to_tensor(image)
    assert tensor.shape == (1, 3, 5, 9) and tensor.min() >= -1 and tensor.max() <= 1
    assert (tensor_to_uint8(tensor) == np.asarray(image)).all()


def test_multi_picture_jpeg_gives_first_picture():
    first, second = Image.new("RGB", (16, 8), (250, 10, 10)), Image.new("RGB", (16, 8), (10, 10, 250))
    data = encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    image = genlab.open_image(data)
    assert image.size == (16, 8)
    np.testing.assert_allclose(pixels(image)[4, 8], [250, 10, 10], atol=12)
