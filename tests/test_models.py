"""genlab.loading.loaders: loading tiny diffusers checkpoints, refusing bad ones, devices and the cache."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import genlab
import genlab.loading.loaders
from genlab.imaging.io import pil_to_tensor, tensor_to_uint8

from conftest import DOWNSAMPLE, NUM_CODES

WEIGHTS = "diffusion_pytorch_model.safetensors"


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def edit_weights(folder, edit) -> None:
    state = load_file(folder / WEIGHTS)
    edit(state)
    save_file(state, folder / WEIGHTS)


def assert_matches_diffusers_forward(vq, image: Image.Image) -> None:
    """GenLab's encode -> indices -> decode equals diffusers' own VQModel forward pass."""
    rec = vq.reconstruct(image)
    with torch.inference_mode():
        reference = vq.model(pil_to_tensor(image)).sample
    difference = np.abs(tensor_to_uint8(reference).astype(int) - np.asarray(rec.image, dtype=int))
    assert difference.max() <= 1


# ----------------------------------------------------------------------------- loading
def test_load_vq_from_local_folder(tiny_vq_dir):
    vq = genlab.load_vq(tiny_vq_dir, device="cpu")
    assert isinstance(vq, genlab.VQ)
    assert vq.num_codes == NUM_CODES and vq.downsample_factor == DOWNSAMPLE
    assert vq.name == str(tiny_vq_dir)
    assert not vq.model.training and not any(p.requires_grad for p in vq.model.parameters())
    assert_matches_diffusers_forward(vq, random_image(16, 12))


def test_load_vq_from_subfolder(tiny_vq_nested_dir):
    vq = genlab.load_vq(tiny_vq_nested_dir, subfolder="vqvae", device="cpu")
    assert vq.num_codes == NUM_CODES
    assert vq.name == f"{tiny_vq_nested_dir}#vqvae"
    assert_matches_diffusers_forward(vq, random_image(8, 8))


def test_pipeline_root_without_subfolder_is_refused(tiny_vq_nested_dir):
    with pytest.raises(genlab.ModelLoadError, match="config.json"):
        genlab.load_vq(tiny_vq_nested_dir, device="cpu")


def test_missing_subfolder_is_refused(tiny_vq_nested_dir):
    with pytest.raises(genlab.ModelLoadError, match="not a folder"):
        genlab.load_vq(tiny_vq_nested_dir, subfolder="unet", device="cpu")


@pytest.mark.parametrize("fixture", ["tiny_vq_dir", "tiny_vq_lookup_dir"])
def test_lookup_from_codebook_either_way_reconstructs(fixture, request):
    folder = request.getfixturevalue(fixture)
    vq = genlab.load_vq(folder, device="cpu")
    assert vq.model.config.lookup_from_codebook == (fixture == "tiny_vq_lookup_dir")
    image = random_image(16, 16, seed=1)
    rec = vq.reconstruct(image)
    assert rec.image.size == image.size and np.isfinite(rec.psnr)
    assert rec.indices.shape == (16 // DOWNSAMPLE, 16 // DOWNSAMPLE)
    assert (np.asarray(vq.decode_indices(rec.indices)) == np.asarray(rec.image)).all()
    assert_matches_diffusers_forward(vq, image)


def test_vq_embed_dim_different_from_latent_channels(tiny_vq_embed_dir):
    vq = genlab.load_vq(tiny_vq_embed_dir, device="cpu")
    assert vq.model.config.latent_channels == 4 and vq.code_dim == 6
    assert tuple(vq.codebook.shape) == (NUM_CODES, 6)
    image = random_image(12, 8, seed=2)
    rec = vq.reconstruct(image)
    assert rec.image.size == (12, 8) and rec.indices.shape == (4, 6)
    assert (np.asarray(vq.decode_indices(rec.indices)) == np.asarray(rec.image)).all()
    assert_matches_diffusers_forward(vq, image)


def test_load_diffusion_from_local_folder(tiny_ddpm_dir):
    dm = genlab.load_diffusion(tiny_ddpm_dir, device="cpu")
    assert isinstance(dm, genlab.DiffusionModel)
    assert dm.sample_size == 16 and dm.num_train_timesteps == 1000 and not dm.is_conditional
    assert dm.alphas_cumprod.shape == (1000,)


def test_load_diffusion_reads_genlab_json(tiny_cond_ddpm_dir):
    dm = genlab.load_diffusion(tiny_cond_ddpm_dir, device="cpu")
    assert dm.is_conditional and dm.classes == ["a", "b"] and dm.null_class == 2


def test_unet_without_scheduler_config_is_refused(tiny_ddpm_dir, tmp_path):
    folder = tmp_path / "unet-only"
    folder.mkdir()
    for name in ("config.json", WEIGHTS):
        (folder / name).write_bytes((tiny_ddpm_dir / name).read_bytes())
    with pytest.raises(genlab.ModelLoadError, match="scheduler_config.json"):
        genlab.load_diffusion(folder, device="cpu")


def test_wrong_model_class_is_refused(tiny_vq_dir, tiny_ddpm_dir):
    with pytest.raises(genlab.ModelLoadError, match="not a VQModel"):
        genlab.load_vq(tiny_ddpm_dir, device="cpu")
    with pytest.raises(genlab.ModelLoadError, match="not a UNet2DModel"):
        genlab.load_diffusion(tiny_vq_dir, device="cpu")


# ----------------------------------------------------------------------- bad checkpoints
def test_pickle_only_checkpoint_refused_without_reading_it(vq_copy, monkeypatch):
    (vq_copy / WEIGHTS).unlink()
    (vq_copy / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle, never to be read")
    calls = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(genlab.ModelLoadError, match="safetensors") as error:
        genlab.load_vq(vq_copy, device="cpu")
    assert "diffusion_pytorch_model.bin" in str(error.value) and "pickle" in str(error.value)
    assert calls == []


def test_folder_without_any_weights_refused(vq_copy):
    (vq_copy / WEIGHTS).unlink()
    with pytest.raises(genlab.ModelLoadError, match="no .safetensors"):
        genlab.load_vq(vq_copy, device="cpu")


def test_truncated_safetensors_refused(vq_copy):
    path = vq_copy / WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(genlab.ModelLoadError, match="cannot load VQModel"):
        genlab.load_vq(vq_copy, device="cpu")


def test_unreadable_config_refused(vq_copy):
    (vq_copy / "config.json").write_text("{not json")
    with pytest.raises(genlab.ModelLoadError, match="config.json"):
        genlab.load_vq(vq_copy, device="cpu")


def test_missing_key_refused_and_named(vq_copy):
    edit_weights(vq_copy, lambda state: state.pop("decoder.conv_out.weight"))
    with pytest.raises(genlab.ModelLoadError, match="missing keys") as error:
        genlab.load_vq(vq_copy, device="cpu")
    assert "decoder.conv_out.weight" in str(error.value)


def test_unexpected_key_refused_and_named(vq_copy):
    edit_weights(vq_copy, lambda state: state.__setitem__("extra_head.weight", torch.zeros(3)))
    with pytest.raises(genlab.ModelLoadError, match="unexpected keys") as error:
        genlab.load_vq(vq_copy, device="cpu")
    assert "extra_head.weight" in str(error.value)


def test_mismatched_shape_refused_and_named(vq_copy):
    edit_weights(vq_copy, lambda state: state.__setitem__("decoder.conv_out.bias", torch.zeros(2)))
    with pytest.raises(genlab.ModelLoadError) as error:
        genlab.load_vq(vq_copy, device="cpu")
    assert "decoder.conv_out.bias" in str(error.value)


def test_checkpoint_without_scaling_factor_gets_one(vq_copy, tiny_vq_dir):
    assert genlab.load_vq(tiny_vq_dir, device="cpu").model.config.scaling_factor == pytest.approx(0.18215)
    config = json.loads((vq_copy / "config.json").read_text())
    del config["scaling_factor"]
    (vq_copy / "config.json").write_text(json.dumps(config))
    vq = genlab.load_vq(vq_copy, device="cpu")
    assert vq.model.config.scaling_factor == 1.0


# ------------------------------------------------------------------------------ sources
def test_nonexistent_path_that_is_not_a_repo_id(tmp_path):
    for source in (str(tmp_path / "no" / "such" / "folder"), "./missing-folder", "not a repo id"):
        with pytest.raises(genlab.ModelLoadError, match="neither a local folder nor"):
            genlab.load_vq(source, device="cpu")


def test_offline_hub_repo_id_gives_offline_message(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(genlab.ModelLoadError, match="HF_HUB_OFFLINE=1") as error:
        genlab.load_vq("genlab-tests/no-such-model", subfolder="vqvae", device="cpu")
    message = str(error.value)
    assert "offline" in message.lower() and "genlab-tests/no-such-model" in message


def test_model_spec_parse():
    spec = genlab.ModelSpec.parse("a/b#vqvae")
    assert (spec.source, spec.subfolder, spec.label) == ("a/b", "vqvae", "a/b#vqvae")
    plain = genlab.ModelSpec.parse("  a/b  ")
    assert (plain.source, plain.subfolder, plain.label) == ("a/b", None, "a/b")
    assert genlab.ModelSpec.parse("a/b#").subfolder is None
    with pytest.raises(ValueError, match="empty model source"):
        genlab.ModelSpec.parse("#vqvae")


# ------------------------------------------------------------------------------ devices
def test_cpu_placement(tiny_vq_dir, tiny_ddpm_dir):
    vq = genlab.load_vq(tiny_vq_dir, device="cpu")
    dm = genlab.load_diffusion(tiny_ddpm_dir, device="cpu")
    assert vq.model.device.type == "cpu" and vq.model.dtype == torch.float32
    assert dm.unet.device.type == "cpu" and dm.unet.dtype == torch.float32


def test_cuda_without_cuda_refused(tiny_vq_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(genlab.ModelLoadError, match="no CUDA"):
        genlab.load_vq(tiny_vq_dir, device="cuda")
    with pytest.raises(genlab.ModelLoadError, match="no CUDA"):
        genlab.loading.checkpoints.pick_device("cuda:0")
    assert genlab.loading.checkpoints.pick_device(None).type == "cpu"


def test_unsupported_device_refused():
    with pytest.raises(genlab.ModelLoadError, match="unsupported device"):
        genlab.loading.checkpoints.pick_device("meta")


# -------------------------------------------------------------------------------- cache
def test_cache_returns_the_same_object(tiny_vq_dir, tiny_ddpm_dir):
    first = genlab.load_vq(tiny_vq_dir, device="cpu")
    assert genlab.load_vq(tiny_vq_dir, device="cpu") is first
    assert genlab.load_diffusion(tiny_ddpm_dir, device="cpu") is genlab.load_diffusion(tiny_ddpm_dir, device="cpu")
    genlab.loading.checkpoints.clear_cache()
    assert genlab.load_vq(tiny_vq_dir, device="cpu") is not first


def test_cache_builds_once_under_concurrent_calls(tiny_vq_dir, monkeypatch):
    builds = []
    real_load = genlab.loading.loaders.load_diffusers_model

    def slow_load(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.2)  # widen the window in which a second thread could start its own build
        return real_load(*args, **kwargs)

    monkeypatch.setattr(genlab.loading.loaders, "load_diffusers_model", slow_load)
    barrier = threading.Barrier(6)
    results, errors = [], []

    def worker():
        try:
            barrier.wait()
            results.append(genlab.load_vq(tiny_vq_dir, device="cpu"))
        except Exception as error:  # surfaced by the asserts below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(results) == 6 and all(result is results[0] for result in results)
    assert len(builds) == 1
