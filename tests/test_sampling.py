"""genlab.sampling.SamplingSettings: one frozen, checked object for the knobs of pixel, latent and token runs, built by
the public calls (whose keyword arguments stay as they were) and passed down to the loops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import genlab

import genlab.diffusion.loop
import genlab.priors.sampling
from genlab.sampling import (MAX_DIFFUSION_STEPS, MAX_TOKEN_STEPS, SamplingSettings, check_int, check_number,
                             guides_at, is_integer, is_number, last)


def test_settings_are_frozen_and_plain_python_numbers():
    settings = SamplingSettings(seed=np.int64(3), steps=np.int32(5), scheduler="ddim", guidance_scale=np.float32(2.5))
    assert (settings.seed, settings.steps, settings.guidance_scale) == (3, 5, 2.5)
    assert type(settings.seed) is int and type(settings.guidance_scale) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.steps = 6


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheduler="plms"), "unknown scheduler 'plms'; choose one of"),
    (dict(order="spiral"), "unknown order 'spiral'"),
    (dict(scheduler="ddim", order="confidence"), "not both"),
    (dict(scheduler="ddim", steps=MAX_DIFFUSION_STEPS + 1), rf"steps must be an integer in \[1, {MAX_DIFFUSION_STEPS}\]"),
    (dict(order="random", steps=MAX_TOKEN_STEPS + 1), rf"steps must be an integer in \[1, {MAX_TOKEN_STEPS}\]"),
    (dict(steps=True), r"steps must be an integer in \[1, 1000\], got True"),
    (dict(seed=-1), "seed must be an integer"),
    (dict(batch=17), r"batch must be an integer in \[1, 16\]"),
    (dict(guidance_scale=float("inf")), r"guidance scale must be a number in \[0, 30\]"),
    (dict(guidance_scale="3"), r"guidance scale must be a number in \[0, 30\], got '3'"),
    (dict(eta=1.5), r"eta must be a number in \[0, 1\]"),
    (dict(temperature=0), r"temperature must be a number in \(0, 10\]"),
    (dict(choice_temperature=-1), r"choice temperature must be a number in \[0, 20\]"),
    (dict(refine=9), r"refine must be an integer in \[0, 8\]"),
    (dict(top_k=0, num_codes=16), r"top_k must be an integer in \[1, 16\], got 0"),
    (dict(top_k=17, num_codes=16), r"top_k must be an integer in \[1, 16\], got 17"),
    (dict(guidance_interval=(5.0, 1.0)), r"guidance interval must be two noise levels \(low, high\) with 0 <= low < high"),
    (dict(guidance_interval=(1.0, 1.0)), "0 <= low < high, got"),
    (dict(guidance_interval=(-0.5, 1.0)), "0 <= low < high, got"),
    (dict(guidance_interval=(0.5,)), "two noise levels"),
    (dict(guidance_interval=(0.1, 1.0, 2.0)), "two noise levels"),
    (dict(guidance_interval="0.5,5"), "two noise levels"),
    (dict(guidance_interval=(float("nan"), 1.0)), "two noise levels"),
    (dict(guidance_interval=(0.5, float("nan"))), "two noise levels"),
    (dict(guidance_interval=(float("inf"), float("inf"))), "two noise levels"),
    (dict(guidance_interval=(False, 1.0)), "two noise levels"),
    (dict(guidance_interval=3.0), "two noise levels"),
])
def test_every_range_is_checked_on_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**kwargs)


def test_guidance_interval_is_open_below_closed_above():
    settings = SamplingSettings(guidance_interval=[np.float32(0.5), 4])  # any pair of reals; stored as floats
    assert settings.guidance_interval == (0.5, 4.0) and type(settings.guidance_interval[0]) is float
    assert [guides_at(settings, s) for s in (0.5, 0.51, 4.0, 4.01)] == [False, True, True, False]
    assert all(guides_at(SamplingSettings(), s) for s in (0.0, 1.0, 1e6))  # no interval: every step
    assert guides_at(SamplingSettings(guidance_interval=(0, float("inf"))), 1e9)


def test_raster_order_takes_any_step_count():
    assert SamplingSettings(order="raster", steps=4096).steps == 4096  # one step per masked token


def test_the_helpers_refuse_bools_and_non_finite_values():
    assert is_integer(np.int64(2)) and not is_integer(True) and not is_integer(2.0)
    assert is_number(np.float32(0.5)) and not is_number(False) and not is_number(float("nan"))
    assert check_int(np.int16(3), "n", 0, 5) == 3 and check_number(2, "w", 0, 3) == 2.0
    with pytest.raises(ValueError, match=r"w must be a number in \(0, 3\], got 0"):
        check_number(0, "w", 0, 3, open_low=True)


def test_last_returns_the_end_of_a_stream():
    assert last(iter([1, 2, 3])) == 3 and last(iter([])) is None


def test_diffusion_and_token_loops_take_the_settings_object(tiny_dm, monkeypatch):
    """The public calls build one SamplingSettings (the model's defaults resolved) and hand it down unchanged."""
    seen = []
    original = genlab.diffusion.loop.iterate_reverse

    def spy(unet, scheduler, x_t, settings, **kwargs):
        seen.append(settings)
        return original(unet, scheduler, x_t, settings, **kwargs)

    monkeypatch.setattr(genlab.diffusion.pipeline, "iterate_reverse", spy)
    tiny_dm.sample(seed=4, steps=2, scheduler="ddpm", batch=2, eta=0.5)
    assert seen == [SamplingSettings(seed=4, steps=2, scheduler="ddpm", batch=2, eta=0.5,
                                     guidance_scale=tiny_dm.default_guidance_scale)]


def test_token_loop_takes_the_settings_object(tiny_prior_dir, monkeypatch):
    prior = genlab.load_prior(tiny_prior_dir, device="cpu")
    seen = []
    original = genlab.priors.sampling.iterate_unmask

    def spy(predict, tokens, mask_id, settings, generator):
        seen.append(settings)
        return original(predict, tokens, mask_id, settings, generator)

    monkeypatch.setattr(genlab.priors.pipeline, "iterate_unmask", spy)
    prior.sample(seed=1, steps=3, order="random", class_label="a", top_k=4)
    assert seen == [SamplingSettings(seed=1, steps=3, order="random", top_k=4, num_codes=prior.num_codes,
                                     guidance_scale=prior.default_guidance_scale,
                                     choice_temperature=prior.default_choice_temperature)]


def _batch_sizes(dm, monkeypatch) -> list[int]:
    """Spy on the UNet: the batch size of every call (2B for a guided step, B for the conditional branch alone)."""
    sizes = []
    forward = dm.unet.forward

    def spy(sample, *args, **kwargs):
        sizes.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(dm.unet, "forward", spy)
    return sizes


def test_guidance_interval_guides_only_the_steps_inside_it(tiny_cond_dm, monkeypatch):
    """Guidance in a limited interval (Kynkäänniemi et al. 2024): steps whose sigma_t lies in (low, high] run both
    branches; the others the conditional branch alone, so an interval holding every step changes nothing and one
    holding none is the unguided sample."""
    dm = tiny_cond_dm
    sizes = _batch_sizes(dm, monkeypatch)
    run = dict(seed=3, steps=6, scheduler="ddim", batch=2, class_label="a", guidance_scale=3.0, record=True)
    full = dm.sample(**run)
    assert sizes == [4] * 6
    sizes.clear()
    assert torch.equal(dm.sample(**run, guidance_interval=(0, float("inf"))).final_pixels, full.final_pixels)
    sigmas = [float(((1 - dm.alphas_cumprod[t]) / dm.alphas_cumprod[t]) ** 0.5) for t in full.timesteps]
    low, high = sorted(sigmas)[1], sorted(sigmas)[4]  # (low, high] holds the 3rd to 5th lowest noise levels
    sizes.clear()
    partial = dm.sample(**run, guidance_interval=(low, high))
    assert sizes == [4 if low < s <= high else 2 for s in sigmas] and sizes.count(4) == 3
    unguided = dm.sample(**{**run, "guidance_scale": 1.0}).final_pixels
    outside = dm.sample(**run, guidance_interval=(max(sigmas) + 1, max(sigmas) + 2)).final_pixels
    assert torch.equal(outside, unguided)
    assert not torch.equal(partial.final_pixels, full.final_pixels)
    assert not torch.equal(partial.final_pixels, unguided)


def test_a_models_default_interval_comes_from_genlab_json(tiny_cond_ddpm_dir, tmp_path, monkeypatch):
    import json
    import shutil

    folder = shutil.copytree(tiny_cond_ddpm_dir, tmp_path / "interval")
    info = json.loads((folder / "genlab.json").read_text())
    (folder / "genlab.json").write_text(json.dumps({**info, "default_guidance_interval": [0.0, 1e-9]}))
    dm = genlab.load_diffusion(folder, device="cpu")
    assert dm.default_guidance_interval == (0.0, 1e-9)
    sizes = _batch_sizes(dm, monkeypatch)
    dm.sample(seed=0, steps=3, class_label="a", guidance_scale=3.0)
    assert sizes == [1, 1, 1]  # no step's sigma is in (0, 1e-9]: the default interval guides none
    sizes.clear()
    dm.sample(seed=0, steps=3, class_label="a", guidance_scale=3.0, guidance_interval=(0, float("inf")))
    assert sizes == [2, 2, 2]  # an explicit interval overrides the default
    with pytest.raises(ValueError, match="guidance interval must be two noise levels"):
        dm.sample(seed=0, steps=3, class_label="a", guidance_interval=(2.0, 1.0))
