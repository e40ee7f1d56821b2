"""Foundations (2D) tab: a VAE, a GAN, a normalizing flow and a diffusion model trained live on 2D points.

Data, controls, the training loop and the plots are one piece of code for all four families (the
ops are genlab.toy, the plots genlab.toy.views); each family adds only its own view. Training is light work: its
events share the "toy" concurrency slot (TOY_CONCURRENCY), never the image models' "heavy" one, and
one request trains at most MAX_STEPS_PER_REQUEST steps per model. A visitor's model, data and curves
live in a gr.State (a `Lab`) with a time to live; the controls' limits bound its size (LAB_MAX_BYTES).

`FoundationsTab` holds the tab's components; the form's handlers take one `ToyForm` (the API's parameters in
order) and return or yield dicts keyed by output component.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import gradio as gr
import numpy as np

from .. import toy
from ..toy.views import (ALL_FOUR_HEADERS, CANVAS_DPI, CANVAS_HALF, CANVAS_INCHES, FAMILY_NAMES,
                         VIEW_SAMPLES, Lab, all_four_figure, canvas_image, canvas_point, ratio, render)
from .common import Registry, positional, single_threaded_worker, user_errors

TOY_CONCURRENCY = 2  # toy requests served at once, beside (not instead of) the image models' slot
MAX_STEPS_PER_REQUEST = 5000  # per Train press; All four trains each family at most ALL_FOUR_MAX_STEPS
ALL_FOUR_MAX_STEPS = 3000
STEP_BUTTON_STEPS = 100
CHUNK_STEPS = 25  # steps between checks for Pause / Reset
RENDER_INTERVAL_S = 1.0  # at most one plot update a second: three PNGs of ~40 kB, which a browser keeps up with
STATE_TTL_S = 1800  # a visitor's lab is dropped half an hour after their last request
MAX_CLICKED = 5000  # points a visitor may click onto the canvas
MAX_N = 5000  # points per built-in dataset
UI_LIMITS = {"width": (8, 256), "depth": (1, 4), "latent": (1, 8), "transforms": (1, 6), "timesteps": (10, 1000)}
LAB_MAX_BYTES = 32 * 2**20  # what one visitor's Lab can hold at the controls' limits (tested)
# the first view, trained when the app is built
INITIAL = dict(dataset="moons", n=2000, data_seed=0, family="vae", seed=0, steps=500)
MINE = "mine"
BRUSH_SPREAD = 0.12  # std of the points one click adds around the click

COMMON_SETTINGS = ("lr", "width", "depth")
FORM_SETTINGS = {  # the settings the form offers for each family; the rest keep genlab.toy's defaults
    "vae": (*COMMON_SETTINGS, "latent"), "gan": (*COMMON_SETTINGS, "latent", "loss"),
    "flow": (*COMMON_SETTINGS, "transforms"), "diffusion": (*COMMON_SETTINGS, "timesteps"),
}
DATASET_CHOICES = [(name, name) for name in toy.DATASETS] + [("my points (click the canvas)", MINE)]
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
FORM = ("dataset", "n", "data_seed", "family", "lr", "width", "depth", "latent", "loss", "transforms", "timesteps",
        "seed")  # the form's fields in the API's order, after the lab


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


# ------------------------------------------------------------------------------ the first view
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


# ------------------------------------------------------------------------------ requests (the API's parameters)
@dataclass
class ToyForm:
    """The form of one family's Train, Step and Reset (`steps`: Train's only)."""

    lab: Lab
    dataset: str
    n: float
    data_seed: float
    family: str
    lr: float | None
    width: int
    depth: int
    latent: int
    loss: str
    transforms: int
    timesteps: int
    seed: float | None
    steps: float | None = None

    def settings(self) -> dict:
        return settings_for(self.family, self.lr, self.width, self.depth, self.latent, self.loss, self.transforms,
                            self.timesteps)

    def prepare(self) -> bool:
        """Point the lab at this form (on a toy worker): a fresh model when anything changed (True)."""
        return on_toy_thread(prepare, self.lab, self.dataset, self.n, self.data_seed, self.family, self.settings(),
                             self.seed)


@dataclass
class AllFourRequest:
    lab: Lab
    dataset: str
    n: float
    data_seed: float
    seed: float | None
    steps: float | None


@dataclass
class AllFourRace:
    """The four families at their defaults on the same data, reported side by side."""

    models: dict
    data: np.ndarray
    reference: np.ndarray
    label: str
    baseline: float
    bounds: tuple
    started: float

    def report(self, headline: str) -> tuple:
        """(the four samples plots, the table's rows, the status)."""
        samples, distances, rows = {}, {}, []
        for family, model in self.models.items():
            begin = time.perf_counter()
            samples[family] = model.sample(VIEW_SAMPLES, seed=0)
            sampling_ms = (time.perf_counter() - begin) * 1000
            distances[family] = toy.energy_distance(samples[family], self.reference)
            rows.append([FAMILY_NAMES[family], model.step, round(distances[family], 4),
                         ratio(distances[family], self.baseline), round(model.seconds, 1),
                         round(model.step / model.seconds) if model.seconds else 0, round(sampling_ms)])
        status = (f"{headline}  \nSame data: {self.label}; same budget, default settings. One fitted Gaussian scores "
                  f"{self.baseline:.4f}; wall time {time.monotonic() - self.started:.1f} s.")
        return all_four_figure(self.data, self.models, samples, distances, self.bounds), rows, status


# ------------------------------------------------------------------------------ the tab
class FoundationsTab:
    """The tab's components and handlers; the models are the visitors' own (in their Lab), none from the registry."""

    def __init__(self):
        # The first view trains on a toy worker while the server starts; each page load waits for it, then shows
        # a copy (the other tabs' examples also run on load), so the page is served without that wait.
        self.opening = _workers.submit(first_view)

    # -------------------------------------------------------------------------- handlers
    def shown(self, lab: Lab, rendered: tuple) -> dict:
        """A lab and its `render`ed status and plots, as the form's outputs."""
        status, samples, view, losses = rendered
        return {self.lab_state: lab, self.status: status, self.samples_plot: samples, self.view_plot: view,
                self.losses_plot: losses}

    def open_first_view(self) -> dict:
        try:
            lab, rendered = self.opening.result()
        except Exception as error:  # the page still serves: an empty lab, and why
            return {self.lab_state: Lab(), self.status: f"The first view could not be trained ({error}); press Train.",
                    self.samples_plot: None, self.view_plot: None, self.losses_plot: None}
        return self.shown(copy.deepcopy(lab), rendered)  # the visitor's own lab: training leaves the first view as it was

    def training(self, form: ToyForm, steps, limit: int):
        if steps is None or not 1 <= steps <= limit:
            raise ValueError(f"Steps per request must be between 1 and {limit}; got {steps}.")
        lab = form.lab
        form.settings()  # checked before the lab is locked
        with locked(lab):
            fresh = form.prepare()
            lab.run += 1
            run, target = lab.run, lab.model.step + int(steps)
            stream = toy.train(lab.model, lab.data, int(steps), every=CHUNK_STEPS)
        note = "New data or settings: a fresh model. " if fresh else ""
        yield {self.lab_state: lab, self.status: f"{note}Training {FAMILY_NAMES[form.family]} to step {target}…"}
        shown = time.monotonic()
        while True:
            with locked(lab):
                if lab.run != run:  # Pause, Reset or another Train took over
                    return
                state = on_toy_thread(next, stream, None)
                if state is None:
                    rendered = on_toy_thread(render, lab, f"Done: {int(steps)} steps this request.")
                elif time.monotonic() - shown >= RENDER_INTERVAL_S:
                    rendered = on_toy_thread(render, lab, f"Training… step {state.step} of {target}")
                else:
                    continue
            yield self.shown(lab, rendered)
            if state is None:
                return
            shown = time.monotonic()

    @user_errors
    def train(self, form: ToyForm):
        yield from self.training(form, form.steps, MAX_STEPS_PER_REQUEST)

    @user_errors
    def step(self, form: ToyForm):
        yield from self.training(form, STEP_BUTTON_STEPS, STEP_BUTTON_STEPS)

    @user_errors
    def reset(self, form: ToyForm) -> dict:
        lab = form.lab
        form.settings()  # checked before the running request is stopped
        lab.run += 1
        with locked(lab):
            lab.key = ()
            form.prepare()
            return self.shown(lab, on_toy_thread(render, lab, "A fresh, untrained model: press Train."))

    @user_errors
    def pause(self, lab: Lab) -> dict:
        lab.run += 1
        with locked(lab):
            if lab.model is None:
                raise gr.Error("Nothing to pause yet: press Train.")
            return self.shown(lab, on_toy_thread(render, lab, f"Paused at step {lab.model.step}; Train resumes from here."))

    def stop_all(self, lab: Lab) -> dict:
        lab.run += 1
        return {self.all_status: "Stopped. All four always starts from scratch: press **Train all four** again."}

    @user_errors
    def all_four(self, request: AllFourRequest):
        steps, seed, lab = request.steps, request.seed, request.lab
        if steps is None or not 1 <= steps <= ALL_FOUR_MAX_STEPS:
            raise ValueError(f"Steps per family must be between 1 and {ALL_FOUR_MAX_STEPS}; got {steps}.")
        if seed is None or seed < 0:
            raise ValueError("The seed must be a whole number ≥ 0.")
        with locked(lab):
            _, label, data, reference = load_data(lab, request.dataset, request.n, request.data_seed)
            lab.run += 1
            run = lab.run
        baseline = on_toy_thread(lambda: toy.energy_distance(toy.gaussian_fit(data, n=min(len(data), 2000), seed=1),
                                                             reference))
        models = on_toy_thread(lambda: {family: toy.make(family, seed=int(seed)) for family in toy.FAMILIES})
        race = AllFourRace(models, data, reference, label, baseline, toy.view_bounds(np.concatenate([data, reference])),
                           time.monotonic())
        yield {self.all_status: f"Training all four families for {int(steps)} steps each, in turns…"}
        stream = toy.train_all(models, data, int(steps), every=CHUNK_STEPS * 4)
        shown = 0.0
        while on_toy_thread(next, stream, None) is not None:
            if lab.run != run:
                return
            if time.monotonic() - shown >= 2 * RENDER_INTERVAL_S:  # four models to sample: update half as often
                done = sum(model.step for model in models.values())
                yield self.race_outputs(on_toy_thread(race.report, f"Training… {done} of {4 * int(steps)} steps"))
                shown = time.monotonic()
        yield self.race_outputs(on_toy_thread(race.report, f"Done: {int(steps)} steps each."))

    def race_outputs(self, report: tuple) -> dict:
        plot, rows, status = report
        return {self.all_plot: plot, self.all_table: rows, self.all_status: status}

    @user_errors
    def add_points(self, lab: Lab, brush, event: gr.SelectData) -> dict:
        center = canvas_point(event.index, (round(CANVAS_INCHES * CANVAS_DPI),) * 2)
        rng = np.random.default_rng(len(lab.clicked))  # the same clicks give the same points
        new = np.clip(center + rng.normal(0, BRUSH_SPREAD, (int(brush), 2)), -CANVAS_HALF, CANVAS_HALF)
        if len(lab.clicked) + len(new) > MAX_CLICKED:
            raise gr.Error(f"The canvas holds at most {MAX_CLICKED} points; press Clear to start again.")
        lab.clicked = np.concatenate([lab.clicked, new.astype(np.float32)])
        return {self.lab_state: lab, self.canvas: canvas_image(lab.clicked), self.dataset: MINE}

    @user_errors
    def clear_points(self, lab: Lab) -> dict:
        lab.clicked = np.zeros((0, 2), np.float32)
        return {self.lab_state: lab, self.canvas: canvas_image(lab.clicked)}

    def family_form(self, family: str) -> dict:
        """The form for a family: its defaults, and only its own settings shown."""
        defaults = toy.FAMILIES[family].Config()

        def own(name: str, component: type[gr.components.Component]):
            if name in FORM_SETTINGS[family]:
                return component(value=getattr(defaults, name), visible=True)
            return component(visible=False)

        return {self.lr: gr.Number(value=defaults.lr), self.width: gr.Slider(value=defaults.width),
                self.depth: gr.Slider(value=defaults.depth), self.latent: own("latent", gr.Slider),
                self.loss: own("loss", gr.Radio), self.transforms: own("transforms", gr.Slider),
                self.timesteps: own("timesteps", gr.Slider), self.family_note: f"*{FAMILY_NOTES[family]}*"}

    # -------------------------------------------------------------------------- layout
    def build(self, demo: gr.Blocks) -> None:
        gr.Markdown(
            "### The four ideas behind image generation, on 2D points\nA VAE (Kingma & Welling 2013), a GAN "
            "(Goodfellow et al. 2014), a normalizing flow (Dinh et al. 2016; here a neural spline flow) and diffusion "
            "(Ho et al. 2020), each a few small MLPs trained live on the CPU. Every view reports the **energy distance** "
            "of the samples to fresh data (0 when the distributions match), beside that of one Gaussian fitted to the "
            "data.")
        self.lab_state = gr.State(Lab(), time_to_live=STATE_TTL_S)  # the first view's copy replaces it on page load
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                self.data_controls()
            with gr.Column(scale=3):
                with gr.Tab("One family"):
                    self.family_controls()
                    self.family_panels()
                with gr.Tab("All four"):
                    self.all_four_panels()
        self.wire(demo)

    def data_controls(self) -> None:
        self.dataset = gr.Dropdown(DATASET_CHOICES, value=INITIAL["dataset"], label="Dataset")
        self.n = gr.Slider(100, MAX_N, value=INITIAL["n"], step=100, label="Points")
        self.data_seed = gr.Number(INITIAL["data_seed"], label="Data seed", precision=0, minimum=0)
        self.canvas = gr.Image(canvas_image(Lab().clicked), label="Canvas: click to add points", format="png",
                               interactive=False)
        with gr.Row():
            self.brush = gr.Slider(1, 50, value=20, step=1, label="Points per click")
            self.clear_button = gr.Button("Clear my points", size="sm")

    def family_controls(self) -> None:
        defaults = toy.FAMILIES[INITIAL["family"]].Config()
        with gr.Row():
            self.family = gr.Radio([(name, key) for key, name in FAMILY_NAMES.items()], value=INITIAL["family"],
                                   label="Family")
            self.seed = gr.Number(INITIAL["seed"], label="Seed", precision=0, minimum=0)
            self.steps = gr.Slider(100, MAX_STEPS_PER_REQUEST, value=toy.DEFAULT_STEPS, step=100,
                                   label="Steps per Train press")
        with gr.Row():
            self.lr = gr.Number(defaults.lr, label="Learning rate")
            self.width = gr.Slider(*UI_LIMITS["width"], value=defaults.width, step=8, label="Width (hidden units)")
            self.depth = gr.Slider(*UI_LIMITS["depth"], value=defaults.depth, step=1, label="Depth (hidden layers)")
            self.latent = gr.Slider(*UI_LIMITS["latent"], value=defaults.latent, step=1, label="Latent size")
            self.loss = gr.Radio([("non-saturating", "nonsaturating"), ("hinge", "hinge")], value="nonsaturating",
                                 label="GAN loss", visible=False)
            self.transforms = gr.Slider(*UI_LIMITS["transforms"], value=3, step=1, label="Spline layers", visible=False)
            self.timesteps = gr.Slider(*UI_LIMITS["timesteps"], value=100, step=10, label="Diffusion steps T",
                                       visible=False)
        self.family_note = gr.Markdown(f"*{FAMILY_NOTES[INITIAL['family']]}*")

    def family_panels(self) -> None:
        with gr.Row():
            self.train_button = gr.Button("Train", variant="primary")
            self.pause_button = gr.Button("Pause", variant="stop")
            self.step_button = gr.Button(f"Step (+{STEP_BUTTON_STEPS})")
            self.reset_button = gr.Button("Reset")
        self.status = gr.Markdown(f"Training the first view: {FAMILY_NAMES[INITIAL['family']]} on "
                                  f"{INITIAL['dataset']}, {INITIAL['steps']} steps…")
        with gr.Row():  # 1 : 2, the shapes of the square samples plot and the two-panel views
            self.samples_plot = gr.Image(label="Data and samples", format="png", interactive=False, scale=1)
            self.view_plot = gr.Image(label="The family's own view", format="png", interactive=False, scale=2)
        self.losses_plot = gr.Image(label="Losses and energy distance", format="png", interactive=False)

    def all_four_panels(self) -> None:
        gr.Markdown("The four families at their default settings, on the same data with the same budget, "
                    "trained in turns so they progress side by side.")
        with gr.Row():
            self.all_steps = gr.Slider(100, ALL_FOUR_MAX_STEPS, value=toy.DEFAULT_STEPS, step=100,
                                       label="Steps per family")
            self.all_button = gr.Button("Train all four", variant="primary")
            self.all_pause = gr.Button("Pause", variant="stop")
        self.all_status = gr.Markdown("Press **Train all four**: the four families train one after another, and the "
                                      "table times each.")
        self.all_plot = gr.Image(label="Data (grey) and samples (red), side by side", format="png", interactive=False)
        self.all_table = gr.Dataframe(headers=ALL_FOUR_HEADERS, label="All four: energy distance and time",
                                      interactive=False)

    def wire(self, demo: gr.Blocks) -> None:
        """Every event; the API's parameter order is each event's `inputs` order (the request's fields)."""
        light = dict(concurrency_id="toy", concurrency_limit=TOY_CONCURRENCY)  # gradio takes a shared id's smallest limit
        lab = self.lab_state
        form = [lab, self.dataset, self.n, self.data_seed, self.family, self.lr, self.width, self.depth, self.latent,
                self.loss, self.transforms, self.timesteps, self.seed]
        outputs = [lab, self.status, self.samples_plot, self.view_plot, self.losses_plot]
        reset = positional(self.reset, ToyForm, ("lab", *FORM))
        demo.load(self.open_first_view, None, outputs, api_name="toy_first_view", api_visibility="undocumented")
        train_event = self.train_button.click(positional(self.train, ToyForm), [*form, self.steps], outputs,
                                              api_name="toy_train", **light, show_progress="minimal")
        step_event = self.step_button.click(positional(self.step, ToyForm, ("lab", *FORM)), form, outputs,
                                            api_name="toy_step", **light, show_progress="minimal")
        self.reset_button.click(reset, form, outputs, api_name="toy_reset", **light)
        all_event = self.all_button.click(positional(self.all_four, AllFourRequest),
                                          [lab, self.dataset, self.n, self.data_seed, self.seed, self.all_steps],
                                          [self.all_plot, self.all_table, self.all_status], api_name="toy_all_four",
                                          **light, show_progress="minimal")
        running = [train_event, step_event, all_event]
        self.pause_button.click(self.pause, lab, outputs, api_name="toy_pause", cancels=running)
        self.all_pause.click(self.stop_all, lab, self.all_status, cancels=running, api_visibility="private")
        self.family.change(self.family_form, self.family,
                           [self.lr, self.width, self.depth, self.latent, self.loss, self.transforms, self.timesteps,
                            self.family_note], api_visibility="private").then(reset, form, outputs,
                                                                              api_visibility="private", **light)
        self.dataset.change(reset, form, outputs, api_visibility="private", **light)  # show the new data at once
        # every click counts, also one made while the previous is still being drawn (gradio's default drops it)
        self.canvas.select(self.add_points, [lab, self.brush], [lab, self.canvas, self.dataset],
                           api_visibility="private", trigger_mode="multiple")
        self.clear_button.click(self.clear_points, lab, [lab, self.canvas], api_name="toy_clear_points")


def build(registry: Registry | None, demo: gr.Blocks) -> FoundationsTab:
    del registry  # the toys train their own models; none is loaded
    tab = FoundationsTab()
    tab.build(demo)
    return tab
