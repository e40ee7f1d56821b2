"""VQ operations beyond the basic API: odd input modes, edit locality, large-codebook atlas cap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.autoencoders.vq import ATLAS_PAGE_SIZE, VQ, index_colors, index_map_image

from conftest import build_vq


def photo(size=(64, 48), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[1], : size[0]]
    base = np.stack([xx * 255 / size[0], yy * 255 / size[1], np.full_like(xx, 128.0)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "I;16"])
def test_reconstruct_accepts_every_mode_as_rgb(tiny_vq, mode):
    image = photo().convert("RGBA") if mode in ("RGBA", "LA") else photo()
    if mode == "I;16":
        array = (np.asarray(photo().convert("L"), np.uint16) * 257)
        image = Image.fromarray(array)  # uint16 -> mode I;16
    else:
        image = image.convert(mode)
    result = tiny_vq.reconstruct(image)
    assert result.image.mode == "RGB" and result.image.size == (64, 48)
    assert result.input.mode == "RGB"


def test_reconstruct_is_encode_image_then_reconstruct_from(tiny_vq):
    image = photo((45, 31))  # odd sides: padded to multiples of f = 2, cropped back
    encoding = tiny_vq.encode_image(image)
    assert encoding.indices.shape == (1, 16, 23) and encoding.input.size == (45, 31)
    whole, halves = tiny_vq.reconstruct(image), tiny_vq.reconstruct_from(encoding)
    assert np.array_equal(np.asarray(whole.image), np.asarray(halves.image))
    assert np.array_equal(whole.indices, halves.indices) and whole.indices.shape == (16, 23)
    assert halves.latency_s >= encoding.seconds > 0  # the encoding counts in the latency
    assert tiny_vq.bits_per_pixel_for(45, 31) == pytest.approx(whole.bits_per_pixel)  # known before encoding


def test_a_sibling_decoder_decodes_the_same_tokens(tiny_vq_dir, tiny_vq_sibling_dir, tiny_vq_embed_dir):
    """One encoder and codebook under two decoders (vqgan-photo from vqvae-photo): one encoding serves both."""
    first = genlab.load_vq(tiny_vq_dir, device="cpu")
    sibling = genlab.load_vq(tiny_vq_sibling_dir, device="cpu")
    image = photo()
    assert first.encoder_key == sibling.encoder_key
    from_first = sibling.reconstruct_from(first.encode_image(image))
    own = sibling.reconstruct(image)
    assert np.array_equal(np.asarray(from_first.image), np.asarray(own.image))
    assert not np.array_equal(np.asarray(own.image), np.asarray(first.reconstruct(image).image))  # another decoder
    other = genlab.load_vq(tiny_vq_embed_dir, device="cpu")
    assert other.encoder_key != first.encoder_key
    with pytest.raises(ValueError, match="another encoder or codebook"):
        other.reconstruct_from(first.encode_image(image))


def test_the_encoder_key_follows_the_codebook_and_the_tiling(tiny_vq_dir):
    from diffusers import VQModel

    def private():  # its own weights, outside genlab.loading.loaders' cache, which other tests share
        return VQ(VQModel.from_pretrained(tiny_vq_dir).eval())

    first, same, moved, tiled = private(), private(), private(), private()
    with torch.no_grad():  # before its key is computed: once per object, as the weights are frozen
        moved.model.quantize.embedding.weight[3] += 0.5
    tiled.tile = 16
    assert first.encoder_key == same.encoder_key
    assert moved.encoder_key != first.encoder_key and tiled.encoder_key != first.encoder_key


def test_transparent_pixels_become_white_before_encoding(tiny_vq):
    image = Image.new("RGBA", (32, 32), (10, 200, 30, 0))
    result = tiny_vq.reconstruct(image)
    assert np.all(np.asarray(result.input) == 255)


def test_large_input_is_downscaled_and_reported(tiny_vq):
    result = tiny_vq.reconstruct(photo((1200, 300)), max_side=256)
    assert result.input.size == (256, 64) and result.image.size == (256, 64)
    assert result.resized_from == (1200, 300)


def test_token_edit_changes_pixels_only_near_the_edited_cells(tiny_vq):
    """Replace one 2x2 block of tokens in a 32x32 grid; measure where the decoded pixels change.

    The decoder's GroupNorm uses image-wide statistics, so far pixels may move a little; the
    change must be concentrated around the edit (within the decoder's receptive field).
    """
    f = tiny_vq.downsample_factor
    indices = tiny_vq.indices_of(photo((32 * f, 32 * f)))
    before = np.asarray(tiny_vq.decode_indices(indices), np.float64)
    current = int(indices[15, 15])
    edited = tiny_vq.replace_region(indices, (15, 16), (15, 16), (current + 7) % tiny_vq.num_codes)
    assert (edited != indices).sum() >= 1 and (edited != indices)[:15].sum() == 0
    after = np.asarray(tiny_vq.decode_indices(edited), np.float64)
    change = np.abs(after - before).mean(axis=-1)  # (H, W)
    near = np.zeros_like(change, bool)
    near[(15 - 4) * f:(17 + 4) * f, (15 - 4) * f:(17 + 4) * f] = True  # the edit plus 4 tokens around it
    assert change[near].mean() > 5 * change[~near].mean()  # tests/test_weights.py measures the trained model


def test_swap_and_resample_keep_other_cells(tiny_vq):
    indices = tiny_vq.indices_of(photo())
    a, b = (int(c) for c in np.unique(indices)[:2])
    swapped = tiny_vq.swap_codes(indices, a, b)
    assert np.array_equal(swapped == b, indices == a) and np.array_equal(swapped == a, indices == b)
    usage = np.zeros(tiny_vq.num_codes, np.int64)
    usage[3] = 1  # only code 3 can be drawn
    resampled = tiny_vq.resample_region(indices, (0, 1), (0, 2), usage, seed=0)
    assert np.all(resampled[:2, :3] == 3) and np.array_equal(resampled[2:], indices[2:])


def test_atlas_of_an_8192_code_model_builds_within_its_cap(tmp_path):
    folder = build_vq(tmp_path / "big", seed=4, num_vq_embeddings=8192, lookup_from_codebook=True)
    vq = genlab.load_vq(folder, device="cpu")
    assert vq.num_codes == 8192 and vq.atlas_pages() == 8192 // ATLAS_PAGE_SIZE
    page = vq.codebook_atlas(page=3)
    assert len(vq._patches) == ATLAS_PAGE_SIZE  # only the requested page was decoded (lazily)
    vq.codebook_atlas(page=3)
    assert len(vq._patches) == ATLAS_PAGE_SIZE  # and cached
    assert page.width > 0
    with pytest.raises(ValueError, match="page"):
        vq.codebook_atlas(page=vq.atlas_pages())


def test_painted_cells_are_the_tokens_whose_patch_the_mask_touches(tiny_vq):
    f = tiny_vq.downsample_factor  # 2
    mask = np.zeros((7, 9), bool)  # a 7x9 image: a 4x5 token grid, the last row and column half padding
    mask[1, 1] = mask[6, 8] = True
    cells = tiny_vq.cells_touched(mask)
    assert cells.shape == (4, 5) and cells.sum() == 2 and cells[0, 0] and cells[3, 4]
    mask[:] = False
    mask[f - 1: f + 1, 0] = True  # straddles two token rows
    assert np.array_equal(np.nonzero(tiny_vq.cells_touched(mask))[0], [0, 1])


def test_cell_edits_change_exactly_the_chosen_tokens(tiny_vq):
    indices = tiny_vq.indices_of(photo())
    cells = np.zeros(indices.shape, bool)
    cells[1, 2] = cells[3, 0] = True
    code = (int(indices[1, 2]) + 1) % tiny_vq.num_codes
    replaced = tiny_vq.replace_cells(indices, cells, code)
    assert np.all(replaced[cells] == code) and np.array_equal(replaced[~cells], indices[~cells])
    usage = np.zeros(tiny_vq.num_codes, np.int64)
    usage[5] = 1
    resampled = tiny_vq.resample_cells(indices, cells, usage, seed=0)
    assert np.all(resampled[cells] == 5) and np.array_equal(resampled[~cells], indices[~cells])
    rows = np.zeros(indices.shape, bool)
    rows[0:2, 0:3] = True  # a rectangle as cells draws the same codes as resample_region with the same seed
    assert np.array_equal(tiny_vq.resample_cells(indices, rows, np.ones(tiny_vq.num_codes), seed=4),
                          tiny_vq.resample_region(indices, (0, 1), (0, 2), np.ones(tiny_vq.num_codes), seed=4))
    with pytest.raises(ValueError, match="region is empty"):
        tiny_vq.replace_cells(indices, np.zeros(indices.shape, bool), 0)
    with pytest.raises(ValueError, match="token grid"):
        tiny_vq.replace_cells(indices, cells[:-1], 0)


@pytest.mark.parametrize("cell", [1, 3, 4])
def test_token_map_draws_each_code_as_a_cell_block_of_its_colour(cell):
    indices = np.random.default_rng(0).integers(0, 1024, (5, 7))  # not square: rows stay rows
    drawn = np.asarray(index_map_image(indices, 1024, cell))
    assert drawn.shape == (5 * cell, 7 * cell, 3)
    assert np.array_equal(drawn, np.kron(index_colors(1024)[indices], np.ones((cell, cell, 1), np.uint8)))


# ---------------------------------------------------------------------------- reserved background code
def _white_with_dot(side: int = 16, dot=(5, 5), level: int = 0) -> torch.Tensor:
    """(1, 3, side, side) in [-1, 1]: white, one pixel at `level`."""
    pixels = torch.ones(1, 3, side, side)
    pixels[:, :, dot[0], dot[1]] = level / 127.5 - 1
    return pixels


def test_background_mask_takes_tokens_whose_neighbourhood_is_white():
    from genlab.autoencoders.vq import Background

    pixels = _white_with_dot()  # f = 4: the dot is in token (1, 1) of a 4 x 4 grid
    expected_0 = np.ones((4, 4), bool)
    expected_0[1, 1] = False
    assert np.array_equal(Background(code=0, margin=0).mask(pixels, 4)[0].numpy(), expected_0)
    expected_1 = np.zeros((4, 4), bool)
    expected_1[3, :] = expected_1[:, 3] = True  # two or more tokens from (1, 1); outside the image counts as white
    assert np.array_equal(Background(code=0, margin=1).mask(pixels, 4)[0].numpy(), expected_1)
    assert not Background(code=0, margin=2).mask(pixels, 4).any()
    near_white = _white_with_dot(level=250)  # 5 levels below white
    assert Background(code=0, margin=0, tolerance=8).mask(near_white, 4).all()
    assert not Background(code=0, margin=0, tolerance=4).mask(near_white, 4)[0, 1, 1]
    coloured = torch.ones(1, 3, 8, 8)
    coloured[:, 0] = 0.0  # every pixel pale cyan (red channel at the middle): no token is white
    assert not Background(code=0, margin=0).mask(coloured, 4).any()


@pytest.mark.parametrize("info, message", [
    ({"code": 16}, "background code must be in [0, 15], got 16"),
    ({"code": -1}, "background code must be in [0, 15], got -1"),
    ({"code": 3, "margin": -1}, "background margin must be >= 0 tokens, got -1"),
    ({"code": 3, "tolerance": 255}, "background tolerance must be in [0, 254] levels, got 255"),
    ({"code": 2.5}, "background code must be an integer, got 2.5"),
    ({"code": True}, "background code must be an integer, got True"),
    ({"margin": 1}, "background must be"),
    ({"code": 1, "colour": "red"}, "background must be"),
    ([1, 2], "background must be"),
])
def test_bad_background_entries_are_refused(info, message):
    from genlab.autoencoders.vq import Background

    with pytest.raises(ValueError) as error:
        Background.from_info(info, num_codes=16)
    assert message in str(error.value)
    assert Background.from_info(None, 16) is None


def test_a_vq_with_a_background_code_writes_it_on_white_neighbourhoods_only(vq_copy):
    """VQ.encode: the background tokens take the reserved code, every other token is the encoder's nearest code;
    the loader reads the entry from genlab.json, and refuses a bad one with the file named."""
    info = {"kind": "vq", "background": {"code": 7, "margin": 1, "tolerance": 8}}
    plain = genlab.loading.loaders.load_vq(vq_copy, device="cpu")
    (vq_copy / "genlab.json").write_text(json.dumps(info))
    genlab.loading.checkpoints.clear_cache()
    model = genlab.loading.loaders.load_vq(vq_copy, device="cpu")
    assert model.background == genlab.autoencoders.vq.Background(code=7, margin=1, tolerance=8)
    f = model.downsample_factor
    pixels = torch.ones(1, 3, 8 * f, 8 * f)
    pixels[:, :, 2 * f:3 * f, 2 * f:4 * f] = -1.0  # a black bar over tokens (2, 2) and (2, 3)
    mine, theirs = model.encode(pixels)[0], plain.encode(pixels)[0]  # (8, 8)
    quiet = genlab.autoencoders.vq.Background(code=7, margin=1).mask(pixels, f)[0]
    assert quiet.sum() == 64 - 4 * 3 and not quiet[1:4, 1:5].any()
    assert (mine[quiet] == 7).all() and torch.equal(mine[~quiet], theirs[~quiet])
    assert (model.indices_of(Image.new("RGB", (8 * f, 8 * f), "white")) == 7).all()
    (vq_copy / "genlab.json").write_text(json.dumps({"kind": "vq", "background": {"code": 99}}))
    genlab.loading.checkpoints.clear_cache()
    with pytest.raises(genlab.loading.loaders.ModelLoadError, match="genlab.json: background code must be in"):
        genlab.loading.loaders.load_vq(vq_copy, device="cpu")
