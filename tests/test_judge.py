"""The stored emoji judge (genlab.tools.judge*): its model round trip, its metrics on planted sets, its training
and report plumbing on tiny synthetic emoji, and the refusals of its commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from safetensors.torch import load_file

from genlab.tools import eval as genlab_eval
from genlab.tools.judge import (EmojiJudge, LabelledEmoji, augment, class_index, load_judge, merge_subcategories,
                                save_judge, train_and_store)
from genlab.tools.judge_metrics import balanced_weights, frechet_distance, knn_radii, precision_recall
from genlab.tools.judge_report import (Judge, JudgedSet, Row, category_bars, draw_per_category, gaussian_blur, ranking,
                                       real_floors)

TINY = {"block_out_channels": (4, 8), "image_size": 16}
SIDE = 16


def tiny_judge(classes: int = 3, seed: int = 0) -> EmojiJudge:
    torch.manual_seed(seed)
    judge = EmojiJudge(num_classes=classes, **TINY)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a lost buffer would show in the logits
        for module in judge.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return judge.eval()


# ------------------------------------------------------------------------------------- model
def test_save_load_round_trip_gives_identical_logits(tmp_path):
    judge = tiny_judge()
    classes = {"face-smiling": "Smileys", "animal-mammal": "Animals", "Animals-other": "Animals"}
    images = torch.rand(5, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    save_judge(judge, classes, tmp_path / "full", half=False)
    loaded, loaded_classes = load_judge(tmp_path / "full")
    assert loaded_classes == classes and list(loaded_classes) == list(classes)  # logit order kept
    with torch.no_grad():
        assert torch.equal(loaded(images), judge(images))
        assert torch.equal(loaded.features(images), judge.features(images))
    assert not any(p.suffix == ".bin" or p.suffix == ".pt" for p in (tmp_path / "full").iterdir())  # no pickles
    save_judge(judge, classes, tmp_path / "half")  # the stored default: fp16, loaded back as float32
    half, _ = load_judge(tmp_path / "half")
    assert next(half.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(half(images), judge(images), atol=2e-2)
    stored = load_file(tmp_path / "half" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}


def test_the_judge_refuses_the_wrong_image_size_and_a_missing_folder(tmp_path):
    judge = tiny_judge()
    with pytest.raises(ValueError, match="the judge reads 16x16 images, got 8x8"):
        judge(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"reads \(B, 3, 16, 16\) images, got shape \(2, 1, 16, 16\)"):
        judge.features(torch.zeros(2, 1, 16, 16))
    with pytest.raises(SystemExit, match="no emoji judge at .*missing.*train-judge"):
        load_judge(tmp_path / "missing")
    save_judge(judge, {"a": "A", "b": "B", "c": "C"}, tmp_path / "judge", half=False)
    (tmp_path / "judge" / "classes.json").write_text(json.dumps({"a": "A"}))
    with pytest.raises(SystemExit, match="names 1 classes, the judge has 3"):
        load_judge(tmp_path / "judge")
    with pytest.raises(ValueError, match="2 class names for a judge with 3 classes"):
        save_judge(judge, {"a": "A", "b": "B"}, tmp_path / "other")


def test_small_subcategories_merge_into_their_category_other():
    categories = ["Animals"] * 12 + ["Component"] * 5 + ["Smileys"] * 9
    subcategories = ["animal-mammal"] * 8 + ["animal-bug"] * 4 + ["skin-tone"] * 5 + ["face-smiling"] * 9
    classes = merge_subcategories(subcategories, categories, min_images=8)
    assert classes == {"animal-mammal": "Animals", "Animals-other": "Animals", "Component-other": "Component",
                       "face-smiling": "Smileys"}
    names = list(classes)
    assert class_index("animal-bug", "Animals", names) == names.index("Animals-other")
    assert class_index("face-smiling", "Smileys", names) == names.index("face-smiling")
    assert class_index("face-hat", "Smileys", names) == -1  # neither kept nor merged in training: unknown


def test_augment_keeps_white_borders_and_flips_only_where_allowed():
    images = torch.ones(2, 3, SIDE, SIDE)
    images[:, 0, 4:12, 2:6] = -1.0  # a cyan bar on the left of a white emoji
    flippable = torch.tensor([True, False])
    generator = torch.Generator().manual_seed(0)
    shifted = augment(images, flippable, generator, shift=0.3, scale=0.2)
    assert shifted.shape == images.shape and shifted[:, :, 0, 0].allclose(torch.ones(2, 3))  # white fill
    flips = set()
    for _ in range(20):  # no shift, no scale: only the mirror can move the bar
        plain = augment(images, flippable, generator, shift=0.0, scale=0.0)
        assert torch.allclose(plain[1], images[1], atol=1e-5)  # never flipped
        flips.add(torch.allclose(plain[0], images[0].flip(-1), atol=1e-5))
    assert flips == {True, False}


def test_gaussian_blur_keeps_flat_images_and_spreads_a_dot():
    flat = torch.full((1, 3, SIDE, SIDE), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-6)
    dot = torch.zeros(1, 3, SIDE, SIDE)
    dot[0, :, 8, 8] = 1.0
    blurred = gaussian_blur(dot, 1.5)
    assert blurred.sum().item() == pytest.approx(3.0, abs=1e-4) and blurred.max() < 0.1


# ------------------------------------------------------------------------------------ metrics
def test_frechet_distance_is_zero_for_a_set_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([0.5, 0, 0, 0, 0, 0])
    assert frechet_distance(a, a + shift) == pytest.approx(0.25, rel=1e-6)  # same covariance: |shift|^2
    assert frechet_distance(a, a + 2 * shift) == pytest.approx(1.0, rel=1e-6)
    b = rng.normal(size=(300, 6)) * 2 + 1
    # against the textbook formula with scipy's matrix square root
    mean_a, mean_b, cov_a, cov_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    textbook = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(textbook, rel=1e-6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(textbook, rel=1e-6)


def test_weights_balance_categories_in_the_frechet_distance():
    rng = np.random.default_rng(1)
    many, few = rng.normal(0, 1, (300, 3)), rng.normal(5, 1, (30, 3))
    skewed = np.concatenate([many, few])
    balanced = np.concatenate([rng.normal(0, 1, (100, 3)), rng.normal(5, 1, (100, 3))])
    weights = balanced_weights(["many"] * 300 + ["few"] * 30)
    assert weights.sum() == pytest.approx(1.0) and weights[-1] == pytest.approx(10 * weights[0])
    assert frechet_distance(skewed, balanced, weights) < 0.2 * frechet_distance(skewed, balanced)
    with pytest.raises(ValueError, match="weights must be 330 non-negative numbers summing to 1"):
        frechet_distance(skewed, balanced, np.ones(330))


def test_precision_and_recall_on_planted_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(100, 4))
    same = precision_recall(real, real.copy())
    assert same["precision"] == pytest.approx(1.0) and same["recall"] == pytest.approx(1.0) and same["inside"].all()
    far = precision_recall(real, real + 1000.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # half the fakes on the real set, half far away: precision 1/2
    half = precision_recall(real, np.concatenate([real[:50], real[:50] + 1000.0]))
    assert half["precision"] == pytest.approx(0.5)
    # one mode only (collapse): precise but low recall
    mode = real[np.argsort(np.linalg.norm(real - real[0], axis=1))[:20]]
    collapsed = precision_recall(real, mode)
    assert collapsed["precision"] == pytest.approx(1.0) and collapsed["recall"] < 0.5


def test_knn_radius_is_the_kth_neighbour_and_needs_k_plus_one_points():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    assert knn_radii(points, k=3).tolist() == [6.0, 5.0, 3.0, 5.0, 9.0]
    with pytest.raises(ValueError, match="more than k = 3 points in each set, got 3"):
        precision_recall(points, points[:3])


def test_draws_per_category_are_seeded_and_capped():
    categories = ["a"] * 10 + ["b"] * 2
    picked = draw_per_category(categories, 4)
    assert picked == draw_per_category(categories, 4) == sorted(picked)
    assert sum(categories[i] == "a" for i in picked) == 4 and [10, 11] == picked[-2:]


def test_ranking_names_the_measures_out_of_order():
    def row(name, fd, precision, recall, accuracy):
        return Row(name, 10, fd, precision, recall, accuracy, {})

    rows = [row("real", 1.0, 0.8, 0.9, 0.9), row("blur", 9.0, 0.1, 0.2, 0.2), row("noise", 8.0, 0.2, 0.3, 0.3),
            row("model", 4.0, 0.5, 0.6, 0.95)]
    assert ranking(rows) == ("Real train > samples > blurred and noised? FD: yes; precision (real and samples above "
                             "the controls): yes; recall: yes; category accuracy: NO.")
    # precision may rank samples above real (a guided sampler's typical samples), never a control above either
    rows[-1] = row("model", 4.0, 0.95, 0.6, 0.85)
    assert "precision (real and samples above the controls): yes" in ranking(rows)
    rows[1] = row("blur", 9.0, 0.85, 0.2, 0.2)
    assert "precision (real and samples above the controls): NO" in ranking(rows)
    rows[1] = row("blur", 9.0, 0.1, 0.7, 0.2)
    assert "recall: NO" in ranking(rows)


def test_recall_within_a_category_falls_when_its_samples_repeat_one_shape():
    """The mode-collapse check: samples of a category spread like its real emoji cover most of them; samples that
    are all (nearly) one point cover few, though every one of them may lie inside the real manifold."""
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.normal(size=(60, 4)).astype(np.float32))
    judge = object.__new__(Judge)  # the scoring needs only the reference set
    judge.reference = JudgedSet("real held-out", real, torch.zeros(60, 2), ["a"] * 40 + ["b"] * 20)
    spread = torch.from_numpy(rng.normal(size=(40, 4)).astype(np.float32))
    collapsed = real[:1] + 0.01 * torch.from_numpy(rng.normal(size=(40, 4)).astype(np.float32))
    mine = np.ones(40, bool)
    healthy = judge.recall_within(JudgedSet("s", spread, torch.zeros(40, 2), ["a"] * 40), "a", mine)
    collapse = judge.recall_within(JudgedSet("s", collapsed, torch.zeros(40, 2), ["a"] * 40), "a", mine)
    assert healthy > 0.5 and collapse < 0.1
    few = np.zeros(40, bool)
    few[:3] = True  # k = 3 needs 4 points a side
    assert np.isnan(judge.recall_within(JudgedSet("s", spread, torch.zeros(40, 2), ["a"] * 40), "a", few))


def test_category_bars_name_the_categories_below_half_the_floor():
    floor = Row("real train (floor)", 30, 7.0, 0.8, 0.9, 0.99,
                {"a": (0.8, 0.9, 1.0), "b": (0.2, 0.8, 1.0), "c": (0.9, float("nan"), 1.0)})
    good = Row("model samples", 30, 8.0, 0.8, 0.8, 0.9, {"a": (0.5, 0.5, 1.0), "b": (0.1, 0.4, 0.9), "c": (0.5, 0.2, 1.0)})
    assert category_bars(floor, good) == (
        "- model samples, every category drawn (precision ≥ half the real floor's): yes, 3 categories\n"
        "- model samples, no mode collapse (recall within each category ≥ half the real floor's): yes, 2 categories")
    bad = Row("model samples", 30, 8.0, 0.8, 0.8, 0.9, {"a": (0.3, 0.44, 1.0), "b": (0.1, 0.4, 0.9), "c": (0.2, 0.1, 1.0)})
    assert category_bars(floor, bad) == (
        "- model samples, every category drawn (precision ≥ half the real floor's): NO (a 0.30 vs 0.80; c 0.20 vs 0.90)\n"
        "- model samples, no mode collapse (recall within each category ≥ half the real floor's): NO (a 0.44 vs 0.90)")


# ------------------------------------------------------------------------------ data + commands
def write_split(folder, per_subcategory: dict, seed: int) -> None:
    """Synthetic 16 px emoji: a coloured square on white whose colour says the category and whose position
    says the subcategory, with labels.json and subcategories.json as genlab.tools.data writes them."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    labels, subcategories = {}, {}
    for s_index, ((category, subcategory), count) in enumerate(per_subcategory.items()):
        for copy in range(count):
            pixels = np.full((SIDE, SIDE, 3), 255, np.uint8)
            top = 2 + 3 * (s_index % 3)
            pixels[top:top + 5, 4:12] = rng.integers(0, 80, 3)
            pixels[top:top + 5, 4:12, "ab".index(category)] = 255
            name = f"{s_index}-{copy}.png"
            Image.fromarray(pixels).save(folder / name)
            labels[name], subcategories[name] = category, subcategory
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "subcategories.json").write_text(json.dumps(subcategories))
    (folder / "classes.json").write_text(json.dumps(["a", "b"]))


@pytest.fixture(scope="module")
def tiny_emoji_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji-root")
    split = {("a", "a-one"): 10, ("a", "a-two"): 9, ("a", "a-rare"): 3, ("b", "b-one"): 12}
    write_split(root / "64-train", split, seed=0)
    write_split(root / "64-holdout", {key: 4 for key in split}, seed=1)
    return root


@pytest.fixture(scope="module")
def tiny_judge_dir(tiny_emoji_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("judge")
    summary = train_and_store(tiny_emoji_root, out, steps=30, command="python -m genlab.eval train-judge",
                              config={"block_out_channels": (4, 8)})
    assert "| held-out class accuracy (top-1) |" in summary
    return out


def test_train_and_store_writes_the_judge_its_classes_and_card(tiny_judge_dir, tiny_emoji_root):
    assert {p.name for p in tiny_judge_dir.iterdir()} >= {"config.json", "diffusion_pytorch_model.safetensors",
                                                         "classes.json", "README.md"}
    judge, classes = load_judge(tiny_judge_dir)
    assert classes == {"a-one": "a", "a-two": "a", "a-other": "a", "b-one": "b"}  # a-rare (3 < 8) merged
    assert judge.config.image_size == SIDE and judge.config.num_classes == 4
    card = (tiny_judge_dir / "README.md").read_text()
    assert "Command: `python -m genlab.eval train-judge`" in card and "held-out category accuracy" in card
    assert LabelledEmoji(tiny_emoji_root / "64-holdout").pixels.shape == (16, 3, SIDE, SIDE)


def test_emoji_with_a_judge_prints_the_floors_beside_the_model(tiny_judge_dir, tiny_emoji_root,
                                                               tiny_cond_ddpm_dir, tmp_path, capsys):
    genlab_eval.main(["emoji", "--judge", str(tiny_judge_dir), "--model", str(tiny_cond_ddpm_dir),
                      "--data", str(tiny_emoji_root), "--out", str(tmp_path / "out"), "--per-class", "17",
                      "--steps", "2"])
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    names = [line.split(" | ")[0].strip("| ") for line in lines]
    assert names[:6] == ["images", "real train (floor)", "real train, Gaussian blur σ = 3 px",
                         "real train + Gaussian noise σ = 0.3", f"{tiny_cond_ddpm_dir.name} samples", "images"]
    floor = lines[1].split(" | ")
    assert floor[1] == "29"  # 17 per category, all 12 of b
    assert lines[4].split(" | ")[1] == "34"  # 17 samples per category, in two batches (the samplers take 16)
    assert (tmp_path / "out" / "judge_samples.png").is_file()
    assert "2 DDIM steps" in printed and "every category weighted equally" in printed
    assert "Per category: precision / recall within the category / category accuracy." in printed
    assert f"- {tiny_cond_ddpm_dir.name} samples, no mode collapse (recall within each category" in printed


def test_a_model_smaller_than_the_judge_gets_the_floor_of_real_emoji_at_its_size(tiny_judge_dir, tiny_emoji_root):
    """A 32 px model's samples are resized to the 64 px judge: real emoji at 32 px, resized alike, are its best."""
    judge = Judge(tiny_judge_dir, tiny_emoji_root)
    sets = real_floors(judge, 8, resolution=4)
    assert [s.name for s in sets[3:]] == ["real train at 4 px, resized to 16 px"]
    real, _, _, smaller = (judge.score(s) for s in sets)
    assert smaller.count == real.count and smaller.frechet > real.frechet
    assert len(real_floors(judge, 8, resolution=SIDE)) == len(real_floors(judge, 8)) == 3  # the judge's own size


def test_calibrate_writes_its_table_into_the_judge_card(tiny_judge_dir, tiny_emoji_root, tiny_cond_ddpm_dir,
                                                        tmp_path, capsys, monkeypatch):
    argv = ["calibrate-judge", "--judge", str(tiny_judge_dir), "--data", str(tiny_emoji_root), "--model",
            str(tiny_cond_ddpm_dir), "--out", str(tmp_path), "--per-class", "4", "--card"]
    monkeypatch.setattr("sys.argv", ["genlab.tools.eval"] + argv)
    genlab_eval.main(argv)
    printed = capsys.readouterr().out
    assert "Real train > samples > blurred and noised? FD: " in printed
    card = (tiny_judge_dir / "README.md").read_text()
    assert card.count("## Calibration") == 1 and "| real train (floor) | 8 |" in card
    assert "## Training and held-out accuracy" in card  # the training section is kept


@pytest.mark.parametrize("argv, message", [
    (["train-judge", "--data", "d", "--model", "m"], "train-judge takes no --model"),
    (["train-judge", "--data", "d", "--judge-steps", "0"], "--judge-steps is for train-judge and at least 1"),
    (["emoji", "--data", "d", "--judge-steps", "5", "--model", "m"], "--judge-steps is for train-judge"),
    (["vq", "--data", "d", "--model", "m", "--judge", "j"], "--judge is for emoji and calibrate-judge, not vq"),
    (["emoji", "--data", "d"], "--model is required for emoji"),
    (["emoji", "--data", "d", "--model", "m", "--judge", "j", "--per-class", "3"], "--per-class must be at least 4"),
    (["calibrate-judge", "--data", "d", "--per-class", "0"], "--per-class must be at least 1, got 0"),
    (["judge", "--data", "d"], "invalid choice: 'judge'"),
])
def test_bad_judge_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        genlab_eval.main(argv)
    assert message in capsys.readouterr().err


def test_calibrate_refuses_a_missing_judge_and_a_data_folder_without_splits(tiny_judge_dir, tmp_path):
    with pytest.raises(SystemExit, match="no emoji judge at"):
        genlab_eval.main(["calibrate-judge", "--judge", str(tmp_path / "none"), "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match="has no 64-train/: pass the emoji root"):
        genlab_eval.main(["calibrate-judge", "--judge", str(tiny_judge_dir), "--data", str(tmp_path)])
