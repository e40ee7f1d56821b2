"""The codebook tab's token-prior section: generate and inpaint in token space, then scrub the finished run.

Token priors (genlab.priors: MaskGIT's confidence order, Taming Transformers' raster order, aMUSEd) stream a
frame per unmasking step: the token grid as it fills in (masked cells grey, the tokens fixed in this step
outlined), the tokens decoded so far, and the decoded full prediction x̂0. A raster run takes one step
per token (256 on a 16x16 grid), so only every k-th step is streamed (at most MAX_LIVE_FRAMES); the
finished run is kept per visitor as compact token arrays, and the step slider decodes any of its
steps without running the transformer again. Stop cancels a run: gradio closes its generator, so it ends
within one streamed frame (at most ceil(steps / MAX_LIVE_FRAMES) transformer steps).

`GenerationSection` holds the registry, the per-model example runs and the section's components; its run
handlers take one `PriorRequest` (the API's parameters) and yield dicts keyed by output component.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ...autoencoders.vq import index_colors
from ...priors.pipeline import TokenFrame, TokenPrior, TokenRun
from ...priors.sampling import TokenStep, refinement_steps
from ...sampling import MAX_REFINE, MAX_TOKEN_STEPS
from ..common import (DISPLAY_SIDE, NOT_TRAINED, OUTPUT_HEIGHT, Conditioning, Registry, mask_editor, mask_from_editor,
                      on_model_thread, positional, upscale, user_errors, whole)

MAX_LIVE_FRAMES = 32  # streamed frames per run; longer runs (raster order) stream every k-th step
STATE_TTL_S = 3600  # a visitor's last run is dropped an hour after it finished
MASKED = (128, 128, 128)  # grey, as the decoded frames show masked cells
NEW_TOKEN = (255, 220, 0)  # outline of the tokens fixed in the step shown
ORDER_CHOICES = [("confidence (MaskGIT)", "confidence"), ("raster (Taming Transformers)", "raster"),
                 ("random", "random")]
DEFAULT_STEPS = 12
SETTINGS = ("order", "steps", "temperature", "top_k", "guidance", "seed", "class_name", "prompt", "negative_prompt",
            "refine")  # the API's parameters after the model (and, for inpainting, the editor)


def token_grid_image(tokens: np.ndarray, new: np.ndarray | None, num_codes: int, cell: int) -> Image.Image:
    """A token grid as a prior fills it: each code in its index colour, cells still masked (-1) grey,
    the tokens fixed in this step outlined."""
    tokens = np.asarray(tokens)
    colors = index_colors(num_codes)[np.clip(tokens, 0, None)]  # (h, w, 3)
    colors[tokens < 0] = MASKED
    pixels = np.kron(colors, np.ones((cell, cell, 1), np.uint8))  # (h * cell, w * cell, 3)
    if new is not None and np.any(new):
        width = max(1, cell // 8)
        border = np.zeros((cell, cell), np.uint8)
        border[:width] = border[-width:] = border[:, :width] = border[:, -width:] = 1
        pixels[np.kron(np.asarray(new, np.uint8), border).astype(bool)] = NEW_TOKEN
    return Image.fromarray(pixels, "RGB")


def grid_cell(grid: tuple[int, int]) -> int:
    return max(4, DISPLAY_SIDE // max(grid))


def pack_run(label: str, run: TokenRun, summary: str) -> dict:
    """A visitor's copy of a finished run: per step the grid (mask id where masked), the prediction and
    the new tokens, as small arrays (a 256-step raster run on a 16x16 grid: 330 kB)."""
    codes = np.int16 if run.prior.mask_id <= np.iinfo(np.int16).max else np.int32

    def stacked(name: str, dtype) -> np.ndarray:
        return np.stack([getattr(step, name)[0].numpy() for step in run.steps]).astype(dtype)  # (S, h, w)

    return {"model": label, "tokens": stacked("tokens", codes), "pred": stacked("pred", codes),
            "new": stacked("new", bool), "summary": summary}


def unpack_frame(prior: TokenPrior, run: dict, index: int) -> TokenFrame:
    """Step `index` of a packed run as a TokenFrame (its images decode on first access)."""
    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(run[name][index].astype(np.int64 if name != "new" else bool))[None]

    return TokenFrame(TokenStep(tensor("tokens"), tensor("pred"), tensor("new")), prior, index)


def step_line(frame: TokenFrame, total: int) -> str:
    known = int((frame.tokens >= 0).sum())
    return (f"step {frame.index + 1} of {total}: {known} of {frame.tokens.size} tokens known, "
            f"{int(frame.new.sum())} fixed in this step (outlined)")


def finished(run: TokenRun, seconds: float) -> str:
    notes = "".join(f" ({note})" for note in run.notes)
    return (f"done: {len(run.steps)} steps, {run.order} order, seed {run.seed}{notes}; "
            f"{seconds / max(1, len(run.steps)) * 1000:.0f} ms per step, streaming included.")


def prior_description(label: str, prior: TokenPrior) -> str:
    (h, w), (height, width), f = prior.grid, prior.image_size, prior.vq.downsample_factor
    kind = ("text-conditioned (prompt)" if prior.text is not None else
            f"{len(prior.classes)} classes" if prior.is_conditional else "unconditional")
    return (f"**{label}**: {kind}; a {h}x{w} grid of {prior.num_codes} codes (f = {f}, {width}x{height} pixels), "
            f"{prior.index_bits_per_pixel:.3f} bits per pixel as raw indices (log2 K / f²). Raster order takes one "
            f"step per token ({h * w}).")


@dataclass
class PriorRequest:
    """A generate or inpaint request, as the API takes it (inpainting adds the editor after the model)."""

    label: str
    order: str
    steps: float
    temperature: float | None
    top_k: float | None
    guidance: float | None
    seed: float
    class_name: str | None = ""
    prompt: str | None = ""
    negative_prompt: str | None = ""
    refine: float = 0
    editor: dict | None = None  # inpainting: the image and the painted region

    def settings(self) -> dict:
        """Keyword arguments of TokenPrior.sample_stream / inpaint_stream (which check their ranges)."""
        if self.temperature is None:
            raise gr.Error("Set a temperature (above 0; 1 samples the model's own distribution).")
        top_k = whole(self.top_k, "top-k") if self.top_k is not None else 0
        return dict(order=self.order, steps=whole(self.steps, "steps"), temperature=float(self.temperature),
                    top_k=top_k or None, guidance_scale=None if self.guidance is None else float(self.guidance),
                    seed=whole(self.seed, "seed"), class_label=self.class_name or None, prompt=self.prompt or None,
                    negative_prompt=self.negative_prompt or None, refine=whole(self.refine, "refine rounds"))


class GenerationSection:
    """Generate and inpaint with a token prior: streamed frames, then a step slider over the finished run."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.examples: dict[str, dict] = {}  # prior label -> its packed example run (seed 0, the defaults)
        self.examples_lock = threading.Lock()

    # -------------------------------------------------------------------------- handlers
    def panels(self, prior: TokenPrior, frame: TokenFrame) -> dict:
        """The token grid, the tokens decoded so far and the decoded full prediction x̂0 of a frame, enlarged."""
        grid = token_grid_image(frame.tokens, frame.new, prior.num_codes, grid_cell(prior.grid))
        return {self.live_grid: grid, self.live_image: upscale(frame.image), self.live_x0: upscale(frame.x0)}

    def finished_run(self, prior: TokenPrior, packed: dict) -> dict:
        """The last frame of a packed run, its summary, the step slider over it and the run itself."""
        count = len(packed["tokens"])
        slider = gr.Slider(minimum=1, maximum=count, value=count, step=1, interactive=True,
                           label=f"step (scrub the finished run: {count} steps)")
        return {**self.panels(prior, unpack_frame(prior, packed, count - 1)), self.status: packed["summary"],
                self.step: slider, self.run_state: packed}

    def run_stream(self, prior: TokenPrior, label: str, stream, total: int, describe):
        """Yield the panels of every k-th frame of `stream`, then the finished run; `describe(run, seconds)`
        words the final status."""
        every = max(1, math.ceil(total / MAX_LIVE_FRAMES))
        started = time.perf_counter()
        for item in stream:
            if isinstance(item, TokenFrame):
                if (item.index + 1) % every == 0 and item.index + 1 < total:
                    yield {**self.panels(prior, item), self.status: step_line(item, total)}
            else:
                run = item
        seconds = time.perf_counter() - started
        yield self.finished_run(prior, pack_run(label, run, describe(run, seconds)))

    @on_model_thread
    @user_errors
    def prior_sample(self, request: PriorRequest):
        prior = self.registry.prior(request.label)
        settings = request.settings()
        stream = prior.sample_stream(**settings)  # checks every setting before the first step
        count = prior.grid[0] * prior.grid[1]
        total = (count if request.order == "raster" else settings["steps"]) + refinement_steps(settings["refine"])
        yield {self.live_grid: token_grid_image(np.full(prior.grid, -1), None, prior.num_codes, grid_cell(prior.grid)),
               self.live_image: None, self.live_x0: None, self.status: f"all {count} tokens masked; {total} steps to go"}
        yield from self.run_stream(prior, request.label, stream, total, finished)

    @on_model_thread
    @user_errors
    def prior_inpaint(self, request: PriorRequest):
        prior = self.registry.prior(request.label)
        image, mask = mask_from_editor(request.editor, "the region the prior should resample")
        settings = request.settings()
        stream = prior.inpaint_stream(image, mask, **settings)
        cells = torch.from_numpy(prior.token_mask(image, mask))[None]  # (1, h, w) bool, the tokens to resample
        own = prior.tokens_of(image)  # (1, h, w)
        start = TokenFrame(TokenStep(own.masked_fill(cells, prior.mask_id), own, torch.zeros_like(cells)), prior, -1)
        resampled = int(cells.sum())
        total = (resampled if request.order == "raster" else settings["steps"]) + refinement_steps(settings["refine"])
        (height, width), f = prior.image_size, prior.vq.downsample_factor
        yield {self.live_grid: token_grid_image(start.tokens, None, prior.num_codes, grid_cell(prior.grid)),
               self.live_image: upscale(start.image), self.live_x0: None,
               self.status: f"{resampled} of {cells.numel()} tokens masked (each token whose {f}x{f} patch the brush "
                            f"touches); the image is centre-cropped and resized to {width}x{height} pixels"}

        def describe(run: TokenRun, seconds: float) -> str:
            return (f"Resampled {resampled} of {cells.numel()} tokens; the other tokens are the image's own. "
                    + finished(run, seconds))

        yield from self.run_stream(prior, request.label, stream, total, describe)

    @user_errors
    def prior_scrub(self, step, run) -> dict:
        if not run or "tokens" not in run:
            raise gr.Error("Generate or inpaint first; then scrub through the run's steps.")
        prior = self.registry.prior(run["model"])
        count = len(run["tokens"])
        index = min(max(whole(step, "step"), 1), count) - 1
        frame = unpack_frame(prior, run, index)
        return {**self.panels(prior, frame), self.status: f"{step_line(frame, count)}. {run['summary']}"}

    def conditioning_update(self, label) -> dict:
        """The conditioning controls for the chosen prior, and what it is."""
        try:
            prior = self.registry.prior(label)
        except Exception as error:
            return {**self.conditioning.update(None),
                    self.about: f"{label}: {error}" if label else "No token prior is available."}
        return {**self.conditioning.update(prior), self.about: prior_description(label, prior)}

    def example_run(self, label: str) -> tuple[TokenPrior, dict]:
        """The prior and its example run (seed 0, the defaults, its first class), computed once per model."""
        prior = self.registry.prior(label)
        with self.examples_lock:
            if label not in self.examples:
                class_label = prior.classes[0] if prior.is_conditional and prior.text is None else None
                started = time.perf_counter()
                run = prior.sample(seed=0, steps=DEFAULT_STEPS, class_label=class_label)
                summary = (f"Example: {class_label or 'unconditional'}, " + finished(run, time.perf_counter() - started)
                           + " Press Generate to watch a run step by step.")
                self.examples[label] = pack_run(label, run, summary)
            return prior, self.examples[label]

    @on_model_thread
    def example(self, label) -> dict:
        """The section's first view: the default prior's example run, scrubbable like the visitor's own runs."""
        if not label or self.registry.status.get(label) == NOT_TRAINED:
            return {self.status: "No trained token prior yet."}
        try:
            prior, packed = self.example_run(label)
        except Exception as error:
            return {self.status: f"No example: {error}"}
        return self.finished_run(prior, packed)

    # -------------------------------------------------------------------------- layout
    def build(self, demo: gr.Blocks) -> None:
        gr.Markdown(
            "### Generate in token space\nA token prior is a VQGAN's second stage: a transformer over the code grid. "
            "MaskGIT (Chang et al. 2022) starts from a fully masked grid and fixes the most confident tokens each step "
            "(cosine schedule); Taming Transformers (Esser et al. 2021) writes one token at a time in raster order. "
            "Left: the grid as it fills in (grey = still masked, outlined = fixed in this step); middle: the tokens "
            "decoded so far; right: the decoded full prediction of that step. Refine rounds then re-mask the tenth of "
            "the sampled tokens the prior itself finds least likely (each scored with a random quarter of the grid "
            "hidden), and sample them again (the idea of Token-Critic, Lezama et al. 2022): stray specks are what "
            "they replace.")
        self.run_state = gr.State({}, time_to_live=STATE_TTL_S)
        self.settings_controls()
        with gr.Tab("Generate"):
            self.generate_button = gr.Button("Generate", variant="primary")
        with gr.Tab("Inpaint tokens"):
            gr.Markdown("Upload an image and paint over a region: every token whose f x f patch the brush touches is "
                        "masked and resampled by the prior, conditioned on all the others, which stay the image's own. "
                        "The image is centre-cropped and resized to the prior's grid first.")
            with gr.Row():
                self.editor = mask_editor("Image and mask (brush = resample)", format="png")
                self.inpaint_button = gr.Button("Inpaint with the prior", variant="primary", scale=0)
        with gr.Row(equal_height=True):
            self.status = gr.Markdown()
            self.stop_button = gr.Button("Stop", variant="stop", scale=0)  # stops a generate or inpaint run
        with gr.Row():
            self.live_grid = gr.Image(label="token grid (grey = masked, outlined = new)", format="png",
                                      interactive=False, height=OUTPUT_HEIGHT)
            self.live_image = gr.Image(label="decoded so far (masked cells grey)", format="png", interactive=False,
                                       height=OUTPUT_HEIGHT)
            self.live_x0 = gr.Image(label="x̂0: the decoded full prediction", format="png", interactive=False,
                                    height=OUTPUT_HEIGHT)
        self.step = gr.Slider(1, 2, value=1, step=1, label="step (scrub the finished run)", interactive=True)
        self.wire(demo)

    def settings_controls(self) -> None:
        with gr.Row():
            self.prior_model = gr.Dropdown(self.registry.choices("prior"),
                                           value=self.registry.default("prior", "maskgit-emoji"), label="Token prior")
            class_name = gr.Dropdown([], label="Class", visible=False, allow_custom_value=True)
            self.order = gr.Radio(ORDER_CHOICES, value="confidence", label="Order")
            guidance = gr.Slider(0, 10, value=1.0, step=0.5, label="Guidance scale (classifier-free)", visible=False)
        with gr.Row():
            prompt = gr.Textbox("", label="Prompt", visible=False, max_lines=3, placeholder="a fox in the snow")
            negative_prompt = gr.Textbox("", label="Negative prompt", visible=False, max_lines=2)
        self.conditioning = Conditioning(class_name, guidance, prompt, negative_prompt)
        with gr.Row():
            self.steps = gr.Number(DEFAULT_STEPS, label="Steps", info=f"1-{MAX_TOKEN_STEPS}; raster order: one per token")
            self.temperature = gr.Slider(0, 10, value=1.0, step=0.05, label="Temperature",
                                         info="divides the logits; must be above 0")
            self.top_k = gr.Number(0, label="Top-k", info="keep the k likeliest codes; 0 = all")
            self.seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            self.refine = gr.Slider(0, MAX_REFINE, value=0, step=1, label="Refine rounds",
                                    info="each re-masks the least likely tenth of the sampled tokens and resamples them")
        self.about = gr.Markdown()

    def wire(self, demo: gr.Blocks) -> None:
        """Every event; the API's parameter order is each event's `inputs` order (PriorRequest's fields)."""
        model, conditioning = self.prior_model, self.conditioning
        conditioning_outputs = [*conditioning.components[:1], *conditioning.components[2:], conditioning.guidance,
                                self.about]  # class, prompt, negative prompt, guidance, about
        model.change(self.conditioning_update, model, conditioning_outputs, api_visibility="private")
        demo.load(self.conditioning_update, model, conditioning_outputs, api_visibility="private")
        run_outputs = [self.live_grid, self.live_image, self.live_x0, self.status, self.step, self.run_state]
        settings = [self.order, self.steps, self.temperature, self.top_k, conditioning.guidance, self.seed,
                    conditioning.class_name, conditioning.prompt, conditioning.negative_prompt, self.refine]
        demo.load(self.example, model, run_outputs, api_name="prior_example", api_visibility="undocumented",
                  concurrency_id="heavy")
        generate_event = self.generate_button.click(
            positional(self.prior_sample, PriorRequest, ("label", *SETTINGS)), [model, *settings], run_outputs,
            api_name="prior_sample", concurrency_id="heavy")
        inpaint_event = self.inpaint_button.click(
            positional(self.prior_inpaint, PriorRequest, ("label", "editor", *SETTINGS)), [model, self.editor, *settings],
            run_outputs, api_name="prior_inpaint", concurrency_id="heavy")
        self.stop_button.click(None, None, None, cancels=[generate_event, inpaint_event], api_visibility="private")
        self.step.input(self.prior_scrub, [self.step, self.run_state], [self.live_grid, self.live_image, self.live_x0,
                        self.status], api_name="prior_scrub", show_progress="hidden", trigger_mode="always_last")


def build(registry: Registry, demo: gr.Blocks) -> GenerationSection:
    section = GenerationSection(registry)
    section.build(demo)
    return section
