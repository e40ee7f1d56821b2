"""Text to image training on tiny data: the learned CLIP tokenizer, the CLIP run, and the Stable Diffusion run
(warm start from a class-conditional latent model, export in Stable Diffusion's own layout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab.conditioning.tokenizer import train_clip_tokenizer
from genlab.train.__main__ import main as train_main

CAPTIONS = ["red heart", "blue heart", "green circle", "red circle", "blue square", "thumbs up, dark skin tone",
            "grinning face", "smiling face with open mouth", "flag germany", "red apple"] * 3
TINY_CLIP = ["--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--vocab-size", "600", "--max-tokens", "8",
             "--patch-size", "8", "--projection-dim", "8", "--batch-size", "4", "--threads", "1", "--cpu",
             "--log-every", "1", "--lr", "1e-3"]
TINY_SD = ["--channels", "8,16", "--attention", "0,1", "--crop", "16", "--layers-per-block", "1", "--norm-groups", "8",
           "--batch-size", "4", "--threads", "1", "--cpu", "--log-every", "1", "--sample-every", "1000"]


@pytest.fixture(scope="module")
def captioned_folder(tmp_path_factory):
    """9 discs and squares of three colours on white at 16 px, each with two captions."""
    folder = tmp_path_factory.mktemp("captioned")
    yy, xx = np.mgrid[:16, :16]
    captions = {}
    for index in range(9):
        colour, name = [((220, 30, 30), "red"), ((30, 180, 30), "green"), ((30, 30, 220), "blue")][index % 3]
        shape = ["circle", "square", "heart"][index // 3]
        array = np.full((16, 16, 3), 255, np.uint8)
        region = (yy - 8) ** 2 + (xx - 8) ** 2 < 25 if shape != "square" else (abs(yy - 8) < 5) & (abs(xx - 8) < 5)
        array[region] = colour
        Image.fromarray(array).save(folder / f"{index:02d}.png")
        captions[f"{index:02d}.png"] = [f"{name} {shape}", f"{shape}, {name}"]
    (folder / "captions.json").write_text(json.dumps(captions))
    return folder


def test_the_learned_tokenizer_keeps_words_and_covers_every_byte(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = train_clip_tokenizer(CAPTIONS, vocab_size=600, max_length=8)
    assert 514 < len(tokenizer) <= 600 and tokenizer.model_max_length == 8  # a small corpus has fewer merges
    assert tokenizer.tokenize("red heart") == ["red</w>", "heart</w>"]  # corpus words are whole tokens
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    eos = loaded.eos_token_id
    for text in ["purple apple", "😀 red", "\u202eשלום", "tab\there", "ÿ" * 3]:  # unseen words, emoji, RTL, bytes
        ids = loaded(text).input_ids
        assert ids[0] == loaded.bos_token_id and ids[-1] == eos
        assert eos not in ids[1:-1], f"{text!r} fell back to the unknown token"
        assert loaded.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "").replace("\t", "")
    assert len(loaded("word " * 50, truncation=True).input_ids) == 8
    with pytest.raises(ValueError, match="vocab_size must exceed 514"):
        train_clip_tokenizer(CAPTIONS, vocab_size=300)


def test_clip_trains_exports_its_text_tower_and_resumes(captioned_folder, tmp_path):
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    out, run_dir = tmp_path / "clip", tmp_path / "run"
    base = ["clip", "--data", str(captioned_folder), "--out", str(out), "--run-dir", str(run_dir), *TINY_CLIP]
    train_main(base + ["--steps", "3", "--save-every", "3"])
    first = CLIPModel.from_pretrained(out).text_projection.weight.clone()
    train_main(base + ["--steps", "5", "--resume"])
    state = json.loads((run_dir / "checkpoint" / "run.json").read_text())
    assert state["step"] == 5 and len(state["commands"]) == 2
    clip = CLIPModel.from_pretrained(out)
    assert not torch.equal(first, clip.text_projection.weight)  # the resumed steps trained it
    text = CLIPTextModel.from_pretrained(out / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    ids = tokenizer(["red heart"], padding="max_length", truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (1, 8)
    with torch.no_grad():  # the text tower alone is the CLIP's text tower
        assert torch.allclose(text(ids)[0], clip.text_model(ids)[0], atol=1e-6)
    assert not list(out.rglob("*.bin"))
    card = (out / "README.md").read_text()
    assert "Retrieval" in card and "steps: 5" in card


def test_clip_needs_captions(tmp_path, captioned_folder):
    import shutil

    bare = shutil.copytree(captioned_folder, tmp_path / "bare", ignore=shutil.ignore_patterns("captions.json"))
    with pytest.raises(SystemExit, match="captions.json is missing"):
        train_main(["clip", "--data", str(bare), "--out", str(tmp_path / "o"), *TINY_CLIP, "--steps", "1"])


def test_warm_start_begins_as_the_unconditional_class_model(tiny_kl_ldm_dir):
    """Copied resnets and time embedding, the null class folded in, zeroed cross-attention outputs: before any
    step the text UNet predicts what the class model predicts for "no class", whatever the text."""
    from diffusers import UNet2DModel

    from genlab.train.config import build_config
    from genlab.train.sd import build_sd_unet, warm_start

    source = UNet2DModel.from_pretrained(tiny_kl_ldm_dir / "unet")
    config = build_config("sd", {"data": tiny_kl_ldm_dir, "out": tiny_kl_ldm_dir, "vae": tiny_kl_ldm_dir,
                                 "clip": tiny_kl_ldm_dir, "channels": "8,16", "attention": "0,1",
                                 "layers_per_block": 1, "norm_groups": 8, "crop": 16, "batch_size": 2, "lr": 1e-3,
                                 "beta_schedule": "linear"})
    unet = build_sd_unet(config, latent_channels=4, sample_size=8, text_dim=12)
    copied = warm_start(unet, source)
    assert copied >= 20 and torch.equal(unet.conv_in.weight, source.conv_in.weight)
    generator = torch.Generator().manual_seed(0)
    sample, text = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 5, 12, generator=generator)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        expected = source(sample, t, class_labels=torch.full((2,), 2)).sample
        assert torch.allclose(unet(sample, t, encoder_hidden_states=text).sample, expected, atol=1e-5)
        assert not torch.allclose(source(sample, t, class_labels=torch.zeros(2, dtype=torch.long)).sample, expected)


def test_sd_trains_exports_stable_diffusions_layout_and_resumes(captioned_folder, tiny_kl_ldm_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    clip = tmp_path / "clip"
    train_main(["clip", "--data", str(captioned_folder), "--out", str(clip), "--run-dir", str(tmp_path / "clip-run"),
                *TINY_CLIP, "--steps", "2"])
    out, run_dir = tmp_path / "sd", tmp_path / "run"
    base = ["sd", "--data", str(captioned_folder), "--out", str(out), "--run-dir", str(run_dir), *TINY_SD,
            "--vae", str(tiny_kl_ldm_dir / "vae"), "--clip", str(clip)]
    train_main(base + ["--steps", "2", "--save-every", "2", "--init", str(tiny_kl_ldm_dir), "--export-fp16"])
    train_main(base + ["--steps", "3", "--resume"])
    assert json.loads((run_dir / "checkpoint" / "run.json").read_text())["step"] == 3
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and index["safety_checker"] == [None, None]
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / part).is_dir(), part
    from genlab.imaging.nearest import TrainingIndex

    training = TrainingIndex.load(out / "training_images")  # the nearest-training-image search ships beside it
    assert len(training) == 9 and training.nearest(np.asarray(Image.open(captioned_folder / "04.png"))).distance < 1e-6
    assert not list(out.rglob("*.bin")) and not list(run_dir.rglob("*.pt"))
    dm = genlab.load_diffusion(out, device="cpu")
    assert dm.is_latent and dm.is_text_conditional and dm.default_guidance_scale == 3.0
    run = dm.sample(prompt="red circle", seed=0, steps=3, scheduler="dpm++")
    assert run.image.size == (16, 16)
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.scheduler.config.steps_offset == 1 and pipe.safety_checker is None
    card = (out / "README.md").read_text()
    assert "UNet2DConditionModel" in card and "--init" in card and "The CLIP text encoder" in card


@pytest.mark.parametrize("argv, message", [
    (["sd", "--vae", "v"], "sd needs --clip"),
    (["sd", "--clip", "c"], "sd needs --vae"),
    (["sd", "--vae", "v", "--clip", "c", "--attention", "0,0,0"], "at least one cross-attention block"),
    (["clip", "--hidden-size", "30", "--num-heads", "4"], "--hidden-size 30 must be a multiple of --num-heads 4"),
    (["clip", "--vocab-size", "100"], "--vocab-size must be an integer > 514, got 100"),
])
def test_bad_text_training_options_are_refused(capsys, argv, message):
    from genlab.train.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv + ["--data", "d", "--out", "o"])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["ldm", "--vae", "v", "--colour-share", "0.3"], "--colour-share is for sd"),
    (["sd", "--vae", "v", "--clip", "c", "--colour-share", "1.5"], "--colour-share must be in [0, 1], got 1.5"),
    (["sd", "--vae", "v", "--clip", "c", "--colour-share", "-0.1"], "--colour-share must be in [0, 1]"),
    (["ldm", "--vae", "v", "--autoguidance-scale", "2"], "--autoguidance-scale needs --guide"),
    (["ldm", "--vae", "v", "--guide", "g", "--autoguidance-scale", "0.5"], "--autoguidance-scale must be at least 1"),
    (["vqvae", "--guide", "g"], "--guide and --autoguidance-scale are for ddpm, ldm and sd"),
    (["prior", "--vq", "q", "--autoguidance-scale", "2"], "--guide and --autoguidance-scale are for ddpm, ldm and sd"),
])
def test_bad_colour_and_guide_options_are_refused(capsys, argv, message):
    from genlab.train.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv + ["--data", "d", "--out", "o"])
    assert message in capsys.readouterr().err


def test_colour_draws_balance_colours_and_caption_each_row_with_its_colour(captioned_folder):
    """Each drawn row is an image whose drawing shows the colour that one of its captions names, captioned by that
    caption; every colour is drawn about equally often whatever its share of the data."""
    from genlab.imaging.colour import colour_name
    from genlab.train import common
    from genlab.train.clip import read_captions
    from genlab.train.sd import ColourDraws

    data = common.ImageFolder(captioned_folder)
    captions = read_captions(data)
    captions[0] = captions[0] + ["blue disc"]  # a caption naming a colour the drawing does not show
    bank = type("Bank", (), {})()  # CaptionBank's texts and ids, without a text encoder
    bank.texts = [""] + sorted({c for group in captions for c in group})
    bank.ids = [[bank.texts.index(c) for c in group] for group in captions]
    draws = ColourDraws(data, bank)
    assert draws.colours == ["red", "green", "blue"] and draws.describe() == "red 3, green 3, blue 3"
    indices, ids = draws.draw(600, np.random.default_rng(0))
    shown = [colour_name(data.images[i]) for i in indices]
    for index, caption, colour in zip(indices, ids, shown):
        assert colour in bank.texts[caption].replace(",", " ").split() and caption in bank.ids[index]
    assert "blue disc" not in {bank.texts[caption] for caption in ids}  # image 0 is red
    counts = [shown.count(colour) for colour in ("red", "green", "blue")]
    assert min(counts) > 160, counts


def test_sd_with_colour_share_and_a_guide_exports_both(captioned_folder, tiny_kl_ldm_dir, tmp_path):
    """--colour-share trains (its rows in the card), and --guide ships an earlier export's UNet as unet_guide/ with
    the default autoguidance scale in genlab.json; an export without --guide drops a guide left there."""
    clip = tmp_path / "clip"
    train_main(["clip", "--data", str(captioned_folder), "--out", str(clip), "--run-dir", str(tmp_path / "clip-run"),
                *TINY_CLIP, "--steps", "1"])
    base = ["sd", "--data", str(captioned_folder), *TINY_SD, "--vae", str(tiny_kl_ldm_dir / "vae"), "--clip", str(clip),
            "--init", str(tiny_kl_ldm_dir)]
    early = tmp_path / "early"
    train_main(base + ["--out", str(early), "--run-dir", str(tmp_path / "early-run"), "--steps", "1"])
    out = tmp_path / "sd"
    argv = base + ["--out", str(out), "--run-dir", str(tmp_path / "run"), "--steps", "2", "--colour-share", "0.5",
                   "--guide", str(early), "--autoguidance-scale", "2", "--export-fp16"]
    train_main(argv)
    assert (out / "unet_guide" / "config.json").is_file()
    assert json.loads((out / "genlab.json").read_text())["default_autoguidance_scale"] == 2.0
    card = (out / "README.md").read_text()
    assert "colour-balanced" in card and "autoguidance scale 2" in card
    dm = genlab.load_diffusion(out, device="cpu")
    assert dm.has_guide and dm.default_autoguidance_scale == 2.0 and dm.guide.dtype == torch.float32
    dm.sample(prompt="red circle", seed=0, steps=2, scheduler="dpm++")
    genlab.loading.checkpoints.clear_cache()
    train_main(base + ["--out", str(out), "--run-dir", str(tmp_path / "run2"), "--steps", "1"])
    assert not (out / "unet_guide").exists() and "default_autoguidance_scale" not in (out / "genlab.json").read_text()
    with pytest.raises(SystemExit, match="no UNet there"):
        train_main(base + ["--out", str(out), "--run-dir", str(tmp_path / "run3"), "--steps", "1",
                           "--guide", str(tmp_path / "nowhere")])


def test_a_guide_of_another_task_is_refused_at_export(tiny_kl_ldm_dir, tmp_path):
    from conftest import build_unet

    from genlab.train.__main__ import main as train_main

    data = tmp_path / "data"
    data.mkdir()
    for index in range(4):
        Image.fromarray(np.full((16, 16, 3), 60 * index, np.uint8)).save(data / f"{index}.png")
    other = build_unet(tmp_path / "pixel-unet")  # a 3-channel pixel UNet: not the 4-channel latent task
    with pytest.raises(SystemExit, match="autoguidance needs a guide of the same sample space"):
        train_main(["ldm", "--data", str(data), "--vae", str(tiny_kl_ldm_dir / "vae"), "--out", str(tmp_path / "o"),
                    "--run-dir", str(tmp_path / "r"), "--channels", "8,16", "--attention", "0,0", "--crop", "16",
                    "--norm-groups", "8", "--batch-size", "2", "--threads", "1", "--cpu", "--steps", "1",
                    "--sample-every", "1000", "--guide", str(other)])
