"""The diffusion tab's first view: one small example run per model, and what the model is for.

A visitor should see the scrub row (x_t, x̂0, ε̂ and, for latent models, the latent) filled before pressing
anything. `ExampleRuns` samples one example per model (seed 0, 50 DDIM steps, one image, the model's first class
at its default guidance: what the tab's controls start at, batch aside; a text-to-image model the first of
EXAMPLE_PROMPTS, with its word heat maps) the first time the model is shown, and keeps the packed trajectory:
every later page load or model switch reuses it, so the cost is paid once per model per process. The tab stores
it as the session's last run, so the step slider scrubs it at once.

A photo denoiser (`ddpm-photo`) is trained to undo noise on photos; sampled from pure noise it draws texture.
`is_denoiser` decides which models say so: the embedded `ddpm-photo`, or any checkpoint trained with the
`photo-denoiser` preset (its run.json records the training commands), whatever its folder or label.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from ..diffusion import DiffusionModel
from .common import Registry, upscale
from .diffusion_views import example_result, pack_trajectory

EXAMPLE_SEED, EXAMPLE_STEPS, EXAMPLE_SCHEDULER = 0, 50, "ddim"
# one click each under the prompt box; the first is a text-to-image model's example run (sd-emoji's captions)
EXAMPLE_PROMPTS = ("red heart", "blue heart", "grinning face", "thumbs up, dark skin tone", "pizza", "purple apple")
DENOISER_NAME = "ddpm-photo"  # the embedded photo denoiser
DENOISER_PRESET = "--preset photo-denoiser"  # genlab.train's recipe for a photo denoiser


def is_denoiser(registry: Registry, label: str | None) -> bool:
    """Whether a listed diffusion model is a photo denoiser rather than a generator: the embedded ddpm-photo, or
    a checkpoint whose run.json says it was trained with the photo-denoiser preset."""
    spec = registry.config.diffusion_models.get(label) if label else None
    if spec is None:
        return False
    if label == DENOISER_NAME:
        return True
    return trained_as_denoiser(str(Path(spec.source) / (spec.subfolder or "") / "run.json"))


@functools.lru_cache(maxsize=64)
def trained_as_denoiser(run_file: str) -> bool:
    """Whether a run.json's commands used the photo-denoiser preset (read once per file: asked on every Sample)."""
    path = Path(run_file)
    try:
        commands = json.loads(path.read_text()).get("commands", []) if path.is_file() else []
    except (OSError, ValueError, AttributeError):
        return False
    return any(DENOISER_PRESET in str(command) for command in commands)


def denoiser_note(label: str) -> str:
    name = Path(label).name
    return (f"**{name} is a denoiser**: it was trained to undo Gaussian noise on photos (use *Denoise an upload*). "
            "Sampling from pure noise with it gives texture, not a photo.")


def about_line(registry: Registry, label: str | None) -> str:
    """The line under the model picker: the denoiser note, or nothing for a generator."""
    return denoiser_note(label) if is_denoiser(registry, label) else ""


def step_slider(count: int, value: int) -> gr.Slider:
    """The scrub row's step slider over a run of `count` kept steps."""
    return gr.Slider(minimum=0, maximum=max(1, count - 1), value=value, step=1, interactive=True,
                     label=f"step ({count} kept)")


@dataclass(frozen=True)
class Example:
    trajectory: dict  # pack_trajectory's dict: the session's last run, shared read-only between sessions
    samples: Image.Image  # the live panels' picture: the model card's samples, else the example's image; enlarged
    description: str  # the status line
    prompt: str | None = None  # a text-to-image model's example prompt


class ExampleRuns:
    """The example run of each diffusion model, computed once per model (thread-safe) and then shared."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.runs: dict[str, Example] = {}
        self.lock = threading.Lock()

    def get(self, label: str) -> Example:
        """The model's example. Loading or sampling errors propagate."""
        dm = self.registry.diffusion(label)
        with self.lock:
            if label not in self.runs:
                self.runs[label] = self.compute(label, dm)
            return self.runs[label]

    def cached(self, label: str | None) -> Example | None:
        """The model's example when it has been computed, else None (nothing is loaded or sampled)."""
        with self.lock:
            return self.runs.get(label)

    def compute(self, label: str, dm: DiffusionModel) -> Example:
        if dm.is_text_conditional:
            return self.compute_prompted(dm)
        class_label = dm.classes[0] if dm.is_conditional else None
        run = dm.sample(seed=EXAMPLE_SEED, steps=EXAMPLE_STEPS, scheduler=EXAMPLE_SCHEDULER, batch=1,
                        class_label=class_label)
        trajectory = pack_trajectory(run)
        card = example_result(self.registry, label)
        shown = "the model card's samples" if card else "the example's final image"
        middle = len(trajectory["timesteps"]) // 2
        description = (f"Example: {shown} above; below, one example run (seed {EXAMPLE_SEED}, {EXAMPLE_STEPS} "
                       f"{EXAMPLE_SCHEDULER.upper()} steps, {f'class {class_label!r}' if class_label else 'unconditional'}"
                       f") shown at step {middle + 1} of {len(trajectory['timesteps'])}: "
                       "drag the step slider. Press Sample to watch a run step by step.")
        if is_denoiser(self.registry, label):
            description = denoiser_note(label) + " " + description
        return Example(trajectory, card or upscale(run.image), description)

    def compute_prompted(self, dm: DiffusionModel) -> Example:
        """A text-to-image model's example: the first example prompt with its word heat maps, its own image shown
        (not the card's grid of other prompts)."""
        prompt = EXAMPLE_PROMPTS[0]
        run = dm.sample(seed=EXAMPLE_SEED, steps=EXAMPLE_STEPS, scheduler=EXAMPLE_SCHEDULER, batch=1, prompt=prompt,
                        attention_maps=True)
        trajectory = pack_trajectory(run)
        count = len(trajectory["timesteps"])
        description = (f"Example: the prompt {prompt!r} (seed {EXAMPLE_SEED}, {EXAMPLE_STEPS} "
                       f"{EXAMPLE_SCHEDULER.upper()} steps, guidance {dm.default_guidance_scale:g}) and where each word acted over the run; below, "
                       f"step {count // 2 + 1} of {count} with that step's word maps: drag the step slider. Type a "
                       "prompt or click an example prompt to sample your own.")
        return Example(trajectory, upscale(run.image), description, prompt)
