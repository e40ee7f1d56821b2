"""The evaluation command's scores (genlab.tools.eval): the pieces that judge the embedded models, and its
token-prior paths (`emoji` on a prior folder, `prior`) on a tiny random prior."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.tools import eval as genlab_eval
from genlab.tools import eval_emoji, eval_prior
from genlab.tools.data import list_images
from genlab.tools.eval import psnr_float
from genlab.tools.eval_emoji import balanced_accuracy, emoji_stats, is_token_prior
from genlab.tools.eval_prior import held_out_subset
from genlab.imaging.io import image_grid, open_image

CLASSES = ["a", "b", "c"]
PRIOR_CODES, PRIOR_GRID, PRIOR_F = 16, 4, 4  # K, tokens per side, downsample factor: 16 px samples
DATA_SIDE = 8  # the "real emoji": smaller than the samples, so the emoji path must area-average them


def test_balanced_accuracy_does_not_reward_the_majority_class():
    labels = torch.tensor([0] * 8 + [1, 2])
    majority_only = torch.zeros(10, dtype=torch.long)
    assert (majority_only == labels).float().mean().item() == pytest.approx(0.8)  # plain accuracy looks good
    assert balanced_accuracy(majority_only, labels, classes=4) == pytest.approx(1 / 3)  # class 3 absent: not counted
    assert balanced_accuracy(labels.clone(), labels, classes=4) == pytest.approx(1.0)


def test_emoji_stats_see_a_white_border_a_coloured_centre_and_diversity():
    images = torch.ones(4, 3, 32, 32)  # white, in [-1, 1]
    images[:, 0, 8:24, 8:24] = -1.0  # a cyan square in the middle (red channel off)
    lightness, colour, diversity = emoji_stats(images)
    assert lightness == pytest.approx(1.0) and colour == pytest.approx(1.0)
    assert diversity == pytest.approx(0.0)  # four identical images
    images[1:, :, 8:24, 8:24] = -1.0  # three of them now black in the middle
    assert emoji_stats(images)[2] > 0.1


def test_psnr_float_clips_the_test_image():
    clean = torch.full((8, 8, 3), 0.5).numpy()
    assert psnr_float(clean, clean + 1.0) == pytest.approx(psnr_float(clean, clean + 0.5))  # both clip to 1


# ------------------------------------------------------------------------------ token priors
@pytest.fixture(scope="module")
def tiny_prior_dir(tmp_path_factory):
    """A token-prior pipeline folder as the prior trainer writes it: vqvae/ (VQModel, f = 4, K = 16),
    transformer/ (MaskedTokenTransformer over 4x4 tokens, classes a, b, c), scheduler/ (AmusedScheduler
    with mask_token_id = K), model_index.json, genlab.json and a model card."""
    from diffusers import AmusedScheduler, VQModel

    from genlab.priors.transformer import MaskedTokenTransformer

    root = tmp_path_factory.mktemp("tiny-prior")
    torch.manual_seed(0)
    vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
                 norm_num_groups=8, latent_channels=4, num_vq_embeddings=PRIOR_CODES,
                 sample_size=PRIOR_GRID * PRIOR_F, mid_block_add_attention=False)
    with torch.no_grad():
        vq.quantize.embedding.weight.normal_()  # spread the codebook, so that images use several codes
    vq.save_pretrained(root / "vqvae", safe_serialization=True)
    MaskedTokenTransformer(codebook_size=PRIOR_CODES, height=PRIOR_GRID, width=PRIOR_GRID, num_classes=len(CLASSES),
                           hidden_size=32, num_layers=2, num_heads=2).save_pretrained(root / "transformer",
                                                                                      safe_serialization=True)
    AmusedScheduler(mask_token_id=PRIOR_CODES).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "GenLabTokenPrior", "vqvae": ["diffusers", "VQModel"],
        "transformer": ["genlab", "MaskedTokenTransformer"], "scheduler": ["diffusers", "AmusedScheduler"]}))
    (root / "genlab.json").write_text(json.dumps({"classes": CLASSES, "default_guidance_scale": 2.0}))
    (root / "README.md").write_text("# tiny prior\n\n## Measured quality\n\n### prior\nold prior text\n")
    return root


@pytest.fixture(scope="module")
def tiny_emoji_dir(tmp_path_factory):
    """Four labelled 8 px images per class (labels.json + classes.json, as genlab.tools.data writes them)."""
    root = tmp_path_factory.mktemp("tiny-emoji")
    rng = np.random.default_rng(0)
    labels = {}
    for index, name in enumerate(CLASSES):
        for copy in range(4):
            pixels = np.full((DATA_SIDE, DATA_SIDE, 3), 255, np.uint8)
            pixels[3:6, 3:6] = rng.integers(0, 256, 3)  # a coloured square on white: 16 px fits leave flat margins
            pixels[3:6, 3:6, index] = 0
            file = f"{index}{copy}.png"
            Image.fromarray(pixels).save(root / file)
            labels[file] = name
    (root / "labels.json").write_text(json.dumps(labels))
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return root


def test_is_token_prior_needs_a_transformer_and_an_amused_scheduler(tiny_prior_dir, tmp_path):
    assert is_token_prior(tiny_prior_dir) and is_token_prior(str(tiny_prior_dir))
    ldm = tmp_path / "ldm"
    for part in ("unet", "vae", "scheduler"):
        (ldm / part).mkdir(parents=True)
    (ldm / "model_index.json").write_text("{}")
    (ldm / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    assert not is_token_prior(ldm)
    (ldm / "transformer").mkdir()  # a transformer, but a diffusion scheduler: not a token prior
    assert not is_token_prior(ldm)
    assert not is_token_prior(tmp_path / "missing") and not is_token_prior("google/ddpm-cifar10-32")


def test_held_out_subset_draws_a_seeded_sample_in_name_order(tiny_emoji_dir):
    everything = list_images(tiny_emoji_dir)
    assert held_out_subset(tiny_emoji_dir, None) == everything
    assert held_out_subset(tiny_emoji_dir, 100) == everything
    picked = held_out_subset(tiny_emoji_dir, 5)
    assert len(set(picked)) == 5 and picked == sorted(picked) and set(picked) <= set(everything)
    assert held_out_subset(tiny_emoji_dir, 5) == picked  # seeded


def test_emoji_eval_samples_a_token_prior_per_category_and_writes_its_card(tiny_prior_dir, tiny_emoji_dir, tmp_path,
                                                                          capsys, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(eval_emoji, "train_classifier", fast_judge(eval_emoji.train_classifier))
    monkeypatch.setattr("sys.argv", ["genlab.tools.eval", "emoji", "--model", str(tiny_prior_dir), "--card"])
    genlab_eval.main(["emoji", "--model", str(tiny_prior_dir), "--data", str(tiny_emoji_dir), "--out", str(out),
                      "--per-class", "2", "--guidance", "1.5", "--card", "--section", "emoji"])
    printed = capsys.readouterr().out
    assert "| category | a | b | c |" in printed
    assert "2 samples per category (3 categories), 12 MaskGIT steps (confidence order, choice temperature 2), guidance 1.5" in printed
    assert f"{PRIOR_GRID * PRIOR_F} px samples area-averaged to {DATA_SIDE} px" in printed

    # Row i of the grid is class i sampled with seed i, as the diffusion path seeds its rows.
    prior = genlab.load_prior(tiny_prior_dir, device="cpu")
    rows = [image_grid(prior.sample(seed=i, steps=12, batch=2, class_label=name, guidance_scale=1.5).images,
                       columns=2) for i, name in enumerate(CLASSES)]
    expected = np.asarray(image_grid(rows, columns=1, gap=4))
    assert np.array_equal(np.asarray(open_image(out / "samples_per_category.png")), expected)
    sixteen = prior.sample(seed=0, steps=12, batch=16, class_label=CLASSES[0], guidance_scale=1.5).images
    assert np.array_equal(np.asarray(open_image(out / "sixteen_smileys.png")),
                          np.asarray(image_grid(sixteen, columns=4)))

    card = (tiny_prior_dir / "README.md").read_text()
    assert "### prior\nold prior text" in card  # the other section is kept
    assert "### emoji\nMeasured on" in card and "12 MaskGIT steps" in card


def test_emoji_eval_takes_12_prior_steps_unless_told(tiny_prior_dir):
    prior, sample, how = eval_emoji.emoji_sampler(str(tiny_prior_dir), None, None)
    assert how == "12 MaskGIT steps (confidence order, choice temperature 2)"
    pixels, images = sample(1, "b", 2)
    expected = prior.sample(seed=1, steps=12, batch=2, class_label="b").pixels  # default guidance
    assert pixels.shape == (2, 3, 16, 16) and len(images) == 2 and torch.equal(pixels, expected)
    _, sample, how = eval_emoji.emoji_sampler(str(tiny_prior_dir), 3, None)
    assert how == "3 MaskGIT steps (confidence order, choice temperature 2)"  # no default in its genlab.json
    assert torch.equal(sample(1, "b", 2)[0], prior.sample(seed=1, steps=3, batch=2, class_label="b").pixels)
    _, sample, how = eval_emoji.emoji_sampler(str(tiny_prior_dir), 3, None, refine=2)
    assert how == "3 MaskGIT steps (confidence order, choice temperature 2), then 2 refine rounds"
    assert torch.equal(sample(1, "b", 2)[0], prior.sample(seed=1, steps=3, batch=2, class_label="b", refine=2).pixels)


@pytest.mark.parametrize("kind, refine, message", [("emoji", -1, "--refine must be in [0, 8], got -1"),
                                                   ("emoji", 9, "--refine must be in [0, 8], got 9"),
                                                   ("prior", 2, "--refine is for emoji")])
def test_bad_refine_rounds_are_refused(tiny_prior_dir, tmp_path, capsys, kind, refine, message):
    with pytest.raises(SystemExit):
        genlab_eval.main([kind, "--model", str(tiny_prior_dir), "--data", str(tmp_path), "--refine", str(refine)])
    assert message in capsys.readouterr().err


def test_refine_rounds_are_for_token_priors(tiny_cond_ddpm_dir):
    with pytest.raises(SystemExit, match="--refine and --choice-temperature are for token priors"):
        eval_emoji.emoji_sampler(str(tiny_cond_ddpm_dir), None, None, refine=1)
    with pytest.raises(SystemExit, match="--refine and --choice-temperature are for token priors"):
        eval_emoji.emoji_sampler(str(tiny_cond_ddpm_dir), None, None, choice_temperature=4.5)


def test_choice_temperature_samples_at_that_temperature(tiny_prior_dir):
    prior = genlab.load_prior(tiny_prior_dir, device="cpu")
    _, sample, how = eval_emoji.emoji_sampler(str(tiny_prior_dir), 4, None, choice_temperature=4.5)
    assert how == "4 MaskGIT steps (confidence order, choice temperature 4.5)"
    hot = sample(1, "b", 2)[0]
    assert torch.equal(hot, prior.sample(seed=1, steps=4, batch=2, class_label="b", choice_temperature=4.5).pixels)


@pytest.mark.parametrize("kind, value, message", [
    ("emoji", "-1", "--choice-temperature must be a number in [0, 20], got -1.0"),
    ("emoji", "21", "--choice-temperature must be a number in [0, 20], got 21.0"),
    ("emoji", "hot", "argument --choice-temperature: invalid float value: 'hot'"),
    ("prior", "4.5", "--choice-temperature is for emoji"),
])
def test_bad_choice_temperatures_are_refused(tiny_prior_dir, tmp_path, capsys, kind, value, message):
    with pytest.raises(SystemExit):
        genlab_eval.main([kind, "--model", str(tiny_prior_dir), "--data", str(tmp_path), "--choice-temperature", value])
    assert message in capsys.readouterr().err


def test_prior_eval_reports_code_length_against_log2k_over_f2(tiny_prior_dir, tiny_emoji_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["genlab.tools.eval", "prior"])
    genlab_eval.main(["prior", "--model", str(tiny_prior_dir), "--data", str(tiny_emoji_dir), "--limit", "3",
                      "--unconditional"])
    printed = capsys.readouterr().out
    cells = [line.strip("| ").split(" | ") for line in printed.splitlines() if line.startswith("| ")]
    values = {name: value for name, value in cells}

    prior = genlab.load_prior(tiny_prior_dir, device="cpu")
    images = [prior.fit(open_image(path)) for path in held_out_subset(tiny_emoji_dir, 3)]
    bits = np.array([prior.bits_per_pixel(image) for image in images])
    index_bpp = math.log2(PRIOR_CODES) / PRIOR_F ** 2
    assert values["images"].startswith("3 (16x16 px, 4x4 tokens)")
    assert values["bits per pixel under the prior"].startswith(f"**{bits.mean():.3f}** (median {np.median(bits):.3f}")
    assert values["log2 K / f² (each index stored as it is)"].startswith(f"{index_bpp:.3f} (K = 16, f = 4)")
    ratio = bits.mean() / index_bpp
    assert values["prior / log2 K / f² (bar: ≤ 60%)"] == (
        f"**{ratio:.1%}** ({'meets' if ratio <= 0.6 else 'misses'} the bar)")
    # An untrained prior spends about log2 K bits a token (uniform logits): it must not pass the bar.
    assert ratio > 0.6
    codes = [prior.code_length(image) for image in images]  # a two-part code: it names a label first
    named = Counter(code.label for code in codes).most_common()
    assert values["labels the two-part code named (log2 4 bits each)"] == ", ".join(f"{l} {c}" for l, c in named)
    unconditional = np.mean([prior.token_bits(image).sum() / 16**2 for image in images])
    assert values["unconditional chain rule alone (no label)"] == (
        f"{unconditional:.3f} bits per pixel, {unconditional / index_bpp:.1%} of log2 K / f²")
    assert "a two-part code: a label (one of the classes, or none) in log2(C + 1) bits" in printed
    genlab_eval.main(["prior", "--model", str(tiny_prior_dir), "--data", str(tiny_emoji_dir), "--limit", "3"])
    plain = capsys.readouterr().out  # without --unconditional: the same code length, no second chain rule
    assert "unconditional chain rule alone" not in plain and f"**{bits.mean():.3f}**" in plain
    psnrs = [prior.vq.reconstruct(image, max_side=None).psnr for image in images]
    assert values["VQ PSNR on these images (dB)"].startswith(f"{np.mean(psnrs):.2f}")
    used = np.unique(np.concatenate([prior.vq.reconstruct(i, max_side=None).indices.ravel() for i in images]))
    assert values["codes used on these images"].startswith(f"{len(used)} of {PRIOR_CODES}")
    assert "3 drawn at random (seed 0)" in printed
    flat = [eval_prior.flat_patches(image, PRIOR_F) for image in images]
    token_bits = [code.token_bits for code in codes]
    on_flat = np.concatenate([b[m] for b, m in zip(token_bits, flat)])
    rest = np.concatenate([b[~m] for b, m in zip(token_bits, flat)])
    assert on_flat.size and rest.size  # the tiny emoji have both a plain background and a drawing
    flat_codes = {int(c) for image, m in zip(images, flat) for c in prior.vq.indices_of(image, None)[m]}
    assert values["flat patches (one colour within 8 levels)"] == (
        f"{on_flat.size / (3 * PRIOR_GRID ** 2):.1%} of the tokens, {on_flat.mean():.2f} bits each, "
        f"{on_flat.sum() / (on_flat.sum() + rest.sum()):.1%} of the token bits; {len(flat_codes)} distinct codes")
    assert values["other tokens"] == f"{rest.mean():.2f} bits each"


def test_flat_patches_are_the_plain_ones():
    """A patch is flat when every pixel value of it lies within FLAT_RANGE levels; one off pixel breaks it."""
    pixels = np.full((8, 12, 3), 255, np.uint8)  # f = 4: a 2 x 3 grid of patches, all white
    pixels[0:4, 4:8] = (250, 252, 255)  # within 8 levels of each other: still flat
    pixels[5, 9] = (255, 0, 0)  # one red pixel in patch (1, 2)
    pixels[0:4, 8:12] = 240 + np.arange(4 * 4).reshape(4, 4, 1)  # a grey ramp, 240 to 255, in patch (0, 2)
    flat = eval_prior.flat_patches(Image.fromarray(pixels), 4)
    assert flat.tolist() == [[True, True, False], [True, True, False]]
    assert eval_prior.flat_patches(Image.fromarray(pixels), 4, value_range=15)[0, 2]  # the ramp spans 15 levels


def test_prior_eval_refuses_a_limit_below_one(tiny_prior_dir, tiny_emoji_dir):
    with pytest.raises(SystemExit):
        genlab_eval.main(["prior", "--model", str(tiny_prior_dir), "--data", str(tiny_emoji_dir), "--limit", "0"])


def test_prior_eval_positions_estimates_the_unconditional_chain_rule(tiny_prior_dir, tiny_emoji_dir, capsys):
    """--positions P: the mean of sampled_token_bits over the images (image i's positions seeded by i) against
    log2 K; with every position of a 4x4 grid sampled often, near the mean of the full unconditional chain rule."""
    genlab_eval.main(["prior", "--model", str(tiny_prior_dir), "--data", str(tiny_emoji_dir), "--limit", "3",
                      "--positions", "16"])
    cells = [line.strip("| ").split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    values = {name: value for name, value in cells}
    prior = genlab.load_prior(tiny_prior_dir, device="cpu")
    images = [prior.fit(open_image(path)) for path in held_out_subset(tiny_emoji_dir, 3)]
    bits = np.concatenate([prior.sampled_token_bits(image, 16, seed=i) for i, image in enumerate(images)])
    assert values["images"] == "3, 16 random raster positions each (image i's seeded by i)"
    assert values["unconditional chain rule, estimated"].startswith(f"{bits.mean():.3f} ± ")
    assert values["estimate / log2 K (= bits per pixel / log2 K / f²)"].startswith(
        f"**{bits.mean() / math.log2(PRIOR_CODES):.2%}**")
    full = np.mean([prior.token_bits(image).mean() for image in images])
    assert abs(bits.mean() - full) < 0.5  # an estimate of it (bits per token, log2 K = 4 here)
    with pytest.raises(SystemExit, match="--positions: positions must be an integer in"):
        genlab_eval.main(["prior", "--model", str(tiny_prior_dir), "--data", str(tiny_emoji_dir), "--limit", "1",
                          "--positions", "17"])  # more than the 16 tokens


@pytest.mark.parametrize("argv", [
    ["prior", "--positions", "0"],
    ["prior", "--positions", "4", "--unconditional"],
    ["vq", "--positions", "4"],
])
def test_bad_positions_are_refused(tiny_prior_dir, tiny_emoji_dir, capsys, argv):
    with pytest.raises(SystemExit):
        genlab_eval.main(argv + ["--model", str(tiny_prior_dir), "--data", str(tiny_emoji_dir)])
    assert "--positions is for prior, without --unconditional, and at least 1" in capsys.readouterr().err


def fast_judge(train_classifier):
    """train_classifier with 50 steps instead of 1500: the test checks the plumbing, not the judge."""
    return lambda images, labels, classes: train_classifier(images, labels, classes, steps=50)


def test_prior_eval_reports_the_reserved_background_code(tiny_prior_dir, tiny_emoji_dir, tmp_path, capsys):
    """A prior whose VQ reserves a background code: the eval says how many tokens take it and what they cost."""
    folder = shutil.copytree(tiny_prior_dir, tmp_path / "prior")
    info_path = folder / "vqvae" / "genlab.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"kind": "vq"}
    info["background"] = {"code": 3, "margin": 0, "tolerance": 8}
    info_path.write_text(json.dumps(info))
    genlab_eval.main(["prior", "--model", str(folder), "--data", str(tiny_emoji_dir), "--limit", "3"])
    cells = [line.strip("| ").split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    values = {name: value for name, value in cells}
    prior = genlab.load_prior(folder, device="cpu")
    assert prior.vq.background == genlab.autoencoders.vq.Background(code=3, margin=0)
    images = [prior.fit(open_image(path)) for path in held_out_subset(tiny_emoji_dir, 3)]
    codes = [prior.code_length(image) for image in images]
    def white_patches(image):  # (h, w): patches whose every pixel is within 8 levels of white (margin 0)
        pixels = np.asarray(image.convert("RGB")).min(axis=2)
        side = prior.vq.downsample_factor
        return pixels.reshape(PRIOR_GRID, side, PRIOR_GRID, side).min(axis=(1, 3)) >= 255 - 8

    on_code = np.concatenate([c.token_bits[white_patches(i)] for c, i in zip(codes, images)])
    assert all((prior.vq.indices_of(i, None)[white_patches(i)] == 3).all() for i in images)
    total = sum(c.token_bits.sum() for c in codes)
    assert on_code.size  # the tiny emoji's white patches
    assert values["the reserved background code (3: patches white within 0 tokens)"] == (
        f"{on_code.size / (3 * PRIOR_GRID ** 2):.1%} of the tokens, {on_code.mean():.2f} bits each, "
        f"{on_code.sum() / total:.1%} of the token bits")
    genlab_eval.main(["prior", "--model", str(tiny_prior_dir), "--data", str(tiny_emoji_dir), "--limit", "1"])
    assert "reserved background code" not in capsys.readouterr().out  # a VQ without one: no such row


def test_guidance_interval_samples_inside_it_only(tiny_cond_ddpm_dir, tiny_prior_dir):
    dm = genlab.load_diffusion(tiny_cond_ddpm_dir, device="cpu")
    _, sample, how = eval_emoji.emoji_sampler(str(tiny_cond_ddpm_dir), 4, 3.0, guidance_interval=(0.5, 8.0))
    assert how == "4 DDIM steps (guidance where 0.5 < sigma <= 8)"
    expected = dm.sample(seed=1, steps=4, batch=2, class_label="b", guidance_scale=3.0, guidance_interval=(0.5, 8.0))
    assert torch.equal(sample(1, "b", 2)[0], expected.final_pixels)
    with pytest.raises(SystemExit, match="--guidance-interval and --autoguidance are for diffusion models"):
        eval_emoji.emoji_sampler(str(tiny_prior_dir), 4, None, guidance_interval=(0, 1))


def test_autoguidance_samples_against_the_models_guide(tiny_cond_ddpm_dir, tiny_prior_dir, tmp_path):
    import shutil

    from conftest import build_unet

    folder = shutil.copytree(tiny_cond_ddpm_dir, tmp_path / "guided")
    build_unet(folder / "unet_guide", seed=7, num_class_embeds=3)
    dm = genlab.load_diffusion(folder, device="cpu")
    _, sample, how = eval_emoji.emoji_sampler(str(folder), 4, 3.0, autoguidance=2.0)
    assert how == "4 DDIM steps, autoguidance 2 against unet_guide/"
    expected = dm.sample(seed=1, steps=4, batch=2, class_label="b", guidance_scale=3.0, autoguidance_scale=2.0)
    assert torch.equal(sample(1, "b", 2)[0], expected.final_pixels)
    with pytest.raises(SystemExit, match=r"no guide network \(unet_guide/\), which autoguidance needs"):
        eval_emoji.emoji_sampler(str(tiny_cond_ddpm_dir), 4, None, autoguidance=2.0)
    with pytest.raises(SystemExit, match="autoguidance scale must be a number in"):
        eval_emoji.emoji_sampler(str(folder), 4, None, autoguidance=0.5)
    with pytest.raises(SystemExit, match="--guidance-interval and --autoguidance are for diffusion models"):
        eval_emoji.emoji_sampler(str(tiny_prior_dir), 4, None, autoguidance=2.0)


def test_autoguidance_is_for_emoji_and_sd(tiny_cond_ddpm_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        genlab_eval.main(["vq", "--model", str(tiny_cond_ddpm_dir), "--data", str(tmp_path), "--autoguidance", "2"])
    assert "--autoguidance is for emoji and sd, not vq" in capsys.readouterr().err


@pytest.mark.parametrize("kind, value, message", [
    ("emoji", "5,1", "--guidance-interval must be two noise levels (low, high) with 0 <= low < high, got (5.0, 1.0)"),
    ("emoji", "-1,1", "--guidance-interval must be two noise levels (low, high) with 0 <= low < high"),
    ("emoji", "1", "--guidance-interval must be two noise levels"),
    ("emoji", "0.5,nan", "--guidance-interval must be two noise levels"),
    ("sd", "a,b", "--guidance-interval must be LOW,HIGH, got 'a,b'"),
    ("vq", "0.5,5", "--guidance-interval is for emoji and sd, not vq"),
])
def test_bad_guidance_intervals_are_refused(tiny_cond_ddpm_dir, tmp_path, capsys, kind, value, message):
    with pytest.raises(SystemExit):
        genlab_eval.main([kind, "--model", str(tiny_cond_ddpm_dir), "--data", str(tmp_path),
                          f"--guidance-interval={value}"])
    assert message in capsys.readouterr().err
