"""The nearest training image (genlab.imaging.nearest): a stored index finds a training image and its altered
copies, keeps a blank image from passing as a copy, measures the typical distance without skin-tone twins,
and refuses bad input with a message that says what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from genlab.imaging import TrainingIndex, write_training_index
from genlab.imaging.nearest import COPY_RATIO, base_code, typical_distance

SIDE = 64


def drawing(seed: int) -> np.ndarray:
    """A 64 px "emoji": two coloured rectangles on white, placed and coloured by the seed."""
    rng = np.random.default_rng(seed)
    image = np.full((SIDE, SIDE, 3), 255, np.uint8)
    for _ in range(2):
        top, left = rng.integers(4, 36, 2)
        height, width = rng.integers(12, 26, 2)
        image[top:top + height, left:left + width] = rng.integers(0, 200, 3)
    return image


def skin_tone(image: np.ndarray, shift: int) -> np.ndarray:
    """The same drawing in another colour where it is not white (a skin-tone variant)."""
    varied = image.astype(int)
    drawn = (image < 255).any(axis=2)
    varied[drawn] = np.clip(varied[drawn] + shift, 0, 254)
    return varied.astype(np.uint8)


NAMES = [f"1f{600 + i:03x}.png" for i in range(16)]


@pytest.fixture(scope="module")
def training():
    images = [drawing(seed) for seed in range(len(NAMES))]
    twins, twin_names = [], []
    for source in range(12, 16):  # the last four emoji in two more skin tones each
        twins += [skin_tone(images[source], 12), skin_tone(images[source], -12)]
        twin_names += [NAMES[source].replace(".png", f"-{tone}.png") for tone in ("1f3fb", "1f3ff")]
    return images + twins, NAMES + twin_names


@pytest.fixture(scope="module")
def index_dir(training, tmp_path_factory):
    images, names = training
    return write_training_index(images, names, tmp_path_factory.mktemp("index") / "training_images")


def brute_force_rms(a: np.ndarray, b: np.ndarray, side: int = 32) -> float:
    """RMS of [0, 1] RGB at `side` px, with PIL's area average, written out plainly."""
    small = [np.asarray(Image.fromarray(x).resize((side, side), Image.Resampling.BOX)) / 255.0 for x in (a, b)]
    return float(np.sqrt(((small[0] - small[1]) ** 2).mean()))


def test_the_index_is_a_png_atlas_and_json_without_pickles(index_dir, training):
    assert sorted(p.name for p in index_dir.iterdir()) == ["atlas.png", "index.json"]
    info = json.loads((index_dir / "index.json").read_text())
    assert info["names"] == training[1] and info["side"] == 32 and info["count"] == 24
    assert (info["columns"], info["rows"]) == (5, 5)  # ceil(sqrt(24)) columns
    with Image.open(index_dir / "atlas.png") as atlas:
        assert atlas.size == (5 * 32, 5 * 32) and atlas.mode == "RGB"


def test_a_training_image_finds_itself_at_distance_zero(index_dir, training):
    index = TrainingIndex.load(index_dir)
    for image, name in zip(*training):
        found = index.nearest(image)
        assert found.name == name and found.distance == 0.0
    name, distance, thumbnail = index.nearest(Image.fromarray(training[0][3]))  # a PIL image; a 3-tuple
    assert (name, distance) == (NAMES[3], 0.0)
    assert thumbnail.size == (128, 128)  # 32 px enlarged nearest-neighbour: each pixel a 4x4 block
    blocks = np.asarray(thumbnail)
    assert (blocks[::4, ::4] == blocks[3::4, 3::4]).all()
    small = Image.fromarray(training[0][3]).resize((32, 32), Image.Resampling.BOX)
    assert np.array_equal(blocks[::4, ::4], np.asarray(small))


def test_a_shifted_and_brightened_copy_finds_its_source(index_dir, training):
    index = TrainingIndex.load(index_dir)
    for source in (2, 7, 11):
        original = training[0][source]
        moved = np.full_like(original, 255)
        moved[2:, 1:] = original[:-2, :-1]  # 2 px down, 1 px right
        altered = np.clip(moved.astype(int) + 20, 0, 255).astype(np.uint8)  # brighter
        found = index.nearest(altered)
        assert found.name == NAMES[source]
        assert 0 < found.distance < index.typical_distance
        assert found.distance == pytest.approx(brute_force_rms(altered, original), abs=1e-5)
    batch = index.nearest_batch([training[0][2], altered])
    assert batch.names == [NAMES[2], NAMES[11]] and batch.distances[0] == 0.0
    assert batch.looks_copied.tolist() == [True, True] and batch.relative[1] < COPY_RATIO


def test_a_blank_image_does_not_claim_to_be_a_copy(index_dir):
    index = TrainingIndex.load(index_dir)
    blank = np.full((SIDE, SIDE, 3), 255, np.uint8)
    found = index.nearest_batch([blank, blank[:40, :40]])  # any size is area-averaged to the index's side
    assert not found.looks_copied.any() and (found.relative > COPY_RATIO).all()
    assert (found.distances > 0.1).all()


def test_nearest_batch_agrees_with_brute_force(index_dir, training):
    index = TrainingIndex.load(index_dir)
    queries = np.stack([drawing(seed) for seed in range(100, 120)])  # (20, 64, 64, 3), none of them trained
    found = index.nearest_batch(queries)
    for query, name, distance in zip(queries, found.names, found.distances):
        truth = sorted((brute_force_rms(query, image), n) for image, n in zip(*training))
        assert name == truth[0][1] and distance == pytest.approx(truth[0][0], abs=1e-5)
        assert index.nearest(query)[:2] == (name, pytest.approx(distance, abs=1e-6))
    assert len(found.relative) == 20 and (found.relative <= 1).all()


def test_the_typical_distance_leaves_out_skin_tone_twins(index_dir, training):
    images, names = training
    assert base_code("1f44d-1f3fb.png") == base_code("1f44d.png") == "1f44d"
    assert base_code("1f9d1-1f3fb-200d-1f91d-200d-1f9d1-1f3ff.png") == "1f9d1-200d-1f91d-200d-1f9d1"
    assert base_code("2764-fe0f.png") == "2764" and base_code("0023-fe0f-20e3.png") == "0023-20e3"
    nearest_other = []
    for i, image in enumerate(images):
        others = [brute_force_rms(image, other) for j, other in enumerate(images)
                  if base_code(names[j]) != base_code(names[i])]
        nearest_other.append(min(others))
    stored = json.loads((index_dir / "index.json").read_text())["typical_distance"]
    assert stored == pytest.approx(np.median(nearest_other), abs=1e-5)
    assert TrainingIndex.load(index_dir).typical_distance == stored
    small = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.Resampling.BOX)) for x in images])
    with_twins = typical_distance(small, [f"{i}.png" for i in range(len(images))])  # every image its own emoji
    assert with_twins < stored / 2  # the twins, a skin tone apart, would have been each other's neighbours


@pytest.mark.parametrize("images, names, side, message", [
    ([np.zeros((8, 8, 3), np.float32)], ["a.png"], 32, "must be uint8 .*got dtype float32"),
    ([np.zeros((8, 8), np.uint8)], ["a.png"], 32, r"must have shape \(H, W, 3\), got \(8, 8\)"),
    ([np.zeros((8, 8, 4), np.uint8)], ["a.png"], 32, r"must have shape \(H, W, 3\), got \(8, 8, 4\)"),
    ([], [], 32, "no training images to index"),
    ([np.zeros((8, 8, 3), np.uint8)], ["a.png", "b.png"], 32, "1 images but 2 names"),
    ([np.zeros((8, 8, 3), np.uint8)] * 2, ["a.png", "a.png"], 32, r"names must be unique; repeated: \['a.png'\]"),
    ([np.zeros((8, 8, 3), np.uint8)], ["a.png"], 2, r"side must be an integer in \[4, 256\], got 2"),
])
def test_writing_refuses_bad_input(images, names, side, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        write_training_index(images, names, tmp_path / "index", side=side)
    assert not (tmp_path / "index").exists()  # nothing half-written


def test_writing_refuses_what_is_not_an_image(tmp_path):
    with pytest.raises(TypeError, match="training image 'a.png' must be a uint8 .* array or a PIL image, got str"):
        write_training_index(["not an image"], ["a.png"], tmp_path / "index")


def test_queries_refuse_bad_input(index_dir):
    index = TrainingIndex.load(index_dir)
    with pytest.raises(ValueError, match="image 0 must be uint8 .*got dtype float64"):
        index.nearest(np.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match=r"image 1 must have shape \(H, W, 3\), got \(64, 64\)"):
        index.nearest_batch([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)])
    with pytest.raises(ValueError, match="give a non-empty list of images"):
        index.nearest_batch([])


def test_loading_refuses_missing_or_inconsistent_files(index_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no training index at .*does not exist"):
        TrainingIndex.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing atlas.png, index.json .*write_training_index"):
        TrainingIndex.load(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text((index_dir / "index.json").read_text())
    with pytest.raises(FileNotFoundError, match="missing atlas.png"):
        TrainingIndex.load(broken)
    Image.new("RGB", (64, 64), "white").save(broken / "atlas.png")
    with pytest.raises(ValueError, match="atlas.png is 64x64 px; index.json expects 160x160"):
        TrainingIndex.load(broken)
    (broken / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json is not valid JSON"):
        TrainingIndex.load(broken)
    (broken / "index.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="is not a genlab-training-index file"):
        TrainingIndex.load(broken)
