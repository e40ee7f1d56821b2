"""Tiny random diffusers checkpoints for GenLab's unit tests.

Each fixture builds one checkpoint folder once per session with `save_pretrained(...,
safe_serialization=True)`, the same layout as the Hub checkpoints GenLab loads:

  tiny_vq_dir         VQModel, f = 2, K = 32 codes of dimension 4
  tiny_vq_lookup_dir  the same with lookup_from_codebook=True
  tiny_vq_embed_dir   vq_embed_dim (6) != latent_channels (4)
  tiny_vq_nested_dir  a VQModel under vqvae/ (amused/amused-256 layout)
  tiny_ddpm_dir       UNet2DModel + scheduler_config.json at the root (google/ddpm-cifar10-32 layout)
  tiny_cond_ddpm_dir  class-conditional UNet (3 embeddings: a, b, null) + genlab.json

Models are kept tiny (block_out_channels=(8, 16)) so the whole suite runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

# No test may reach the Hub; set before anything imports huggingface_hub, which reads it at import.
os.environ["HF_HUB_OFFLINE"] = "1"
# gradio's file cache is shared between processes and emptied when an app closes: give each test
# session its own, so parallel runs (or a running app) cannot delete each other's files.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="genlab-test-gradio-")

import pytest  # noqa: E402
import torch  # noqa: E402

import genlab.models  # noqa: E402

VQ_KWARGS = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
    num_vq_embeddings=32,
    sample_size=16,
    mid_block_add_attention=False,
)
UNET_KWARGS = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    add_attention=False,
)
NUM_CODES = VQ_KWARGS["num_vq_embeddings"]
DOWNSAMPLE = 2 ** (len(VQ_KWARGS["block_out_channels"]) - 1)


def build_vq(folder, seed: int = 0, **overrides):
    from diffusers import VQModel

    torch.manual_seed(seed)
    model = VQModel(**{**VQ_KWARGS, **overrides})
    # diffusers initialises the codebook in a tiny uniform range; spread it so that random images
    # use several codes and index-level tests can tell codes apart.
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def build_unet(folder, seed: int = 0, **overrides):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    UNet2DModel(**{**UNET_KWARGS, **overrides}).save_pretrained(folder, safe_serialization=True)
    DDPMScheduler().save_pretrained(folder)  # scheduler_config.json beside config.json
    return folder


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """Each test loads through GenLab's loader, not an object a previous test left in the cache."""
    genlab.models.clear_cache()
    yield
    genlab.models.clear_cache()


@pytest.fixture(scope="session")
def tiny_vq_dir(tmp_path_factory):
    return build_vq(tmp_path_factory.mktemp("tiny-vq"))


@pytest.fixture(scope="session")
def tiny_vq_lookup_dir(tmp_path_factory):
    return build_vq(tmp_path_factory.mktemp("tiny-vq-lookup"), seed=1, lookup_from_codebook=True)


@pytest.fixture(scope="session")
def tiny_vq_embed_dir(tmp_path_factory):
    return build_vq(tmp_path_factory.mktemp("tiny-vq-embed"), seed=2, vq_embed_dim=6)


@pytest.fixture(scope="session")
def tiny_vq_nested_dir(tmp_path_factory):
    """A repo-like root whose VQModel lives in vqvae/ (returns the root)."""
    root = tmp_path_factory.mktemp("tiny-pipeline")
    build_vq(root / "vqvae", seed=3)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "TinyPipeline", "vqvae": ["diffusers", "VQModel"]}))
    return root


@pytest.fixture(scope="session")
def tiny_ddpm_dir(tmp_path_factory):
    return build_unet(tmp_path_factory.mktemp("tiny-ddpm"))


@pytest.fixture(scope="session")
def tiny_cond_ddpm_dir(tmp_path_factory):
    folder = build_unet(tmp_path_factory.mktemp("tiny-cond-ddpm"), seed=1, num_class_embeds=3)
    (folder / "genlab.json").write_text(json.dumps({"kind": "diffusion", "classes": ["a", "b"], "null_class": 2}))
    return folder


@pytest.fixture(scope="session")
def photo_path(tmp_path_factory):
    """A 44x30 PNG: a colour gradient plus Gaussian noise of std 20, for upload tests."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("upload") / "photo.png"
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 30 * 44 * 3).reshape(30, 44, 3)
    Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def vq_copy(tiny_vq_dir, tmp_path):
    """A private, writable copy of the tiny VQ checkpoint, for tests that damage it."""
    return shutil.copytree(tiny_vq_dir, tmp_path / "vq-copy")


@pytest.fixture
def tiny_vq(tiny_vq_dir):
    return genlab.models.load_vq(tiny_vq_dir, device="cpu")


@pytest.fixture
def tiny_dm(tiny_ddpm_dir):
    return genlab.models.load_diffusion(tiny_ddpm_dir, device="cpu")


@pytest.fixture
def tiny_cond_dm(tiny_cond_ddpm_dir):
    return genlab.models.load_diffusion(tiny_cond_ddpm_dir, device="cpu")
