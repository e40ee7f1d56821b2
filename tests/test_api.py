"""GenLab's public API on tiny random models: VQ ops, diffusion runs and the metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import genlab
from genlab.imaging import metrics
from genlab.diffusion.pipeline import _seed_noise
from genlab.imaging.io import pil_to_tensor

from conftest import DOWNSAMPLE, NUM_CODES


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A gradient with mild noise: JPEG sizes grow steadily with quality on it."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height) + 64], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8), "RGB")


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def record_unet_calls(monkeypatch, dm) -> list[dict]:
    """Wrap dm.unet.forward to record each call's input sample, timestep and class labels."""
    calls, forward = [], dm.unet.forward

    def recording_forward(sample, timestep, class_labels=None, **kwargs):
        calls.append({"sample": sample.detach().clone(), "timestep": timestep, "class_labels": class_labels})
        return forward(sample, timestep, class_labels=class_labels, **kwargs)

    monkeypatch.setattr(dm.unet, "forward", recording_forward)
    return calls


# ================================================================================== VQ
def test_vq_properties(tiny_vq):
    assert tiny_vq.num_codes == NUM_CODES == 32
    assert tiny_vq.downsample_factor == DOWNSAMPLE == 2
    assert tiny_vq.bits_per_token == 5.0
    assert tuple(tiny_vq.codebook.shape) == (32, 4) and tiny_vq.codebook.dtype == torch.float32


def test_reconstruct_odd_size(tiny_vq):
    image = random_image(37, 29)
    rec = tiny_vq.reconstruct(image)
    assert isinstance(rec, genlab.Reconstruction)
    assert rec.image.size == (37, 29) and rec.input.size == (37, 29) and rec.resized_from is None
    assert rec.indices.shape == (math.ceil(29 / 2), math.ceil(37 / 2)) == (15, 19)
    assert rec.indices.min() >= 0 and rec.indices.max() < NUM_CODES
    assert np.isfinite(rec.psnr)
    assert rec.psnr == pytest.approx(peak_signal_noise_ratio(np.asarray(image), np.asarray(rec.image), data_range=255))
    assert rec.bits_per_pixel == pytest.approx(rec.indices.size * math.log2(32) / (37 * 29))
    assert rec.compression_ratio == pytest.approx(24 / rec.bits_per_pixel)
    assert rec.distinct_codes == len(np.unique(rec.indices)) > 1
    assert -1 <= rec.ssim <= 1
    assert rec.error_map.shape == (29, 37)
    np.testing.assert_allclose(rec.error_map, np.abs(as_array(image) - as_array(rec.image)).mean(-1))


def test_reconstruct_crop_matches_padded_reconstruction(tiny_vq):
    """The odd-size reconstruction is the top-left crop of the reflect-padded image's reconstruction."""
    image = random_image(13, 9, seed=5)
    padded = torch.nn.functional.pad(pil_to_tensor(image), (0, 1, 0, 1), mode="reflect")
    padded_image = Image.fromarray(((padded[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    full = tiny_vq.reconstruct(padded_image)
    rec = tiny_vq.reconstruct(image)
    assert (rec.indices == full.indices).all()
    assert (as_array(rec.image) == as_array(full.image)[:9, :13]).all()


def test_reconstruct_downscales_to_max_side(tiny_vq):
    rec = tiny_vq.reconstruct(random_image(64, 32), max_side=16)
    assert rec.input.size == rec.image.size == (16, 8)
    assert rec.resized_from == (64, 32)
    assert rec.indices.shape == (4, 8)


def test_decode_indices_equals_reconstruction(tiny_vq):
    rec = tiny_vq.reconstruct(random_image(16, 12, seed=1))
    decoded = tiny_vq.decode_indices(rec.indices)
    assert decoded.size == (16, 12)
    assert (as_array(decoded) == as_array(rec.image)).all()


def test_indices_are_nearest_codes(tiny_vq):
    """VQ-VAE's rule: k = argmin_j ||E(x) - e_j||."""
    image = random_image(16, 12, seed=2)
    with torch.inference_mode():
        latents = tiny_vq.model.encode(pil_to_tensor(image)).latents[0]  # (D, h, w)
    vectors = latents.permute(1, 2, 0).reshape(-1, tiny_vq.code_dim)
    nearest = torch.cdist(vectors, tiny_vq.codebook).argmin(dim=1).view(6, 8).numpy()
    assert (tiny_vq.indices_of(image) == nearest).all()


def test_code_usage_counts_every_token(tiny_vq):
    first, second = random_image(16, 12, seed=3), random_image(37, 29, seed=4)
    usage = tiny_vq.code_usage([first, second])
    assert usage.shape == (NUM_CODES,) and usage.dtype == np.int64
    assert usage.sum() == 6 * 8 + 15 * 19
    expected = sum(np.bincount(tiny_vq.indices_of(im).ravel(), minlength=NUM_CODES) for im in (first, second))
    assert (usage == expected).all()
    grids = [tiny_vq.indices_of(first), tiny_vq.indices_of(second)]
    assert (tiny_vq.code_usage(grids) == usage).all()


def test_perplexity():
    assert genlab.perplexity(np.ones(32)) == pytest.approx(32)
    assert genlab.perplexity(np.array([5, 0, 0])) == pytest.approx(1)
    assert genlab.perplexity(np.zeros(4)) == 0.0
    assert genlab.perplexity(np.array([1, 1, 0, 0])) == pytest.approx(2)


def test_codebook_atlas(tiny_vq):
    atlas = tiny_vq.codebook_atlas()
    patch = tiny_vq.patch_tokens * DOWNSAMPLE  # 16 px
    assert isinstance(atlas, Image.Image)
    assert atlas.size == (16 * patch + 15, 2 * patch + 1)  # 32 codes in 16 columns, 1 px gaps
    # the first tile is code 0 tiled over a patch and decoded
    assert (as_array(atlas.crop((0, 0, patch, patch))) == as_array(tiny_vq.code_patch(0))).all()
    usage = np.zeros(NUM_CODES, dtype=np.int64)
    usage[7] = 10
    sorted_atlas = tiny_vq.codebook_atlas(usage)
    assert (as_array(sorted_atlas.crop((0, 0, patch, patch))) == as_array(tiny_vq.code_patch(7))).all()
    unused_tile = as_array(sorted_atlas.crop((patch + 1, 0, 2 * patch + 1, patch)))
    assert (unused_tile[0, 0] == [220, 0, 0]).all()  # unused codes are crossed out in red
    assert tiny_vq.atlas_pages() == 1 and tiny_vq.atlas_pages(page_size=10) == 4
    with pytest.raises(ValueError, match="atlas page"):
        tiny_vq.codebook_atlas(page=1)


@pytest.mark.parametrize("bad", [[[0, NUM_CODES]], [[-1, 0]], [[0, 10**6]]])
def test_decode_indices_out_of_range(tiny_vq, bad):
    with pytest.raises(ValueError, match=r"\[0, 31\]"):
        tiny_vq.decode_indices(np.array(bad))


def test_decode_indices_bad_shape(tiny_vq):
    with pytest.raises(ValueError, match="grid"):
        tiny_vq.decode_indices(np.zeros((2, 2, 2, 2), dtype=int))


def test_code_patch_out_of_range(tiny_vq):
    with pytest.raises(ValueError):
        tiny_vq.code_patch(NUM_CODES)


def test_codebook_statistics(tiny_vq):
    projected = tiny_vq.pca_2d()
    assert projected.shape == (NUM_CODES, 2)
    np.testing.assert_allclose(projected.mean(axis=0), 0, atol=1e-9)
    assert projected[:, 0].var() >= projected[:, 1].var()
    colors = tiny_vq.code_colors()
    assert colors.shape == (NUM_CODES, 3) and colors.dtype == np.uint8
    one = as_array(tiny_vq.decode_indices(np.array([[5]])))
    np.testing.assert_allclose(colors[5], one.reshape(-1, 3).mean(0), atol=1)


def test_token_edits(tiny_vq):
    indices = np.arange(24).reshape(4, 6) % NUM_CODES
    replaced = tiny_vq.replace_region(indices, (2, 1), (0, 2), 9)  # rows 1..2, columns 0..2
    assert (replaced[1:3, 0:3] == 9).all()
    mask = np.ones_like(indices, dtype=bool)
    mask[1:3, 0:3] = False
    assert (replaced[mask] == indices[mask]).all()
    assert indices[1, 0] == 6  # the input is not modified
    with pytest.raises(ValueError):
        tiny_vq.replace_region(indices, (0, 0), (0, 0), NUM_CODES)
    with pytest.raises(ValueError, match="inside"):
        tiny_vq.replace_region(indices, (4, 5), (0, 0), 1)

    swapped = tiny_vq.swap_codes(indices, 1, 2)
    assert swapped[0, 1] == 2 and swapped[0, 2] == 1 and swapped[0, 3] == 3
    assert (tiny_vq.swap_codes(swapped, 1, 2) == indices).all()

    usage = np.zeros(NUM_CODES)
    usage[17] = 1
    resampled = tiny_vq.resample_region(indices, (0, 3), (4, 5), usage, seed=0)
    assert (resampled[:, 4:] == 17).all() and (resampled[:, :4] == indices[:, :4]).all()


def test_interpolate_codes(tiny_vq):
    images, snapped = tiny_vq.interpolate_codes(3, 11, steps=5)
    assert len(images) == len(snapped) == 5
    assert snapped[0] == 3 and snapped[-1] == 11
    assert images[0].size == (tiny_vq.patch_tokens * DOWNSAMPLE,) * 2
    assert np.abs(as_array(images[0]) - as_array(tiny_vq.code_patch(3))).max() <= 1  # e_3 itself
    with pytest.raises(ValueError, match="steps"):
        tiny_vq.interpolate_codes(3, 11, steps=1)


# =========================================================================== diffusion
SAMPLERS = ["ddpm", "ddim", "dpm++"]


@pytest.mark.parametrize("scheduler", SAMPLERS)
def test_sample_frames_and_timesteps(tiny_dm, scheduler):
    run = tiny_dm.sample(seed=0, steps=5, scheduler=scheduler)
    assert isinstance(run, genlab.DiffusionRun)
    assert run.scheduler == scheduler and run.seed == 0
    assert len(run.frames) == 5 and len(run.timesteps) == 5
    assert all(a > b for a, b in zip(run.timesteps, run.timesteps[1:]))
    assert [frame.timestep for frame in run.frames] == run.timesteps
    assert all(0 <= t < 1000 for t in run.timesteps)
    for frame in run.frames:
        for image in (frame.x_t, frame.x0, frame.eps):
            assert isinstance(image, Image.Image) and image.size == (16, 16)
    assert run.image.size == (16, 16) and run.psnr is None
    # the first x_t is the seeded Gaussian noise (times the scheduler's initial sigma)
    sampler = tiny_dm.scheduler(scheduler)
    expected = _seed_noise((1, 3, 16, 16), 0) * sampler.init_noise_sigma
    torch.testing.assert_close(run.frames[0].step.x_t, expected)


@pytest.mark.parametrize("scheduler", SAMPLERS)
def test_sample_is_reproducible_per_seed(tiny_dm, scheduler):
    first = tiny_dm.sample(seed=3, steps=3, scheduler=scheduler)
    again = tiny_dm.sample(seed=3, steps=3, scheduler=scheduler)
    other = tiny_dm.sample(seed=4, steps=3, scheduler=scheduler)
    assert (as_array(first.image) == as_array(again.image)).all()
    assert (as_array(first.image) != as_array(other.image)).any()


@pytest.mark.parametrize("scheduler", sorted(genlab.SCHEDULERS))
def test_recorded_x0_is_the_schedulers_prediction(tiny_dm, scheduler):
    """Each frame's x0 is what diffusers' scheduler itself predicts from the same model output."""
    run = tiny_dm.sample(seed=0, steps=3, scheduler=scheduler)
    sampler = tiny_dm.scheduler(scheduler)
    sampler.set_timesteps(3)
    sample = _seed_noise((1, 3, 16, 16), 0) * sampler.init_noise_sigma
    timestep = sampler.timesteps[0]
    with torch.inference_mode():
        output = tiny_dm.unet(sampler.scale_model_input(sample, timestep), timestep).sample
    if hasattr(sampler, "convert_model_output"):  # DPM-Solver++: the x0 it steps with
        sampler._init_step_index(timestep)
        expected = sampler.convert_model_output(output, sample=sample)
    else:
        expected = sampler.step(output, timestep, sample).pred_original_sample
    torch.testing.assert_close(run.frames[0].step.pred_x0, expected.clamp(-1, 1), atol=1e-4, rtol=0)


def test_sample_stream_yields_steps_then_the_run(tiny_dm, monkeypatch):
    items = list(tiny_dm.sample_stream(seed=0, steps=4))
    steps, run = items[:-1], items[-1]
    assert isinstance(run, genlab.DiffusionRun) and len(steps) == 4
    assert [step.timestep for step in steps] == run.timesteps
    assert (as_array(run.image) == as_array(tiny_dm.sample(seed=0, steps=4).image)).all()
    torch.testing.assert_close(steps[0].x_t, tiny_dm.initial_noise(seed=0), atol=0, rtol=0)  # what the UI shows first
    assert not torch.equal(tiny_dm.initial_noise(seed=0), tiny_dm.initial_noise(seed=1))
    calls = record_unet_calls(monkeypatch, tiny_dm)
    stream = tiny_dm.sample_stream(seed=0, steps=4)
    next(stream), next(stream)
    stream.close()  # cancel: no further model calls
    assert len(calls) == 2


def test_denoise_stream_matches_denoise(tiny_dm):
    image = random_image(15, 9, seed=10)
    items = list(tiny_dm.denoise_stream(image, t=200, steps=3, seed=2))
    run = tiny_dm.denoise(image, t=200, steps=3, seed=2)
    assert len(items) == 4 and items[-1].timesteps == run.timesteps
    assert all(tuple(step.x_t.shape[-2:]) == (9, 15) for step in items[:-1])
    assert (as_array(items[-1].image) == as_array(run.image)).all()


def test_stream_checks_arguments_before_the_first_step(tiny_dm):
    with pytest.raises(ValueError, match="steps"):
        tiny_dm.sample_stream(seed=0, steps=0)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_dm.denoise_stream(random_image(8, 8))


def test_sample_batch_and_size(tiny_dm):
    run = tiny_dm.sample(seed=0, steps=2, batch=3, size=8)
    assert len(run.images) == 3 and all(image.size == (8, 8) for image in run.images)
    assert tuple(run.trajectory.final.shape) == (3, 3, 8, 8)
    assert len({as_array(image).tobytes() for image in run.images}) == 3
    with pytest.raises(ValueError, match="size"):
        tiny_dm.sample(seed=0, steps=2, size=7)
    with pytest.raises(ValueError, match="batch"):
        tiny_dm.sample(seed=0, steps=2, batch=0)


@pytest.mark.parametrize("steps", [0, 10**9, 2.5, "5"])
def test_bad_steps_refused(tiny_dm, steps):
    with pytest.raises(ValueError, match="steps"):
        tiny_dm.sample(seed=0, steps=steps)
    with pytest.raises(ValueError, match="steps"):
        tiny_dm.denoise(random_image(8, 8), t=100, steps=steps)


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5])
def test_bad_seed_refused(tiny_dm, seed):
    with pytest.raises(ValueError, match="seed"):
        tiny_dm.sample(seed=seed, steps=2)


def test_unknown_scheduler_names_the_choices(tiny_dm):
    with pytest.raises(ValueError, match="unknown scheduler 'plms'") as error:
        tiny_dm.sample(seed=0, steps=2, scheduler="plms")
    for name in genlab.SCHEDULERS:
        assert repr(name) in str(error.value)


def test_denoise_from_t(tiny_dm):
    image = random_image(17, 13, seed=6)
    run = tiny_dm.denoise(image, t=300, steps=4, seed=1)
    assert run.start_timestep == 300 and run.timesteps[0] == 300 and len(run.frames) == 4
    assert all(a > b for a, b in zip(run.timesteps, run.timesteps[1:]))
    assert run.noisy.size == run.image.size == (17, 13)
    assert all(frame.x_t.size == (17, 13) and frame.x0.size == (17, 13) for frame in run.frames)
    assert run.reference is not None and np.isfinite(run.psnr)
    abar = DDPMScheduler().alphas_cumprod[300].item()
    assert run.sigma == pytest.approx(0.5 * math.sqrt((1 - abar) / abar))
    default = tiny_dm.denoise(image, t=300, seed=1)
    assert len(default.frames) == round(50 * 301 / 1000)  # about 50 * t / T steps


def test_denoise_first_x_t_is_forward_noised_input(tiny_dm):
    image = random_image(16, 12, seed=7)  # a multiple of the UNet's factor: no padding
    t, seed = 400, 5
    run = tiny_dm.denoise(image, t=t, steps=3, seed=seed)
    x0 = pil_to_tensor(image)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    reference = DDPMScheduler()
    expected = reference.add_noise(x0, noise, torch.tensor([t]))
    torch.testing.assert_close(run.frames[0].step.x_t, expected)
    abar = reference.alphas_cumprod[t]
    torch.testing.assert_close(expected, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)  # DDPM eq. 4
    noisy = tiny_dm.forward_noise(image, t, seed=seed)
    assert (as_array(noisy) == as_array(run.noisy)).all()
    assert (as_array(noisy) == as_array(run.frames[0].x_t)).all()


@pytest.mark.parametrize("scheduler", sorted(genlab.SCHEDULERS))
def test_denoise_unet_sees_x_t(tiny_dm, scheduler, monkeypatch):
    """Whatever the scheduler's internal scaling, the UNet's first input is q(x_t | x_0)'s sample."""
    image = random_image(16, 16, seed=8)
    calls = record_unet_calls(monkeypatch, tiny_dm)
    run = tiny_dm.denoise(image, t=500, steps=2, seed=0, scheduler=scheduler)
    assert int(calls[0]["timestep"]) == 500
    x_t = DDPMScheduler().add_noise(pil_to_tensor(image), _seed_noise((1, 3, 16, 16), 0), torch.tensor([500]))
    torch.testing.assert_close(calls[0]["sample"], x_t, atol=1e-4, rtol=0)
    torch.testing.assert_close(run.frames[0].step.x_t, x_t, atol=1e-4, rtol=0)


def test_denoise_with_sigma(tiny_dm):
    image = random_image(16, 16, seed=9)
    run = tiny_dm.denoise(image, sigma=0.1)
    ratio = torch.sqrt((1 - tiny_dm.alphas_cumprod) / tiny_dm.alphas_cumprod)
    assert run.start_timestep == int(torch.argmin((ratio - 0.2).abs()))
    assert run.sigma == 0.1 and len(run.frames) == 1 and run.timesteps == [run.start_timestep]
    assert run.noisy is not None and (as_array(run.noisy) == as_array(image)).all()
    assert run.image.size == (16, 16) and run.psnr is None
    abar = float(tiny_dm.alphas_cumprod[run.start_timestep])
    torch.testing.assert_close(run.frames[0].step.x_t, pil_to_tensor(image) * abar**0.5)
    with pytest.raises(ValueError, match="sigma"):
        tiny_dm.denoise(image, sigma=0)


def test_denoise_needs_exactly_one_of_t_and_sigma(tiny_dm):
    image = random_image(8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_dm.denoise(image, t=10, sigma=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        tiny_dm.denoise(image)


@pytest.mark.parametrize("t", [-1, 1000, 2.0])
def test_bad_timestep_refused(tiny_dm, t):
    with pytest.raises(ValueError, match="t must be"):
        tiny_dm.denoise(random_image(8, 8), t=t)
    with pytest.raises(ValueError, match="t must be"):
        tiny_dm.forward_noise(random_image(8, 8), t)


def test_schedule(tiny_dm):
    schedule = tiny_dm.schedule()
    assert schedule["t"].shape == schedule["alpha_bar"].shape == schedule["log_snr"].shape == (1000,)
    assert (np.diff(schedule["alpha_bar"]) < 0).all()
    np.testing.assert_allclose(schedule["alpha_bar"], DDPMScheduler().alphas_cumprod.numpy(), rtol=1e-6)


def test_class_conditional_guided_sample(tiny_cond_dm, monkeypatch):
    assert tiny_cond_dm.classes == ["a", "b"] and tiny_cond_dm.null_class == 2
    calls = record_unet_calls(monkeypatch, tiny_cond_dm)
    guided = tiny_cond_dm.sample(seed=0, steps=3, class_label="a", guidance_scale=2)
    assert len(calls) == 3 and len(guided.frames) == 3
    # classifier-free guidance batches the class with the null class
    assert calls[0]["class_labels"].tolist() == [0, 2] and calls[0]["sample"].shape[0] == 2
    calls.clear()
    unguided = tiny_cond_dm.sample(seed=0, steps=3, class_label="a", guidance_scale=1)
    assert calls[0]["class_labels"].tolist() == [0]
    other = tiny_cond_dm.sample(seed=0, steps=3, class_label="b", guidance_scale=2)
    by_index = tiny_cond_dm.sample(seed=0, steps=3, class_label=0, guidance_scale=2)
    assert (as_array(guided.image) != as_array(unguided.image)).any()
    assert (as_array(guided.image) != as_array(other.image)).any()
    assert (as_array(guided.image) == as_array(by_index.image)).all()
    calls.clear()
    tiny_cond_dm.sample(seed=0, steps=1, class_label=None, guidance_scale=2)
    assert calls[0]["class_labels"].tolist() == [2]  # no class: the null class, unguided


def test_class_conditional_bad_labels(tiny_cond_dm, tiny_dm):
    with pytest.raises(ValueError, match="unknown class 'c'"):
        tiny_cond_dm.sample(seed=0, steps=1, class_label="c")
    with pytest.raises(ValueError, match="class index"):
        tiny_cond_dm.sample(seed=0, steps=1, class_label=5)
    with pytest.raises(ValueError, match="guidance"):
        tiny_cond_dm.sample(seed=0, steps=1, class_label="a", guidance_scale=-1)
    with pytest.raises(ValueError, match="not class-conditional"):
        tiny_dm.sample(seed=0, steps=1, class_label="a")


# ============================================================================= metrics
def test_psnr_and_ssim_match_skimage():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    test = np.clip(reference.astype(int) + rng.integers(-20, 21, reference.shape), 0, 255).astype(np.uint8)
    expected_psnr = peak_signal_noise_ratio(reference, test, data_range=255)
    expected_ssim = structural_similarity(reference, test, channel_axis=-1, data_range=255)
    assert metrics.psnr(reference, test) == pytest.approx(expected_psnr, rel=1e-12)
    assert metrics.ssim(reference, test) == pytest.approx(expected_ssim, rel=1e-12)
    assert metrics.psnr(Image.fromarray(reference), Image.fromarray(test)) == pytest.approx(expected_psnr, rel=1e-12)
    assert metrics.psnr(reference, reference) == float("inf")
    assert metrics.ssim(reference, reference) == pytest.approx(1.0)
    assert math.isnan(metrics.ssim(reference[:2, :2], test[:2, :2]))  # too small for a 3x3 window


def test_abs_error_map():
    reference = np.zeros((2, 3, 3), dtype=np.uint8)
    test = np.full((2, 3, 3), 255, dtype=np.uint8)
    test[0, 0] = [0, 30, 60]
    error = metrics.abs_error_map(reference, test)
    assert error.shape == (2, 3) and error[0, 0] == 30 and error[1, 2] == 255


def test_jpeg_at_bpp_stays_within_budget():
    image = smooth_image(64, 64)
    target = 1.5
    result = metrics.jpeg_at_bpp(image, target)
    assert result.within_budget and 1 <= result.quality <= 95
    assert result.bits_per_pixel <= target
    data, decoded = metrics.jpeg_encode(image, result.quality)
    assert len(data) * 8 / (64 * 64) == pytest.approx(result.bits_per_pixel)
    assert (as_array(decoded) == as_array(result.image)).all()
    assert result.psnr == pytest.approx(metrics.psnr(image, result.image))
    if result.quality < 95:  # the best quality within the budget: one more is over it
        data, _ = metrics.jpeg_encode(image, result.quality + 1)
        assert len(data) * 8 / (64 * 64) > target


def test_jpeg_at_bpp_reports_an_impossible_budget():
    result = metrics.jpeg_at_bpp(random_image(32, 32), 0.01)
    assert not result.within_budget and result.quality == 1
    assert result.bits_per_pixel > 0.01
