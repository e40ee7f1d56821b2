"""Text-to-image operations of Stable-Diffusion-layout models, on the tiny SD pipeline of conftest.py.

GenLab's one reverse loop against diffusers' own `StableDiffusionPipeline`; DAAM word maps (Tang et al.,
arXiv:2210.04885) on a planted attention pattern, and the fused processors untouched when no maps are asked
for; compare_prompts from one x_T; img2img (SDEdit, Meng et al., arXiv:2108.01073); bad prompts refused.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.conditioning.guidance import MAX_PROMPT_CHARS
from genlab.diffusion.attention import RecordingProcessor, is_cross_attention


@pytest.fixture
def sd(tiny_sd_dir):
    return genlab.load_diffusion(tiny_sd_dir, device="cpu")


@pytest.fixture(scope="module")
def emoji_layout_dir(tiny_sd_dir, tmp_path_factory):
    """The tiny SD pipeline under weights/sd-emoji's scheduler config (DDPM, squaredcos_cap_v2, "leading"
    spacing, steps_offset 1), which diffusers' pipeline keeps as it is."""
    from diffusers import DDPMScheduler

    root = shutil.copytree(tiny_sd_dir, tmp_path_factory.mktemp("sd-emoji-layout") / "sd")
    shutil.rmtree(root / "scheduler")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, steps_offset=1,
                  timestep_spacing="leading").save_pretrained(root / "scheduler")
    index = json.loads((root / "model_index.json").read_text())
    (root / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "DDPMScheduler"]}))
    return root


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def processors(dm) -> dict:
    return dict(dm.unet.attn_processors)


# ----------------------------------------------------------------------------- the loop against diffusers
@pytest.mark.parametrize("layout, scheduler", [("tiny", "ddim"), ("tiny", "dpm++"), ("emoji", "dpm++"),
                                               ("emoji", "ddim")])
def test_loop_matches_diffusers_stable_diffusion_pipeline(tiny_sd_dir, emoji_layout_dir, layout, scheduler):
    from diffusers import StableDiffusionPipeline

    folder = tiny_sd_dir if layout == "tiny" else emoji_layout_dir
    dm = genlab.load_diffusion(folder, device="cpu")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    # the pipeline rewrites a steps_offset of 0 to 1 in its own scheduler: step both with GenLab's
    pipe.scheduler = dm.scheduler(scheduler)
    ours = dm.sample(prompt="a red fox", negative_prompt="snow", seed=3, steps=6, scheduler=scheduler,
                     guidance_scale=3.0)
    theirs = pipe("a red fox", negative_prompt="snow", num_inference_steps=6, guidance_scale=3.0,
                  latents=dm.initial_noise(seed=3), output_type="np").images[0]  # (H, W, 3) in [0, 1]
    assert theirs.shape == (16, 16, 3)
    difference = np.abs(pixels(ours.image) / 255.0 - theirs).mean()
    assert difference < 1 / 255, difference
    # before 8-bit rounding the two agree to float error (guidance 2.5 against 3 differs by 2e-2 here)
    ours_float = (ours.final_pixels[0].permute(1, 2, 0).numpy() + 1) / 2  # (H, W, 3) in [0, 1]
    assert np.abs(ours_float - theirs).max() < 1e-4
    assert ours.timesteps == [int(t) for t in pipe.scheduler.timesteps]


# ----------------------------------------------------------------------------- words and attention maps
def test_words_are_the_prompts_whitespace_words_with_their_tokens(sd):
    """The tiny tokenizer has no merges: one token per byte, the last of a word ending in </w>."""
    words = sd.text.words("red heart, red!")  # <s> r e d</w> h e a r t</w> ,</w> r e d</w> !</w> </s>
    assert words == [("red", [1, 2, 3, 10, 11, 12]), ("heart", [4, 5, 6, 7, 8])]
    assert sd.text.words("a -- b") == [("a", [1]), ("b", [4])]  # a word of punctuation has no map
    assert sd.text.words("red-heart") == [("red-heart", [1, 2, 3, 5, 6, 7, 8, 9])]  # inner punctuation dropped
    assert sd.text.words("😀 לב") == [("😀", [1, 2, 3, 4]), ("לב", [5, 6, 7, 8])]  # bytes of one character each
    cut = sd.text.words("abc def ghi jkl mno pq")  # 16 positions: <s>, 14 tokens, </s>
    assert [word for word, _ in cut] == ["abc", "def", "ghi", "jkl", "mno"] and cut[-1][1] == [13, 14]


def test_attention_maps_have_the_words_in_order_at_pixel_size_in_unit_range(sd):
    run = sd.sample(prompt="red heart red", seed=0, steps=3, batch=2, attention_maps=True)
    assert list(run.attention_maps) == ["red", "heart"]  # the repeated word is one map
    for word_map in (*run.attention_maps.values(), *run.frames[1].attention_maps.values()):
        assert word_map.shape == (16, 16) and word_map.dtype == np.float32
        assert word_map.min() == 0.0 and word_map.max() == 1.0
    assert len(run.frames) == 3 and all(list(frame.attention_maps) == ["red", "heart"] for frame in run.frames)
    assert run.attention.batch == 2 and run.attention.count == 3 * len(
        [name for name in processors(sd) if is_cross_attention(name)])
    assert all(np.array_equal(run.attention_maps[w], run.attention.maps(0)[w]) for w in ("red", "heart"))
    assert not np.array_equal(run.attention.maps(1)["red"], run.attention.maps(0)["red"])  # image 2's own maps
    assert sd.sample(prompt="red heart", seed=0, steps=1).attention_maps is None


def test_maps_with_a_guidance_interval_record_the_conditional_rows_of_every_step(sd):
    """Outside a guidance interval the UNet's batch is the conditional rows alone (B, not 2B): the maps are still
    recorded at every step, and recording changes no image."""
    run = sd.sample(prompt="red heart", seed=0, steps=4, batch=2, guidance_scale=3.0, attention_maps=True,
                    guidance_interval=(0.5, 5.0))
    plain = sd.sample(prompt="red heart", seed=0, steps=4, batch=2, guidance_scale=3.0, guidance_interval=(0.5, 5.0))
    assert torch.equal(run.final_pixels, plain.final_pixels)
    assert run.attention.batch == 2 and all(list(frame.attention_maps) == ["red", "heart"] for frame in run.frames)
    assert run.attention.count == 4 * len([name for name in processors(sd) if is_cross_attention(name)])


def test_run_maps_average_the_step_maps(sd):
    """Averaging over steps before the word merge and normalisation: the run's map is the normalised mean of
    the steps' un-normalised maps (AttentionMaps add up)."""
    run = sd.sample(prompt="red heart", seed=0, steps=3, attention_maps=True)
    total = run.frames[0].step.attention + run.frames[1].step.attention + run.frames[2].step.attention
    for word, word_map in total.maps().items():
        np.testing.assert_allclose(word_map, run.attention_maps[word], atol=1e-5)
    assert not np.allclose(run.frames[0].attention_maps["red"], run.frames[2].attention_maps["red"])


class PlantedQuery(torch.nn.Module):
    """to_q planting +1 queries on the left half of a layer's square grid, -1 on the right half."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, L, C)
        side = math.isqrt(hidden.shape[1])
        left = torch.arange(side)[None, :].expand(side, side).flatten() < side / 2  # (L,) raster order
        return torch.where(left[None, :, None], 1.0, -1.0).expand_as(hidden).to(hidden.dtype).contiguous()


class PlantedKey(torch.nn.Module):
    """to_k giving all-ones keys to `positions` for the prompt's own hidden states (the conditional branch),
    and to `other_positions` for anything else (the negative prompt): a recorder reading the unconditional
    branch would see the opposite pattern."""

    def __init__(self, prompt_states: torch.Tensor, positions: list[int], other_positions: list[int], width: int):
        super().__init__()
        self.prompt_states, self.positions, self.other_positions, self.width = prompt_states, positions, other_positions, width

    def forward(self, context: torch.Tensor) -> torch.Tensor:  # (N, T, D) -> (N, T, width)
        keys = torch.zeros(*context.shape[:2], self.width, dtype=context.dtype)
        for row in range(context.shape[0]):
            is_prompt = torch.allclose(context[row], self.prompt_states[0].to(context.dtype), atol=1e-5)
            keys[row, self.positions if is_prompt else self.other_positions] = 1.0
        return keys


def test_attention_map_follows_a_planted_attention_pattern(sd, monkeypatch):
    """Every cross-attention layer's queries point left (+1) or right (-1); the conditional keys of "heart" are
    +1 and all others 0: the left half attends to "heart", the right half to everything else ("red" among
    it). The map of "heart" must be bright on the left, that of "red" on the right."""
    prompt = "red heart"
    words = dict(sd.text.words(prompt))
    cond, _ = sd.text.encode([prompt])
    for name, module in sd.unet.named_modules():
        if name.endswith("attn2"):
            width = module.to_q.out_features
            monkeypatch.setattr(module, "to_q", PlantedQuery())
            monkeypatch.setattr(module, "to_k", PlantedKey(cond["encoder_hidden_states"], words["heart"],
                                                           words["red"], width))
    run = sd.sample(prompt=prompt, negative_prompt="", seed=0, steps=2, guidance_scale=3.0, attention_maps=True)
    for maps in (run.attention_maps, run.frames[0].attention_maps):
        heart, red = maps["heart"], maps["red"]  # (16, 16)
        assert heart[:, :4].min() > 0.9 and heart[:, -4:].max() < 0.1
        assert red[:, -4:].min() > 0.9 and red[:, :4].max() < 0.1
        assert np.allclose(heart, heart[:1], atol=1e-5)  # no planted difference between rows: none in the map


def test_maps_of_a_denoise_are_cropped_to_the_image(sd, photo_path):
    """A 44x30 upload is padded to 44x32 (a non-square latent grid); the maps have the image's own size."""
    run = sd.denoise(photo_path, t=300, steps=2, prompt="red heart", attention_maps=True)
    assert run.image.size == (44, 30)
    assert all(word_map.shape == (30, 44) for word_map in run.attention_maps.values())


def test_inpaint_with_a_prompt_records_maps_and_keeps_the_unmasked_pixels(sd):
    image = Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    run = sd.inpaint(image, Image.fromarray(mask), steps=2, prompt="red heart", attention_maps=True)
    assert list(run.attention_maps) == ["red", "heart"] and run.attention_maps["red"].shape == (16, 16)
    assert (pixels(run.image)[mask == 0] == 200).all()


# ----------------------------------------------------------------------------- the path without maps
def test_processors_are_untouched_without_maps_and_restored_after_maps(sd):
    before = processors(sd)
    plain = sd.sample(prompt="red heart", seed=1, steps=3)
    assert processors(sd) == before
    mapped = sd.sample(prompt="red heart", seed=1, steps=3, attention_maps=True)
    after = processors(sd)
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    assert {type(p) for p in after.values()} == {type(p) for p in before.values()}
    assert (pixels(plain.image) == pixels(mapped.image)).all()  # the original processors compute the output
    for plain_frame, mapped_frame in zip(plain.frames, mapped.frames):
        assert torch.equal(plain_frame.step.pred_eps, mapped_frame.step.pred_eps)


def test_cancelled_and_failed_runs_put_the_processors_back(sd, monkeypatch):
    before = processors(sd)
    stream = sd.sample_stream(prompt="red heart", seed=0, steps=3, attention_maps=True)
    assert processors(sd) == before  # nothing installed before the first step
    first = next(stream)
    assert list(sd.frame(first, preview=True).attention_maps) == ["red", "heart"]  # streamed frames carry maps
    during = processors(sd)
    assert all(isinstance(during[n], RecordingProcessor) == is_cross_attention(n) for n in during)
    assert all(during[n] is before[n] for n in during if not is_cross_attention(n))
    stream.close()
    assert processors(sd) == before

    def broken(*args, **kwargs):
        raise RuntimeError("broken step")

    monkeypatch.setattr(genlab.diffusion.loop, "predict_x0_and_eps", broken)
    with pytest.raises(RuntimeError, match="broken step"):
        sd.sample(prompt="red heart", seed=0, steps=3, attention_maps=True)
    assert processors(sd) == before


def test_a_run_without_maps_between_the_steps_of_one_with_maps_is_not_recorded(sd):
    """The processors are shared by every run on the UNet while one records; only its own calls are recorded."""
    alone = sd.sample(prompt="red heart", seed=0, steps=3, attention_maps=True)
    plain = sd.sample(prompt="a grey cat", seed=5, steps=2)
    stream = sd.sample_stream(prompt="red heart", seed=0, steps=3, attention_maps=True)
    next(stream)
    between = sd.sample(prompt="a grey cat", seed=5, steps=2)
    assert between.attention is None and (pixels(between.image) == pixels(plain.image)).all()
    run = genlab.sampling.last(stream)
    for word in ("red", "heart"):
        np.testing.assert_array_equal(run.attention_maps[word], alone.attention_maps[word])


def test_maps_need_a_text_model_and_a_prompt(sd, tiny_cond_dm, tiny_kl_ldm_dir):
    kl_ldm = genlab.load_diffusion(tiny_kl_ldm_dir, device="cpu")
    for model in (tiny_cond_dm, kl_ldm):
        with pytest.raises(ValueError, match="not text-conditioned: attention maps"):
            model.sample(seed=0, steps=1, attention_maps=True)
    with pytest.raises(ValueError, match="give a prompt"):
        sd.sample(seed=0, steps=1, attention_maps=True)
    with pytest.raises(ValueError, match="attention_maps must be True or False"):
        sd.sample(prompt="red", seed=0, steps=1, attention_maps="yes")


# ----------------------------------------------------------------------------- compare prompts
def test_compare_prompts_share_the_noise_and_are_deterministic(sd):
    prompts = ["a red fox", "a grey cat", "a blue heart"]
    runs = sd.compare_prompts(prompts, seed=4, steps=3, guidance_scale=3.0)
    again = sd.compare_prompts(prompts, seed=4, steps=3, guidance_scale=3.0)
    x_T = sd.initial_noise(seed=4)
    assert len(runs) == 3 and all(len(run.frames) == 3 and run.seed == 4 for run in runs)
    for run, repeat in zip(runs, again):
        assert torch.equal(run.trajectory.steps[0].x_t, x_T)
        assert (pixels(run.image) == pixels(repeat.image)).all()
    assert (pixels(runs[0].image) != pixels(runs[1].image)).any()
    alone = sd.sample(prompt="a grey cat", seed=4, steps=3, scheduler="dpm++", guidance_scale=3.0)
    assert np.abs(pixels(alone.image) - pixels(runs[1].image)).max() <= 1  # batched: the same run, to rounding


def test_compare_prompts_stream_steps_together_with_maps(sd):
    stream = sd.compare_prompts_stream(["red heart", "blue sun!"], seed=0, steps=2, attention_maps=True)
    items = list(stream)
    assert len(items) == 3 and all(len(item) == 2 for item in items)
    first, _, runs = items
    assert [step.timestep for step in first] == [runs[0].timesteps[0]] * 2
    assert list(runs[0].attention_maps) == ["red", "heart"] and list(runs[1].attention_maps) == ["blue", "sun"]
    assert list(sd.frame(first[1]).attention_maps) == ["blue", "sun"]
    assert runs[1].attention_maps["sun"].shape == (16, 16)


@pytest.mark.parametrize("prompts, message", [
    (["only one"], "compare 2 to 4 prompts, got 1"),
    (["a", "b", "c", "d", "e"], "compare 2 to 4 prompts, got 5"),
    ("a red fox", "must be a list"),
    (["a fox", ""], "prompt is empty"),
    (["a fox", "   "], "prompt is empty"),
    (["a fox", 3], "must be text"),
    (["a fox", None], "prompt 2 of the comparison is missing"),
    (["a fox", "a\x00cat"], "U\\+0000"),
])
def test_compare_prompts_refuses_bad_prompts(sd, prompts, message):
    with pytest.raises(ValueError, match=message):
        sd.compare_prompts_stream(prompts, steps=1)


def test_compare_prompts_needs_a_text_model(tiny_cond_dm):
    with pytest.raises(ValueError, match="not text-conditioned"):
        tiny_cond_dm.compare_prompts(["a", "b"], steps=1)


# ----------------------------------------------------------------------------- image to image (SDEdit)
def test_img2img_is_denoise_from_strength_times_T(sd, photo_path):
    run = sd.img2img(photo_path, "a red fox", strength=0.6, steps=10, seed=2)
    assert run.start_timestep == 600 and len(run.frames) == 6
    assert run.image.size == (16, 11)  # the 44x30 upload at the model's 16 px sample size
    same = sd.denoise(photo_path, t=600, steps=6, seed=2, scheduler="dpm++", prompt="a red fox", max_side=16)
    assert (pixels(run.image) == pixels(same.image)).all() and run.psnr == same.psnr
    full = sd.img2img(photo_path, "a red fox", strength=1.0, steps=4, attention_maps=True)
    assert full.start_timestep == 999 and len(full.frames) == 4 and full.attention_maps["fox"].shape == (11, 16)


def test_img2img_at_strength_zero_returns_the_input(sd):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    run = sd.img2img(image, "a red fox", strength=0)
    assert (pixels(run.image) == pixels(image)).all() and run.frames == []
    assert any("strength 0" in note for note in run.notes)


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_img2img_refuses_bad_strengths(sd, strength):
    with pytest.raises(ValueError, match="strength must be a number in \\[0, 1\\]"):
        sd.img2img(Image.new("RGB", (16, 16)), "a red fox", strength=strength)


def test_img2img_needs_a_prompt(sd):
    with pytest.raises(ValueError, match="takes a prompt"):
        sd.img2img(Image.new("RGB", (16, 16)), None)


# ----------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="  \n "), "prompt is empty \\(only spaces\\)"),
    (dict(prompt=3), "prompt must be text, got int"),
    (dict(prompt=b"a fox"), "prompt must be text, got bytes"),
    (dict(prompt="x" * (MAX_PROMPT_CHARS + 1)), f"{MAX_PROMPT_CHARS + 1} characters"),
    (dict(prompt="a red\x00fox"), "control character U\\+0000 at position 5"),
    (dict(prompt="a red fox\x1b[31m"), "control character U\\+001B"),
    (dict(prompt="a fox \ud83d"), "lone surrogate U\\+D83D"),
    (dict(prompt="a fox", negative_prompt="snow\x00"), "negative prompt contains the control character U\\+0000"),
])
def test_bad_prompts_are_refused(sd, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sd.sample(seed=0, steps=1, **kwargs)


@pytest.mark.parametrize("prompt", ["❤️ 😀", "לב אדום", "❤️\tשמש\nab", "👩‍🚀"])  # 16 tokens at most
def test_emoji_and_right_to_left_prompts_make_images(sd, prompt):
    run = sd.sample(prompt=prompt, seed=0, steps=1, attention_maps=True)
    assert run.image.size == (16, 16) and not run.notes
    assert list(run.attention_maps) == prompt.split()


def test_prompts_past_the_tokenizer_are_cut_with_a_note(sd):
    run = sd.sample(prompt="a red fox in the snow", seed=0, steps=1)  # 23 tokens, the encoder takes 16
    assert run.notes == ["the prompt was cut to the text encoder's 16 tokens"]
    assert sd.compare_prompts(["a red fox in the snow", "a fox"], steps=1)[1].notes == []


def test_a_prompt_to_a_model_without_text_is_refused(tiny_cond_dm, sd):
    with pytest.raises(ValueError, match="not text-conditioned; leave the prompt empty"):
        tiny_cond_dm.sample(seed=0, steps=1, prompt="a fox")
    with pytest.raises(ValueError, match="not text-conditioned"):
        tiny_cond_dm.img2img(Image.new("RGB", (16, 16)), "a fox")
    assert sd.sample(seed=0, steps=1).image.size == (16, 16)  # no prompt: the unconditional branch, as before
