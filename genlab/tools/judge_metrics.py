"""Set-level metrics of a generator in a judge's feature space.

- Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
  Nash Equilibrium", arXiv:1706.08500): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2).
- Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models", arXiv:1904.06991): each set's manifold is the union of balls around its
  points, each ball reaching that point's k-th nearest neighbour in the same set. Precision is the share of
  generated points inside the real manifold, recall the share of real points inside the generated one.

Every set may carry weights (summing to 1): the real emoji are 60% People & Body while generators are
sampled class-balanced, so GenLab weights each category equally on both sides (`balanced_weights`); a
perfect class-balanced generator then scores the real-vs-real floor instead of paying for the category mix.
"""

from __future__ import annotations

import numpy as np
import torch

K_NEIGHBOURS = 3


def balanced_weights(categories: list[str]) -> np.ndarray:
    """(N,) weights summing to 1 that give every category present the same total weight."""
    names, index, counts = np.unique(np.asarray(categories, dtype=object), return_inverse=True, return_counts=True)
    return 1.0 / (len(names) * counts[index])


def _weights(count: int, weights) -> np.ndarray:
    if weights is None:
        return np.full(count, 1.0 / count)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (count,) or (weights < 0).any() or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"weights must be {count} non-negative numbers summing to 1")
    return weights


def _as_array(features) -> np.ndarray:
    array = features.double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
    if array.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {array.shape}")
    return array


def mean_and_covariance(features, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean (D,) and unbiased weighted covariance (D, D) of (N, D) features."""
    features = _as_array(features)
    if len(features) < 2:
        raise ValueError(f"a mean and covariance need at least 2 feature vectors, got {len(features)}")
    weights = _weights(len(features), weights)
    mean = weights @ features
    centred = features - mean  # (N, D)
    covariance = (centred * weights[:, None]).T @ centred / (1.0 - (weights ** 2).sum())
    return mean, covariance


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a, b, weights_a=None, weights_b=None) -> float:
    """The Fréchet distance between Gaussians fitted to feature sets `a` (N, D) and `b` (M, D).

    tr((S_a S_b)^1/2) = tr((S_a^1/2 S_b S_a^1/2)^1/2): the inner matrix is symmetric positive semi-definite,
    so both roots come from `eigh`, with no complex parts to discard (scipy.linalg.sqrtm of S_a S_b has some)."""
    mean_a, cov_a = mean_and_covariance(a, weights_a)
    mean_b, cov_b = mean_and_covariance(b, weights_b)
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"feature sizes differ: {mean_a.shape[0]} and {mean_b.shape[0]}")
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def knn_radii(features: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """(N,) distance from each point to its k-th nearest other point of the same set."""
    if len(features) <= k:
        raise ValueError(f"precision and recall need more than k = {k} points in each set, got {len(features)}")
    distances = torch.cdist(torch.from_numpy(features), torch.from_numpy(features))  # (N, N)
    return distances.kthvalue(k + 1, dim=1).values.numpy()  # the 1st is the point itself, at 0


def inside_manifold(points: np.ndarray, support: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each point lies in some ball (support_i, radii_i)."""
    distances = torch.cdist(torch.from_numpy(points), torch.from_numpy(support))  # (N, M)
    return (distances <= torch.from_numpy(radii)[None, :]).any(dim=1).numpy()


def precision_recall(real, fake, weights_real=None, weights_fake=None, k: int = K_NEIGHBOURS) -> dict:
    """{"precision", "recall", "inside"}: the weighted share of `fake` points in the real manifold, of `real`
    points in the fake manifold, and the (N_fake,) bool per fake point (for per-category precision)."""
    real, fake = _as_array(real), _as_array(fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} and {fake.shape[1]}")
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    inside_real = inside_manifold(fake, real, real_radii)
    covered = inside_manifold(real, fake, fake_radii)
    return {"precision": float(_weights(len(fake), weights_fake) @ inside_real),
            "recall": float(_weights(len(real), weights_real) @ covered), "inside": inside_real}
