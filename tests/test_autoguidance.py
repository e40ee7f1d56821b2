"""Autoguidance (Karras et al. 2024, arXiv:2406.02507) in GenLab's one reverse loop: a model folder's unet_guide/ is
a weaker UNet of the same task, and each guided step adds (w_ag - 1)(eps_cond - eps_guide) to the classifier-free
mix, eps_uncond + w (eps_cond - eps_uncond)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import genlab
from conftest import build_latent_pipeline, build_sd_pipeline, build_unet


@pytest.fixture
def guided_dir(tiny_cond_ddpm_dir, tmp_path):
    """The tiny class-conditional pixel model with a guide network (the same layout, other weights)."""
    folder = shutil.copytree(tiny_cond_ddpm_dir, tmp_path / "guided")
    build_unet(folder / "unet_guide", seed=7, num_class_embeds=3)
    return folder


def _set_info(folder, **fields):
    info = json.loads((folder / "genlab.json").read_text())
    (folder / "genlab.json").write_text(json.dumps({**info, **fields}))


def _one_step_outputs(dm, sample, timestep, labels):
    """eps_cond, eps_uncond and eps_guide of the tiny model at (sample, timestep), computed here by hand."""
    with torch.no_grad():
        cond = dm.unet(sample, timestep, class_labels=labels).sample
        uncond = dm.unet(sample, timestep, class_labels=torch.full_like(labels, dm.null_class)).sample
        guide = dm.guide(sample, timestep, class_labels=labels).sample
    return cond, uncond, guide


@pytest.mark.parametrize("w, w_ag", [(1.0, 2.5), (3.0, 2.0), (3.0, 1.0)])
def test_a_step_mixes_the_three_predictions_as_the_paper_says(guided_dir, monkeypatch, w, w_ag):
    dm = genlab.load_diffusion(guided_dir, device="cpu")
    assert dm.has_guide and dm.default_autoguidance_scale == 1.0
    seen = []
    original = genlab.diffusion.loop.predict_x0_and_eps

    def spy(output, sample, t, alphas_cumprod, prediction_type):
        seen.append((output.clone(), sample.clone(), t))
        return original(output, sample, t, alphas_cumprod, prediction_type)

    monkeypatch.setattr(genlab.diffusion.loop, "predict_x0_and_eps", spy)
    dm.sample(seed=2, steps=3, scheduler="ddim", batch=2, class_label="b", guidance_scale=w, autoguidance_scale=w_ag)
    assert len(seen) == 3
    labels = torch.full((2,), 1)
    for output, sample, t in seen:
        cond, uncond, guide = _one_step_outputs(dm, sample, torch.tensor(t), labels)
        expected = (uncond + w * (cond - uncond) if w != 1.0 else cond) + (w_ag - 1.0) * (cond - guide)
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)


def test_autoguidance_at_1_is_the_run_without_it_and_costs_nothing(guided_dir, monkeypatch):
    dm = genlab.load_diffusion(guided_dir, device="cpu")
    calls = []
    monkeypatch.setattr(dm.guide, "forward", lambda *a, **k: calls.append(1) or pytest.fail("guide called"))
    run = dict(seed=4, steps=4, scheduler="ddim", class_label="a", guidance_scale=2.0)
    plain = dm.sample(**run).final_pixels
    assert torch.equal(dm.sample(**run, autoguidance_scale=1.0).final_pixels, plain)
    assert not calls


def test_autoguidance_changes_the_sample_and_is_deterministic(guided_dir):
    dm = genlab.load_diffusion(guided_dir, device="cpu")
    run = dict(seed=4, steps=4, scheduler="ddim", class_label="a", guidance_scale=2.0, autoguidance_scale=2.0)
    first = dm.sample(**run).final_pixels
    assert torch.equal(dm.sample(**run).final_pixels, first)
    assert not torch.equal(dm.sample(**{**run, "autoguidance_scale": 1.0}).final_pixels, first)


def test_an_unconditional_run_keeps_autoguidance(guided_dir, monkeypatch):
    """Classifier-free guidance needs a condition; autoguidance does not (the paper guides unconditional models)."""
    dm = genlab.load_diffusion(guided_dir, device="cpu")
    calls = []
    forward = dm.guide.forward
    monkeypatch.setattr(dm.guide, "forward",
                        lambda *a, **k: calls.append(k["class_labels"].tolist()) or forward(*a, **k))
    unguided = dm.sample(seed=1, steps=3, guidance_scale=3.0).final_pixels
    assert not calls
    guided = dm.sample(seed=1, steps=3, guidance_scale=3.0, autoguidance_scale=2.0).final_pixels
    assert calls == [[dm.null_class]] * 3  # the guide sees the run's own (null) class
    assert not torch.equal(guided, unguided)


def test_the_guidance_interval_bounds_autoguidance_too(guided_dir, monkeypatch):
    dm = genlab.load_diffusion(guided_dir, device="cpu")
    calls = []
    forward = dm.guide.forward
    monkeypatch.setattr(dm.guide, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    run = dm.sample(seed=0, steps=6, class_label="a", guidance_scale=2.0, autoguidance_scale=2.0)
    sigmas = sorted(float(((1 - dm.alphas_cumprod[t]) / dm.alphas_cumprod[t]) ** 0.5) for t in run.timesteps)
    calls.clear()
    dm.sample(seed=0, steps=6, class_label="a", guidance_scale=2.0, autoguidance_scale=2.0,
              guidance_interval=(sigmas[1], sigmas[4]))
    assert len(calls) == 3


def test_a_models_default_autoguidance_comes_from_genlab_json(guided_dir):
    _set_info(guided_dir, default_autoguidance_scale=2.0)
    dm = genlab.load_diffusion(guided_dir, device="cpu")
    assert dm.default_autoguidance_scale == 2.0
    run = dict(seed=3, steps=3, class_label="a")
    assert torch.equal(dm.sample(**run).final_pixels, dm.sample(**run, autoguidance_scale=2.0).final_pixels)
    assert not torch.equal(dm.sample(**run).final_pixels, dm.sample(**run, autoguidance_scale=1.0).final_pixels)


@pytest.mark.parametrize("value, message", [
    (0.5, r"autoguidance scale must be a number in \[1, 30\]"),
    (-1, r"autoguidance scale must be a number in \[1, 30\]"),
    (float("nan"), "autoguidance scale must be a number"),
    (31.0, "autoguidance scale must be a number"),
    ("2", "autoguidance scale must be a number"),
    (True, "autoguidance scale must be a number"),
])
def test_bad_autoguidance_scales_are_refused(guided_dir, value, message):
    dm = genlab.load_diffusion(guided_dir, device="cpu")
    with pytest.raises(ValueError, match=message):
        dm.sample(seed=0, steps=2, class_label="a", autoguidance_scale=value)


def test_autoguidance_without_a_guide_is_a_clear_error(tiny_cond_dm):
    assert not tiny_cond_dm.has_guide
    with pytest.raises(ValueError, match=r"no guide network \(unet_guide/\), which autoguidance needs"):
        tiny_cond_dm.sample(seed=0, steps=2, class_label="a", autoguidance_scale=2.0)
    tiny_cond_dm.sample(seed=0, steps=2, class_label="a", autoguidance_scale=1.0)  # off: fine


@pytest.mark.parametrize("value", [0.5, "two", None])
def test_bad_default_autoguidance_in_genlab_json_is_refused(guided_dir, value):
    _set_info(guided_dir, default_autoguidance_scale=value)
    with pytest.raises(genlab.ModelLoadError, match="default_autoguidance_scale"):
        genlab.load_diffusion(guided_dir, device="cpu")


def test_a_default_autoguidance_without_a_guide_does_not_load(tiny_cond_ddpm_dir, tmp_path):
    folder = shutil.copytree(tiny_cond_ddpm_dir, tmp_path / "no-guide")
    _set_info(folder, default_autoguidance_scale=2.0)
    with pytest.raises(genlab.ModelLoadError, match=r"no guide network \(unet_guide/\)"):
        genlab.load_diffusion(folder, device="cpu")


@pytest.mark.parametrize("overrides, message", [
    (dict(num_class_embeds=5), "num_class_embeds 5, the model 3"),
    (dict(num_class_embeds=3, in_channels=1, out_channels=1), "in_channels 1, the model 3"),
])
def test_a_guide_of_another_task_does_not_load(tiny_cond_ddpm_dir, tmp_path, overrides, message):
    folder = shutil.copytree(tiny_cond_ddpm_dir, tmp_path / "bad-guide")
    build_unet(folder / "unet_guide", seed=7, **overrides)
    with pytest.raises(genlab.ModelLoadError, match=message):
        genlab.load_diffusion(folder, device="cpu")


def test_latent_and_text_models_take_a_guide_beside_unet(tmp_path):
    """Pipeline folders hold unet_guide/ beside unet/; a latent class model and a Stable Diffusion layout both run
    it, and diffusers' own pipeline ignores the extra folder."""
    from diffusers import DiffusionPipeline

    latent = build_latent_pipeline(tmp_path / "ldm", "vae", num_class_embeds=3)
    (latent / "genlab.json").write_text(json.dumps({"kind": "diffusion", "classes": ["a", "b"], "null_class": 2}))
    shutil.copytree(latent / "unet", latent / "unet_guide")
    dm = genlab.load_diffusion(latent, device="cpu")
    assert dm.has_guide and dm.is_latent
    # a guide equal to the model: eps_cond - eps_guide = 0, so any autoguidance scale changes nothing
    run = dict(seed=0, steps=3, class_label="a")
    torch.testing.assert_close(dm.sample(**run, autoguidance_scale=3.0).final_pixels, dm.sample(**run).final_pixels)

    sd = build_sd_pipeline(tmp_path / "sd")
    build_sd_pipeline(tmp_path / "sd-other", seed=5)
    shutil.copytree(tmp_path / "sd-other" / "unet", sd / "unet_guide")
    dm = genlab.load_diffusion(sd, device="cpu")
    run = dict(seed=0, steps=3, prompt="red heart", scheduler="dpm++")
    guided = dm.sample(**run, autoguidance_scale=2.0, attention_maps=True)
    assert not torch.equal(guided.final_pixels, dm.sample(**run).final_pixels)
    assert list(guided.attention_maps) == ["red", "heart"]
    assert DiffusionPipeline.from_pretrained(sd).unet is not None
