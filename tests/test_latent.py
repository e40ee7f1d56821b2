"""Latent diffusion on tiny random pipelines: loading the diffusers layouts, scaling, one reverse loop with
decoded frames, text and class guidance, latent SDEdit, inpainting, KL autoencoders, revisions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.autoencoders.kl import KLAutoencoder, LatentCodec
from genlab.config import parse_args
from genlab.loading.loaders import ModelLoadError, ModelSpec, resolve_source


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def kl_ldm(tiny_kl_ldm_dir):
    return genlab.load_diffusion(tiny_kl_ldm_dir, device="cpu")


@pytest.fixture
def vq_ldm(tiny_vq_ldm_dir):
    return genlab.load_diffusion(tiny_vq_ldm_dir, device="cpu")


@pytest.fixture
def sd(tiny_sd_dir):
    return genlab.load_diffusion(tiny_sd_dir, device="cpu")


@pytest.fixture
def smooth_image():
    """A 16x16 smooth colour image (what even a random tiny autoencoder keeps roughly)."""
    y, x = np.mgrid[0:16, 0:16] / 15.0
    return Image.fromarray((np.stack([x, y, 1 - x], axis=-1) * 255).astype(np.uint8))


# ----------------------------------------------------------------------------------- loading
def test_pixel_and_latent_models_are_told_apart(tiny_dm, kl_ldm, vq_ldm):
    assert not tiny_dm.is_latent and tiny_dm.latent_shape is None
    assert kl_ldm.is_latent and kl_ldm.latent_shape == (4, 8, 8)
    assert kl_ldm.sample_size == 16 and kl_ldm.codec.factor == 2  # pixels = latent side x f
    assert isinstance(kl_ldm.autoencoder, KLAutoencoder) and isinstance(vq_ldm.autoencoder, genlab.VQ)
    assert kl_ldm.unet.config.in_channels == 4 and kl_ldm.classes == ["a", "b"]


def test_vq_config_without_scaling_factor_is_unscaled(tiny_vq_ldm_dir, vq_ldm):
    """diffusers would apply its 0.18215 default to CompVis/ldm-celebahq-256's VQ latents (diffusers issue #6725)."""
    from diffusers import VQModel

    assert VQModel.from_pretrained(tiny_vq_ldm_dir / "vqvae").config.scaling_factor == pytest.approx(0.18215)
    assert vq_ldm.codec.scaling_factor == 1.0
    latents = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(vq_ldm.codec.scale(latents), latents)


def test_kl_scaling_factor_and_per_channel_statistics_round_trip(kl_ldm):
    assert kl_ldm.codec.scaling_factor == 0.5  # from vae/config.json
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(kl_ldm.codec.scale(z), z * 0.5)
    codec = LatentCodec(kl_ldm.autoencoder.model, "kl", 0.13, latents_mean=[0.1, -0.2, 0.3, 0.0],
                        latents_std=[1.0, 2.0, 0.5, 1.5])
    scaled = codec.scale(z)
    torch.testing.assert_close(scaled[:, 1], (z[:, 1] + 0.2) * 0.13 / 2.0)
    torch.testing.assert_close(codec.unscale(scaled), z, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="scaling_factor"):
        LatentCodec(kl_ldm.autoencoder.model, "kl", 0.0)


def test_pipeline_without_its_autoencoder_weights_is_refused(tiny_kl_ldm_dir, tmp_path):
    import shutil

    broken = shutil.copytree(tiny_kl_ldm_dir, tmp_path / "broken")
    for weights in (broken / "vae").glob("*.safetensors"):
        weights.unlink()
    (broken / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        genlab.load_diffusion(broken, device="cpu")


def test_text_model_needs_its_tokenizer(tiny_sd_dir, tmp_path):
    import shutil

    broken = shutil.copytree(tiny_sd_dir, tmp_path / "no-tokenizer")
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ModelLoadError, match="tokenizer"):
        genlab.load_diffusion(broken, device="cpu")


def test_an_fp16_text_encoder_loads_in_fp32_without_touching_the_process_default_dtype(tiny_sd_dir, tmp_path,
                                                                                       monkeypatch):
    """sd-emoji ships its CLIP in fp16. transformers builds a model under its file's dtype by setting torch's
    process-wide default dtype, and a token prior sampling on another thread of the app meanwhile made fp16
    tensors ("mat1 and mat2 must have the same dtype"): the loader names fp32, so the default never moves."""
    import shutil

    from transformers import CLIPTextModel

    folder = shutil.copytree(tiny_sd_dir, tmp_path / "fp16-text")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    text_encoder.half().save_pretrained(folder / "text_encoder")
    defaults = []
    original = torch.set_default_dtype
    monkeypatch.setattr(torch, "set_default_dtype", lambda dtype: (defaults.append(dtype), original(dtype))[1])
    dm = genlab.load_diffusion(folder, device="cpu")
    assert {p.dtype for p in dm.text.model.parameters()} == {torch.float32}
    assert set(defaults) <= {torch.float32} and torch.get_default_dtype() == torch.float32
    assert dm.sample(prompt="a red fox", seed=0, steps=2).image.size == (16, 16)


# ------------------------------------------------------------------------------ reverse loop
def test_latent_frames_are_decoded_at_pixel_size(kl_ldm):
    run = kl_ldm.sample(seed=0, steps=4, class_label="a", guidance_scale=2.0)
    assert run.image.size == (16, 16) and len(run.frames) == 4
    frame = run.frames[1]
    assert frame.step.x_t.shape == (1, 4, 8, 8)  # the sample space is the latent
    assert frame.x_t.size == frame.x0.size == (16, 16)
    assert frame.latent.size == (4 * 8 * 2, 8 * 2)  # four channels side by side, at pixel scale
    preview = kl_ldm.frame(run.trajectory.steps[1], preview=True)
    assert preview.x_t.size == (16, 16)
    # the real decoder, not the preview, makes the final image
    expected = kl_ldm.codec.decode(run.trajectory.final)
    assert (pixels(run.image) == pixels(genlab.imaging.io.as_image(expected))).all()


def test_preview_is_a_least_squares_fit_of_the_decoder(kl_ldm):
    weights = kl_ldm.codec.fit_preview()
    assert weights.shape == (5, 3)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    decoded = torch.nn.functional.avg_pool2d(kl_ldm.codec.decode(latents), 2)
    fitted = torch.nn.functional.avg_pool2d(kl_ldm.codec.preview(latents), 2)
    mean_only = decoded.mean(dim=(0, 2, 3), keepdim=True)
    # the fitted map explains the decoder better than its mean colour does
    assert (fitted - decoded).pow(2).mean() < (mean_only - decoded).pow(2).mean()


def test_latent_sampling_is_deterministic_per_seed(kl_ldm, vq_ldm):
    for dm in (kl_ldm, vq_ldm):
        first, again = dm.sample(seed=2, steps=3), dm.sample(seed=2, steps=3)
        other = dm.sample(seed=3, steps=3)
        assert (pixels(first.image) == pixels(again.image)).all()
        assert (pixels(first.image) != pixels(other.image)).any()


def test_latent_size_is_in_pixels(kl_ldm):
    run = kl_ldm.sample(seed=0, steps=2, size=32)
    assert run.image.size == (32, 32) and run.trajectory.final.shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="multiple of 4"):
        kl_ldm.sample(seed=0, steps=2, size=18)


def test_text_guidance_uses_prompt_and_negative_prompt(sd):
    assert sd.is_text_conditional and sd.default_guidance_scale == 7.5
    fox = sd.sample(seed=0, steps=3, prompt="a red fox")
    cat = sd.sample(seed=0, steps=3, prompt="a grey cat")
    negative = sd.sample(seed=0, steps=3, prompt="a red fox", negative_prompt="snow")
    unguided = sd.sample(seed=0, steps=3, prompt="a red fox", guidance_scale=1.0)
    again = sd.sample(seed=0, steps=3, prompt="a red fox")
    assert (pixels(fox.image) == pixels(again.image)).all()
    for other in (cat, negative, unguided):
        assert (pixels(fox.image) != pixels(other.image)).any()


def test_text_guidance_is_the_cfg_combination(sd):
    """One guided step equals eps_uncond + w (eps_cond - eps_uncond) of two separate UNet calls."""
    run = sd.sample(seed=0, steps=1, prompt="a red fox", negative_prompt="", guidance_scale=3.0)
    cond, _ = sd.text.encode(["a red fox"])
    uncond, _ = sd.text.encode([""])
    x_t = run.trajectory.steps[0].x_t
    t = torch.tensor(run.timesteps[0])
    with torch.inference_mode():
        eps_c = sd.unet(x_t, t, **cond).sample
        eps_u = sd.unet(x_t, t, **uncond).sample
    torch.testing.assert_close(run.trajectory.steps[0].pred_eps, eps_u + 3.0 * (eps_c - eps_u), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=3), "must be text"),
    (dict(prompt="x" * 5000), "characters"),
    (dict(negative_prompt=["a"]), "negative prompt must be text"),
    (dict(class_label="a"), "conditioned on text"),
])
def test_bad_prompts_are_refused(sd, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sd.sample(seed=0, steps=1, **kwargs)


def test_long_prompts_are_cut_and_the_run_says_so(sd):
    run = sd.sample(seed=0, steps=1, prompt="many words " * 20)
    assert any("cut" in note for note in run.notes)
    assert not sd.sample(seed=0, steps=1, prompt="short").notes


def test_prompts_on_a_class_model_are_refused(kl_ldm, tiny_dm):
    with pytest.raises(ValueError, match="not text-conditioned"):
        kl_ldm.sample(seed=0, steps=1, prompt="a fox")
    with pytest.raises(ValueError, match="not text-conditioned"):
        tiny_dm.sample(seed=0, steps=1, negative_prompt="blur")


def test_latent_sdedit_from_a_small_t_returns_close_to_the_input(kl_ldm, smooth_image):
    """Encode, noise to t, reverse, decode: from t = 2 the latent comes back to the input's encoding, and
    the image to the autoencoder's own decode (the embedded ldm-emoji test checks PSNR against the input)."""
    x0 = kl_ldm.codec.encode(genlab.imaging.io.pil_to_tensor(smooth_image))
    reconstruction = genlab.imaging.io.as_image(kl_ldm.codec.decode(x0))
    near = kl_ldm.denoise(smooth_image, t=2, steps=1)
    far = kl_ldm.denoise(smooth_image, t=900, steps=3)
    assert near.image.size == smooth_image.size and near.noisy.size == smooth_image.size
    assert (near.trajectory.final - x0).abs().mean() < 0.02 < (far.trajectory.final - x0).abs().mean()
    assert genlab.imaging.metrics.psnr(reconstruction, near.image) > genlab.imaging.metrics.psnr(reconstruction, far.image) + 6


def test_latent_denoise_of_an_already_noisy_upload(kl_ldm, smooth_image):
    run = kl_ldm.denoise(smooth_image, sigma=25 / 255)
    assert run.start_timestep == genlab.diffusion.schedule.timestep_for_sigma(kl_ldm.alphas_cumprod, 25 / 255)
    assert run.image.size == (16, 16) and len(run.frames) >= 1


def test_forward_noise_of_a_latent_model_is_decoded(kl_ldm, smooth_image):
    assert kl_ldm.forward_noise(smooth_image, 500).size == (16, 16)


# ---------------------------------------------------------------------------------- inpainting
def square_mask(side: int = 16, low: int = 4, high: int = 10) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    mask[low:high, low:high] = 255
    return mask


@pytest.mark.parametrize("model", ["tiny_dm", "kl_ldm"])
def test_inpainting_keeps_the_pixels_outside_the_mask(model, request, smooth_image):
    dm = request.getfixturevalue(model)
    mask = square_mask()
    run = dm.inpaint(smooth_image, mask, steps=4, seed=0)
    out, source = pixels(run.image), pixels(smooth_image)
    assert (out[mask == 0] == source[mask == 0]).all()
    assert np.abs(out[mask > 0] - source[mask > 0]).mean() > 2  # the model painted the hole
    again = dm.inpaint(smooth_image, mask, steps=4, seed=0)
    assert (pixels(again.image) == out).all()


def test_inpainting_reimposes_the_known_latent_cells(kl_ldm, smooth_image):
    """Latent cells the mask does not touch end as the input's encoding; touched cells are sampled."""
    run = kl_ldm.inpaint(smooth_image, square_mask(), steps=3, seed=0)
    x0 = kl_ldm.codec.encode(genlab.imaging.io.pil_to_tensor(smooth_image))
    keep = torch.ones(1, 1, 8, 8)
    keep[..., 2:5, 2:5] = 0  # pixels 4..9 touch latent cells 2..4 (f = 2)
    final = run.trajectory.final
    torch.testing.assert_close(final * keep, x0 * keep)
    assert (final - x0)[..., 2:5, 2:5].abs().mean() > 0.05


def test_inpainting_takes_an_editor_layer_and_other_sizes(tiny_dm, smooth_image):
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # a brush layer at twice the image size
    layer.paste((255, 255, 255, 255), (8, 8, 20, 20))
    run = tiny_dm.inpaint(smooth_image, layer, steps=2, seed=0)
    out, source = pixels(run.image), pixels(smooth_image)
    assert (out[:4] == source[:4]).all() and (out[4:10, 4:10] != source[4:10, 4:10]).any()


@pytest.mark.parametrize("mask, message", [
    (np.zeros((16, 16)), "empty"),
    (np.ones((8, 8)), "8x8 but the image is 16x16"),
    (np.ones((2, 16, 16)), "must be"),
    (np.full((16, 16), np.nan), "NaN"),
    (Image.new("L", (40, 16), 255), "40x16"),
    ("mask.png", "must be an image"),
])
def test_bad_masks_are_refused(tiny_dm, smooth_image, mask, message):
    with pytest.raises(ValueError, match=message):
        tiny_dm.inpaint(smooth_image, mask, steps=1)


# --------------------------------------------------------------------------- KL autoencoders
def test_kl_autoencoder_reconstructs_with_its_rate(tiny_kl_ldm_dir, smooth_image):
    vae = genlab.load_autoencoder(tiny_kl_ldm_dir, device="cpu")  # a pipeline root gives its vae/
    assert isinstance(vae, KLAutoencoder) and vae.downsample_factor == 2
    result = vae.reconstruct(smooth_image, seed=0)
    assert result.image.size == result.sample.size == (16, 16) and result.std_map.shape == (8, 8)
    assert result.latent_shape == (4, 8, 8)
    posterior = vae.posterior(genlab.imaging.io.pil_to_tensor(smooth_image))
    expected_bits = float(posterior.kl().sum()) / math.log(2)  # diffusers' own KL against N(0, I)
    assert result.kl_bits == pytest.approx(expected_bits, rel=1e-4)
    assert result.bits_per_pixel == pytest.approx(expected_bits / 256, rel=1e-4)
    assert np.isfinite(result.psnr) and 0 < result.ssim <= 1
    assert (pixels(result.sample) != pixels(result.image)).any()  # a posterior sample is not the mean
    assert (pixels(vae.reconstruct(smooth_image, seed=0).sample) == pixels(result.sample)).all()


def test_load_autoencoder_gives_vq_models_as_vq(tiny_vq_dir, tiny_vq_ldm_dir):
    assert isinstance(genlab.load_autoencoder(tiny_vq_dir, device="cpu"), genlab.VQ)
    assert isinstance(genlab.load_autoencoder(tiny_vq_ldm_dir, device="cpu"), genlab.VQ)


def test_load_autoencoder_refuses_other_models(tiny_ddpm_dir):
    with pytest.raises(ModelLoadError, match="not a VQModel or an AutoencoderKL"):
        genlab.load_autoencoder(tiny_ddpm_dir, device="cpu")


# ---------------------------------------------------------------------------------- revisions
@pytest.mark.parametrize("text, source, revision, subfolder", [
    ("a/b", "a/b", None, None),
    ("a/b@refs/pr/7", "a/b", "refs/pr/7", None),
    ("a/b@v1.0#vqvae", "a/b", "v1.0", "vqvae"),
    ("CompVis/ldm-celebahq-256@0123abcd#unet", "CompVis/ldm-celebahq-256", "0123abcd", "unet"),
])
def test_revision_parsing(text, source, revision, subfolder):
    spec = ModelSpec.parse(text)
    assert (spec.source, spec.revision, spec.subfolder) == (source, revision, subfolder)
    assert ModelSpec.parse(spec.label) == spec


@pytest.mark.parametrize("text, message", [("a/b@", "empty revision"), ("a/b@bad rev", "not a Hub revision"),
                                           ("a/b@../x", "not a Hub revision"), ("@main", "empty model source")])
def test_bad_revisions_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec.parse(text)


def test_revision_on_the_command_line_and_in_genlab_models():
    config = parse_args(["--model", "diffusion=CompVis/ldm-celebahq-256@refs/pr/7"],
                        environ={"GENLAB_MODELS": "vq=amused/amused-256@main#vqvae"})
    assert config.diffusion_models["CompVis/ldm-celebahq-256@refs/pr/7"].revision == "refs/pr/7"
    assert config.vq_models["amused/amused-256@main#vqvae"].subfolder == "vqvae"
    with pytest.raises(SystemExit):
        parse_args(["--model", "diffusion=a/b@bad rev"], environ={})


def test_a_revision_of_a_local_folder_is_refused(tiny_ddpm_dir):
    with pytest.raises(ModelLoadError, match="Hub repos only"):
        resolve_source(tiny_ddpm_dir, revision="main")
    with pytest.raises(ValueError, match="not a Hub revision"):
        genlab.load_diffusion(tiny_ddpm_dir, revision="a b", device="cpu")


# ------------------------------------------------------------- safetensors conversion pull requests
class FakeDiscussion:
    def __init__(self, num: int, author: str, is_pull_request: bool = True, status: str = "open"):
        self.num, self.author, self.is_pull_request, self.status = num, author, is_pull_request, status


@pytest.fixture
def fake_hub(tmp_path, tiny_vq_dir, monkeypatch):
    """A Hub repo 'owner/classic' whose main holds a pickle-only VQModel and whose refs/pr/7 holds safetensors;
    returns the list of pull requests the mocked discussion API answers, and the revisions downloaded."""
    import shutil

    import huggingface_hub

    main = tmp_path / "main"
    main.mkdir()
    shutil.copy(tiny_vq_dir / "config.json", main / "config.json")
    (main / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    converted = shutil.copytree(tiny_vq_dir, tmp_path / "pr7")
    discussions: list[FakeDiscussion] = []
    downloaded: list[str | None] = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, ignore_patterns=None, **_):
        assert repo_id == "owner/classic"
        downloaded.append(revision)
        if revision in (None, "main"):
            return str(main)
        if revision == "refs/pr/7":
            return str(converted)
        import httpx

        response = httpx.Response(404, request=httpx.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
        raise huggingface_hub.errors.RevisionNotFoundError(f"no revision {revision}", response=response)

    def list_repo_files(repo_id, revision=None, **_):
        return ["config.json", "diffusion_pytorch_model.bin"] if revision in (None, "main") else \
            ["config.json", "diffusion_pytorch_model.safetensors"]

    def get_repo_discussions(repo_id, repo_type=None, **_):
        assert repo_id == "owner/classic"
        return iter(discussions)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "get_repo_discussions", get_repo_discussions)
    genlab.loading.hub.CONVERSIONS.clear()
    return discussions, downloaded


def test_conversion_pr_by_the_bot_is_used_and_named(fake_hub):
    discussions, downloaded = fake_hub
    discussions += [FakeDiscussion(3, "someone", is_pull_request=False), FakeDiscussion(7, "SFconvertbot")]
    vq = genlab.load_vq("owner/classic", device="cpu")
    assert downloaded == [None, "refs/pr/7"]
    assert "refs/pr/7" in vq.name and "SFconvertbot" in vq.name


@pytest.mark.parametrize("pull_requests", [
    [FakeDiscussion(7, "mallory")],  # anyone can open a pull request: not trusted
    [FakeDiscussion(7, "SFconvertbot", status="closed")],
    [FakeDiscussion(7, "SFconvertbot", is_pull_request=False)],
    [],
])
def test_pickle_only_main_without_a_bot_pr_is_refused(fake_hub, pull_requests):
    discussions, downloaded = fake_hub
    discussions += pull_requests
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        genlab.load_vq("owner/classic", device="cpu")
    assert downloaded == [None]


def test_an_explicit_revision_is_not_swapped_for_a_conversion(fake_hub):
    discussions, downloaded = fake_hub
    discussions.append(FakeDiscussion(7, "SFconvertbot"))
    vq = genlab.load_vq("owner/classic", revision="refs/pr/7", device="cpu")
    assert downloaded == ["refs/pr/7"] and "SFconvertbot" not in vq.name
    with pytest.raises(ModelLoadError, match="no revision 'v9'"):
        genlab.load_vq("owner/classic", revision="v9", device="cpu")


# ------------------------------------------------------------------------- clipping x0_hat
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_model_output_for_inverts_the_x0_prediction(prediction_type):
    from genlab.diffusion.schedule import model_output_for, predict_x0_and_eps

    alphas_cumprod = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    x_t, x0 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    output = model_output_for(x0, x_t, 700, alphas_cumprod, prediction_type)
    torch.testing.assert_close(predict_x0_and_eps(output, x_t, 700, alphas_cumprod, prediction_type)[0], x0,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scheduler", sorted(genlab.SCHEDULERS))
def test_a_latent_models_clip_range_bounds_x0_for_every_scheduler(tiny_kl_ldm_dir, tmp_path, scheduler):
    """genlab.json's clip_sample_range: each step's x0_hat, and the sample DDIM ends on, stay in range."""
    import json
    import shutil

    root = shutil.copytree(tiny_kl_ldm_dir, tmp_path / "clipped")
    info = json.loads((root / "genlab.json").read_text())
    (root / "genlab.json").write_text(json.dumps({**info, "clip_sample_range": 0.05}))
    free = genlab.load_diffusion(tiny_kl_ldm_dir, device="cpu").sample(seed=0, steps=4, scheduler=scheduler)
    run = genlab.load_diffusion(root, device="cpu").sample(seed=0, steps=4, scheduler=scheduler)
    assert max(float(step.pred_x0.abs().max()) for step in free.trajectory.steps) > 0.05  # the clip matters here
    assert all(float(step.pred_x0.abs().max()) <= 0.05 + 1e-6 for step in run.trajectory.steps)
    if scheduler == "ddim":  # DDIM's last step returns x0_hat itself
        assert float(run.trajectory.final.abs().max()) <= 0.05 + 1e-4


def test_per_channel_clip_bounds(kl_ldm):
    from genlab.diffusion.schedule import clip_range

    x = torch.full((1, 4, 2, 2), 5.0)
    clipped = clip_range(x, ([-1, -2, -3, -4], [1, 2, 3, 4]))
    assert clipped[0, :, 0, 0].tolist() == [1, 2, 3, 4]
    assert clip_range(-x, 2.5).min() == -2.5


def test_latent_training_scheduler_samples_from_leading_timesteps():
    """ldm's scheduler: no [-1, 1] clipping and 'leading' timesteps, so DDIM never steps from t = 999 of the
    capped cosine schedule (abar_999 = 2.4e-9); pixel models keep their settings."""
    from genlab.diffusion.schedule import make_scheduler
    from genlab.train.cli import parse_args
    from genlab.train.ddpm import build_scheduler

    latent = build_scheduler(parse_args(["ldm", "--data", "d", "--out", "o", "--vae", "v"]))
    pixel = build_scheduler(parse_args(["ddpm", "--data", "d", "--out", "o"]))
    assert not latent.config.clip_sample and pixel.config.clip_sample
    sampler = make_scheduler(latent.config, "ddim")
    sampler.set_timesteps(50)
    assert int(sampler.timesteps[0]) == 980 and float(latent.alphas_cumprod[999]) < 1e-8
    pixel_sampler = make_scheduler(pixel.config, "ddim")
    pixel_sampler.set_timesteps(50)
    assert int(pixel_sampler.timesteps[0]) == 999
