"""`python -m genlab.eval sd` (genlab.tools.eval_sd): the colour rule on drawn colours, the batched sampler against
`DiffusionModel.sample`, the report's four sections on a tiny Stable Diffusion layout and a tiny captioned emoji
set, and the refusal of arguments that mean nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from genlab.imaging.colour import colour_name
from genlab.loading.loaders import load_diffusion
from genlab.tools import eval as genlab_eval
from genlab.tools.eval_sd import evenly, lesson, sample_prompts, training_phrases
from genlab.tools.judge import train_and_store

SIDE = 16
PURE = {"red": (220, 30, 30), "orange": (245, 140, 10), "yellow": (250, 220, 30), "green": (40, 170, 60),
        "blue": (30, 90, 220), "purple": (140, 60, 200), "brown": (140, 90, 50), "black": (30, 30, 30)}


def disc(fill, outline=None, side: int = 64) -> np.ndarray:
    """A disc on white, as an emoji is drawn."""
    image = Image.new("RGB", (side, side), "white")
    ImageDraw.Draw(image).ellipse((side // 8, side // 8, side - side // 8, side - side // 8), fill=fill,
                                  outline=outline, width=max(1, side // 16))
    return np.asarray(image)


# ------------------------------------------------------------------------------------ colour rule
@pytest.mark.parametrize("name", sorted(PURE))
def test_pure_colours_are_named(name):
    assert colour_name(disc(PURE[name])) == name
    assert colour_name(np.full((32, 32, 3), PURE[name], np.uint8)) == name  # the whole image that colour


def test_a_white_drawing_is_white_when_outlined():
    assert colour_name(disc((255, 255, 255), outline=(150, 150, 150))) == "white"  # white heart: white in grey


@pytest.mark.parametrize("image", [np.full((32, 32, 3), 255, np.uint8), np.full((32, 32, 3), 128, np.uint8),
                                   np.full((32, 32, 3), 180, np.uint8), disc((128, 128, 128)),
                                   disc((250, 250, 250))],
                         ids=["white", "grey", "light grey", "grey disc", "near-white disc"])
def test_white_and_grey_images_have_no_colour(image):
    assert colour_name(image) is None


def test_colour_of_a_drawing_is_its_largest_hue():
    image = disc(PURE["blue"])
    image = image.copy()
    image[28:36, 28:36] = PURE["red"]  # a small red mark on a blue disc
    assert colour_name(image) == "blue"


def test_the_colour_rule_refuses_other_arrays():
    with pytest.raises(ValueError, match=r"colour_name reads uint8 \(H, W, 3\) images, got \(32, 32, 3\)"):
        colour_name(np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match=r"got \(32, 32\)"):
        colour_name(np.zeros((32, 32), np.uint8))


@pytest.mark.parametrize("entry, drawn, caption", [
    ({"name": "BANANA", "short_names": ["banana"]}, "yellow", "yellow banana"),
    ({"name": "HEAVY BLACK HEART", "short_names": ["heart"]}, "red", "red heart"),  # Unicode's old name, drawn red
    ({"name": "FLAG-DE", "short_names": ["flag-de", "de"]}, "red", "red flag de"),
    ({"name": "ROCKET"}, "purple", "purple rocket"),  # no short names: the name
    ({"name": "BLUE HEART", "short_names": ["blue_heart"]}, "blue", None),  # the name already says a colour
    ({"name": "BLACK CIRCLE FOR RECORD", "short_names": ["black_circle_for_record"]}, "red", None),
    ({"name": "GHOST", "short_names": ["ghost"]}, None, None),  # grey: no colour named
])
def test_a_training_emoji_gets_a_colour_caption_unless_its_name_has_one(entry, drawn, caption):
    from genlab.tools.data import colour_caption

    assert colour_caption(entry, drawn) == caption


def test_evenly_spreads_and_repeats():
    assert evenly(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert evenly(list(range(10)), 10) == list(range(10))
    assert evenly(["a", "b"], 5) == ["a", "a", "a", "b", "b"]


# ------------------------------------------------------------------------------------ sampling
def test_batched_prompts_give_the_images_of_single_runs(tiny_sd_dir):
    dm = load_diffusion(tiny_sd_dir, device="cpu")
    prompts, seeds = ["red heart", "blue circle", "red heart"], [0, 1, 5]
    batched = sample_prompts(dm, prompts, seeds, steps=3, guidance=2.0, batch=2)  # two chunks: 2 + 1
    assert batched.shape == (3, 3, SIDE, SIDE)
    for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
        single = dm.sample(prompt=prompt, seed=seed, steps=3, scheduler="dpm++", guidance_scale=2.0, record=False)
        assert torch.allclose(batched[index:index + 1], single.final_pixels, atol=1e-5)
    assert not torch.allclose(batched[0], batched[2], atol=1e-3)  # another seed, another image


def test_sampling_refuses_a_class_model(tiny_cond_ddpm_dir):
    dm = load_diffusion(tiny_cond_ddpm_dir, device="cpu")
    with pytest.raises(SystemExit, match="is not text-conditioned.*eval emoji"):
        sample_prompts(dm, ["red heart"], [0], steps=2, guidance=None)


# ------------------------------------------------------------------------------------ the report
def write_captioned_split(folder, entries: list[tuple[str, str, str, tuple]]) -> None:
    """(name, category, subcategory, colour) per emoji: a coloured disc at a place set by the subcategory."""
    folder.mkdir(parents=True)
    labels, subcategories, captions = {}, {}, {}
    for index, (name, category, subcategory, colour) in enumerate(entries):
        image = Image.new("RGB", (SIDE, SIDE), "white")
        offset = 2 * sorted({e[2] for e in entries}).index(subcategory) % 6
        ImageDraw.Draw(image).ellipse((offset, 2, offset + 9, 11), fill=colour)
        file = f"1f{index:03x}.png"
        image.save(folder / file)
        labels[file], subcategories[file], captions[file] = category, subcategory, [name, f"{name}, emoji"]
    for data, path in ((labels, "labels.json"), (subcategories, "subcategories.json"), (captions, "captions.json")):
        (folder / path).write_text(json.dumps(data))


@pytest.fixture(scope="module")
def captioned_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji-captioned")
    colours = list(PURE.values())
    train = [(f"thing {i}", "a", "a-one", colours[i % 4]) for i in range(10)]
    train += [(f"other {i}", "b", "b-one", colours[4 + i % 4]) for i in range(10)]
    train += [("red heart", "a", "a-two", PURE["red"]), ("swatch", "c", "c-one", PURE["brown"])]  # c: train only
    write_captioned_split(root / "64-train", train)
    holdout = [(f"new thing {i}", "a", "a-one", colours[i % 4]) for i in range(5)]
    holdout += [(f"new other {i}", "b", "b-one", colours[4 + i % 4]) for i in range(4)]
    write_captioned_split(root / "64-holdout", holdout)
    return root


@pytest.fixture(scope="module")
def captioned_judge(captioned_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sd-judge")
    train_and_store(captioned_root, out, steps=30, command="test", config={"block_out_channels": (4, 8)})
    return out


@pytest.fixture
def sd_with_card(tiny_sd_dir, tmp_path):
    model = tmp_path / "tiny-sd"
    shutil.copytree(tiny_sd_dir, model)
    (model / "README.md").write_text("# tiny sd\n\nIntro.\n\n## Measured quality\nNot measured yet.\n")
    return model


def run_sd(argv, monkeypatch, capsys) -> str:
    monkeypatch.setattr("sys.argv", ["genlab.tools.eval"] + argv)
    genlab_eval.main(argv)
    return capsys.readouterr().out


def test_the_report_has_four_sections_and_goes_into_the_card(captioned_root, captioned_judge, sd_with_card,
                                                              tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    printed = run_sd(["sd", "--judge", str(captioned_judge), "--model", str(sd_with_card), "--data",
                      str(captioned_root), "--out", str(out), "--words", "6", "--per-class", "4", "--seeds", "2",
                      "--steps", "2", "--guidance", "2", "--card"], monkeypatch, capsys)
    headings = [line for line in printed.splitlines() if line.startswith("#### ")]
    assert headings == ["#### Follows the words (held-out emoji names)", "#### Colour words",
                        "#### Image quality against the real held-out emoji",
                        "#### Does not just copy (nearest training image)"]
    rows = {}
    for line in printed.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].strip("| "), line.split(" | "))  # a name's first table row
    assert rows["samples from the held-out names"][1] == "6"  # 6 of the 9 held-out names
    assert rows["real held-out emoji of the same names (the judge's ceiling)"][1] == "6"
    assert rows["ldm-emoji samples (its card; class-conditioned, guidance 2, 50 DDIM steps)"][1:3] == ["540", "84.4%"]
    assert rows["red heart"][1:2] == ["yes"] and rows["red heart"][4].startswith("1/1")  # the real emoji: red
    assert rows["purple apple"][1] == "no" and rows["purple apple"][4].strip(" |") == "–"
    assert rows["red heart"][5].strip(" |") == "1: red heart (red)" and rows["green cat"][5].strip(" |") == "none"
    assert "the known pairs pass: taught the colour " in printed and "; never in training " in printed
    assert rows["sd samples"][1] == "12"  # 4 per category, c from training names only
    assert rows["real train (floor)"][1] == "9"  # 4 of a, 4 of b, the one c
    assert rows["real held-out emoji (never trained on)"][1] == "9"
    assert rows["samples, held-out names"][1] == "6" and rows["samples, training names"][1] == "6"
    assert "2 DPM-Solver++ steps, guidance 2" in printed
    assert f"training emoji (built from `{captioned_root}/64-train` into `{out}/training_images`" in printed
    assert "of the colour-shape pairs that emoji have" in printed and "/10** of the colour-object pairs" in printed
    assert {p.name for p in out.iterdir()} >= {"sd_words.png", "sd_quality.png", "sd_colours.png", "sd_nearest.png",
                                               "training_images"}  # no training_images/ in the model: built
    with Image.open(out / "sd_colours.png") as grid:
        assert grid.width == 8 * SIDE + 7 * 2  # 4 prompts x 2 seeds a row
    card = (sd_with_card / "README.md").read_text()
    assert card.startswith("# tiny sd\n\nIntro.") and card.count("## Measured quality") == 1
    assert "python -m genlab.eval sd --judge" in card and "#### Colour words" in card and "Not measured" not in card


def test_training_phrases_find_the_words_inside_longer_captions(tmp_path):
    """What the captions teach a colour prompt: "black heart" inside the red heart's old Unicode name is a lesson
    that black hearts are red; "red hear" is no phrase of "red heart"."""
    write_captioned_split(tmp_path / "64-train", [("heavy black heart", "a", "a-one", PURE["red"]),
                                                  ("blue book", "a", "a-two", PURE["blue"]),
                                                  ("black heart suit", "b", "b-one", PURE["red"])])
    found = training_phrases(["black heart", "blue book", "red hear", "book"], tmp_path)
    assert found == {"black heart": [("heavy black heart", "red"), ("black heart suit", "red")],
                     "blue book": [("blue book", "blue")], "book": [("blue book", "blue")]}
    assert lesson("black", found["black heart"]) == "taught another colour"
    assert lesson("blue", found["blue book"]) == "taught the colour"
    assert lesson("red", found.get("red hear", [])) == "never in training"


@pytest.mark.parametrize("argv, message", [
    (["sd", "--data", "d"], "--model is required for sd"),
    (["sd", "--data", "d", "--model", "m", "--per-class", "3"], "--per-class must be at least 4 for sd, got 3"),
    (["sd", "--data", "d", "--model", "m", "--words", "0"], "--words must be at least 1 for sd, got 0"),
    (["sd", "--data", "d", "--model", "m", "--seeds", "0"], "--seeds must be at least 1 for sd, got 0"),
    (["sd", "--data", "d", "--model", "m", "--steps", "0"], "--steps must be at least 1 for sd, got 0"),
    (["sd", "--data", "d", "--model", "m", "--guidance", "-1"], "--guidance must be at least 0, got -1.0"),
    (["sd", "--data", "d", "--model", "m", "--limit", "5"], "--limit and --unconditional are for prior"),
    (["sd", "--data", "d", "--model", "m", "--refine", "1"], "--refine is for emoji"),
    (["sd", "--data", "d", "--model", "m", "--judge-steps", "5"], "--judge-steps is for train-judge"),
    (["emoji", "--data", "d", "--model", "m", "--words", "5"], "--words and --seeds are for sd, not emoji"),
])
def test_bad_sd_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        genlab_eval.main(argv)
    assert message in capsys.readouterr().err


def test_sd_refuses_a_class_model_and_data_without_captions(captioned_root, captioned_judge, tiny_cond_ddpm_dir,
                                                           tiny_sd_dir, tmp_path):
    with pytest.raises(SystemExit, match="is not text-conditioned"):
        genlab_eval.main(["sd", "--judge", str(captioned_judge), "--model", str(tiny_cond_ddpm_dir),
                          "--data", str(captioned_root), "--out", str(tmp_path)])
    bare = tmp_path / "bare"
    shutil.copytree(captioned_root, bare)
    (bare / "64-holdout" / "captions.json").unlink()
    with pytest.raises(SystemExit, match="64-holdout has no captions.json"):
        genlab_eval.main(["sd", "--judge", str(captioned_judge), "--model", str(tiny_sd_dir), "--data", str(bare),
                          "--out", str(tmp_path)])
