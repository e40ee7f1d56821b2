"""The convolutional token prior (genlab.priors.unet.MaskedTokenUNet) through genlab.load_prior: its layout
round-trips, the masked share is its timestep, the orders, guidance by two calls and inpainting work on it
as on the transformer, and bad layouts and inputs are refused with a clear message. (A few training steps
teaching it a pattern: test_prior.py's code-length test, run for both networks.)

The fixture replaces `tiny_prior_dir`'s transformer (conftest.py: 3 classes, 8x8 tokens of a K = 16,
f = 2 VQ model) by a two-level UNet of width 32.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.loading.loaders import ModelLoadError
from genlab.priors.unet import TIMESTEPS, MaskedTokenUNet, check_unet_layout

from conftest import PRIOR_CLASSES, PRIOR_CODES, PRIOR_GRID, TINY_TOKEN_UNET

K = PRIOR_CODES
N = PRIOR_GRID * PRIOR_GRID
SIDE = PRIOR_GRID * 2
TINY = TINY_TOKEN_UNET


def tiny_unet(seed: int = 0, **overrides) -> MaskedTokenUNet:
    torch.manual_seed(seed)
    model = MaskedTokenUNet(**{**TINY, **overrides})
    with torch.no_grad():  # spread the embeddings so that visible tokens and classes change the logits
        model.token_embedding.weight.normal_()
    return model.eval()


@pytest.fixture
def unet_dir(tiny_prior_dir, tmp_path):
    folder = shutil.copytree(tiny_prior_dir, tmp_path / "unet-prior")
    shutil.rmtree(folder / "transformer")
    tiny_unet().save_pretrained(folder / "transformer", safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "transformer": ["genlab", "MaskedTokenUNet"]}))
    return folder


@pytest.fixture
def prior(unet_dir):
    return genlab.load_prior(unet_dir, device="cpu")


def test_load_prior_round_trips_the_unet(prior):
    """load_prior reads the UNet's layout and gives the in-memory network's logits exactly."""
    original = tiny_unet()
    tokens = torch.randint(0, K + 1, (4, PRIOR_GRID, PRIOR_GRID), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    with torch.inference_mode():
        expected = original(tokens, class_labels=labels)
        loaded = prior.transformer(tokens, class_labels=labels)
    assert isinstance(prior.transformer, MaskedTokenUNet) and expected.shape == (4, K, PRIOR_GRID, PRIOR_GRID)
    torch.testing.assert_close(loaded, expected, rtol=0, atol=0)
    assert prior.classes == PRIOR_CLASSES and prior.null_class == 3 and prior.mask_id == K
    assert prior.grid == (PRIOR_GRID, PRIOR_GRID) and prior.distilled is None


def test_the_masked_share_is_the_timestep_and_no_label_is_the_null_class(monkeypatch):
    """The UNet is told how much of the grid is masked (x 1000), and a missing label is the null class."""
    model = tiny_unet()
    seen = []
    forward = model.unet.forward
    monkeypatch.setattr(model.unet, "forward", lambda sample, timestep, **kw: seen.append(timestep) or forward(
        sample, timestep, **kw))
    tokens = torch.randint(0, K, (2, PRIOR_GRID, PRIOR_GRID), generator=torch.Generator().manual_seed(1))
    tokens[0, :2] = K  # 16 of 64 masked
    tokens[1] = K  # all masked
    with torch.inference_mode():
        unlabelled = model(tokens)
        null = model(tokens, class_labels=torch.tensor([3, 3]))
    torch.testing.assert_close(seen[0], torch.tensor([0.25, 1.0]) * TIMESTEPS)
    torch.testing.assert_close(unlabelled, null, rtol=0, atol=0)
    with torch.inference_mode():
        assert not torch.allclose(model(tokens, class_labels=torch.tensor([0, 0])), null)


def test_orders_determinism_and_guidance_by_two_calls(prior, monkeypatch):
    """Raster fills one token a step; the same seed gives the same tokens; guided steps call the UNet once on
    the conditional and unconditional halves together (batch 2B), since it is not guidance-distilled."""
    raster = prior.sample(seed=0, order="raster", steps=5, class_label="c")
    assert len(raster.frames) == N and all(frame.new.sum() == 1 for frame in raster.frames)
    for order in ("confidence", "random"):
        one = prior.sample(seed=3, order=order, steps=6, class_label="a")
        assert len(one.frames) == 6 and (one.tokens >= 0).all() and (one.tokens < K).all()
        np.testing.assert_array_equal(one.tokens, prior.sample(seed=3, order=order, steps=6, class_label="a").tokens)
    assert not prior.transformer.distills(2.0) and prior.distilled_for(2.0) is None
    batches = []
    forward = prior.transformer.forward
    monkeypatch.setattr(prior.transformer, "forward", lambda ids, **kw: batches.append(
        (len(ids), kw.get("guidance"))) or forward(ids, **kw))
    prior.sample(seed=0, steps=4, batch=3, class_label="b", guidance_scale=3.0)
    assert batches == [(6, None)] * 4


def test_inpainting_keeps_every_token_outside_the_mask(prior, prior_photo):
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[3:7, 5:10] = 255
    run = prior.inpaint(prior_photo, Image.fromarray(mask), steps=5, seed=0, class_label="b")
    cells = run.token_mask
    original = prior.vq.indices_of(run.input)
    assert cells.sum() == 9
    np.testing.assert_array_equal(run.tokens[~cells], original[~cells])
    for frame in run.frames:
        np.testing.assert_array_equal(frame.tokens[~cells], original[~cells])


@pytest.mark.parametrize("overrides, message", [
    (dict(block_out_channels=()), "block_out_channels must be positive integers"),
    (dict(block_out_channels=(32, -32)), "block_out_channels must be positive integers"),
    (dict(block_out_channels=(32, 32, 32)), r"attention needs one flag per level \(3\)"),
    (dict(block_out_channels=(32, 36)), r"must be a multiple of norm_num_groups \(8\)"),
    (dict(block_out_channels=(32, 24), attention_head_dim=16), r"multiple of attention_head_dim \(16\)"),
    (dict(embedding_size=12), r"embedding_size \(12\) must be a multiple of norm_num_groups"),
    (dict(height=6, width=6, block_out_channels=(32, 32, 32), attention=(0, 0, 1)), "divisible by 4, got 6x6"),
])
def test_bad_layouts_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        MaskedTokenUNet(**{**TINY, **overrides})


def test_bad_inputs_are_refused():
    model = tiny_unet()
    with pytest.raises(ValueError, match=f"models {PRIOR_GRID}x{PRIOR_GRID} token grids, got 4x4"):
        model(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="not guidance-distilled"):
        model(torch.zeros(1, PRIOR_GRID, PRIOR_GRID, dtype=torch.long), guidance=torch.ones(1))
    check_unet_layout((32, 32), (False, True), 8, 16)  # the fixture's layout passes


def test_a_unet_named_in_a_broken_folder_is_a_load_error(unet_dir):
    """A transformer/ config that names MaskedTokenUNet but whose weights are a transformer's fails to load
    with the folder named, not with a traceback from deep inside diffusers."""
    from genlab.priors.transformer import MaskedTokenTransformer

    shutil.rmtree(unet_dir / "transformer")
    MaskedTokenTransformer(codebook_size=K, height=PRIOR_GRID, width=PRIOR_GRID, num_classes=3, hidden_size=32,
                           num_layers=1, num_heads=2).save_pretrained(unet_dir / "transformer")
    config = json.loads((unet_dir / "transformer" / "config.json").read_text())
    (unet_dir / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "MaskedTokenUNet"}))
    with pytest.raises(ModelLoadError, match="transformer"):
        genlab.load_prior(unet_dir, device="cpu")
