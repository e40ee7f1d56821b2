"""The Foundations tab's views of a 2D toy, as PIL images: data against samples, each family's own view (the
VAE's latent space, the GAN's discriminator, the flow's density and base space, diffusion's reverse paths), the
loss and energy-distance curves, the click canvas and the four families side by side. Nothing here imports
gradio: `render(lab, headline)` gives the status line and the three plots of a visitor's `Lab`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import matplotlib
import numpy as np
from PIL import Image

from .core import MAX_HISTORY, ToyModel
from .data import energy_distance

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VIEW_SAMPLES = 1000  # samples drawn for the plots and the live energy distance
FIELD_RESOLUTION = 80  # grid side for D(x) and log p(x) heat maps
TRAJECTORY_POINTS = 12  # reverse trajectories drawn for diffusion
CANVAS_HALF = 4.0  # the canvas shows [-4, 4]^2
CANVAS_INCHES, CANVAS_DPI = 4.5, 80  # a 360 x 360 px canvas
FAMILY_NAMES = {"vae": "VAE", "gan": "GAN", "flow": "Flow", "diffusion": "Diffusion"}
LOSS_LABELS = {
    "neg_elbo": "−ELBO", "reconstruction": "reconstruction  −E log p(x|z)", "kl": "KL(q(z|x) ‖ p(z))",
    "discriminator": "discriminator loss", "generator": "generator loss", "nll": "−log p(x)  (exact)",
    "mse": "‖ε − ε̂‖²",
}
ALL_FOUR_HEADERS = ["family", "steps", "energy distance", "÷ Gaussian fit", "train (s)", "steps/s", "sample 1000 (ms)"]


def render_figure(figure) -> Image.Image:
    """A matplotlib figure as an RGB image, the figure freed at once (figures are reference cycles that otherwise
    linger until the cycle collector runs; at one figure per slider move or training update that adds up)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    figure.clear()
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@dataclass(eq=False)  # hashed by identity: the key of its lock
class Lab:
    """One visitor's toy: data, model and the curves the plots need."""

    key: tuple = ()  # (data, family, settings, seed) the model was made for
    label: str = ""  # what the data is, for the status line
    data: np.ndarray | None = None  # (n, 2) training points
    reference: np.ndarray | None = None  # (n, 2) fresh points of the same dataset: the energy distance's target
    baseline: float = math.nan  # energy distance of the Gaussian fitted to the data
    bounds: tuple = (-3.0, 3.0, -3.0, 3.0)
    model: ToyModel | None = None
    distances: list = field(default_factory=list)  # (step, energy distance) at each plot update
    clicked: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # (m, 2) canvas points
    run: int = 0  # bumped by Train, Pause and Reset: a training loop stops when the run it started is no longer current


def hue_colors(points: np.ndarray) -> np.ndarray:
    """(n, 4) colours by angle around the points' centre: a region keeps its colour in latent and base space."""
    centered = points - points.mean(axis=0)
    angle = (np.arctan2(centered[:, 1], centered[:, 0]) + np.pi) / (2 * np.pi)
    return plt.get_cmap("hsv")(angle)


def frame(axis, bounds, title: str) -> None:
    axis.set_xlim(bounds[0], bounds[1])
    axis.set_ylim(bounds[2], bounds[3])
    axis.set_aspect("equal")
    axis.set_title(title, fontsize=9)
    axis.tick_params(labelsize=7)


def finish(figure):
    """Lay out with headroom (gradio draws the component's label over the image's top left) and render."""
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    return render_figure(figure)


def grid_points(bounds) -> np.ndarray:
    xs = np.linspace(bounds[0], bounds[1], FIELD_RESOLUTION)
    ys = np.linspace(bounds[2], bounds[3], FIELD_RESOLUTION)
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)  # (R*R, 2), row = y


def prior_circles(axis) -> None:
    for radius in (1, 2):
        axis.add_patch(plt.Circle((0, 0), radius, fill=False, linestyle="--", color="#555555", linewidth=0.8))


def dot_size(points: np.ndarray) -> float:
    """Marker area: small for thousands of points, larger for the few dozen a visitor clicks."""
    return float(np.clip(4000 / len(points), 2, 12))


def samples_figure(lab: Lab, samples: np.ndarray, title: str):
    figure, axis = plt.subplots(figsize=(4.2, 4.2), dpi=80)
    axis.scatter(samples[:, 0], samples[:, 1], s=3, c="#d62728", alpha=0.6, label="samples", edgecolors="none")
    axis.scatter(lab.data[:, 0], lab.data[:, 1], s=dot_size(lab.data), c="#333333", alpha=0.6, label="data",
                 edgecolors="none")
    axis.legend(loc="upper right", fontsize=7, markerscale=3)
    frame(axis, lab.bounds, title)
    return finish(figure)


def vae_view(lab: Lab):
    model = lab.model
    shown = lab.data[:2000]
    figure, (latent, means) = plt.subplots(1, 2, figsize=(8.4, 4.2), dpi=80)
    mu, _ = model.encode(shown)  # (n, L)
    if mu.shape[1] >= 2:
        latent.scatter(mu[:, 0], mu[:, 1], s=3, c=hue_colors(shown), edgecolors="none")
        prior_circles(latent)
        latent.set_xlim(-3.5, 3.5)
        latent.set_ylim(-3.5, 3.5)
        latent.set_aspect("equal")
        title = "latent space: μ(x) of the data over N(0, I)" + (" (z1, z2)" if mu.shape[1] > 2 else "")
    else:
        latent.hist(mu[:, 0], bins=60, range=(-3.5, 3.5), density=True, color="#4c72b0")
        grid = np.linspace(-3.5, 3.5, 200)
        latent.plot(grid, np.exp(-grid ** 2 / 2) / np.sqrt(2 * np.pi), color="#555555", linestyle="--")
        title = "latent space: μ(x) of the data over N(0, 1)"
    latent.set_title(title, fontsize=9)
    latent.tick_params(labelsize=7)
    decoded = model.decode_means(VIEW_SAMPLES, seed=0)
    means.scatter(lab.data[:, 0], lab.data[:, 1], s=3, c="#b0b0b0", edgecolors="none")
    means.scatter(decoded[:, 0], decoded[:, 1], s=3, c="#4c72b0", edgecolors="none")
    frame(means, lab.bounds, "decoder means m(z), z ~ prior (samples add noise)")
    return finish(figure)


def gan_view(lab: Lab, samples: np.ndarray):
    belief = lab.model.discriminator(grid_points(lab.bounds)).reshape(FIELD_RESOLUTION, FIELD_RESOLUTION)
    figure, axis = plt.subplots(figsize=(5.0, 4.2), dpi=80)
    image = axis.imshow(belief, origin="lower", extent=lab.bounds, cmap="RdBu", vmin=0, vmax=1, alpha=0.8)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    axis.scatter(lab.data[:, 0], lab.data[:, 1], s=2, c="black", edgecolors="none", label="data")
    axis.scatter(samples[:, 0], samples[:, 1], s=3, c="#ff7f0e", edgecolors="none", label="generated")
    axis.legend(loc="upper right", fontsize=7, markerscale=3)
    frame(axis, lab.bounds, "discriminator: σ(D(x)), its belief that x is real")
    return finish(figure)


def flow_view(lab: Lab):
    model = lab.model
    log_density = model.log_density(grid_points(lab.bounds)).reshape(FIELD_RESOLUTION, FIELD_RESOLUTION)
    figure, (density, base) = plt.subplots(1, 2, figsize=(8.4, 4.2), dpi=80)
    top = float(log_density.max())
    density.imshow(log_density, origin="lower", extent=lab.bounds, cmap="viridis", vmin=top - 8, vmax=top)
    frame(density, lab.bounds, "exact log p(x) (8 nats of range)")
    shown = lab.data[:2000]
    z = model.to_base(shown)
    base.scatter(z[:, 0], z[:, 1], s=3, c=hue_colors(shown), edgecolors="none")
    prior_circles(base)
    frame(base, (-4, 4, -4, 4), "data pulled back to the base: z = f(x)")
    return finish(figure)


def diffusion_view(lab: Lab):
    figure, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), dpi=80)
    for axis, sampler, title in zip(axes, ("ddpm", "ddim"), ("DDPM (as sampled; noise at each step)",
                                                               "DDIM η = 0 (same x_T, deterministic)")):
        paths = lab.model.trajectories(n=TRAJECTORY_POINTS, seed=0, sampler=sampler)
        steps = len(paths.timesteps)
        axis.scatter(lab.data[:, 0], lab.data[:, 1], s=2, c="#d0d0d0", edgecolors="none")
        colors = plt.get_cmap("plasma")(np.linspace(0, 0.9, steps))  # dark: t near T, yellow: t near 0
        for index in range(TRAJECTORY_POINTS):
            axis.plot(paths.x_t[:, index, 0], paths.x_t[:, index, 1], color="#555555", linewidth=0.5, alpha=0.6)
            axis.scatter(paths.pred_x0[:, index, 0], paths.pred_x0[:, index, 1], s=4, c=colors, edgecolors="none")
        axis.scatter(paths.x_t[0, :, 0], paths.x_t[0, :, 1], s=14, marker="x", c="black", label="x_T (noise)")
        axis.scatter(paths.x_t[-1, :, 0], paths.x_t[-1, :, 1], s=18, c="#2ca02c", label="x_0 (sample)")
        axis.legend(loc="upper right", fontsize=7)
        frame(axis, lab.bounds, f"{title}\n{steps} steps (grey), x̂0 on the way (dark → yellow)")
    return finish(figure)


FAMILY_VIEWS = {
    "vae": lambda lab, samples: vae_view(lab),
    "gan": gan_view,
    "flow": lambda lab, samples: flow_view(lab),
    "diffusion": lambda lab, samples: diffusion_view(lab),
}


def losses_figure(lab: Lab):
    model = lab.model
    figure, (losses, distance) = plt.subplots(1, 2, figsize=(8.4, 3.0), dpi=80)
    if model.history:
        steps = [step for step, _ in model.history]
        for name in model.loss_names:
            losses.plot(steps, [values[name] for _, values in model.history], label=LOSS_LABELS[name], linewidth=1)
        losses.legend(fontsize=7)
    losses.set_xlabel("step", fontsize=8)
    losses.set_title("losses (mean per report; nats per point)", fontsize=9)
    values = [value for _, value in lab.distances]
    if values:
        distance.plot([step for step, _ in lab.distances], values, color="#d62728", marker=".", linewidth=1,
                      label="samples")
    distance.axhline(lab.baseline, color="#555555", linestyle="--", linewidth=1, label="one fitted Gaussian")
    distance.axhline(lab.baseline / 3, color="#2ca02c", linestyle=":", linewidth=1, label="a third of it")
    # up to 3x the Gaussian's score: the early, far worse values leave the top, the end stays readable
    top = 3 * lab.baseline if ratio(0.0, lab.baseline) is not None else 1.1 * max(values + [1e-3])
    distance.set_ylim(bottom=min([0.0] + values), top=top)
    distance.set_xlabel("step", fontsize=8)
    distance.set_title("energy distance of the samples (lower is better)", fontsize=9)
    distance.legend(fontsize=7)
    for axis in (losses, distance):
        axis.tick_params(labelsize=7)
    return finish(figure)


def ratio(distance: float, baseline: float) -> float | None:
    """distance / the Gaussian fit's, or None where one Gaussian already fits (a single blob of clicked points)."""
    return round(distance / baseline, 3) if baseline > 1e-4 else None


def ratio_text(distance: float, baseline: float) -> str:
    value = ratio(distance, baseline)
    return "one Gaussian already fits these points" if value is None else f"ratio {value:.2f}"


def render(lab: Lab, headline: str) -> tuple:
    """(status, data vs samples, the family's view, losses) for the lab's model now."""
    model = lab.model
    samples = model.sample(n=VIEW_SAMPLES, seed=0)
    distance = energy_distance(samples, lab.reference)
    if lab.distances and lab.distances[-1][0] == model.step:
        lab.distances[-1] = (model.step, distance)
    else:
        lab.distances.append((model.step, distance))
        if len(lab.distances) > MAX_HISTORY:
            lab.distances = lab.distances[::2]
    name = FAMILY_NAMES[model.family]
    speed = f", {model.step / model.seconds:.0f} steps/s" if model.seconds > 0 else ""
    status = (f"{headline}  \n**{name}** on {lab.label} · step **{model.step}** · energy distance "
              f"**{distance:.4f}** (one fitted Gaussian: {lab.baseline:.4f}; {ratio_text(distance, lab.baseline)}) · "
              f"{model.seconds:.1f} s of training{speed}")
    title = f"{name}, step {model.step}: energy distance {distance:.4f}"
    return status, samples_figure(lab, samples, title), FAMILY_VIEWS[model.family](lab, samples), losses_figure(lab)


def canvas_image(points: np.ndarray):
    figure = plt.figure(figsize=(CANVAS_INCHES, CANVAS_INCHES), dpi=CANVAS_DPI)
    axis = figure.add_axes((0, 0, 1, 1))  # full bleed: a pixel maps linearly to a coordinate
    axis.set_xlim(-CANVAS_HALF, CANVAS_HALF)
    axis.set_ylim(-CANVAS_HALF, CANVAS_HALF)
    for tick in range(-int(CANVAS_HALF) + 1, int(CANVAS_HALF)):
        axis.axvline(tick, color="#e6e6e6" if tick else "#bbbbbb", linewidth=0.8)
        axis.axhline(tick, color="#e6e6e6" if tick else "#bbbbbb", linewidth=0.8)
    if len(points):
        axis.scatter(points[:, 0], points[:, 1], s=5, c="#1f77b4", edgecolors="none")
    else:
        axis.text(0, 0.6, "click to add points", ha="center", color="#888888", fontsize=11)
    axis.set_xticks([])
    axis.set_yticks([])
    return render_figure(figure)


def canvas_point(index, size: tuple[int, int]) -> np.ndarray:
    """The canvas coordinate of a clicked pixel (x, y from the top left)."""
    (x, y), (width, height) = index, size
    return np.array([-CANVAS_HALF + 2 * CANVAS_HALF * (x + 0.5) / width,
                     CANVAS_HALF - 2 * CANVAS_HALF * (y + 0.5) / height], np.float32)


def all_four_figure(data, models: dict, samples: dict, distances: dict, bounds):
    figure, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.4), dpi=80)
    for axis, (family, model) in zip(axes, models.items()):
        axis.scatter(samples[family][:, 0], samples[family][:, 1], s=2, c="#d62728", alpha=0.6, edgecolors="none")
        axis.scatter(data[:, 0], data[:, 1], s=dot_size(data) / 2, c="#333333", alpha=0.6, edgecolors="none")
        frame(axis, bounds, f"{FAMILY_NAMES[family]}, step {model.step}\nED {distances[family]:.4f}, "
                            f"{model.seconds:.1f} s")
    return finish(figure)
