"""Tiny random diffusers checkpoints for GenLab's unit tests.

Each fixture builds one checkpoint folder once per session with `save_pretrained(...,
safe_serialization=True)`, the same layout as the Hub checkpoints GenLab loads:

  tiny_vq_dir         VQModel, f = 2, K = 32 codes of dimension 4
  tiny_vq_lookup_dir  the same with lookup_from_codebook=True
  tiny_vq_embed_dir   vq_embed_dim (6) != latent_channels (4)
  tiny_vq_sibling_dir tiny_vq_dir's encoder and codebook under another decoder (as vqgan-photo is
                      vqvae-photo's encoder with a GAN-trained decoder)
  tiny_vq_nested_dir  a VQModel under vqvae/ (amused/amused-256 layout)
  tiny_ddpm_dir       UNet2DModel + scheduler_config.json at the root (google/ddpm-cifar10-32 layout)
  tiny_cond_ddpm_dir  class-conditional UNet (3 embeddings: a, b, null) + genlab.json
  tiny_kl_ldm_dir     pipeline: class-conditional unet/ over an AutoencoderKL vae/ (f = 2), scheduler/
  tiny_vq_ldm_dir     pipeline: unet/ over a VQModel vqvae/ whose config has no scaling_factor
                      (CompVis/ldm-celebahq-256 layout), scheduler/
  tiny_sd_dir         Stable Diffusion layout: UNet2DConditionModel, vae/, CLIP text_encoder/ and a
                      tokenizer/ whose vocabulary the fixture writes
  tiny_prior_dir      token prior: MaskedTokenTransformer (3 classes, 8x8 tokens) over a K = 16, f = 2
                      vqvae/, scheduler/ (AmusedScheduler, mask id 16), genlab.json
  tiny_amused_dir     aMUSEd layout as diffusers' AmusedPipeline.save_pretrained writes it: UVit2DModel
                      (8x8 tokens, vocab K + 2, mask id K + 1), VQModel (lookup_from_codebook), CLIP
                      text_encoder/ (with projection) + tokenizer/, scheduler/

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

import genlab.loading.loaders  # noqa: E402

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


def optimise(model, loss_of, steps: int, lr: float = 1e-2, seed: int = 0) -> None:
    """`steps` AdamW steps on `loss_of(generator)`, one seeded generator for all of them (the training
    helpers draw their masks and scales from it)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = loss_of(generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


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


KL_KWARGS = {key: value for key, value in VQ_KWARGS.items() if key != "num_vq_embeddings"}
LATENT_UNET_KWARGS = {**UNET_KWARGS, "sample_size": 8, "in_channels": 4, "out_channels": 4}


def build_kl(folder, seed: int = 0, **overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(**{**KL_KWARGS, "scaling_factor": 0.5, **overrides}).save_pretrained(folder, safe_serialization=True)
    return folder


def write_index(root, **components):
    index = {"_class_name": "LDMPipeline", "_diffusers_version": "0.42.1",
             **{name: ["diffusers", cls] for name, cls in components.items()}}
    (root / "model_index.json").write_text(json.dumps(index))


def build_latent_pipeline(root, autoencoder: str, seed: int = 0, **unet_overrides):
    """unet/ + scheduler/ + vae/ (AutoencoderKL) or vqvae/ (VQModel without scaling_factor) + model_index.json."""
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(seed)
    UNet2DModel(**{**LATENT_UNET_KWARGS, **unet_overrides}).save_pretrained(root / "unet", safe_serialization=True)
    DDIMScheduler(clip_sample=False).save_pretrained(root / "scheduler")
    if autoencoder == "vae":
        build_kl(root / "vae", seed)
        write_index(root, unet="UNet2DModel", vae="AutoencoderKL", scheduler="DDIMScheduler")
    else:
        build_vq(root / "vqvae", seed)
        config_path = root / "vqvae" / "config.json"
        config = json.loads(config_path.read_text())
        config.pop("scaling_factor", None)  # as in CompVis/ldm-celebahq-256: predates the key
        config_path.write_text(json.dumps(config))
        write_index(root, unet="UNet2DModel", vqvae="VQModel", scheduler="DDIMScheduler")
    return root


def write_clip_tokenizer(folder):
    """A CLIPTokenizer with a tiny byte-level vocabulary (every byte symbol, alone and word-final), no merges."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: i for i, symbol in enumerate(symbols + [f"{s}</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16).save_pretrained(folder)
    return len(vocab)


def build_sd_pipeline(root, seed: int = 0):
    """Stable Diffusion 1.x layout on tiny parts: unet/ (cross-attention on 32-d text), vae/, text_encoder/,
    tokenizer/, scheduler/."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = write_clip_tokenizer(root / "tokenizer")
    torch.manual_seed(seed)
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=16, eos_token_id=vocab_size - 1,
                                 bos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1)).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         norm_num_groups=8, attention_head_dim=4).save_pretrained(root / "unet", safe_serialization=True)
    DDIMScheduler(clip_sample=False, beta_schedule="scaled_linear").save_pretrained(root / "scheduler")
    build_kl(root / "vae", seed)
    write_index(root, unet="UNet2DConditionModel", vae="AutoencoderKL", scheduler="DDIMScheduler",
                text_encoder="CLIPTextModel", tokenizer="CLIPTokenizer")
    index = json.loads((root / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionPipeline", text_encoder=["transformers", "CLIPTextModel"],
                 tokenizer=["transformers", "CLIPTokenizer"])
    (root / "model_index.json").write_text(json.dumps(index))
    return root


def build_unet(folder, seed: int = 0, **overrides):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    UNet2DModel(**{**UNET_KWARGS, **overrides}).save_pretrained(folder, safe_serialization=True)
    DDPMScheduler().save_pretrained(folder)  # scheduler_config.json beside config.json
    return folder


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """Each test loads through GenLab's loader, not an object a previous test left in the cache."""
    genlab.loading.checkpoints.clear_cache()
    yield
    genlab.loading.checkpoints.clear_cache()


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
def tiny_vq_sibling_dir(tmp_path_factory, tiny_vq_dir):
    from diffusers import VQModel

    model = VQModel.from_pretrained(tiny_vq_dir)
    torch.manual_seed(7)
    with torch.no_grad():
        for parameter in (*model.post_quant_conv.parameters(), *model.decoder.parameters()):
            parameter.add_(0.2 * torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("tiny-vq-sibling")
    model.save_pretrained(folder, safe_serialization=True)
    return folder


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
def tiny_kl_ldm_dir(tmp_path_factory):
    root = build_latent_pipeline(tmp_path_factory.mktemp("tiny-kl-ldm"), "vae", num_class_embeds=3)
    (root / "genlab.json").write_text(json.dumps({"kind": "diffusion", "classes": ["a", "b"], "null_class": 2}))
    return root


@pytest.fixture(scope="session")
def tiny_vq_ldm_dir(tmp_path_factory):
    return build_latent_pipeline(tmp_path_factory.mktemp("tiny-vq-ldm"), "vqvae", seed=1)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    return build_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))


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
    return genlab.loading.loaders.load_vq(tiny_vq_dir, device="cpu")


@pytest.fixture
def tiny_dm(tiny_ddpm_dir):
    return genlab.loading.loaders.load_diffusion(tiny_ddpm_dir, device="cpu")


@pytest.fixture
def tiny_cond_dm(tiny_cond_ddpm_dir):
    return genlab.loading.loaders.load_diffusion(tiny_cond_ddpm_dir, device="cpu")


PRIOR_CODES = 16  # K of the token-prior fixtures' VQ models
PRIOR_GRID = 8  # tokens a side: 16-pixel images at f = 2
PRIOR_CLASSES = ["a", "b", "c"]
TINY_TOKEN_UNET = dict(  # a two-level MaskedTokenUNet over the PRIOR_GRID tokens of PRIOR_CODES codes
    codebook_size=PRIOR_CODES, height=PRIOR_GRID, width=PRIOR_GRID, num_classes=3, embedding_size=16,
    block_out_channels=(32, 32), attention=(False, True), layers_per_block=1, attention_head_dim=16, norm_num_groups=8)


def build_token_prior(root, seed: int = 0, num_classes: int = 3, **transformer_overrides):
    """A GenLab token-prior pipeline folder (the layout `python -m genlab.train prior` writes): vqvae/,
    transformer/ (MaskedTokenTransformer), scheduler/ (AmusedScheduler), model_index.json, genlab.json."""
    from diffusers import AmusedScheduler

    from genlab.priors.transformer import MaskedTokenTransformer

    build_vq(root / "vqvae", seed, num_vq_embeddings=PRIOR_CODES)
    torch.manual_seed(seed)
    transformer = MaskedTokenTransformer(**{
        "codebook_size": PRIOR_CODES, "height": PRIOR_GRID, "width": PRIOR_GRID, "num_classes": num_classes,
        "hidden_size": 32, "num_layers": 2, "num_heads": 2, **transformer_overrides})
    # the default init (std 0.02) makes a random transformer nearly blind to its inputs; spread the
    # embeddings so that classes and visible tokens change the logits.
    with torch.no_grad():
        transformer.class_embedding.weight.normal_()
        transformer.token_embedding.weight.normal_()
    transformer.save_pretrained(root / "transformer", safe_serialization=True)
    AmusedScheduler(mask_token_id=transformer.config.codebook_size).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "GenLabTokenPrior", "vqvae": ["diffusers", "VQModel"],
        "transformer": ["genlab", "MaskedTokenTransformer"], "scheduler": ["diffusers", "AmusedScheduler"]}))
    (root / "genlab.json").write_text(json.dumps({"classes": PRIOR_CLASSES[:num_classes], "default_guidance_scale": 2.0}))
    return root


@pytest.fixture
def prior_photo():
    """A colour gradient with noise at the tiny priors' image size (PRIOR_GRID tokens at f = 2), so fitting it
    changes nothing."""
    import numpy as np
    from PIL import Image

    side = 2 * PRIOR_GRID
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    base = np.stack([x, y, 1 - x], axis=-1) * 255
    return Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))


AMUSED_KWARGS = dict(  # UVit2DModel: micro_cond_embed_dim = 5 micro-conditions x micro_cond_encode_dim
    hidden_size=32, cond_embed_dim=16, micro_cond_encode_dim=2, micro_cond_embed_dim=10, encoder_hidden_size=16,
    vocab_size=PRIOR_CODES + 2, codebook_size=PRIOR_CODES, in_channels=16, block_out_channels=16, num_res_blocks=1,
    block_num_heads=1, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32, sample_size=PRIOR_GRID,
)


def build_amused_pipeline(root, seed: int = 0):
    """aMUSEd's layout on tiny parts, saved by diffusers' own AmusedPipeline: the CLIP text encoder's hidden
    size is the UVit's encoder_hidden_size and its projection the pooled cond_embed_dim; the mask id is
    vocab_size - 1 (= K + 1, as amused-256's 8255 over K = 8192), not K."""
    from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    vocab_size = write_clip_tokenizer(root / "tokenizer-source")
    tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer-source")
    shutil.rmtree(root / "tokenizer-source")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=AMUSED_KWARGS["encoder_hidden_size"], intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
        projection_dim=AMUSED_KWARGS["cond_embed_dim"], eos_token_id=vocab_size - 1, bos_token_id=vocab_size - 2,
        pad_token_id=vocab_size - 1))
    transformer = UVit2DModel(**AMUSED_KWARGS)
    vqvae = VQModel(**{**VQ_KWARGS, "num_vq_embeddings": PRIOR_CODES, "lookup_from_codebook": True})
    with torch.no_grad():
        vqvae.quantize.embedding.weight.normal_()
    scheduler = AmusedScheduler(mask_token_id=AMUSED_KWARGS["vocab_size"] - 1)
    AmusedPipeline(vqvae=vqvae, tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                   scheduler=scheduler).save_pretrained(root, safe_serialization=True)
    return root


@pytest.fixture(scope="session")
def tiny_prior_dir(tmp_path_factory):
    return build_token_prior(tmp_path_factory.mktemp("tiny-prior"))


@pytest.fixture(scope="session")
def tiny_amused_dir(tmp_path_factory):
    return build_amused_pipeline(tmp_path_factory.mktemp("tiny-amused"))
