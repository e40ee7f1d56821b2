"""2D point sets, their checks, and the energy distance every view reports.

Energy distance (Székely & Rizzo, "Energy statistics", 2013; the E-statistic):

    D²(P, Q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|,   X, X' ~ P,  Y, Y' ~ Q

zero exactly when P = Q. It is estimated here with the unbiased U-statistic (pairs i != j within a
set), so a perfect model scores about 0 ± O(1/n) rather than a positive bias of E|X - X'| / n.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..imaging.io import InputError

MIN_POINTS = 16  # fewer cannot describe a distribution (and a batch of 256 would repeat them endlessly)
MAX_POINTS = 100_000  # a memory bound: 100k points are 1.6 MB, and every view subsamples anyway
MAX_ABS = 1_000.0  # coordinates beyond this are a unit mistake, not a distribution to learn
MAX_DISTANCE_POINTS = 2_000  # energy distance subsamples each set to this (a 2000 x 2000 cdist)


def check_points(points, name: str = "points", min_points: int = MIN_POINTS, max_abs: float = MAX_ABS,
                 spread: bool = True) -> np.ndarray:
    """(n, 2) float32 copy of `points`, or an InputError that says what is wrong with them.

    Training data must be spread out (`spread`); a collapsed model's samples need not be."""
    try:
        array = np.array(points, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} must be an (n, 2) array of x, y numbers; could not read them ({error}).") from None
    if array.ndim != 2 or array.shape[1] != 2:
        raise InputError(f"{name} must be an (n, 2) array of x, y coordinates; got shape {array.shape}.")
    if len(array) < min_points:
        raise InputError(f"{name}: need at least {min_points} points to learn a distribution; got {len(array)}. "
                         "Click more points or pick a dataset.")
    if len(array) > MAX_POINTS:
        raise InputError(f"{name}: at most {MAX_POINTS} points are supported; got {len(array)}.")
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise InputError(f"{name} contain NaN or infinite coordinates ({bad.sum()} rows, e.g. rows {rows}).")
    largest = float(np.abs(array).max())
    if largest > max_abs:
        raise InputError(f"{name}: coordinates up to ±{max_abs:g} are supported; got {largest:.3g}. "
                         "Rescale the points (the built-in datasets span about ±3).")
    if spread and float(array.std(axis=0).max()) < 1e-6:
        raise InputError(f"{name} all lie at one spot; a distribution needs spread-out points.")
    return array.astype(np.float32)


# ------------------------------------------------------------------------------ datasets
def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved half circles (scikit-learn's make_moons), centred, scaled by 1.6."""
    upper = rng.random(n) < 0.5
    angle = rng.uniform(0, math.pi, n)
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x - 0.5, y - 0.25], axis=1) + rng.normal(0, 0.08, (n, 2))
    return points * 1.6


def _circles(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two concentric rings, radii 1 and 2.2."""
    radius = np.where(rng.random(n) < 0.5, 1.0, 2.2)
    angle = rng.uniform(0, 2 * math.pi, n)
    return np.stack([np.cos(angle), np.sin(angle)], axis=1) * radius[:, None] + rng.normal(0, 0.08, (n, 2))


def _spiral(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved spiral arms (TensorFlow Playground's spiral), out to radius 2.8."""
    turn = np.sqrt(rng.random(n)) * 2.2 * math.pi  # sqrt: even density along the arm
    arm = np.where(rng.random(n) < 0.5, 0.0, math.pi)
    radius = turn / (2.2 * math.pi) * 2.8
    points = np.stack([np.cos(turn + arm), np.sin(turn + arm)], axis=1) * radius[:, None]
    return points + rng.normal(0, 0.07, (n, 2))


def _gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Eight Gaussians (std 0.2) on a ring of radius 2: the GAN mode-collapse test of Metz et al. 2016."""
    mode = rng.integers(0, 8, n)
    angle = mode * (2 * math.pi / 8)
    return 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1) + rng.normal(0, 0.2, (n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the eight dark squares of a 4 x 4 board over [-2, 2]^2."""
    cell = rng.integers(0, 8, n)
    row = cell // 2
    col = 2 * (cell % 2) + row % 2
    offsets = rng.random((n, 2))
    return np.stack([col + offsets[:, 0], row + offsets[:, 1]], axis=1) - 2.0


def _swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    """scikit-learn's swiss roll seen from above (its x, z plane), scaled to about ±2.5."""
    turn = 1.5 * math.pi * (1 + 2 * rng.random(n))
    points = np.stack([turn * np.cos(turn), turn * np.sin(turn)], axis=1) / 5.5
    return points + rng.normal(0, 0.06, (n, 2))


DATASETS = {
    "moons": _moons, "circles": _circles, "spiral": _spiral, "gaussians": _gaussians,
    "checkerboard": _checkerboard, "swissroll": _swissroll,
}


def dataset(name, n: int = 2000, seed: int = 0) -> np.ndarray:
    """(n, 2) float32 points of a named dataset, or your own (n, 2) points checked and returned as float32."""
    if not isinstance(name, str):
        return check_points(name)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or pass your own (n, 2) points")
    if not MIN_POINTS <= int(n) <= MAX_POINTS:
        raise ValueError(f"n must be between {MIN_POINTS} and {MAX_POINTS}; got {n}")
    return DATASETS[name](np.random.default_rng(seed), int(n)).astype(np.float32)


def gaussian_fit(data, n: int = 2000, seed: int = 0) -> np.ndarray:
    """(n, 2) samples of the single Gaussian N(mean, cov) fitted to `data`: the baseline every family must beat."""
    points = check_points(data).astype(np.float64)
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(points.mean(axis=0), np.cov(points, rowvar=False), size=n).astype(np.float32)


def _subsample(points: np.ndarray, limit: int, generator: torch.Generator) -> torch.Tensor:
    tensor = torch.from_numpy(points).double()
    if len(tensor) > limit:
        tensor = tensor[torch.randperm(len(tensor), generator=generator)[:limit]]
    return tensor


def _mean_distance(a: torch.Tensor, b: torch.Tensor, same: bool) -> float:
    total = torch.cdist(a, b).sum()  # (n, m) pairwise Euclidean distances
    pairs = len(a) * (len(a) - 1) if same else len(a) * len(b)  # the diagonal of a set with itself is 0
    return float(total) / pairs


def energy_distance(samples, data, max_points: int = MAX_DISTANCE_POINTS, seed: int = 0) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| between two (n, 2) point sets (U-statistic; each set subsampled to
    `max_points` with a seeded generator). About 0 for samples of the data's own distribution."""
    # a diverged (huge) or collapsed (one spot) model's samples still get a score
    x = check_points(samples, "samples", min_points=2, max_abs=math.inf, spread=False)
    y = check_points(data, "data", min_points=2, spread=False)
    generator = torch.Generator().manual_seed(seed)
    x, y = _subsample(x, max_points, generator), _subsample(y, max_points, generator)
    return 2 * _mean_distance(x, y, False) - _mean_distance(x, x, True) - _mean_distance(y, y, True)


def view_bounds(points: np.ndarray, margin: float = 0.15) -> tuple[float, float, float, float]:
    """A square window (x0, x1, y0, y1) around the points with a margin, at least ±1 wide."""
    low, high = points.min(axis=0), points.max(axis=0)
    center = (low + high) / 2
    half = max(float((high - low).max()) / 2 * (1 + margin), 1.0)
    return center[0] - half, center[0] + half, center[1] - half, center[1] + half
