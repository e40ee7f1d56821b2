"""Foundations (2D) tab: a VAE, a GAN, a normalizing flow and a diffusion model trained live on 2D points.

Data, controls, the training loop and the plots are one piece of code for all four families (the
ops are genlab.toy); each family adds only its own view (FAMILY_VIEWS). Training is light work: its
events share the "toy" concurrency slot (TOY_CONCURRENCY), never the image models' "heavy" one, and
one request trains at most MAX_STEPS_PER_REQUEST steps per model. A visitor's model, data and curves
live in a gr.State (a `Lab`) with a time to live; the controls' limits bound its size (LAB_MAX_BYTES).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import gradio as gr
import matplotlib
import numpy as np

from .. import toy
from ..toy.core import MAX_HISTORY
from .common import Registry, single_threaded_worker, user_errors
from .plots import _render as render_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TOY_CONCURRENCY = 2  # toy requests served at once, beside (not instead of) the image models' slot
MAX_STEPS_PER_REQUEST = 5000  # per Train press; All four trains each family at most ALL_FOUR_MAX_STEPS
ALL_FOUR_MAX_STEPS = 3000
STEP_BUTTON_STEPS = 100
CHUNK_STEPS = 25  # steps between checks for Pause / Reset
RENDER_INTERVAL_S = 1.0  # at most one plot update a second: three PNGs of ~40 kB, which a browser keeps up with
STATE_TTL_S = 1800  # a visitor's lab is dropped half an hour after their last request
MAX_CLICKED = 5000  # points a visitor may click onto the canvas
MAX_N = 5000  # points per built-in dataset
VIEW_SAMPLES = 1000  # samples drawn for the plots and the live energy distance
FIELD_RESOLUTION = 80  # grid side for D(x) and log p(x) heat maps
TRAJECTORY_POINTS = 12  # reverse trajectories drawn for diffusion
UI_LIMITS = {"width": (8, 256), "depth": (1, 4), "latent": (1, 8), "transforms": (1, 6), "timesteps": (10, 1000)}
LAB_MAX_BYTES = 32 * 2**20  # what one visitor's Lab can hold at the controls' limits (tested)
# the first view, trained when the app is built
INITIAL = dict(dataset="moons", n=2000, data_seed=0, family="vae", seed=0, steps=500)
CANVAS_HALF = 4.0  # the canvas shows [-4, 4]^2
CANVAS_INCHES, CANVAS_DPI = 4.5, 80  # a 360 x 360 px canvas
BRUSH_SPREAD = 0.12  # std of the points one click adds around the click
MINE = "mine"

FAMILY_NAMES = {"vae": "VAE", "gan": "GAN", "flow": "Flow", "diffusion": "Diffusion"}
COMMON_SETTINGS = ("lr", "width", "depth")
FORM_SETTINGS = {  # the settings the form offers for each family; the rest keep genlab.toy's defaults
    "vae": (*COMMON_SETTINGS, "latent"), "gan": (*COMMON_SETTINGS, "latent", "loss"),
    "flow": (*COMMON_SETTINGS, "transforms"), "diffusion": (*COMMON_SETTINGS, "timesteps"),
}
DATASET_CHOICES = [(name, name) for name in toy.DATASETS] + [("my points (click the canvas)", MINE)]
LOSS_LABELS = {
    "neg_elbo": "−ELBO", "reconstruction": "reconstruction  −E log p(x|z)", "kl": "KL(q(z|x) ‖ p(z))",
    "discriminator": "discriminator loss", "generator": "generator loss", "nll": "−log p(x)  (exact)",
    "mse": "‖ε − ε̂‖²",
}
FAMILY_NOTES = {
    "vae": "Encoder and decoder MLPs, trained on the ELBO; every sample is a decoder mean plus Gaussian noise, "
           "the blur. Left of its view: where the data lands in the latent space, over the prior.",
    "gan": "A generator against a discriminator; the heat map is what the discriminator believes. Watch for modes "
           "the generator never covers (mode collapse) and for oscillation.",
    "flow": "An invertible map to a Gaussian (a neural spline flow, zuko): exact log-density, and the data pulled "
            "back to the base. A flow cannot tear space, so it stretches thin bridges between modes.",
    "diffusion": "An MLP predicts the noise at each of T levels; sampling runs T reverse steps. The view follows "
                 "a few points from noise to data, with the model's guess x̂0 of where each will land.",
}


@dataclass(eq=False)  # hashed by identity: the key of its lock
class Lab:
    """One visitor's toy: data, model and the curves the plots need."""

    key: tuple = ()  # (data, family, settings, seed) the model was made for
    label: str = ""  # what the data is, for the status line
    data: np.ndarray | None = None  # (n, 2) training points
    reference: np.ndarray | None = None  # (n, 2) fresh points of the same dataset: the energy distance's target
    baseline: float = math.nan  # energy distance of the Gaussian fitted to the data
    bounds: tuple = (-3.0, 3.0, -3.0, 3.0)
    model: toy.ToyModel | None = None
    distances: list = field(default_factory=list)  # (step, energy distance) at each plot update
    clicked: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # (m, 2) canvas points
    run: int = 0  # bumped by Train, Pause and Reset: a training loop stops when the run it started is no longer current


_workers = ThreadPoolExecutor(TOY_CONCURRENCY, "genlab-toy", initializer=single_threaded_worker)


def on_toy_thread(fn, *args):
    """Run fn(*args) on a single-threaded toy worker and wait for it (every model call of this tab goes here)."""
    return _workers.submit(fn, *args).result()


_locks: "weakref.WeakKeyDictionary[Lab, threading.Lock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


@contextlib.contextmanager
def locked(lab: Lab, timeout: float = 30.0):
    """One request at a time works on a lab (Train and Step pressed together would share one model)."""
    with _locks_guard:
        lock = _locks.setdefault(lab, threading.Lock())
    if not lock.acquire(timeout=timeout):
        raise gr.Error("Your previous request is still using this model; wait a moment or press Pause.")
    try:
        yield lab
    finally:
        lock.release()


def lab_bytes(lab: Lab) -> int:
    """Bytes a lab holds: points, and per parameter its value, gradient, two Adam moments and average."""
    arrays = [a for a in (lab.data, lab.reference, lab.clicked) if a is not None]
    size = sum(a.nbytes for a in arrays)
    if lab.model is not None:
        size += 5 * 4 * sum(p.numel() for p in lab.model.parameters())
        size += 64 * len(lab.model.history) * (1 + len(lab.model.loss_names))
    return size + 64 * len(lab.distances)


# ------------------------------------------------------------------------------ data and settings
def settings_for(family: str, lr, width, depth, latent, loss, transforms, timesteps) -> dict:
    """The settings the family has, from the form (the others are ignored)."""
    if family not in toy.FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {list(toy.FAMILIES)}")
    if lr is None:
        raise ValueError("Set a learning rate, e.g. 0.001.")
    form = dict(lr=float(lr), width=width, depth=depth, latent=latent, loss=loss, transforms=transforms,
                timesteps=timesteps)
    settings = {name: form[name] for name in FORM_SETTINGS[family]}
    for name, (low, high) in UI_LIMITS.items():
        if name in settings and not low <= settings[name] <= high:
            raise ValueError(f"{name} must be between {low} and {high} here; got {settings[name]}")
    return settings


def load_data(lab: Lab, dataset: str, n, data_seed) -> tuple[tuple, str, np.ndarray, np.ndarray]:
    """(data key, label, training points, reference points) for the form's dataset."""
    if dataset == MINE:
        points = toy.check_points(lab.clicked, "your points")
        return (MINE, points.tobytes()), f"your {len(points)} points", points, points
    if dataset not in toy.DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(toy.DATASETS)} or click your own points")
    n, data_seed = int(n), int(data_seed)
    return ((dataset, n, data_seed), f"{dataset} ({n} points)", toy.dataset(dataset, n, data_seed),
            toy.dataset(dataset, n, data_seed + 1))


def prepare(lab: Lab, dataset: str, n, data_seed, family: str, settings: dict, seed) -> bool:
    """Point the lab at the form's data and settings: a fresh model when anything changed (True)."""
    if seed is None or seed < 0:
        raise ValueError("The seed must be a whole number ≥ 0.")
    data_key, label, data, reference = load_data(lab, dataset, n, data_seed)
    key = (data_key, family, tuple(sorted(settings.items())), int(seed))
    if key == lab.key and lab.model is not None:
        return False
    model = toy.make(family, seed=int(seed), **settings)  # checks the settings before the lab changes
    lab.key, lab.label, lab.data, lab.reference, lab.model = key, label, data, reference, model
    lab.baseline = toy.energy_distance(toy.gaussian_fit(data, n=min(len(data), 2000), seed=1), reference)
    lab.bounds = toy.view_bounds(np.concatenate([data, reference]))
    lab.distances = []
    return True


# ------------------------------------------------------------------------------ plots
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
    distance = toy.energy_distance(samples, lab.reference)
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


ALL_FOUR_HEADERS = ["family", "steps", "energy distance", "÷ Gaussian fit", "train (s)", "steps/s", "sample 1000 (ms)"]


# ------------------------------------------------------------------------------ the tab
_first_view_lock = threading.Lock()  # two apps built in one process submit first_view on two toy workers


def first_view() -> tuple[Lab, tuple]:
    """The lab every visitor starts from (a VAE trained briefly on moons) and its plots, made once per process:
    a second caller waits for the first one's training instead of training its own."""
    with _first_view_lock:
        return _train_first_view()


@functools.lru_cache(maxsize=1)
def _train_first_view() -> tuple[Lab, tuple]:
    lab = Lab()
    family = INITIAL["family"]
    defaults = toy.FAMILIES[family].Config()
    settings = {name: getattr(defaults, name) for name in FORM_SETTINGS[family]}
    prepare(lab, INITIAL["dataset"], INITIAL["n"], INITIAL["data_seed"], family, settings, INITIAL["seed"])
    for _ in toy.train(lab.model, lab.data, INITIAL["steps"], every=100):
        pass
    return lab, render(lab, f"Trained for {INITIAL['steps']} steps when the app started; press Train to go on.")


def family_form(family: str) -> tuple:
    """The form for a family: its defaults, and only its own settings shown."""
    defaults = toy.FAMILIES[family].Config()

    def own(name: str, component: type[gr.components.Component]):
        if name in FORM_SETTINGS[family]:
            return component(value=getattr(defaults, name), visible=True)
        return component(visible=False)

    return (gr.Number(value=defaults.lr), gr.Slider(value=defaults.width), gr.Slider(value=defaults.depth),
            own("latent", gr.Slider), own("loss", gr.Radio), own("transforms", gr.Slider), own("timesteps", gr.Slider),
            f"*{FAMILY_NOTES[family]}*")


def build(registry: Registry, demo: gr.Blocks) -> None:
    del registry  # the toys train their own models; none is loaded
    # The first view trains (~2 s on one core) on a toy worker while the server starts; each page load waits for
    # it, then shows a copy (the other tabs' examples also run on load), so the page is served without that wait.
    opening = _workers.submit(first_view)

    def open_first_view():
        try:
            lab, outputs = opening.result()
        except Exception as error:  # the page still serves: an empty lab, and why
            return Lab(), f"The first view could not be trained ({error}); press Train.", None, None, None
        return copy.deepcopy(lab), *outputs  # the visitor's own lab: training it leaves the first view as it was

    def training(lab: Lab, dataset, n, data_seed, family, lr, width, depth, latent, loss, transforms, timesteps, seed,
                 steps: int, limit: int):
        if steps is None or not 1 <= steps <= limit:
            raise ValueError(f"Steps per request must be between 1 and {limit}; got {steps}.")
        settings = settings_for(family, lr, width, depth, latent, loss, transforms, timesteps)
        with locked(lab):
            fresh = on_toy_thread(prepare, lab, dataset, n, data_seed, family, settings, seed)
            lab.run += 1
            run, target = lab.run, lab.model.step + int(steps)
            stream = toy.train(lab.model, lab.data, int(steps), every=CHUNK_STEPS)
        note = "New data or settings: a fresh model. " if fresh else ""
        yield lab, f"{note}Training {FAMILY_NAMES[family]} to step {target}…", gr.skip(), gr.skip(), gr.skip()
        shown = time.monotonic()
        while True:
            with locked(lab):
                if lab.run != run:  # Pause, Reset or another Train took over
                    return
                state = on_toy_thread(next, stream, None)
                if state is None:
                    outputs = on_toy_thread(render, lab, f"Done: {int(steps)} steps this request.")
                elif time.monotonic() - shown >= RENDER_INTERVAL_S:
                    outputs = on_toy_thread(render, lab, f"Training… step {state.step} of {target}")
                else:
                    continue
            yield lab, *outputs
            if state is None:
                return
            shown = time.monotonic()

    @user_errors
    def train(lab, dataset, n, data_seed, family, lr, width, depth, latent, loss, transforms, timesteps, seed, steps):
        yield from training(lab, dataset, n, data_seed, family, lr, width, depth, latent, loss, transforms, timesteps,
                            seed, steps, MAX_STEPS_PER_REQUEST)

    @user_errors
    def step(lab, dataset, n, data_seed, family, lr, width, depth, latent, loss, transforms, timesteps, seed):
        yield from training(lab, dataset, n, data_seed, family, lr, width, depth, latent, loss, transforms, timesteps,
                            seed, STEP_BUTTON_STEPS, STEP_BUTTON_STEPS)

    @user_errors
    def reset(lab, dataset, n, data_seed, family, lr, width, depth, latent, loss, transforms, timesteps, seed):
        settings = settings_for(family, lr, width, depth, latent, loss, transforms, timesteps)
        lab.run += 1
        with locked(lab):
            lab.key = ()
            on_toy_thread(prepare, lab, dataset, n, data_seed, family, settings, seed)
            return lab, *on_toy_thread(render, lab, "A fresh, untrained model: press Train.")

    @user_errors
    def pause(lab):
        lab.run += 1
        with locked(lab):
            if lab.model is None:
                raise gr.Error("Nothing to pause yet: press Train.")
            return lab, *on_toy_thread(render, lab, f"Paused at step {lab.model.step}; Train resumes from here.")

    def stop_all(lab):
        lab.run += 1
        return "Stopped. All four always starts from scratch: press **Train all four** again."

    @user_errors
    def all_four(lab, dataset, n, data_seed, seed, steps):
        if steps is None or not 1 <= steps <= ALL_FOUR_MAX_STEPS:
            raise ValueError(f"Steps per family must be between 1 and {ALL_FOUR_MAX_STEPS}; got {steps}.")
        if seed is None or seed < 0:
            raise ValueError("The seed must be a whole number ≥ 0.")
        with locked(lab):
            _, label, data, reference = load_data(lab, dataset, n, data_seed)
            lab.run += 1
            run = lab.run
        baseline = on_toy_thread(lambda: toy.energy_distance(toy.gaussian_fit(data, n=min(len(data), 2000), seed=1),
                                                             reference))
        bounds = toy.view_bounds(np.concatenate([data, reference]))
        models = on_toy_thread(lambda: {family: toy.make(family, seed=int(seed)) for family in toy.FAMILIES})
        started = time.monotonic()
        shown = 0.0

        def report(headline: str):
            samples, distances, rows = {}, {}, []
            for family, model in models.items():
                begin = time.perf_counter()
                samples[family] = model.sample(VIEW_SAMPLES, seed=0)
                sampling_ms = (time.perf_counter() - begin) * 1000
                distances[family] = toy.energy_distance(samples[family], reference)
                rows.append([FAMILY_NAMES[family], model.step, round(distances[family], 4),
                             ratio(distances[family], baseline), round(model.seconds, 1),
                             round(model.step / model.seconds) if model.seconds else 0, round(sampling_ms)])
            status = (f"{headline}  \nSame data: {label}; same budget, default settings. One fitted Gaussian scores "
                      f"{baseline:.4f}; wall time {time.monotonic() - started:.1f} s.")
            return all_four_figure(data, models, samples, distances, bounds), rows, status

        yield gr.skip(), gr.skip(), f"Training all four families for {int(steps)} steps each, in turns…"
        stream = toy.train_all(models, data, int(steps), every=CHUNK_STEPS * 4)
        while on_toy_thread(next, stream, None) is not None:
            if lab.run != run:
                return
            if time.monotonic() - shown >= 2 * RENDER_INTERVAL_S:  # four models to sample: update half as often
                done = sum(model.step for model in models.values())
                yield on_toy_thread(report, f"Training… {done} of {4 * int(steps)} steps")
                shown = time.monotonic()
        yield on_toy_thread(report, f"Done: {int(steps)} steps each.")

    @user_errors
    def add_points(lab, brush, event: gr.SelectData):
        center = canvas_point(event.index, (round(CANVAS_INCHES * CANVAS_DPI),) * 2)
        rng = np.random.default_rng(len(lab.clicked))  # the same clicks give the same points
        new = np.clip(center + rng.normal(0, BRUSH_SPREAD, (int(brush), 2)), -CANVAS_HALF, CANVAS_HALF)
        if len(lab.clicked) + len(new) > MAX_CLICKED:
            raise gr.Error(f"The canvas holds at most {MAX_CLICKED} points; press Clear to start again.")
        lab.clicked = np.concatenate([lab.clicked, new.astype(np.float32)])
        return lab, canvas_image(lab.clicked), MINE

    @user_errors
    def clear_points(lab):
        lab.clicked = np.zeros((0, 2), np.float32)
        return lab, canvas_image(lab.clicked)

    defaults = toy.FAMILIES[INITIAL["family"]].Config()
    gr.Markdown(
        "### The four ideas behind image generation, on 2D points\nA VAE (Kingma & Welling 2013), a GAN "
        "(Goodfellow et al. 2014), a normalizing flow (Dinh et al. 2016; here a neural spline flow) and diffusion "
        "(Ho et al. 2020), each a few small MLPs trained live on the CPU. Every view reports the **energy distance** "
        "of the samples to fresh data (0 when the distributions match), beside that of one Gaussian fitted to the "
        "data.")
    lab_state = gr.State(Lab(), time_to_live=STATE_TTL_S)  # the first view's copy replaces it when the page loads
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            dataset = gr.Dropdown(DATASET_CHOICES, value=INITIAL["dataset"], label="Dataset")
            n = gr.Slider(100, MAX_N, value=INITIAL["n"], step=100, label="Points")
            data_seed = gr.Number(INITIAL["data_seed"], label="Data seed", precision=0, minimum=0)
            canvas = gr.Image(canvas_image(Lab().clicked), label="Canvas: click to add points", format="png",
                              interactive=False)
            with gr.Row():
                brush = gr.Slider(1, 50, value=20, step=1, label="Points per click")
                clear_button = gr.Button("Clear my points", size="sm")
        with gr.Column(scale=3):
            with gr.Tab("One family"):
                with gr.Row():
                    family = gr.Radio([(name, key) for key, name in FAMILY_NAMES.items()], value=INITIAL["family"],
                                      label="Family")
                    seed = gr.Number(INITIAL["seed"], label="Seed", precision=0, minimum=0)
                    steps = gr.Slider(100, MAX_STEPS_PER_REQUEST, value=toy.DEFAULT_STEPS, step=100,
                                      label="Steps per Train press")
                with gr.Row():
                    lr = gr.Number(defaults.lr, label="Learning rate")
                    width = gr.Slider(*UI_LIMITS["width"], value=defaults.width, step=8, label="Width (hidden units)")
                    depth = gr.Slider(*UI_LIMITS["depth"], value=defaults.depth, step=1, label="Depth (hidden layers)")
                    latent = gr.Slider(*UI_LIMITS["latent"], value=defaults.latent, step=1, label="Latent size")
                    loss = gr.Radio([("non-saturating", "nonsaturating"), ("hinge", "hinge")], value="nonsaturating",
                                    label="GAN loss", visible=False)
                    transforms = gr.Slider(*UI_LIMITS["transforms"], value=3, step=1, label="Spline layers",
                                           visible=False)
                    timesteps = gr.Slider(*UI_LIMITS["timesteps"], value=100, step=10, label="Diffusion steps T",
                                          visible=False)
                family_note = gr.Markdown(f"*{FAMILY_NOTES[INITIAL['family']]}*")
                with gr.Row():
                    train_button = gr.Button("Train", variant="primary")
                    pause_button = gr.Button("Pause", variant="stop")
                    step_button = gr.Button(f"Step (+{STEP_BUTTON_STEPS})")
                    reset_button = gr.Button("Reset")
                status = gr.Markdown(f"Training the first view: {FAMILY_NAMES[INITIAL['family']]} on "
                                     f"{INITIAL['dataset']}, {INITIAL['steps']} steps…")
                with gr.Row():  # 1 : 2, the shapes of the square samples plot and the two-panel views
                    samples_plot = gr.Image(label="Data and samples", format="png",
                                            interactive=False, scale=1)
                    view_plot = gr.Image(label="The family's own view", format="png",
                                         interactive=False, scale=2)
                losses_plot = gr.Image(label="Losses and energy distance", format="png",
                                       interactive=False)
            with gr.Tab("All four"):
                gr.Markdown("The four families at their default settings, on the same data with the same budget, "
                            "trained in turns so they progress side by side.")
                with gr.Row():
                    all_steps = gr.Slider(100, ALL_FOUR_MAX_STEPS, value=toy.DEFAULT_STEPS, step=100,
                                          label="Steps per family")
                    all_button = gr.Button("Train all four", variant="primary")
                    all_pause = gr.Button("Pause", variant="stop")
                all_status = gr.Markdown("Press **Train all four**: one to two minutes on a small 2-core CPU at "
                                         "3000 steps.")
                all_plot = gr.Image(label="Data (grey) and samples (red), side by side", format="png",
                                    interactive=False)
                all_table = gr.Dataframe(headers=ALL_FOUR_HEADERS, label="All four: energy distance and time",
                                         interactive=False)

    light = dict(concurrency_id="toy", concurrency_limit=TOY_CONCURRENCY)  # gradio takes a shared id's smallest limit
    form = [lab_state, dataset, n, data_seed, family, lr, width, depth, latent, loss, transforms, timesteps, seed]
    outputs = [lab_state, status, samples_plot, view_plot, losses_plot]
    demo.load(open_first_view, None, outputs, api_name="toy_first_view", api_visibility="undocumented")
    train_event = train_button.click(train, [*form, steps], outputs, api_name="toy_train", **light,
                                     show_progress="minimal")
    step_event = step_button.click(step, form, outputs, api_name="toy_step", **light,
                                   show_progress="minimal")
    reset_button.click(reset, form, outputs, api_name="toy_reset", **light)
    all_event = all_button.click(all_four, [lab_state, dataset, n, data_seed, seed, all_steps],
                                 [all_plot, all_table, all_status], api_name="toy_all_four", **light,
                                 show_progress="minimal")
    running = [train_event, step_event, all_event]
    pause_button.click(pause, lab_state, outputs, api_name="toy_pause", cancels=running)
    all_pause.click(stop_all, lab_state, all_status, cancels=running, api_visibility="private")
    family.change(family_form, family, [lr, width, depth, latent, loss, transforms, timesteps, family_note],
                  api_visibility="private").then(reset, form, outputs, api_visibility="private", **light)
    dataset.change(reset, form, outputs, api_visibility="private", **light)  # show the new data at once
    # every click counts, also one made while the previous is still being drawn (gradio's default drops it)
    canvas.select(add_points, [lab_state, brush], [lab_state, canvas, dataset], api_visibility="private",
                  trigger_mode="multiple")
    clear_button.click(clear_points, lab_state, [lab_state, canvas], api_name="toy_clear_points")
