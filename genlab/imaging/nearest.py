"""The nearest training image of a sample: does a generator copy its training data?

A diffusion model can reproduce training images nearly pixel for pixel: Carlini et al. 2023 ("Extracting
Training Data from Diffusion Models", arXiv:2301.13188) extract them from Stable Diffusion by generating many
samples and flagging those within a small distance of a training image; Somepalli et al. 2023 ("Diffusion Art or
Digital Forgery?", arXiv:2212.03860) retrieve each sample's nearest training image to find replicated content.
A copy is close in pixels, so the search is in pixel space: a feature space would call every red heart a copy of
the training set's red heart, since it is built to ignore the differences that make a drawing a new one.

Distances are RMS differences of RGB values in [0, 1] at `side` px (both images area-averaged to that size, which
forgives a sample's sub-pixel noise and keeps the index small), so 0 is the same image and 1 is black against
white. A distance means little alone, so the index stores the *typical distance*: the median, over training
images, of the distance to their nearest other training image. A sample closer than that to a training image is
nearer to it than training emoji usually are to each other. Emoji that differ only in skin tone (file names with
the same code points once the modifiers U+1F3FB-U+1F3FF and the variation selector U+FE0F are dropped:
`1f44d-1f3fb.png` and `1f44d.png`) are not each other's neighbours for the typical distance: half the emoji set
has four such twins, which would make "typical" mean "the same drawing in another skin colour".

Closer than the typical distance is a comparison, not a verdict: about half of the real held-out emoji are
closer than that to some training emoji. For a verdict per image, `nearest_batch` also gives Carlini et al.'s
relative distance (sec. 4.1): the distance to the nearest training image over the mean distance to the next
`RELATIVE_NEIGHBOURS`; an image *looks copied* when that is below `COPY_RATIO` (their alpha = 0.5). A blank
image is about as near to every pale emoji (ratio about 0.6 on the emoji set), a copy is much nearer to one
(about 0.1 for a training emoji with noise of 0.03); 5% of real held-out emoji fall below 0.5, mostly keycaps
and flags that differ from a training one by a digit or a stripe.

The index is one lossless PNG atlas of the training images at `side` px, row-major in `names` order, and
`index.json` (names, side, grid, the typical distance); nothing is pickled.

    write_training_index(images, names, folder)                  # at export, beside the model's weights
    index = TrainingIndex.load(folder)
    name, distance, thumbnail = index.nearest(sample)            # thumbnail: the training image, enlarged
    found = index.nearest_batch(samples)                          # evaluation: .names, .distances, .relative,
    found.looks_copied                                            #   (M,) bool: Carlini et al.'s test
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

ATLAS_FILE, INDEX_FILE = "atlas.png", "index.json"
FORMAT = "genlab-training-index"
DEFAULT_SIDE = 32
DISPLAY_SIDE = 128  # the thumbnail's side: the atlas image enlarged nearest-neighbour (pixels stay visible)
QUERY_CHUNK = 256  # queries per matrix product in `nearest_batch`
RELATIVE_NEIGHBOURS = 10  # Carlini et al. use the 50 nearest of 160M images; 10 of a few thousand here
COPY_RATIO = 0.5  # nearest distance / mean of the next RELATIVE_NEIGHBOURS below this: looks copied
CANDIDATES = RELATIVE_NEIGHBOURS + 1  # nearest candidates by the fast product, re-measured exactly
SKIN_TONE_OR_SELECTOR = re.compile(r"^(1f3f[b-f]|fe0f)$")


@dataclass
class NearestSet:
    """`TrainingIndex.nearest_batch`'s answer for M images."""

    names: list[str]  # each image's nearest training image
    distances: np.ndarray  # (M,) RMS difference of [0, 1] RGB at the index's side
    relative: np.ndarray  # (M,) nearest distance / mean distance to the next RELATIVE_NEIGHBOURS (nan: too few)

    @property
    def looks_copied(self) -> np.ndarray:
        """(M,) bool: relative distance below COPY_RATIO (Carlini et al.'s test)."""
        return np.nan_to_num(self.relative, nan=np.inf) < COPY_RATIO


class Nearest(NamedTuple):
    name: str  # the training image's file name
    distance: float  # RMS difference of [0, 1] RGB at the index's side
    thumbnail: Image.Image  # the training image at the index's side, enlarged nearest-neighbour


def base_code(name: str) -> str:
    """The emoji's code points without skin-tone modifiers and U+FE0F: `1f44d-1f3fb.png` -> `1f44d`."""
    parts = Path(name).stem.lower().split("-")
    return "-".join(p for p in parts if not SKIN_TONE_OR_SELECTOR.match(p)) or Path(name).stem.lower()


def _check_pixels(image, what: str) -> np.ndarray:
    """A uint8 (H, W, 3) array (an RGB PIL image is converted); TypeError or ValueError naming `what`."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a uint8 (H, W, 3) array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0-255), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"{what} must have shape (H, W, 3), got {image.shape}")
    return image


def _to_side(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (side, side, 3): area average when larger, bilinear when smaller."""
    if image.shape[:2] == (side, side):
        return image
    larger = min(image.shape[:2]) >= side
    method = Image.Resampling.BOX if larger else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((side, side), method))


def _flat(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, side, side, 3) -> float32 (N, D) in [0, 1]."""
    return pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0


def _nearest_rows(queries: np.ndarray, train: np.ndarray, train_sq: np.ndarray,
                  excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices (M, k), RMS distances (M, k)) of each query's k = CANDIDATES nearest training rows, nearest first;
    float32 queries (M, D) and training rows (N, D) in [0, 1].

    |q - t|^2 = |q|^2 + |t|^2 - 2 q.t as one matrix product picks the candidates; they are re-measured exactly,
    so an identical image is at 0 and float32 rounding of the product cannot change which is nearest.
    `excluded` (M, N) bool: pairs that may not be neighbours (the image itself, its skin-tone twins), at inf."""
    squared = (queries ** 2).sum(1)[:, None] + train_sq[None, :] - 2.0 * queries @ train.T  # (M, N)
    if excluded is not None:
        squared[excluded] = np.inf
    count = min(CANDIDATES, train.shape[0])
    candidates = np.argpartition(squared, count - 1, axis=1)[:, :count]  # (M, k), unordered
    exact = ((train[candidates] - queries[:, None, :]) ** 2).mean(2)  # (M, k)
    if excluded is not None:
        exact[np.take_along_axis(excluded, candidates, 1)] = np.inf
    order = exact.argsort(1)
    return np.take_along_axis(candidates, order, 1), np.sqrt(np.take_along_axis(exact, order, 1))


def typical_distance(pixels: np.ndarray, names: list[str]) -> float:
    """Median over images of the RMS distance to the nearest other image that is not a skin-tone twin;
    `pixels` uint8 (N, side, side, 3). NaN when no image has a neighbour."""
    flat = _flat(pixels)
    flat_sq = (flat ** 2).sum(1)
    codes = np.array([base_code(n) for n in names])
    distances = []
    for start in range(0, len(flat), QUERY_CHUNK):
        excluded = codes[start:start + QUERY_CHUNK, None] == codes[None, :]  # (M, N): itself and its twins
        distances.append(_nearest_rows(flat[start:start + QUERY_CHUNK], flat, flat_sq, excluded)[1][:, 0])
    distances = np.concatenate(distances)  # inf where every other image is a twin
    finite = distances[np.isfinite(distances)]
    return float(np.median(finite)) if len(finite) else float("nan")


def write_training_index(images: list[np.ndarray], names: list[str], folder: Path, side: int = DEFAULT_SIDE) -> Path:
    """Store `images` (uint8 (H, W, 3) each) at `side` px as `folder`/atlas.png with `folder`/index.json;
    returns `folder`. `names` are the images' file names, unique, in the same order."""
    if not isinstance(side, int) or not 4 <= side <= 256:
        raise ValueError(f"side must be an integer in [4, 256], got {side!r}")
    if len(images) == 0:
        raise ValueError("no training images to index")
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    if not all(isinstance(n, str) and n for n in names):
        raise ValueError("every name must be a non-empty string")
    repeated = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if repeated:
        raise ValueError(f"names must be unique; repeated: {repeated[:5]}")
    pixels = np.stack([_to_side(_check_pixels(image, f"training image {name!r}"), side)
                       for image, name in zip(images, names)])  # (N, side, side, 3)
    columns = math.ceil(math.sqrt(len(pixels)))
    rows = math.ceil(len(pixels) / columns)
    atlas = np.full((rows * side, columns * side, 3), 255, np.uint8)
    for index, image in enumerate(pixels):
        row, column = divmod(index, columns)
        atlas[row * side:(row + 1) * side, column * side:(column + 1) * side] = image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(atlas).save(folder / ATLAS_FILE, optimize=True)
    typical = typical_distance(pixels, list(names))
    index = {"format": FORMAT, "version": 1, "side": side, "columns": columns, "rows": rows, "count": len(pixels),
             "distance": f"RMS difference of RGB in [0, 1] at {side} px (area-averaged)",
             "typical_distance": None if math.isnan(typical) else round(typical, 6),
             "typical_distance_is": "median over training images of the distance to the nearest other training "
                                    "image, skin-tone twins (the same code points without U+1F3FB-U+1F3FF and "
                                    "U+FE0F) left out",
             "names": list(names)}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=1))
    return folder


class TrainingIndex:
    """The training images of a model at `side` px, searched for the nearest one to an image."""

    def __init__(self, pixels: np.ndarray, names: list[str], typical_distance: float | None):
        self.pixels = pixels  # uint8 (N, side, side, 3)
        self.names = list(names)
        self.side = pixels.shape[1]
        self.typical_distance = typical_distance
        self._flat = _flat(pixels)  # (N, D) float32 in [0, 1]
        self._flat_sq = (self._flat ** 2).sum(1)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def load(cls, folder: Path) -> TrainingIndex:
        """The index that `write_training_index` stored in `folder`."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no training index at {folder}: the folder does not exist")
        missing = [name for name in (ATLAS_FILE, INDEX_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"no training index at {folder}: missing {', '.join(missing)} (write one with "
                                    f"genlab.imaging.nearest.write_training_index)")
        try:
            index = json.loads((folder / INDEX_FILE).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{folder / INDEX_FILE} is not valid JSON: {error}") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ValueError(f"{folder / INDEX_FILE} is not a {FORMAT} file")
        absent = [key for key in ("side", "columns", "rows", "count", "names") if key not in index]
        if absent:
            raise ValueError(f"{folder / INDEX_FILE} lacks {', '.join(absent)}")
        side, columns, rows, names = index["side"], index["columns"], index["rows"], index["names"]
        if len(names) != index["count"] or not 0 < len(names) <= columns * rows:
            raise ValueError(f"{folder / INDEX_FILE} names {len(names)} images for count {index['count']} and a "
                             f"{columns}x{rows} grid")
        with Image.open(folder / ATLAS_FILE) as opened:
            atlas = np.asarray(opened.convert("RGB"))
        if atlas.shape[:2] != (rows * side, columns * side):
            raise ValueError(f"{folder / ATLAS_FILE} is {atlas.shape[1]}x{atlas.shape[0]} px; index.json expects "
                             f"{columns * side}x{rows * side} ({columns}x{rows} images of {side} px)")
        tiles = atlas.reshape(rows, side, columns, side, 3).transpose(0, 2, 1, 3, 4).reshape(-1, side, side, 3)
        return cls(np.ascontiguousarray(tiles[:len(names)]), names, index.get("typical_distance"))

    def _queries(self, images) -> np.ndarray:
        """float32 (M, D) of a list of images, or of a uint8 (M, H, W, 3) array."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("give a non-empty list of images (uint8 (H, W, 3) arrays or PIL images)")
        pixels = np.stack([_to_side(_check_pixels(image, f"image {i}"), self.side) for i, image in enumerate(images)])
        return _flat(pixels)

    def thumbnail(self, name: str, display: int = DISPLAY_SIDE) -> Image.Image:
        """The training image `name` at the index's side, enlarged nearest-neighbour to `display` px."""
        image = Image.fromarray(self.pixels[self.names.index(name)])
        return image.resize((display, display), Image.Resampling.NEAREST)

    def nearest(self, image, display: int = DISPLAY_SIDE) -> Nearest:
        """The training image nearest to `image` (uint8 (H, W, 3) or PIL): its name, distance and thumbnail."""
        index, distance = _nearest_rows(self._queries([image]), self._flat, self._flat_sq)
        name = self.names[int(index[0, 0])]
        return Nearest(name, float(distance[0, 0]), self.thumbnail(name, display))

    def nearest_batch(self, images) -> NearestSet:
        """The nearest training image to each image of a list (or of a uint8 (M, H, W, 3) array), its distance
        and the relative distance of Carlini et al.'s copy test."""
        queries = self._queries(images)
        names, distances, relative = [], [], []
        for start in range(0, len(queries), QUERY_CHUNK):
            index, distance = _nearest_rows(queries[start:start + QUERY_CHUNK], self._flat, self._flat_sq)
            names += [self.names[int(i)] for i in index[:, 0]]
            distances.append(distance[:, 0])
            if distance.shape[1] > 1:
                relative.append(distance[:, 0] / np.maximum(distance[:, 1:].mean(1), 1e-12))
            else:
                relative.append(np.full(len(index), np.nan))
        return NearestSet(names, np.concatenate(distances), np.concatenate(relative))
