"""genlab.json's one schema (genlab.loading.schema.ModelInfo): the shipped files round-trip, bad files are refused by
key, and every loader reads it through the schema, so a bad value is a ModelLoadError naming the file and the key."""

from __future__ import annotations

import json
import shutil

import pytest

import genlab
from genlab.loading.registry import WEIGHTS_DIR
from genlab.loading.schema import FILENAME, ModelInfo, read_model_info, write_model_info

SHIPPED = sorted(WEIGHTS_DIR.rglob(FILENAME))


def test_weights_ship_genlab_json_files():
    assert len(SHIPPED) >= 6, SHIPPED  # the six embedded models, plus the autoencoders inside pipelines


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: str(path.relative_to(WEIGHTS_DIR)))
def test_each_shipped_genlab_json_round_trips(path, tmp_path):
    info = read_model_info(path.parent)
    assert info.to_dict() == json.loads(path.read_text())  # every key read, none invented
    assert write_model_info(tmp_path, info) == info
    assert read_model_info(tmp_path) == info and json.loads((tmp_path / FILENAME).read_text()) == info.to_dict()


def test_a_folder_without_genlab_json_has_empty_info(tmp_path):
    assert read_model_info(tmp_path) == ModelInfo() and ModelInfo.of(None) == ModelInfo()
    assert ModelInfo().to_dict() == {}


@pytest.mark.parametrize("data, message", [
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ({"kind": "gan"}, "kind in genlab.json must be one of"),
    ({"title": ""}, "title in genlab.json must be a non-empty string"),
    ({"classes": "abc"}, "classes in genlab.json must be a list of non-empty strings"),
    ({"classes": ["a", "a"]}, "classes in genlab.json must be distinct"),
    ({"null_class": -1}, r"null_class in genlab.json must be an integer >= 0, got -1"),
    ({"null_class": 1.5}, r"null_class in genlab.json must be an integer >= 0, got 1.5"),
    ({"default_guidance_scale": "7"}, r"default_guidance_scale in genlab.json must be a number in \[0, 30\]"),
    ({"default_guidance_scale": 31}, r"default_guidance_scale in genlab.json must be a number in \[0, 30\], got 31"),
    ({"default_guidance_interval": [5, 1]}, r"default_guidance_interval in genlab.json must be two noise levels"),
    ({"default_guidance_interval": [0.5]}, r"default_guidance_interval in genlab.json must be two noise levels"),
    ({"default_guidance_interval": "0.5,5"}, r"default_guidance_interval in genlab.json must be \[low, high\]"),
    ({"default_guidance_interval": [0, 1e400]}, r"default_guidance_interval in genlab.json must be \[low, high\], two"),
    ({"default_guidance_interval": [True, 2]}, r"default_guidance_interval in genlab.json must be \[low, high\]"),
    ({"default_choice_temperature": 21}, r"default_choice_temperature in genlab.json must be a number in \[0, 20\]"),
    ({"default_choice_temperature": True}, r"default_choice_temperature in genlab.json must be a number in \[0, 20\]"),
    ({"clip_sample_range": 0}, "clip_sample_range in genlab.json must be a number > 0 or per-channel"),
    ({"clip_sample_range": [[1, -1]]}, "clip_sample_range in genlab.json must be a number > 0 or per-channel"),
    ({"tile": 0}, r"tile in genlab.json must be an integer > 0, got 0"),
    ({"grid": 8.0}, r"grid in genlab.json must be an integer > 0, got 8.0"),
    ({"background": {"code": 1.5}}, "background in genlab.json must be"),
    ({"background": {"margin": 1}}, "background in genlab.json must be"),
    ({"latent_statistics": {"std": -1}}, "latent_statistics std in genlab.json must be a number > 0"),
])
def test_bad_values_are_refused_by_name(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        ModelInfo.from_dict(data)
    (tmp_path / FILENAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as error:
        read_model_info(tmp_path)
    assert str(tmp_path / FILENAME) in str(error.value)  # the file is named too
    with pytest.raises(ValueError, match=message):
        write_model_info(tmp_path / "elsewhere", data)


def test_a_key_written_as_null_is_refused_in_a_file(tmp_path):
    (tmp_path / FILENAME).write_text(json.dumps({"tile": None}))
    with pytest.raises(ValueError, match="tile in genlab.json must be an integer > 0, got None"):
        read_model_info(tmp_path)


def test_unreadable_json_is_refused(tmp_path):
    (tmp_path / FILENAME).write_text("{'kind': 'vq'")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_model_info(tmp_path)
    (tmp_path / FILENAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold an object"):
        read_model_info(tmp_path)


def test_values_are_stored_typed():
    info = ModelInfo.from_dict({"classes": ["a", "b"], "clip_sample_range": [[-1, 1], [-2, 2]],
                                "default_guidance_scale": 3, "default_guidance_interval": [0, 5]})
    assert info.classes == ("a", "b") and info.clip_sample_range == ((-1.0, 1.0), (-2.0, 2.0))
    assert info.default_guidance_interval == (0.0, 5.0) and info.to_dict()["default_guidance_interval"] == [0.0, 5.0]
    assert isinstance(info.default_guidance_scale, float)
    assert ModelInfo.from_dict(info.to_dict()) == info


@pytest.mark.parametrize("loader, fixture, part", [
    ("load_vq", "tiny_vq_dir", ""), ("load_diffusion", "tiny_cond_ddpm_dir", ""),
    ("load_diffusion", "tiny_kl_ldm_dir", ""), ("load_autoencoder", "tiny_kl_ldm_dir", "vae"),
    ("load_prior", "tiny_prior_dir", ""), ("load_prior", "tiny_prior_dir", "vqvae"),
])
def test_a_folder_with_a_bad_genlab_json_fails_to_load_naming_file_and_key(request, tmp_path, loader, fixture, part):
    folder = shutil.copytree(request.getfixturevalue(fixture), tmp_path / "model")
    path = folder / part / FILENAME
    info = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**info, "tile": -3}))
    with pytest.raises(genlab.ModelLoadError, match="tile in genlab.json must be an integer > 0, got -3") as error:
        getattr(genlab, loader)(folder, device="cpu")
    assert str(path) in str(error.value)


def test_a_diffusion_model_reads_its_info_typed(tiny_cond_ddpm_dir):
    dm = genlab.load_diffusion(tiny_cond_ddpm_dir, device="cpu")
    assert dm.classes == ["a", "b"] and dm.null_class == 2
    direct = genlab.DiffusionModel(dm.unet, dm.scheduler_config, ModelInfo(classes=("a", "b"), null_class=2,
                                                                           default_guidance_scale=4.0))
    assert direct.classes == dm.classes and direct.null_class == 2 and direct.default_guidance_scale == 4.0


def test_per_channel_clip_pairs_must_match_the_latent(tiny_kl_ldm_dir, tmp_path):
    folder = shutil.copytree(tiny_kl_ldm_dir, tmp_path / "model")
    info = json.loads((folder / FILENAME).read_text())
    (folder / FILENAME).write_text(json.dumps({**info, "clip_sample_range": [[-1, 1]] * 3}))
    with pytest.raises(genlab.ModelLoadError, match="3 \\(low, high\\) pairs for a 4-channel latent"):
        genlab.load_diffusion(folder, device="cpu")
    (folder / FILENAME).write_text(json.dumps({**info, "clip_sample_range": [[-1, 1], [-2, 2], [-3, 3], [-4, 4]]}))
    ldm = genlab.load_diffusion(folder, device="cpu")
    assert ldm.latent_clip == ((-1.0, -2.0, -3.0, -4.0), (1.0, 2.0, 3.0, 4.0))  # (lows, highs) for clip_range
    run = ldm.sample(seed=0, steps=2)
    bounds = torch_bounds(run.trajectory.steps[0].pred_x0)
    assert all(low >= -c - 1e-6 and high <= c + 1e-6 for (low, high), c in zip(bounds, (1, 2, 3, 4)))


def torch_bounds(x):
    """(min, max) of each channel of a (B, C, h, w) tensor."""
    return [(float(x[:, c].min()), float(x[:, c].max())) for c in range(x.shape[1])]
