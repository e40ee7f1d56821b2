"""Plots as PIL images: codebook usage, the PCA map of codes, the noise schedule.

Figures are rendered to PNG and freed at once by `genlab.toy.views.render_figure`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..toy.views import render_figure  # noqa: E402  (one renderer for every figure the app shows)


def usage_figure(usage: np.ndarray, image_usage: np.ndarray | None = None):
    """Uses per code, codes sorted by reference usage (rank on x)."""
    figure, axis = plt.subplots(figsize=(6, 3), dpi=90)
    order = np.argsort(-usage, kind="stable")
    ranks = np.arange(len(usage))
    axis.bar(ranks, usage[order], width=1.0, color="#4c72b0", label="reference set")
    if image_usage is not None:
        axis.bar(ranks, image_usage[order], width=1.0, color="#dd8452", alpha=0.8, label="current image")
    axis.set_xlabel("code rank (by reference usage)")
    axis.set_ylabel("uses")
    axis.set_yscale("symlog")
    axis.legend(loc="upper right")
    figure.tight_layout()
    return render_figure(figure)


def pca_figure(points: np.ndarray, colors: np.ndarray, usage: np.ndarray | None = None):
    """(K, 2) PCA coordinates, coloured by each code's mean decoded colour; unused codes hollow."""
    figure, axis = plt.subplots(figsize=(5, 4), dpi=90)
    used = np.ones(len(points), bool) if usage is None else usage > 0
    axis.scatter(points[used, 0], points[used, 1], c=colors[used] / 255.0, s=14, edgecolors="none")
    if (~used).any():
        axis.scatter(points[~used, 0], points[~used, 1], facecolors="none", edgecolors="#999999", s=14, linewidths=0.6,
                     label="unused")
        axis.legend(loc="best")
    axis.set_xlabel("PC 1")
    axis.set_ylabel("PC 2")
    figure.tight_layout()
    return render_figure(figure)


def schedule_figure(schedule: dict[str, np.ndarray], current_t: int | None = None):
    """abar_t and log-SNR(t) with the current timestep marked."""
    figure, axis = plt.subplots(figsize=(5, 3), dpi=90)
    t = schedule["t"]
    axis.plot(t, schedule["alpha_bar"], color="#4c72b0", label="ᾱ_t")
    axis.set_xlabel("timestep t")
    axis.set_ylabel("ᾱ_t", color="#4c72b0")
    twin = axis.twinx()
    twin.plot(t, schedule["log_snr"], color="#c44e52", label="log SNR")
    twin.set_ylabel("log SNR(t)", color="#c44e52")
    if current_t is not None:
        axis.axvline(current_t, color="black", linestyle="--", linewidth=1)
        axis.set_title(f"t = {current_t}: ᾱ = {schedule['alpha_bar'][current_t]:.3f}, "
                       f"log SNR = {schedule['log_snr'][current_t]:.2f}", fontsize=9)
    figure.tight_layout()
    return render_figure(figure)
