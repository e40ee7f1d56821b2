"""Tiled application (genlab.imaging.tiling): exact placement, and VQ models that declare a tile use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import genlab
from genlab.imaging.tiling import apply_tiled


@pytest.mark.parametrize("margin", [0, 8, 16])
def test_tiles_reassemble_exactly(margin):
    x = torch.randn(2, 3, 100, 70)  # not multiples of the tile, batch of two
    assert torch.equal(apply_tiled(lambda t: t, x, 32, margin), x)
    assert torch.allclose(apply_tiled(lambda t: F.avg_pool2d(t, 4), x[..., :96, :68], 32, margin, 0.25),
                          F.avg_pool2d(x[..., :96, :68], 4))
    z = torch.randn(1, 4, 20, 12)
    assert torch.equal(apply_tiled(lambda t: F.interpolate(t, scale_factor=4), z, 8, margin // 4, 4),
                       F.interpolate(z, scale_factor=4))


def test_integer_outputs_keep_their_values():
    x = torch.randint(0, 50, (1, 1, 40, 40)).float()
    out = apply_tiled(lambda t: t[:, 0].long(), x, 16, 0)  # (N, h, w) outputs, like code indices
    assert out.dtype == torch.long and torch.equal(out, x[:, 0].long())


def test_a_vq_model_with_a_tile_encodes_each_tile_on_its_own(tiny_vq_dir, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_vq_dir, tmp_path / "tiled")
    (folder / "genlab.json").write_text(json.dumps({"kind": "vq", "tile": 16}))
    tiled, whole = genlab.load_vq(folder, device="cpu"), genlab.load_vq(tiny_vq_dir, device="cpu")
    assert tiled.tile == 16 and whole.tile is None
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
    indices = tiled.indices_of(image)
    assert indices.shape == (16, 24)
    corner = whole.indices_of(image.crop((0, 0, 16, 16)))  # the top-left tile alone
    assert np.array_equal(indices[:8, :8], corner)
    result = tiled.reconstruct(image)
    assert np.array_equal(np.asarray(tiled.decode_indices(result.indices)), np.asarray(result.image))
