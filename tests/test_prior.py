"""Token priors (genlab.priors.pipeline) on tiny random pipelines: loading GenLab's and aMUSEd's layouts, the three
unmasking orders and their token counts, seeds, top-k, classifier-free guidance, inpainting, code length
(bits per pixel under the prior), streaming, input checks, and the training helpers (genlab.train.prior).

The fixtures (conftest.py): `tiny_prior_dir`, a class-conditional MaskedTokenTransformer (classes a, b, c)
over 8x8 tokens of a K = 16, f = 2 VQ model (16-pixel images); `tiny_amused_dir`, aMUSEd's layout as
diffusers' AmusedPipeline saves it (UVit2DModel, mask id K + 1, CLIP text encoder with projection).
"""

from __future__ import annotations

import fnmatch
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_amused import mask_by_random_topk
from PIL import Image

import genlab
import genlab.priors.sampling
import genlab.sampling
from genlab.loading.loaders import ModelLoadError
from genlab.priors.pipeline import TokenFrame, TokenPrior, TokenRun
from genlab.priors.sampling import REFINE_SHARE, refine_rounds, refinement_steps, remask_least_confident, still_masked
from genlab.priors.transformer import MaskedTokenTransformer
from genlab.priors.unet import MaskedTokenUNet
from genlab.train.prior import mask_for_training, masked_token_loss

from conftest import PRIOR_CLASSES, PRIOR_CODES, PRIOR_GRID, TINY_TOKEN_UNET, optimise

K = PRIOR_CODES
N = PRIOR_GRID * PRIOR_GRID  # tokens per image
SIDE = PRIOR_GRID * 2  # pixels a side (f = 2)


@pytest.fixture
def prior(tiny_prior_dir):
    return genlab.load_prior(tiny_prior_dir, device="cpu")


@pytest.fixture
def amused(tiny_amused_dir):
    return genlab.load_prior(tiny_amused_dir, device="cpu")


@pytest.fixture
def uncond_prior(prior):
    """prior's VQ model under an unconditional transformer (num_classes = 0), built in memory."""
    torch.manual_seed(1)
    transformer = MaskedTokenTransformer(codebook_size=K, height=PRIOR_GRID, width=PRIOR_GRID, num_classes=0,
                                         hidden_size=32, num_layers=1, num_heads=2).eval()
    with torch.no_grad():
        transformer.token_embedding.weight.normal_()
    return TokenPrior(prior.vq, transformer, {"mask_token_id": K}, name="unconditional prior")


@pytest.fixture
def photo(prior_photo):
    return prior_photo


@pytest.fixture
def box_mask():
    """White pixel rows 3..6, cols 5..9 of a 16x16 image: it touches token rows 1..3, cols 2..4 (f = 2)."""
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[3:7, 5:10] = 255
    cells = np.zeros((PRIOR_GRID, PRIOR_GRID), dtype=bool)
    cells[1:4, 2:5] = True
    return Image.fromarray(mask), cells


def hidden(public: np.ndarray, mask_id: int) -> torch.Tensor:
    """(h, w) public tokens (-1 = masked) -> (1, h, w) model input with mask_id."""
    tokens = torch.from_numpy(np.asarray(public)).long()[None]
    return torch.where(tokens < 0, mask_id, tokens)


def all_masked(mask_id: int) -> torch.Tensor:
    return torch.full((1, PRIOR_GRID, PRIOR_GRID), mask_id, dtype=torch.long)


def masked_counts(run: TokenRun) -> list[int]:
    return [int((np.asarray(frame.tokens) == -1).sum()) for frame in run.frames]


def record_logits(monkeypatch) -> list[torch.Tensor]:
    """The logits each step draws codes from (after temperature and top-k), in order."""
    seen = []
    original = genlab.priors.sampling.draw_codes

    def spy(logits, where, generator):
        seen.append(logits.detach().clone())
        return original(logits, where, generator)

    monkeypatch.setattr(genlab.priors.sampling, "draw_codes", spy)
    return seen


@torch.inference_mode()
def class_logits(transformer, tokens: torch.Tensor, label: int) -> torch.Tensor:
    return transformer(tokens, class_labels=torch.tensor([label])).float()


def scheduler_counts(count: int, steps: int) -> list[int]:
    """Masked tokens left after each step of diffusers' AmusedScheduler itself, from `count` of `count` masked."""
    from diffusers import AmusedScheduler

    scheduler = AmusedScheduler(mask_token_id=K)
    scheduler.set_timesteps(steps)
    sample = torch.full((1, count), K)
    generator = torch.Generator().manual_seed(0)
    counts = []
    for timestep in scheduler.timesteps:
        sample = scheduler.step(torch.randn(1, count, K, generator=generator), timestep, sample,
                                generator=generator).prev_sample
        counts.append(int((sample == K).sum()))
    return counts


# ----------------------------------------------------------------------------------- loading
def test_load_prior_round_trips_the_transformer(tiny_prior_dir, tmp_path):
    """save_pretrained -> load_prior gives the in-memory transformer's logits, and the prior reads its layout."""
    folder = shutil.copytree(tiny_prior_dir, tmp_path / "prior")
    torch.manual_seed(7)
    original = MaskedTokenTransformer(codebook_size=K, height=PRIOR_GRID, width=PRIOR_GRID, num_classes=3,
                                      hidden_size=32, num_layers=2, num_heads=2).eval()
    with torch.no_grad():
        for parameter in original.parameters():
            parameter.normal_()  # nothing left at its default init, so every weight must load
    shutil.rmtree(folder / "transformer")
    original.save_pretrained(folder / "transformer", safe_serialization=True)
    prior = genlab.load_prior(folder, device="cpu")
    tokens = torch.randint(0, K + 1, (4, PRIOR_GRID, PRIOR_GRID), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    with torch.inference_mode():
        expected = original(tokens, class_labels=labels)
        loaded = prior.transformer(tokens, class_labels=labels)
    assert expected.shape == (4, K, PRIOR_GRID, PRIOR_GRID)
    torch.testing.assert_close(loaded, expected, rtol=0, atol=0)
    assert not prior.is_amused and prior.text is None and prior.is_conditional
    assert prior.classes == PRIOR_CLASSES and prior.null_class == 3 and prior.mask_id == K
    assert prior.grid == (PRIOR_GRID, PRIOR_GRID) and prior.image_size == (SIDE, SIDE)
    assert prior.num_codes == K and prior.default_guidance_scale == 2.0  # from genlab.json
    assert prior.index_bits_per_pixel == pytest.approx(math.log2(K) / 4)


def _drop_transformer(folder):
    shutil.rmtree(folder / "transformer")


def _ddim_scheduler(folder):
    from diffusers import DDIMScheduler

    shutil.rmtree(folder / "scheduler")
    DDIMScheduler().save_pretrained(folder / "scheduler")


def _wrong_codebook(folder):
    shutil.rmtree(folder / "transformer")
    MaskedTokenTransformer(codebook_size=2 * K, height=PRIOR_GRID, width=PRIOR_GRID, num_classes=3, hidden_size=32,
                           num_layers=1, num_heads=2).save_pretrained(folder / "transformer", safe_serialization=True)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "mask_token_id": 2 * K}))


def _unet_transformer(folder):
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))


def _no_index(folder):
    (folder / "model_index.json").unlink()


@pytest.mark.parametrize("damage, message", [
    (_drop_transformer, "has no transformer/ folder"),
    (_ddim_scheduler, "holds a DDIMScheduler, not an AmusedScheduler"),
    (_wrong_codebook, f"predicts {2 * K} codes but the VQ model has {K}"),
    (_unet_transformer, "holds a UNet2DModel; a token prior needs one of"),
    (_no_index, "not a token-prior pipeline folder"),
])
def test_bad_prior_folders_are_refused(tiny_prior_dir, tmp_path, damage, message):
    folder = shutil.copytree(tiny_prior_dir, tmp_path / "prior")
    genlab.load_prior(folder, device="cpu")  # loads before the damage
    genlab.loading.checkpoints.clear_cache()
    damage(folder)
    with pytest.raises(ModelLoadError, match=message):
        genlab.load_prior(folder, device="cpu")


@pytest.mark.parametrize("layout, mask_token_id", [("genlab", 3), ("genlab", K + 1), ("amused", 3), ("amused", K + 2)])
def test_a_scheduler_mask_id_the_transformer_cannot_use_is_refused(tiny_prior_dir, tiny_amused_dir, tmp_path,
                                                                   layout, mask_token_id):
    """GenLab's transformer embeds [MASK] as index K; UVit2DModel needs K <= mask id < vocab_size."""
    source = tiny_prior_dir if layout == "genlab" else tiny_amused_dir
    folder = shutil.copytree(source, tmp_path / "prior")
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "mask_token_id": mask_token_id}))
    with pytest.raises(ModelLoadError, match="mask"):
        genlab.load_prior(folder, device="cpu")


def test_load_prior_from_the_hub_downloads_every_part_it_needs(tiny_amused_dir, tmp_path, monkeypatch):
    """A Hub repo in aMUSEd's layout: the fake snapshot holds only the files GenLab's patterns ask for, as
    huggingface_hub's filter does; the revision is passed through."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, ignore_patterns=None, **_):
        calls.append((repo_id, revision))
        root = tmp_path / "snapshot"
        for path in sorted(tiny_amused_dir.rglob("*")):
            name = path.relative_to(tiny_amused_dir).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns) \
                    and not any(fnmatch.fnmatch(name, p) for p in ignore_patterns or []):
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, root / name)
        return str(root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    prior = genlab.load_prior("owner/amused-tiny", revision="v1", device="cpu")
    assert calls == [("owner/amused-tiny", "v1")]
    assert prior.is_amused and prior.text is not None and "owner/amused-tiny@v1" in prior.name
    assert prior.sample(seed=0, steps=2, prompt="a fox").tokens.min() >= 0


# ------------------------------------------------------------------------- orders and counts
def test_still_masked_is_the_amused_scheduler_rule():
    for count, steps in ((count, steps) for count in (9, 16, 64, 256) for steps in range(1, 17)):
        left, chain = count, []
        for step in range(steps):
            left = still_masked(count, step, steps, left)
            chain.append(left)
        assert chain == scheduler_counts(count, steps), (count, steps)


@pytest.mark.parametrize("order, steps", [
    ("confidence", 5), ("confidence", 12), ("random", 5),
    ("random", 12),  # cos(pi/3) is 0.49999997 in the scheduler's float32: 31 of 64 left after step 7, not 32
])
def test_confidence_and_random_orders_follow_the_amused_cosine_counts(prior, order, steps):
    run = prior.sample(seed=0, steps=steps, order=order, class_label="a")
    assert masked_counts(run) == scheduler_counts(N, steps)
    for step, left in enumerate(masked_counts(run)[:-1]):  # MaskGIT's N cos(pi/2 (s+1)/S), floored
        assert 0 <= N * math.cos(math.pi / 2 * (step + 1) / steps) - left < 1 + 1e-6


@pytest.mark.parametrize("order, steps", [("confidence", 7), ("random", 7), ("raster", 3)])
def test_frames_unmask_monotonically_and_end_complete(prior, order, steps):
    """Each frame's tokens are -1 exactly where still masked; a fixed token never changes; `new` is what
    the step fixed; one frame per step; the final tokens are the last frame's, with no -1."""
    run = prior.sample(seed=3, steps=steps, order=order, class_label="b")
    frames = run.frames
    assert len(frames) == (N if order == "raster" else steps)
    assert all(isinstance(frame, TokenFrame) and frame.index == i for i, frame in enumerate(frames))
    before = np.full((PRIOR_GRID, PRIOR_GRID), -1)
    for frame in frames:
        tokens, masked_before = frame.tokens, before == -1
        assert tokens.shape == (PRIOR_GRID, PRIOR_GRID) and tokens.dtype.kind == "i"
        assert ((tokens == -1) | ((tokens >= 0) & (tokens < K))).all()
        assert (tokens[~masked_before] == before[~masked_before]).all()  # fixed tokens stay
        np.testing.assert_array_equal(frame.new, masked_before & (tokens != -1))
        assert frame.new.any()  # every step fixes at least one token
        assert frame.masked_share == pytest.approx((tokens == -1).mean())
        before = tokens
    np.testing.assert_array_equal(run.tokens, frames[-1].tokens)
    assert (run.tokens >= 0).all() and run.tokens.shape == (PRIOR_GRID, PRIOR_GRID)


def test_raster_order_fills_one_token_per_step_in_raster_order(prior):
    run = prior.sample(seed=0, order="raster", steps=5, class_label="c")  # steps is the token count in raster
    frames = run.frames
    assert len(frames) == N
    flat_index = np.arange(N).reshape(PRIOR_GRID, PRIOR_GRID)
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.new, flat_index == i)
        np.testing.assert_array_equal(frame.tokens == -1, flat_index > i)


def test_run_images_have_the_grid_size_and_batches_tile(prior):
    run = prior.sample(seed=0, steps=3, class_label="a")
    assert run.image.size == (SIDE, SIDE)
    np.testing.assert_array_equal(np.asarray(run.image), np.asarray(prior.vq.decode_indices(run.tokens)))
    first = run.frames[0]
    assert first.image.size == first.x0.size == (SIDE, SIDE)
    grey = np.asarray(first.image)[np.kron(first.tokens == -1, np.ones((2, 2), dtype=bool))]
    assert grey.size and np.abs(grey.astype(int) - 128).max() <= 1  # masked cells are drawn grey
    batch = prior.sample(seed=0, steps=3, batch=6, class_label="a")
    assert batch.tokens.shape == (6, PRIOR_GRID, PRIOR_GRID) and (batch.tokens >= 0).all()
    assert len(batch.images) == 6 and all(image.size == (SIDE, SIDE) for image in batch.images)
    assert batch.image.size == (4 * SIDE + 3 * 2, 2 * SIDE + 2)  # 4 columns, 2-pixel gaps
    assert batch.frames[0].tokens.shape == (6, PRIOR_GRID, PRIOR_GRID)
    assert batch.frames[0].image.size == batch.image.size
    assert len({batch.tokens[i].tobytes() for i in range(6)}) == 6  # the samples differ


# -------------------------------------------------------------------- seeds, top-k, guidance
@pytest.mark.parametrize("order", ["confidence", "raster", "random"])
def test_same_seed_same_tokens_other_seed_other_tokens(prior, order, monkeypatch):
    seen = record_logits(monkeypatch)
    first = prior.sample(seed=5, steps=6, order=order, class_label="a", guidance_scale=3.0)
    again = prior.sample(seed=5, steps=6, order=order, class_label="a", guidance_scale=3.0)
    other = prior.sample(seed=6, steps=6, order=order, class_label="a", guidance_scale=3.0)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    np.testing.assert_array_equal(np.asarray(first.image), np.asarray(again.image))
    if seen:  # the model is far from deterministic: two seeds cannot agree on 64 tokens but by chance
        entropy = -(seen[0].softmax(1) * seen[0].log_softmax(1)).sum(1) / math.log(2)
        assert float(entropy.mean()) > 1.0
    assert (first.tokens != other.tokens).any()


def test_top_k_1_takes_the_argmax_of_the_guided_logits(prior):
    """Raster order, class b, guidance 3: each new token is the argmax of uncond + 3 (cond - uncond) of a
    direct transformer call on the tokens before the step; without top_k some token is not."""
    def argmax_misses(run) -> int:
        misses, before = 0, all_masked(K)
        for i, frame in enumerate(run.frames):
            cond = class_logits(prior.transformer, before, 1)
            uncond = class_logits(prior.transformer, before, prior.null_class)
            guided = uncond + 3.0 * (cond - uncond)
            row, col = divmod(i, PRIOR_GRID)
            misses += int(frame.tokens[row, col] != int(guided[0, :, row, col].argmax()))
            before = hidden(frame.tokens, K)
        return misses

    assert argmax_misses(prior.sample(seed=0, order="raster", class_label="b", guidance_scale=3.0, top_k=1)) == 0
    assert argmax_misses(prior.sample(seed=0, order="raster", class_label="b", guidance_scale=3.0)) > 0


def test_top_k_1_confidence_predictions_are_argmaxes(prior):
    """Confidence order: every step's full prediction of the masked tokens is the argmax."""
    run = prior.sample(seed=0, steps=4, class_label="a", guidance_scale=1.0, top_k=1)
    before = all_masked(K)
    for step in run.steps:
        argmax = class_logits(prior.transformer, before, 0).argmax(1)
        masked = before == K
        torch.testing.assert_close(step.pred[masked], argmax[masked])
        before = step.tokens


def test_top_k_keeps_sampled_tokens_among_the_k_best(prior, monkeypatch):
    seen = record_logits(monkeypatch)
    prior.sample(seed=0, steps=8, order="random", class_label="a", top_k=3)
    for logits in seen:
        assert torch.isfinite(logits).sum(1).eq(3).all()  # 3 finite logits per position, -inf elsewhere


def test_class_guidance_is_the_cfg_combination(prior, monkeypatch):
    """A guided raster step's logits equal uncond + w (cond - uncond) of two separate transformer calls."""
    seen = record_logits(monkeypatch)
    run = prior.sample(seed=0, order="raster", class_label="c", guidance_scale=2.5)
    assert len(seen) == N
    for i in (0, 1, 37):
        before = all_masked(K) if i == 0 else hidden(run.frames[i - 1].tokens, K)
        cond = class_logits(prior.transformer, before, 2)
        uncond = class_logits(prior.transformer, before, prior.null_class)
        assert (cond - uncond).abs().max() > 0.01  # the class changes the logits (1000x the tolerance)
        torch.testing.assert_close(seen[i], uncond + 2.5 * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_default_guidance_comes_from_genlab_json(prior, monkeypatch):
    seen = record_logits(monkeypatch)
    prior.sample(seed=0, steps=2, order="random", class_label="a")
    cond = class_logits(prior.transformer, all_masked(K), 0)
    uncond = class_logits(prior.transformer, all_masked(K), prior.null_class)
    torch.testing.assert_close(seen[0], uncond + 2.0 * (cond - uncond), atol=1e-5, rtol=1e-5)


def test_default_choice_temperature_comes_from_genlab_json(tiny_prior_dir, tmp_path):
    """Without the key a prior samples at aMUSEd's 2.0 (Hub priors); GenLab's priors store MaskGIT's 4.5, which
    `sample` and `inpaint` then use when no choice temperature is given."""
    plain = genlab.load_prior(tiny_prior_dir, device="cpu")
    assert plain.default_choice_temperature == genlab.sampling.CHOICE_TEMPERATURE == 2.0
    folder = shutil.copytree(tiny_prior_dir, tmp_path / "hot")
    info = json.loads((folder / "genlab.json").read_text())
    (folder / "genlab.json").write_text(json.dumps({**info, "default_choice_temperature": 4.5}))
    hot = genlab.load_prior(folder, device="cpu")
    assert hot.default_choice_temperature == genlab.priors.sampling.MASKGIT_CHOICE_TEMPERATURE == 4.5
    tokens = hot.sample(seed=0, steps=6, batch=4, class_label="a").tokens
    np.testing.assert_array_equal(tokens, hot.sample(seed=0, steps=6, batch=4, class_label="a",
                                                     choice_temperature=4.5).tokens)
    assert (tokens != hot.sample(seed=0, steps=6, batch=4, class_label="a", choice_temperature=2.0).tokens).any()
    np.testing.assert_array_equal(tokens, plain.sample(seed=0, steps=6, batch=4, class_label="a",
                                                       choice_temperature=4.5).tokens)


@pytest.mark.parametrize("value", [-1, 20.5, "4.5", True, None])
def test_bad_default_choice_temperature_is_a_load_error(tiny_prior_dir, tmp_path, value):
    folder = shutil.copytree(tiny_prior_dir, tmp_path / "bad")
    info = json.loads((folder / "genlab.json").read_text())
    (folder / "genlab.json").write_text(json.dumps({**info, "default_choice_temperature": value}))
    with pytest.raises(ModelLoadError, match=r"default_choice_temperature in genlab.json must be a number in \[0, 20\]"):
        genlab.load_prior(folder, device="cpu")


def test_guidance_0_and_no_class_are_the_unconditional_model(prior, uncond_prior):
    unconditional = prior.sample(seed=0, steps=6, class_label=None, guidance_scale=7.0).tokens
    np.testing.assert_array_equal(prior.sample(seed=0, steps=6, class_label="a", guidance_scale=0.0).tokens,
                                  unconditional)
    assert (prior.sample(seed=0, steps=6, class_label="a", guidance_scale=1.0).tokens != unconditional).any()
    np.testing.assert_array_equal(uncond_prior.sample(seed=0, steps=6, guidance_scale=5.0).tokens,
                                  uncond_prior.sample(seed=0, steps=6, guidance_scale=1.0).tokens)


# ------------------------------------------------------------------------------- inpainting
def test_inpainting_keeps_every_token_outside_the_mask(prior, photo, box_mask):
    mask, cells = box_mask
    run = prior.inpaint(photo, mask, steps=6, seed=0, class_label="a")
    np.testing.assert_array_equal(run.token_mask, cells)
    original = prior.vq.indices_of(run.input)
    np.testing.assert_array_equal(original, prior.tokens_of(photo)[0].numpy())
    np.testing.assert_array_equal(run.tokens[~cells], original[~cells])
    assert (run.tokens >= 0).all() and run.input.size == (SIDE, SIDE)
    assert len(run.frames) == 6
    for frame in run.frames:  # only the cells under the mask are ever masked
        assert not (frame.tokens[~cells] == -1).any()
        np.testing.assert_array_equal(frame.tokens[~cells], original[~cells])
    assert masked_counts(run)[0] == still_masked(cells.sum(), 0, 6, cells.sum()) > 0  # the cells were resampled


@pytest.mark.parametrize("choice_temperature", [2.0, 20.0])
def test_refined_inpainting_still_keeps_every_token_outside_the_mask(prior, photo, box_mask, choice_temperature):
    """Also at the highest Gumbel temperature, where the scheduler's finfo.max confidence of a known cell (log 88.7)
    can be undercut by the noise: `remask_least_confident` never re-masks a known cell."""
    mask, cells = box_mask
    original = prior.vq.indices_of(prior.fit(photo))
    for seed in range(6):
        run = prior.inpaint(photo, mask, steps=4, seed=seed, class_label="a", refine=3,
                            choice_temperature=choice_temperature)
        assert len(run.frames) == 4 + refinement_steps(3)
        np.testing.assert_array_equal(run.tokens[~cells], original[~cells])
        for frame in run.frames:
            assert not (frame.tokens[~cells] == -1).any()
        remasked = run.frames[4].tokens == -1  # the first round's re-masked cells: a tenth of the painted ones
        assert remasked.sum() == max(1, int(REFINE_SHARE * cells.sum())) and cells[remasked].all()


def test_remasking_matches_diffusers_and_never_picks_a_known_cell():
    probs = torch.rand(3, 40)
    unknown = torch.rand(3, 40) < 0.25
    unknown[:, :12] = True  # at least 12 unknown cells a row
    known_as_scheduler = torch.where(unknown, probs, torch.finfo(probs.dtype).max)
    for temperature in (0.5, 2.0):
        ours = remask_least_confident(5, probs, unknown, temperature, torch.Generator().manual_seed(0))
        theirs = mask_by_random_topk(torch.full((3, 1), 5), known_as_scheduler, temperature,
                                     torch.Generator().manual_seed(0))
        assert torch.equal(ours, theirs) and (ours.sum(1) == 5).all()
    for seed in range(20):  # Gumbel noise at temperature 1e4 swamps every log-probability
        chosen = remask_least_confident(5, probs, unknown, 1e4, torch.Generator().manual_seed(seed))
        assert (chosen.sum(1) == 5).all() and not (chosen & ~unknown).any()


def test_inpainting_with_a_raster_order_takes_one_step_per_masked_token(prior, photo, box_mask):
    mask, cells = box_mask
    run = prior.inpaint(photo, mask, steps=40, seed=0, order="raster", class_label="b")
    assert len(run.frames) == cells.sum() == 9
    order = [tuple(np.argwhere(frame.new)[0]) for frame in run.frames]
    assert order == [tuple(cell) for cell in np.argwhere(cells)]  # raster order within the mask


def test_a_mask_array_and_a_mask_image_give_the_same_run(prior, photo, box_mask):
    mask, cells = box_mask
    from_image = prior.inpaint(photo, mask, steps=5, seed=2, class_label="c")
    from_array = prior.inpaint(photo, np.asarray(mask) > 0, steps=5, seed=2, class_label="c")
    from_rgba = prior.inpaint(photo, Image.merge("RGBA", [mask.point(lambda v: 0)] * 3 + [mask]), steps=5, seed=2,
                              class_label="c")  # a brush layer: the painted alpha is the mask
    for run in (from_array, from_rgba):
        np.testing.assert_array_equal(run.token_mask, cells)
        np.testing.assert_array_equal(run.tokens, from_image.tokens)


def test_an_upload_of_another_shape_is_centre_cropped_with_its_mask(prior):
    """48x32 upload -> centre 32x32 (columns 8..39) -> 16x16: the 4x4 mask block at rows 8..11, columns 24..27
    lands on token (2, 4) exactly."""
    rng = np.random.default_rng(1)
    upload = Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    mask = np.zeros((32, 48), dtype=np.uint8)
    mask[8:12, 24:28] = 1
    run = prior.inpaint(upload, mask, steps=2, seed=0)
    expected = np.zeros((PRIOR_GRID, PRIOR_GRID), dtype=bool)
    expected[2, 4] = True
    np.testing.assert_array_equal(run.token_mask, expected)
    assert run.input.size == (SIDE, SIDE)
    original = prior.vq.indices_of(run.input)
    np.testing.assert_array_equal(run.tokens[~expected], original[~expected])


@pytest.mark.parametrize("make_mask, message", [
    (lambda: np.zeros((SIDE, SIDE)), "the mask is empty"),
    (lambda: Image.new("L", (SIDE, SIDE)), "the mask is empty"),
    (lambda: np.ones((SIDE, SIDE - 1)), "the mask is 15x16 but the image is 16x16"),
    (lambda: Image.new("L", (2 * SIDE, SIDE), 255), "the mask is 32x16 but the image is 16x16"),
    (lambda: np.full((SIDE, SIDE), np.nan), "NaN"),
    (lambda: np.ones((2, SIDE, SIDE)), r"must be \(H, W\)"),
    (lambda: [[1, 0], [0, 1]], "a mask must be an image or an"),
])
def test_bad_masks_are_refused(prior, photo, make_mask, message):
    with pytest.raises(ValueError, match=message):
        prior.inpaint(photo, make_mask(), steps=2, seed=0)


def test_a_mask_outside_the_centre_crop_is_refused(prior):
    upload = Image.new("RGB", (48, 16), "white")  # the prior sees columns 16..31
    mask = np.zeros((16, 48), dtype=np.uint8)
    mask[:, :12] = 1
    with pytest.raises(ValueError, match="outside the centre crop"):
        prior.inpaint(upload, mask, steps=2, seed=0)
    mask[5, 16] = 1  # one pixel inside the crop is enough
    assert prior.inpaint(upload, mask, steps=2, seed=0).token_mask.sum() == 1


# ------------------------------------------------------------------------------- code length
def test_token_bits_is_the_raster_chain_rule(prior, photo):
    """token_bits[r] = -log2 softmax(logits)[x_r] with tokens r.. masked, from a direct transformer call;
    positions in both chunks of 32, unconditional and with a class."""
    bits = prior.token_bits(photo)
    bits_b = prior.token_bits(photo, class_label="b")
    flat = prior.tokens_of(photo)[0].flatten()
    assert bits.shape == (PRIOR_GRID, PRIOR_GRID)
    for r in (0, 13, 31, 32, 50, N - 1):
        inputs = flat.clone()
        inputs[r:] = K
        for label, got in ((prior.null_class, bits), (1, bits_b)):
            logits = class_logits(prior.transformer, inputs.view(1, PRIOR_GRID, PRIOR_GRID), label)
            expected = -logits[0, :, r // PRIOR_GRID, r % PRIOR_GRID].log_softmax(0)[flat[r]] / math.log(2)
            assert got[r // PRIOR_GRID, r % PRIOR_GRID] == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    assert not np.allclose(bits, bits_b)
    given = prior.code_length(photo, class_label="b")  # the decoder is told the class: no label to pay for
    assert given.label == "b" and given.label_bits == 0 and np.array_equal(given.token_bits, bits_b)
    assert prior.bits_per_pixel(photo, class_label="b") == pytest.approx(bits_b.sum() / SIDE**2, rel=1e-6)


def test_sampled_token_bits_are_token_bits_at_seeded_random_positions(prior, photo):
    """sampled_token_bits: the chain-rule bits of token_bits at `positions` cells, the same cells for the same
    seed (whatever the prior), other cells for another seed; bad counts refused."""
    bits = prior.token_bits(photo).flatten()  # (N,)
    sampled = prior.sampled_token_bits(photo, 40, seed=3)
    assert sampled.shape == (40,)
    matches = np.isclose(sampled[:, None], bits[None], rtol=1e-5, atol=1e-6)  # (40, N): which cells it can be
    assert matches.any(axis=1).all()
    assert np.array_equal(sampled, prior.sampled_token_bits(photo, 40, seed=3))
    assert not np.allclose(sampled, prior.sampled_token_bits(photo, 40, seed=4))
    with_class = prior.sampled_token_bits(photo, 40, seed=3, class_label="b")  # the same cells, under class b
    cells = matches.argmax(axis=1)
    assert np.allclose(with_class, prior.token_bits(photo, class_label="b").flatten()[cells], rtol=1e-5, atol=1e-6)
    for bad in (0, N + 1, True, 2.5):
        with pytest.raises(ValueError, match="positions must be an integer in"):
            prior.sampled_token_bits(photo, bad)


def test_code_length_without_a_class_is_a_two_part_code(prior, photo):
    """A class-conditional prior names a label (3 classes or none: log2 4 = 2 bits), then codes the tokens
    under it; the label is the one whose model finds the tokens likeliest at the probe's half-masks."""
    code = prior.code_length(photo)
    assert code.label_bits == pytest.approx(2.0) and code.pixels == SIDE**2
    assert code.label in ("a", "b", "c", "no class")
    named = None if code.label == "no class" else code.label
    np.testing.assert_array_equal(code.token_bits, prior.token_bits(photo, class_label=named))
    assert code.bits == pytest.approx(code.token_bits.sum() + 2.0, rel=1e-6)
    assert prior.bits_per_pixel(photo) == pytest.approx(code.bits / SIDE**2, rel=1e-6)
    assert math.isfinite(code.bits_per_pixel) and code.bits_per_pixel > 0
    tokens = prior.tokens_of(photo)[0]
    chosen = prior.coding_label(tokens)
    assert code.label == ("no class" if chosen == prior.null_class else prior.classes[chosen])
    given = prior.code_length(photo, class_label=0)  # class 0 is a class given, not "no class"
    assert given.label == "a" and given.label_bits == 0


def test_the_coding_label_is_seeded_and_leaves_the_global_generator_alone(prior, photo, monkeypatch):
    """The probe's half-masks come from their own seeded generator: the same masks whatever the global seed,
    and torch's global random state is left as it was."""
    tokens = prior.tokens_of(photo)[0]
    seen = []
    real_predictor = prior._predictor

    def recording(conditioning, scale, batch):
        predict = real_predictor(conditioning, scale, batch)
        return lambda inputs: (seen.append(inputs.clone()), predict(inputs))[1]

    monkeypatch.setattr(prior, "_predictor", recording)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = prior.coding_label(tokens)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(2)
    second = prior.coding_label(tokens)
    assert first == second and len(seen) == 2 and torch.equal(seen[0], seen[1])
    hidden = seen[0] == K  # (L*M, h, w): 4 half-masks for each of the 3 classes and none
    assert seen[0].shape == (4 * 4, PRIOR_GRID, PRIOR_GRID) and 0.3 < hidden.float().mean() < 0.7
    assert torch.equal(hidden[:4], hidden[4:8])  # every label is scored on the same masks


def test_a_code_that_names_no_class_is_the_unconditional_chain_rule(prior, photo, monkeypatch):
    for chosen, label in ((prior.null_class, "no class"), (1, "b")):
        monkeypatch.setattr(prior, "coding_label", lambda tokens, chosen=chosen: chosen)
        code = prior.code_length(photo)
        assert code.label == label and code.label_bits == pytest.approx(2.0)
        expected = prior.token_bits(photo) if label == "no class" else prior.token_bits(photo, class_label=label)
        np.testing.assert_array_equal(code.token_bits, expected)


def test_bad_coding_label_inputs_are_refused(prior, uncond_prior, photo):
    with pytest.raises(ValueError, match="has no classes to name"):
        uncond_prior.coding_label(uncond_prior.tokens_of(photo)[0])
    with pytest.raises(ValueError, match=r"one \(h, w\) grid, got shape \(1, 8, 8\)"):
        prior.coding_label(prior.tokens_of(photo))


def two_pattern_images():
    """A red/blue checkerboard and blue/red stripes, 16x16 px, tokenised to distinct grids."""
    cells = np.indices((PRIOR_GRID, PRIOR_GRID))
    red, blue = np.array([230, 40, 20]), np.array([20, 90, 220])
    images = []
    for pattern in (cells.sum(0) % 2, cells[1] % 2):
        board = np.kron(pattern, np.ones((2, 2)))[..., None]
        images.append(Image.fromarray((board * red + (1 - board) * blue).astype(np.uint8)))
    return images


def test_the_two_part_code_names_the_class_an_image_belongs_to(prior):
    """Train a fresh transformer on two patterns, class a and class b (and each unlabelled): each pattern's
    code names its own class, and the two-part code (2 bits for the label) is shorter than coding the tokens
    under the other class."""
    images = two_pattern_images()
    grids = torch.cat([prior.tokens_of(image) for image in images])  # (2, 8, 8)
    assert not torch.equal(grids[0], grids[1])
    torch.manual_seed(0)
    model = MaskedTokenTransformer.from_config(prior.transformer.config)
    fresh = TokenPrior(prior.vq, model, {"mask_token_id": K}, info={"classes": PRIOR_CLASSES}, name="fresh")
    tokens = grids.repeat(8, 1, 1)  # (16, 8, 8): checkerboard, stripes, ...
    labels = torch.tensor([0, 1] * 6 + [len(PRIOR_CLASSES)] * 4)  # the last two pairs unlabelled (the null class)
    model.train()
    optimise(model, lambda generator: masked_token_loss(model, tokens, labels, generator, raster_share=0.5), 80,
             lr=3e-3)
    model.eval()
    for image, own, other in ((images[0], "a", "b"), (images[1], "b", "a")):
        code = fresh.code_length(image)
        assert code.label == own
        assert code.bits < fresh.token_bits(image, class_label=other).sum()


@pytest.mark.parametrize("network", ["transformer", "unet"])
def test_a_trained_prior_codes_its_pattern_in_fewer_bits(prior, network):
    """Train a fresh network (GenLab's transformer or UNet) for 60 AdamW steps on one checkerboard image's tokens:
    its code length falls well below the untrained model's and below log2 K / f^2, the cost of storing the indices."""
    board = np.kron((np.indices((PRIOR_GRID, PRIOR_GRID)).sum(0) % 2), np.ones((2, 2)))[..., None]
    image = Image.fromarray((board * [230, 40, 20] + (1 - board) * [20, 90, 220]).astype(np.uint8))
    tokens = prior.tokens_of(image)  # (1, 8, 8)
    assert len(np.unique(tokens)) >= 2
    torch.manual_seed(0)
    if network == "transformer":
        model = MaskedTokenTransformer.from_config(prior.transformer.config)
    else:
        model = MaskedTokenUNet(**{**TINY_TOKEN_UNET, "num_classes": 0})
    fresh = TokenPrior(prior.vq, model.eval(), {"mask_token_id": K}, name="fresh")
    untrained = fresh.bits_per_pixel(image)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss = masked_token_loss(model, tokens.repeat(16, 1, 1), None, generator, raster_share=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    trained = fresh.bits_per_pixel(image)
    assert untrained > 0.5 * prior.index_bits_per_pixel
    assert trained < 0.5 * untrained and trained < 0.5 * prior.index_bits_per_pixel


# ---------------------------------------------------------------------------------- input checks
@pytest.mark.parametrize("kwargs, message", [
    (dict(order="spiral"), "unknown order 'spiral'"),
    (dict(steps=0), r"steps must be an integer in \[1, 64\], got 0"),
    (dict(steps=65), r"steps must be an integer in \[1, 64\], got 65"),
    (dict(steps=2.5), r"steps must be an integer in \[1, 64\], got 2.5"),
    (dict(temperature=0), r"temperature must be a number in \(0, 10\]"),
    (dict(temperature=-1), r"temperature must be a number in \(0, 10\]"),
    (dict(temperature="a"), r"temperature must be a number in \(0, 10\]"),
    (dict(top_k=0), rf"top_k must be an integer in \[1, {K}\], got 0"),
    (dict(top_k=K + 1), rf"top_k must be an integer in \[1, {K}\], got {K + 1}"),
    (dict(guidance_scale=-1), r"guidance scale must be a number in \[0, 30\]"),
    (dict(guidance_scale=31), r"guidance scale must be a number in \[0, 30\]"),
    (dict(guidance_scale=float("nan")), r"guidance scale must be a number in \[0, 30\]"),
    (dict(choice_temperature=-1), r"choice temperature must be a number in \[0, 20\], got -1"),
    (dict(choice_temperature=21), r"choice temperature must be a number in \[0, 20\], got 21"),
    (dict(choice_temperature="4.5"), r"choice temperature must be a number in \[0, 20\], got '4.5'"),
    (dict(choice_temperature=True), r"choice temperature must be a number in \[0, 20\], got True"),
    (dict(batch=0), r"batch must be an integer in \[1, 16\]"),
    (dict(batch=17), r"batch must be an integer in \[1, 16\]"),
    (dict(seed=-1), "seed must be an integer"),
    (dict(class_label="zebra"), "unknown class 'zebra'; choose one of"),
    (dict(class_label=3), r"class index must be in \[0, 2\]"),
    (dict(prompt="a fox"), "not text-conditioned"),
    (dict(refine=-1), r"refine must be an integer in \[0, 8\], got -1"),
    (dict(refine=9), r"refine must be an integer in \[0, 8\], got 9"),
    (dict(refine=1.5), r"refine must be an integer in \[0, 8\], got 1.5"),
    (dict(refine=True), r"refine must be an integer in \[0, 8\], got True"),
])
def test_bad_settings_are_refused_before_any_work(prior, kwargs, message):
    calls = []
    prior.transformer.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=message):
        prior.sample_stream(**{"seed": 0, "steps": 4, "class_label": "a", **kwargs})  # eager, before iterating
    with pytest.raises(ValueError, match=message):
        prior.sample(**{"seed": 0, "steps": 4, "class_label": "a", **kwargs})
    assert not calls


@pytest.mark.parametrize("kwargs, message", [
    (dict(order="spiral"), "unknown order"), (dict(steps=65), "steps must be"), (dict(top_k=0), "top_k must be"),
    (dict(class_label="zebra"), "unknown class"), (dict(prompt="a fox"), "not text-conditioned"),
    (dict(refine=9), "refine must be an integer"),
])
def test_bad_inpainting_settings_are_refused(prior, photo, box_mask, kwargs, message, monkeypatch):
    def encode(*_):
        raise AssertionError("the image was encoded before the sampling settings were checked")

    if "class_label" not in kwargs and "prompt" not in kwargs:  # conditions are checked with the conditioning
        monkeypatch.setattr(prior, "tokens_of", encode)
        monkeypatch.setattr(prior, "token_mask", encode)
    with pytest.raises(ValueError, match=message):
        prior.inpaint_stream(photo, box_mask[0], **{"seed": 0, "steps": 4, **kwargs})


def test_classes_on_an_unconditional_prior_are_refused(uncond_prior):
    assert not uncond_prior.is_conditional and uncond_prior.classes == []
    with pytest.raises(ValueError, match="not class-conditional"):
        uncond_prior.sample(seed=0, steps=2, class_label="a")
    with pytest.raises(ValueError, match="not class-conditional"):
        uncond_prior.sample(seed=0, steps=2, class_label=0)
    assert (uncond_prior.sample(seed=0, steps=2, class_label="").tokens >= 0).all()


def test_an_unconditional_prior_codes_without_a_label(uncond_prior, photo):
    code = uncond_prior.code_length(photo)
    assert code.label is None and code.label_bits == 0
    np.testing.assert_array_equal(code.token_bits, uncond_prior.token_bits(photo))
    with pytest.raises(ValueError, match="not class-conditional"):
        uncond_prior.bits_per_pixel(photo, class_label="a")


@pytest.mark.parametrize("kwargs, message", [
    (dict(class_label="zebra"), "unknown class 'zebra'"),
    (dict(class_label=3), r"class index must be in \[0, 2\], got 3"),
    (dict(class_label=-1), r"class index must be in \[0, 2\], got -1"),
    (dict(prompt="a red fox"), "not text-conditioned"),
    (dict(prompt=3), "prompt must be text"),
])
def test_bad_code_length_conditions_are_refused(prior, photo, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prior.bits_per_pixel(photo, **kwargs)


def test_bad_code_length_inputs_are_refused(prior, amused, photo):
    with pytest.raises(ValueError, match="conditioned on text, not on classes"):
        amused.code_length(photo, class_label="a")
    with pytest.raises(genlab.InputError):
        prior.code_length(b"not an image")


# --------------------------------------------------------------------------------- streaming
# ------------------------------------------------------------------------------- refinement
def test_refinement_replaces_the_tokens_the_model_finds_unlikely():
    """A model that expects code (i mod K) at cell i whatever the context: refinement re-masks the three cells
    that hold another code (the least likely ones), and the resampling gives them the expected code."""
    grid, mask_id = (4, 8), K
    expected = (torch.arange(32) % K).view(1, *grid)

    def predict(tokens):  # (B, h, w) -> (B, K, h, w): code (i mod K) at cell i, all but certain
        return F.one_hot(expected.expand(len(tokens), -1, -1), K).permute(0, 3, 1, 2).float() * 30.0

    tokens = expected.repeat(2, 1, 1)  # (2, h, w)
    speckles = [(0, 1, 3), (0, 3, 0), (1, 2, 5)]  # (sample, row, column) holding a wrong code
    for b, row, col in speckles:
        tokens[b, row, col] = (expected[0, row, col] + 1) % K
    free = torch.ones(grid, dtype=torch.bool)
    steps = list(refine_rounds(predict, tokens, free, mask_id, rounds=1, generator=torch.Generator().manual_seed(0)))
    assert len(steps) == refinement_steps(1)
    remasked = steps[0].tokens == mask_id  # (2, h, w)
    assert remasked.sum(dim=(1, 2)).tolist() == [max(1, int(REFINE_SHARE * 32))] * 2  # 3 a sample
    assert all(remasked[b, row, col] for b, row, col in speckles)
    torch.testing.assert_close(steps[0].pred, tokens)  # the frame shows the grid before the round as its x0
    assert torch.equal(steps[-1].tokens, expected.repeat(2, 1, 1))


def test_refinement_never_touches_cells_outside_free():
    grid, mask_id = (4, 8), K
    tokens = torch.randint(0, K, (1, *grid))
    free = torch.zeros(grid, dtype=torch.bool)
    free[1:3, 2:6] = True  # 8 cells
    predict = lambda t: torch.randn(len(t), K, *grid, generator=torch.Generator().manual_seed(1))
    steps = list(refine_rounds(predict, tokens, free, mask_id, rounds=3, generator=torch.Generator().manual_seed(0)))
    for step in steps:
        assert torch.equal(step.tokens[0][~free], tokens[0][~free])
    assert [int((s.tokens == mask_id).sum()) for s in steps[::refinement_steps(1)]] == [1, 1, 1]  # a tenth of 8


def test_sampling_with_refinement_appends_its_rounds_and_is_deterministic(prior):
    plain = prior.sample(seed=0, steps=6, class_label="a", batch=2)
    run = prior.sample(seed=0, steps=6, class_label="a", batch=2, refine=2)
    assert len(run.frames) == 6 + refinement_steps(2)
    np.testing.assert_array_equal(run.frames[5].tokens, plain.tokens)  # the same sampling, then the rounds
    share = max(1, int(REFINE_SHARE * 64))
    assert [int((f.tokens[b] == -1).sum()) for f in (run.frames[6], run.frames[6 + refinement_steps(1)])
            for b in range(2)] == [share] * 4
    assert (run.tokens >= 0).all()
    np.testing.assert_array_equal(run.tokens, prior.sample(seed=0, steps=6, class_label="a", batch=2, refine=2).tokens)
    raster = prior.sample(seed=0, steps=1, order="raster", class_label="a", refine=1)  # rounds resample by confidence
    assert len(raster.frames) == 64 + refinement_steps(1) and (raster.tokens >= 0).all()


def test_sample_stream_yields_frames_then_the_run(prior):
    items = list(prior.sample_stream(seed=1, steps=5, class_label="a"))
    assert [type(item) for item in items] == [TokenFrame] * 5 + [TokenRun]
    run = items[-1]
    assert [frame.index for frame in items[:-1]] == list(range(5)) and len(run.frames) == 5
    np.testing.assert_array_equal(run.tokens, items[-2].tokens)
    np.testing.assert_array_equal(run.tokens, prior.sample(seed=1, steps=5, class_label="a").tokens)


def test_closing_the_stream_early_stops_the_model(prior):
    calls = []
    prior.transformer.register_forward_hook(lambda *_: calls.append(1))
    stream = prior.sample_stream(seed=0, order="raster", class_label="a", guidance_scale=3.0)
    assert not calls  # nothing runs before the first frame is asked for
    next(stream), next(stream)
    stream.close()
    assert len(calls) == 2  # one batched (cond + uncond) call a step
    with pytest.raises(StopIteration):
        next(stream)
    assert len(calls) == 2
    list(prior.sample_stream(seed=0, order="raster", class_label="a", guidance_scale=3.0))
    assert len(calls) == 2 + N


# ------------------------------------------------------------------------------------ aMUSEd
def amused_conditioning(amused, prompt: str) -> dict:
    """UVit2DModel's keyword arguments as diffusers' AmusedPipeline computes them for one prompt."""
    tokenizer, encoder = amused.text.tokenizer, amused.text.model
    ids = tokenizer([prompt], return_tensors="pt", padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length).input_ids
    with torch.inference_mode():
        outputs = encoder(ids, return_dict=True, output_hidden_states=True)
    height, width = amused.image_size
    return {"encoder_hidden_states": outputs.hidden_states[-2], "pooled_text_emb": outputs.text_embeds,
            "micro_conds": torch.tensor([[width, height, 0, 0, 6]], dtype=torch.float32)}


def test_the_amused_layout_loads_as_a_text_prior(amused):
    assert amused.is_amused and amused.text is not None and not amused.is_conditional
    assert type(amused.transformer).__name__ == "UVit2DModel"
    assert amused.mask_id == K + 1 and amused.num_codes == K  # the scheduler's mask id, not K
    assert amused.grid == (PRIOR_GRID, PRIOR_GRID) and amused.image_size == (SIDE, SIDE)
    assert amused.default_guidance_scale == 10.0  # AmusedPipeline's default
    run = amused.sample(seed=0, steps=12, prompt="a red fox")
    assert len(run.frames) == 12 and masked_counts(run) == scheduler_counts(N, 12)
    assert run.tokens.shape == (PRIOR_GRID, PRIOR_GRID) and ((run.tokens >= 0) & (run.tokens < K)).all()
    assert run.image.size == (SIDE, SIDE) and not run.notes


def test_amused_guided_logits_are_the_pipeline_conditioning(amused, monkeypatch):
    """GenLab's guided logits = uncond + w (cond - uncond) of UVit2DModel calls with AmusedPipeline's kwargs:
    hidden_states[-2], text_embeds and micro_conds [W, H, 0, 0, 6]; the negative prompt is the uncond branch."""
    seen = record_logits(monkeypatch)
    run = amused.sample(seed=0, steps=3, order="random", prompt="a red fox", negative_prompt="blurry",
                        guidance_scale=4.0)
    assert len(seen) == 3
    with torch.inference_mode():
        for i in (0, 1):
            before = all_masked(amused.mask_id) if i == 0 else hidden(run.frames[i - 1].tokens, amused.mask_id)
            cond = amused.transformer(before, **amused_conditioning(amused, "a red fox")).float()
            uncond = amused.transformer(before, **amused_conditioning(amused, "blurry")).float()
            assert cond.shape == (1, K, PRIOR_GRID, PRIOR_GRID) and (cond - uncond).abs().max() > 1e-3
            torch.testing.assert_close(seen[i], uncond + 4.0 * (cond - uncond), atol=1e-4, rtol=1e-4)


def multinomial_everywhere(logits, where, generator):
    """diffusers' draw in `AmusedScheduler.step`: one torch.multinomial over every cell's softmax, known cells too."""
    probs = logits.permute(0, 2, 3, 1).softmax(dim=-1)  # (B, h, w, K)
    drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(where.shape)
    return drawn, probs.gather(-1, drawn[..., None])[..., 0]


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_amused_sampling_is_diffusers_amused_pipeline_token_for_token(amused, tiny_amused_dir, guidance_scale,
                                                                       monkeypatch):
    """Confidence order = AmusedScheduler steps with the pipeline's conditioning and CFG: drawing the codes as
    the scheduler does (torch.multinomial over every cell), the same seed gives AmusedPipeline's very tokens
    (output_type="latent"). GenLab's own draw (masked cells only) is tested for its distribution below."""
    from diffusers import AmusedPipeline

    monkeypatch.setattr(genlab.priors.sampling, "draw_codes", multinomial_everywhere)

    pipe = AmusedPipeline.from_pretrained(tiny_amused_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red fox", num_inference_steps=12, guidance_scale=guidance_scale,
                    generator=torch.Generator().manual_seed(3), output_type="latent").images
    run = amused.sample(seed=3, steps=12, prompt="a red fox", guidance_scale=guidance_scale)
    np.testing.assert_array_equal(run.tokens, expected[0].numpy())
    other = amused.sample(seed=3, steps=12, prompt="a blue whale", guidance_scale=guidance_scale)
    assert guidance_scale == 1.0 or (other.tokens != run.tokens).any()


def test_draw_codes_draws_the_softmax_at_the_asked_cells_only():
    """Inverse-CDF draws: frequencies match softmax(logits) (four codes, one at -inf as top-k leaves it,
    20 000 cells), never a code of probability 0, nothing drawn outside `where`, seeded."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = probs.log().view(1, 5, 1, 1).expand(2, 5, 100, 100).contiguous()  # (B, K, h, w)
    where = torch.ones(2, 100, 100, dtype=torch.bool)
    where[1, :50] = False  # 15 000 cells drawn
    codes, drawn_probs = genlab.priors.sampling.draw_codes(logits, where, torch.Generator().manual_seed(0))
    assert codes.shape == drawn_probs.shape == (2, 100, 100) and codes.dtype == torch.long
    assert (codes[~where] == 0).all() and (drawn_probs[~where] == 1).all()
    frequencies = torch.bincount(codes[where], minlength=5).float() / int(where.sum())
    assert (frequencies - probs).abs().max() < 0.015, frequencies  # 4 standard errors at most
    torch.testing.assert_close(drawn_probs[where], probs[codes[where]])
    again, _ = genlab.priors.sampling.draw_codes(logits, where, torch.Generator().manual_seed(0))
    other, _ = genlab.priors.sampling.draw_codes(logits, where, torch.Generator().manual_seed(1))
    assert torch.equal(codes, again) and not torch.equal(codes, other)


def test_draw_codes_on_a_peaked_and_a_uniform_row():
    """A row with one code at probability 1 - 1.4e-8 draws it; a uniform row draws every code."""
    logits = torch.zeros(1, 8, 1, 2)
    logits[0, 3, 0, 0] = 20.0
    where = torch.ones(1, 1, 2, dtype=torch.bool)
    seen = {int(genlab.priors.sampling.draw_codes(logits, where, torch.Generator().manual_seed(s))[0][0, 0, 1])
            for s in range(200)}
    assert seen == set(range(8))
    assert all(int(genlab.priors.sampling.draw_codes(logits, where, torch.Generator().manual_seed(s))[0][0, 0, 0]) == 3
               for s in range(50))


def test_draw_codes_takes_the_likeliest_code_when_u_rounds_up_to_the_total(monkeypatch):
    """u = total (float rounding) lies past every cumulative sum: the draw falls back to the likeliest code, never
    to the last one, which top-k may have removed."""
    logits = torch.tensor([0.0, 2.0, 1.0, float("-inf")]).view(1, 4, 1, 1)
    monkeypatch.setattr(torch, "rand", lambda *shape, generator=None, dtype=None: torch.ones(*shape, dtype=dtype))
    codes, probs = genlab.priors.sampling.draw_codes(logits, torch.ones(1, 1, 1, dtype=torch.bool), torch.Generator())
    assert int(codes[0, 0, 0]) == 1 and float(probs[0, 0, 0]) == pytest.approx(float(logits.softmax(1)[0, 1, 0, 0]))


def test_amused_images_are_the_pipeline_images(amused, tiny_amused_dir, monkeypatch):
    monkeypatch.setattr(genlab.priors.sampling, "draw_codes", multinomial_everywhere)
    from diffusers import AmusedPipeline

    pipe = AmusedPipeline.from_pretrained(tiny_amused_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red fox", num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                    output_type="np").images[0]
    run = amused.sample(seed=0, steps=4, prompt="a red fox")
    assert np.abs(np.asarray(run.image) / 255.0 - expected).max() <= 1.5 / 255


def test_amused_inpaints_the_masked_tokens_only(amused, photo, box_mask):
    mask, cells = box_mask
    run = amused.inpaint(photo, mask, steps=12, seed=0, prompt="a red fox")
    np.testing.assert_array_equal(run.token_mask, cells)
    original = amused.tokens_of(photo)[0].numpy()
    np.testing.assert_array_equal(run.tokens[~cells], original[~cells])
    assert len(run.frames) == 12 and all(not (frame.tokens[~cells] == -1).any() for frame in run.frames)
    assert ((run.tokens >= 0) & (run.tokens < K)).all()


def test_amused_prompts_are_checked_and_long_ones_noted(amused):
    long_run = amused.sample(seed=0, steps=2, prompt="many words " * 20)
    assert any("cut to the text encoder's 16 tokens" in note for note in long_run.notes)
    assert not amused.sample(seed=0, steps=2, prompt="short").notes
    with pytest.raises(ValueError, match="conditioned on text, not on classes"):
        amused.sample(seed=0, steps=2, class_label="a")
    with pytest.raises(ValueError, match="prompt must be text"):
        amused.sample(seed=0, steps=2, prompt=3)


def test_amused_token_bits_use_the_prompt(amused, photo):
    with_prompt = amused.token_bits(photo, prompt="a red fox")
    without = amused.token_bits(photo)
    for prompt, bits in (("a red fox", with_prompt), (None, without)):  # text models name no label
        code = amused.code_length(photo, prompt=prompt)
        assert code.label is None and code.label_bits == 0 and np.array_equal(code.token_bits, bits)
    assert np.isfinite(with_prompt).all() and (with_prompt > 0).all() and not np.allclose(with_prompt, without)
    flat = amused.tokens_of(photo)[0].flatten()
    inputs = flat.clone()
    inputs[20:] = amused.mask_id
    with torch.inference_mode():
        logits = amused.transformer(inputs.view(1, PRIOR_GRID, PRIOR_GRID), **amused_conditioning(amused, "a red fox"))
    expected = -logits[0, :, 20 // PRIOR_GRID, 20 % PRIOR_GRID].float().log_softmax(0)[flat[20]] / math.log(2)
    assert with_prompt[20 // PRIOR_GRID, 20 % PRIOR_GRID] == pytest.approx(float(expected), rel=1e-4)


# ------------------------------------------------------------------------------- training helpers
def test_mask_for_training_masks_at_least_one_token_and_raster_masks_are_suffixes():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, K, (400, PRIOR_GRID, PRIOR_GRID), generator=generator)
    positions = torch.arange(N)

    def is_suffix(mask):  # (B, N) -> (B,): masked exactly from the first masked position on
        first = mask.float().argmax(1)
        return (mask == (positions[None] >= first[:, None])).all(1) & mask.any(1)

    def partial_suffixes(mask):  # share of masks that are suffixes but not the whole grid
        return float((is_suffix(mask) & ~mask.all(1)).float().mean())

    for share in (0.0, 0.25, 1.0):
        inputs, masked = mask_for_training(tokens, K, generator, raster_share=share)
        assert masked.shape == tokens.shape and masked.dtype == torch.bool
        torch.testing.assert_close(inputs, torch.where(masked, K, tokens))
        flat = masked.view(len(tokens), -1)
        assert (flat.sum(1) >= 1).all()
        if share == 1.0:
            assert bool(is_suffix(flat).all())
        elif share == 0.0:  # random cells: a suffix only by chance (or when the whole grid is masked)
            assert partial_suffixes(flat) < 0.03 and len(set(flat.sum(1).tolist())) > 10  # cosine: many sizes
        else:
            assert 0.15 < partial_suffixes(flat) < 0.35


def test_masked_token_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = MaskedTokenTransformer(codebook_size=K, height=PRIOR_GRID, width=PRIOR_GRID, num_classes=3,
                                   hidden_size=32, num_layers=1, num_heads=2)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    rows, cols = torch.meshgrid(torch.arange(PRIOR_GRID), torch.arange(PRIOR_GRID), indexing="ij")
    tokens = (rows + 2 * cols + 5 * labels[:, None, None]) % K  # (8, h, w): a learnable pattern per class

    def loss_on_fixed_masks():
        with torch.no_grad():
            return float(masked_token_loss(model, tokens, labels, torch.Generator().manual_seed(0)))

    initial = loss_on_fixed_masks()
    assert initial == pytest.approx(math.log(K), abs=0.5)  # mean cross-entropy in nats (log2 K = 4 bits), near uniform
    optimise(model, lambda generator: masked_token_loss(model, tokens, labels, generator), steps=60, seed=2)
    assert loss_on_fixed_masks() < 0.5 * initial


def test_masked_token_loss_counts_only_the_masked_tokens():
    """A model that predicts every token perfectly except where the input shows it: masked tokens cost 0."""
    tokens = torch.randint(0, K, (4, PRIOR_GRID, PRIOR_GRID), generator=torch.Generator().manual_seed(0))

    class Oracle(torch.nn.Module):
        mask_token_id = K

        def forward(self, inputs, class_labels=None):
            right = F.one_hot(tokens, K).permute(0, 3, 1, 2).float() * 50  # certain of the true token
            wrong = F.one_hot((tokens + 1) % K, K).permute(0, 3, 1, 2).float() * 50
            return torch.where((inputs == K)[:, None], right, wrong)

    assert float(masked_token_loss(Oracle(), tokens, None, torch.Generator().manual_seed(0))) < 1e-6


def test_conv_kernel_mixes_neighbouring_tokens_and_starts_as_the_identity():
    """conv_kernel=3: zero-initialised, the transformer computes what the one without it does (same weights); with
    the convolutions set, a token's logits depend on its neighbours' convolved features; bad kernels are refused."""
    from genlab.train.prior import grown

    torch.manual_seed(0)
    plain = MaskedTokenTransformer(codebook_size=K, height=PRIOR_GRID, width=PRIOR_GRID, num_classes=3,
                                   hidden_size=32, num_layers=2, num_heads=2).eval()
    mixed = grown(plain, 3).eval()
    assert mixed.config.conv_kernel == 3 and grown(plain, None) is plain and grown(plain, 0) is plain
    tokens = torch.randint(0, K + 1, (2, PRIOR_GRID, PRIOR_GRID), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.allclose(mixed(tokens, labels), plain(tokens, labels), atol=1e-6)
        for conv in mixed.convs:
            conv.weight.normal_(std=0.3)
        assert not torch.allclose(mixed(tokens, labels), plain(tokens, labels), atol=1e-3)
    with pytest.raises(SystemExit, match="has 3 x 3 convolutions already"):
        grown(mixed, 5)
    for bad in (2, -1, True):
        with pytest.raises(ValueError, match="conv_kernel must be 0 or an odd number"):
            MaskedTokenTransformer(codebook_size=K, height=PRIOR_GRID, width=PRIOR_GRID, hidden_size=32,
                                   num_layers=1, num_heads=2, conv_kernel=bad)
