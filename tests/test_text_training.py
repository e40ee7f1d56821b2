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
