"""VQGAN codebook tab: generate and inpaint in token space with a token prior, and explore the codebook
(atlas, usage statistics, PCA map, image <-> codes, token editing on a painted region, interpolation).

Token priors (genlab.priors.pipeline: MaskGIT's confidence order, Taming Transformers' raster order, aMUSEd) stream a
frame per unmasking step: the token grid as it fills in (masked cells grey, the tokens fixed in this step
outlined), the tokens decoded so far, and the decoded full prediction x̂0. A raster run takes one step
per token (256 on a 16x16 grid), so only every k-th step is streamed (at most MAX_LIVE_FRAMES); the
finished run is kept per visitor as compact token arrays, and the step slider decodes any of its
steps without running the transformer again. Stop cancels a run: gradio closes its generator, so it ends
within one streamed frame (at most ceil(steps / MAX_LIVE_FRAMES) transformer steps).
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageDraw

from ..imaging.io import mask_of, open_image
from ..loading.loaders import ModelSpec
from ..priors.pipeline import MAX_REFINE, MAX_STEPS, TokenFrame, TokenPrior, TokenRun, TokenStep, refinement_steps
from ..autoencoders.vq import VQ, index_colors, index_map_image, perplexity
from .common import (DISPLAY_SIDE, NOT_TRAINED, OUTPUT_HEIGHT, Registry, SafeImage, example_images, mask_editor,
                     mask_from_editor, on_model_thread, upscale, user_errors)
from .plots import pca_figure, usage_figure

MAX_LIVE_FRAMES = 32  # streamed frames per run; longer runs (raster order) stream every k-th step
STATE_TTL_S = 3600  # a visitor's last run is dropped an hour after it finished
MASKED = (128, 128, 128)  # grey, as the decoded frames show masked cells
NEW_TOKEN = (255, 220, 0)  # outline of the tokens fixed in the step shown
ORDER_CHOICES = [("confidence (MaskGIT)", "confidence"), ("raster (Taming Transformers)", "raster"),
                 ("random", "random")]
DEFAULT_STEPS = 12

_reference_usage: dict[str, np.ndarray] = {}
_reference_lock = threading.Lock()


def reference_usage(vq: VQ, label: str) -> np.ndarray:
    """Code usage over the shipped examples, computed once per model."""
    with _reference_lock:
        if label not in _reference_usage:
            _reference_usage[label] = vq.code_usage(example_images(), max_side=256)
        return _reference_usage[label]


def is_kl(spec: ModelSpec) -> bool:
    """Whether an autoencoder entry is an AutoencoderKL (no codebook), known without loading it: by its
    local config, else by diffusers' folder names (a pipeline's vae/ holds its AutoencoderKL, vqvae/ its
    VQModel). A Hub entry stays listed; loading it says so if it is not a VQModel."""
    folder = Path(spec.source) / (spec.subfolder or "")
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text()).get("_class_name") == "AutoencoderKL"
    if (folder / "model_index.json").is_file():
        return (folder / "vae").is_dir()
    return Path(spec.subfolder or "").name == "vae"


def stats_markdown(vq: VQ, usage: np.ndarray, image_usage: np.ndarray | None) -> str:
    rows = [("reference set (examples + image)", usage)] + ([("current image", image_usage)] if image_usage is not None else [])
    lines = ["| over | tokens | active codes | share active | perplexity |", "|---|---|---|---|---|"]
    for name, counts in rows:
        active = int((counts > 0).sum())
        lines.append(f"| {name} | {int(counts.sum())} | {active} of {vq.num_codes} | {active / vq.num_codes:.1%} | "
                     f"{perplexity(counts):.1f} |")
    return "\n".join(lines)


def cell_size(indices: np.ndarray) -> int:
    return max(4, 384 // max(indices.shape))


def highlight(image: Image.Image, indices: np.ndarray, mask: np.ndarray, factor: int) -> Image.Image:
    """Dim the image except the token cells in `mask`, which get a yellow outline."""
    height, width = image.height, image.width
    keep = np.kron(mask, np.ones((factor, factor), bool))[:height, :width]
    array = np.asarray(image).copy()
    array[~keep] = (array[~keep] * 0.35 + 255 * 0.1).astype(np.uint8)
    out = Image.fromarray(array)
    draw = ImageDraw.Draw(out)
    for row, col in zip(*np.nonzero(mask)):
        draw.rectangle((col * factor, row * factor, (col + 1) * factor - 1, (row + 1) * factor - 1), outline=(255, 220, 0))
    return out


# ------------------------------------------------------------------------------ token priors
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


def frame_panels(prior: TokenPrior, frame: TokenFrame) -> tuple:
    """(token grid, tokens decoded so far, decoded full prediction x̂0) for a frame, enlarged."""
    grid = token_grid_image(frame.tokens, frame.new, prior.num_codes, grid_cell(prior.grid))
    return grid, upscale(frame.image), upscale(frame.x0)


def step_line(frame: TokenFrame, total: int) -> str:
    known = int((frame.tokens >= 0).sum())
    return (f"step {frame.index + 1} of {total}: {known} of {frame.tokens.size} tokens known, "
            f"{int(frame.new.sum())} fixed in this step (outlined)")


def whole(value, name: str) -> int:
    """A UI number that must be a whole number (gr.Number hands over floats)."""
    if value is None or isinstance(value, bool) or not float(value).is_integer():
        raise gr.Error(f"{name} must be a whole number, got {value!r}.")
    return int(value)


def prior_settings(order, steps, temperature, top_k, guidance, seed, class_name, prompt, negative_prompt,
                   refine=0) -> dict:
    """UI values -> keyword arguments of TokenPrior.sample_stream / inpaint_stream (which check their ranges)."""
    if temperature is None:
        raise gr.Error("Set a temperature (above 0; 1 samples the model's own distribution).")
    top_k = whole(top_k, "top-k") if top_k is not None else 0
    return dict(order=order, steps=whole(steps, "steps"), temperature=float(temperature), top_k=top_k or None,
                guidance_scale=None if guidance is None else float(guidance), seed=whole(seed, "seed"),
                class_label=class_name or None, prompt=prompt or None, negative_prompt=negative_prompt or None,
                refine=whole(refine, "refine rounds"))


def prior_description(label: str, prior: TokenPrior) -> str:
    (h, w), (height, width), f = prior.grid, prior.image_size, prior.vq.downsample_factor
    kind = ("text-conditioned (prompt)" if prior.text is not None else
            f"{len(prior.classes)} classes" if prior.is_conditional else "unconditional")
    return (f"**{label}**: {kind}; a {h}x{w} grid of {prior.num_codes} codes (f = {f}, {width}x{height} pixels), "
            f"{prior.index_bits_per_pixel:.3f} bits per pixel as raw indices (log2 K / f²). Raster order takes one "
            f"step per token ({h * w}).")


def build_prior_section(registry: Registry, demo: gr.Blocks) -> None:
    """Generate and inpaint with a token prior: streamed frames, then a step slider over the finished run."""
    examples: dict[str, dict] = {}  # prior label -> its packed example run (seed 0, the defaults)
    examples_lock = threading.Lock()

    def run_stream(prior: TokenPrior, label: str, stream, total: int, describe):
        """Yield the live panels of every k-th frame of `stream`, then the last frame with the packed run
        and the step slider; `describe(run, seconds)` words the final status."""
        every = max(1, math.ceil(total / MAX_LIVE_FRAMES))
        started = time.perf_counter()
        for item in stream:
            if isinstance(item, TokenFrame):
                if (item.index + 1) % every == 0 and item.index + 1 < total:
                    yield (*frame_panels(prior, item), step_line(item, total), gr.skip(), gr.skip())
            else:
                run = item
        seconds = time.perf_counter() - started
        packed = pack_run(label, run, describe(run, seconds))
        yield (*frame_panels(prior, run.frames[-1]), packed["summary"], step_slider(len(run.steps)), packed)

    def step_slider(count: int) -> gr.Slider:
        return gr.Slider(minimum=1, maximum=count, value=count, step=1, interactive=True,
                         label=f"step (scrub the finished run: {count} steps)")

    def finished(run: TokenRun, seconds: float) -> str:
        notes = "".join(f" ({note})" for note in run.notes)
        return (f"done: {len(run.steps)} steps, {run.order} order, seed {run.seed}{notes}; "
                f"{seconds / max(1, len(run.steps)) * 1000:.0f} ms per step, streaming included.")

    @on_model_thread
    @user_errors
    def prior_sample(label, order, steps, temperature, top_k, guidance, seed, class_name="", prompt="",
                     negative_prompt="", refine=0):
        prior = registry.prior(label)
        settings = prior_settings(order, steps, temperature, top_k, guidance, seed, class_name, prompt, negative_prompt,
                                  refine)
        stream = prior.sample_stream(**settings)  # checks every setting before the first step
        count = prior.grid[0] * prior.grid[1]
        total = (count if order == "raster" else settings["steps"]) + refinement_steps(settings["refine"])
        yield (token_grid_image(np.full(prior.grid, -1), None, prior.num_codes, grid_cell(prior.grid)), None, None,
               f"all {count} tokens masked; {total} steps to go", gr.skip(), gr.skip())
        yield from run_stream(prior, label, stream, total, finished)

    @on_model_thread
    @user_errors
    def prior_inpaint(label, editor, order, steps, temperature, top_k, guidance, seed, class_name="", prompt="",
                      negative_prompt="", refine=0):
        prior = registry.prior(label)
        image, mask = mask_from_editor(editor, "the region the prior should resample")
        settings = prior_settings(order, steps, temperature, top_k, guidance, seed, class_name, prompt, negative_prompt,
                                  refine)
        stream = prior.inpaint_stream(image, mask, **settings)
        cells = torch.from_numpy(prior.token_mask(image, mask))[None]  # (1, h, w) bool, the tokens to resample
        own = prior.tokens_of(image)  # (1, h, w)
        start = TokenFrame(TokenStep(own.masked_fill(cells, prior.mask_id), own, torch.zeros_like(cells)), prior, -1)
        resampled = int(cells.sum())
        total = (resampled if order == "raster" else settings["steps"]) + refinement_steps(settings["refine"])
        (height, width), f = prior.image_size, prior.vq.downsample_factor
        yield (token_grid_image(start.tokens, None, prior.num_codes, grid_cell(prior.grid)), upscale(start.image), None,
               f"{resampled} of {cells.numel()} tokens masked (each token whose {f}x{f} patch the brush touches); "
               f"the image is centre-cropped and resized to {width}x{height} pixels", gr.skip(), gr.skip())

        def describe(run: TokenRun, seconds: float) -> str:
            return (f"Resampled {resampled} of {cells.numel()} tokens; the other tokens are the image's own. "
                    + finished(run, seconds))

        yield from run_stream(prior, label, stream, total, describe)

    @user_errors
    def prior_scrub(step, run):
        if not run or "tokens" not in run:
            raise gr.Error("Generate or inpaint first; then scrub through the run's steps.")
        prior = registry.prior(run["model"])
        count = len(run["tokens"])
        index = min(max(whole(step, "step"), 1), count) - 1
        frame = unpack_frame(prior, run, index)
        return (*frame_panels(prior, frame), f"{step_line(frame, count)}. {run['summary']}")

    def conditioning_update(label):
        """Class picker for class priors, prompt + negative prompt for text priors, guidance for both."""
        hidden = (gr.Dropdown(choices=[], value=None, visible=False), gr.Textbox(visible=False),
                  gr.Textbox(visible=False), gr.Slider(visible=False))
        try:
            prior = registry.prior(label)
        except Exception as error:
            return (*hidden, f"{label}: {error}" if label else "No token prior is available.")
        about = prior_description(label, prior)
        guidance = gr.Slider(value=prior.default_guidance_scale, visible=True)
        if prior.text is not None:
            return (gr.Dropdown(choices=[], value=None, visible=False), gr.Textbox(visible=True), gr.Textbox(visible=True),
                    guidance, about)
        if not prior.is_conditional:
            return (*hidden, about)
        choices = [("(unconditional)", "")] + [(name, name) for name in prior.classes]
        return (gr.Dropdown(choices=choices, value=prior.classes[0], visible=True), gr.Textbox(visible=False),
                gr.Textbox(visible=False), guidance, about)

    @on_model_thread
    def example(label):
        """The section's first view: a finished run of the default prior (seed 0, the defaults, its first
        class), computed once per model and scrubbable like the visitor's own runs."""
        if not label or registry.status.get(label) == NOT_TRAINED:
            return gr.skip(), gr.skip(), gr.skip(), "No trained token prior yet.", gr.skip(), gr.skip()
        try:
            prior = registry.prior(label)
            with examples_lock:
                if label not in examples:
                    class_label = prior.classes[0] if prior.is_conditional and prior.text is None else None
                    started = time.perf_counter()
                    run = prior.sample(seed=0, steps=DEFAULT_STEPS, class_label=class_label)
                    summary = (f"Example: {class_label or 'unconditional'}, " + finished(run, time.perf_counter() - started)
                               + " Press Generate to watch a run step by step.")
                    examples[label] = pack_run(label, run, summary)
                packed = examples[label]
        except Exception as error:
            return gr.skip(), gr.skip(), gr.skip(), f"No example: {error}", gr.skip(), gr.skip()
        count = len(packed["tokens"])
        return (*frame_panels(prior, unpack_frame(prior, packed, count - 1)), packed["summary"], step_slider(count), packed)

    gr.Markdown(
        "### Generate in token space\nA token prior is a VQGAN's second stage: a transformer over the code grid. "
        "MaskGIT (Chang et al. 2022) starts from a fully masked grid and fixes the most confident tokens each step "
        "(cosine schedule); Taming Transformers (Esser et al. 2021) writes one token at a time in raster order. "
        "Left: the grid as it fills in (grey = still masked, outlined = fixed in this step); middle: the tokens "
        "decoded so far; right: the decoded full prediction of that step. Refine rounds then re-mask the tenth of "
        "the sampled tokens the prior itself finds least likely (each scored with a random quarter of the grid "
        "hidden), and sample them again (the idea of Token-Critic, Lezama et al. 2022): stray specks are what "
        "they replace.")
    run_state = gr.State({}, time_to_live=STATE_TTL_S)
    default = registry.default("prior", "maskgit-emoji")
    with gr.Row():
        prior_model = gr.Dropdown(registry.choices("prior"), value=default, label="Token prior")
        class_name = gr.Dropdown([], label="Class", visible=False, allow_custom_value=True)
        order = gr.Radio(ORDER_CHOICES, value="confidence", label="Order")
        guidance = gr.Slider(0, 10, value=1.0, step=0.5, label="Guidance scale (classifier-free)", visible=False)
    with gr.Row():
        prompt = gr.Textbox("", label="Prompt", visible=False, max_lines=3, placeholder="a fox in the snow")
        negative_prompt = gr.Textbox("", label="Negative prompt", visible=False, max_lines=2)
    with gr.Row():
        steps = gr.Number(DEFAULT_STEPS, label="Steps", info=f"1-{MAX_STEPS}; raster order: one per token")
        temperature = gr.Slider(0, 10, value=1.0, step=0.05, label="Temperature",
                                info="divides the logits; must be above 0")
        top_k = gr.Number(0, label="Top-k", info="keep the k likeliest codes; 0 = all")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
        refine = gr.Slider(0, MAX_REFINE, value=0, step=1, label="Refine rounds",
                           info="each re-masks the least likely tenth of the sampled tokens and resamples them")
    about = gr.Markdown()
    with gr.Tab("Generate"):
        generate_button = gr.Button("Generate", variant="primary")
    with gr.Tab("Inpaint tokens"):
        gr.Markdown("Upload an image and paint over a region: every token whose f x f patch the brush touches is "
                    "masked and resampled by the prior, conditioned on all the others, which stay the image's own. "
                    "The image is centre-cropped and resized to the prior's grid first.")
        with gr.Row():
            editor = mask_editor("Image and mask (brush = resample)", format="png")
            inpaint_button = gr.Button("Inpaint with the prior", variant="primary", scale=0)
    with gr.Row(equal_height=True):
        status = gr.Markdown()
        stop_button = gr.Button("Stop", variant="stop", scale=0)  # stops a generate or inpaint run
    with gr.Row():
        live_grid = gr.Image(label="token grid (grey = masked, outlined = new)", format="png", interactive=False,
                             height=OUTPUT_HEIGHT)
        live_image = gr.Image(label="decoded so far (masked cells grey)", format="png", interactive=False,
                              height=OUTPUT_HEIGHT)
        live_x0 = gr.Image(label="x̂0: the decoded full prediction", format="png", interactive=False,
                           height=OUTPUT_HEIGHT)
    step = gr.Slider(1, 2, value=1, step=1, label="step (scrub the finished run)", interactive=True)

    conditioning = [class_name, prompt, negative_prompt, guidance, about]
    prior_model.change(conditioning_update, prior_model, conditioning, api_visibility="private")
    demo.load(conditioning_update, prior_model, conditioning, api_visibility="private")
    run_outputs = [live_grid, live_image, live_x0, status, step, run_state]
    settings = [order, steps, temperature, top_k, guidance, seed, class_name, prompt, negative_prompt, refine]
    demo.load(example, prior_model, run_outputs, api_name="prior_example", api_visibility="undocumented",
              concurrency_id="heavy")
    generate_event = generate_button.click(prior_sample, [prior_model, *settings], run_outputs,
                                           api_name="prior_sample", concurrency_id="heavy")
    inpaint_event = inpaint_button.click(prior_inpaint, [prior_model, editor, *settings], run_outputs,
                                         api_name="prior_inpaint", concurrency_id="heavy")
    stop_button.click(None, None, None, cancels=[generate_event, inpaint_event], api_visibility="private")
    step.input(prior_scrub, [step, run_state], [live_grid, live_image, live_x0, status], api_name="prior_scrub",
               show_progress="hidden", trigger_mode="always_last")


def build_explorer(registry: Registry) -> None:
    def load(label: str) -> VQ:
        return registry.vq(label)

    def state_of(state: dict | None) -> dict:
        if not state or "indices" not in state:
            raise gr.Error("Analyze an image first (upload one or click an example, then press Analyze).")
        return state

    @on_model_thread
    @user_errors
    def analyze(image_path, label, page, progress=gr.Progress()):
        vq = load(label)
        progress(0.1, desc="encoding the image")
        image_usage = None
        state = {"model": label}
        if image_path is not None:
            image = open_image(image_path)
            result = vq.reconstruct(image, max_side=256)
            image_usage = vq.code_usage([result.indices])
            state.update(indices=result.indices, original=result.indices.copy(), image=result.input,
                         reconstruction=result.image)
        progress(0.4, desc="usage over the reference set")
        usage = reference_usage(vq, label) + (image_usage if image_usage is not None else 0)
        state["usage"] = usage
        pages = vq.atlas_pages()
        page = int(min(max(page, 0), pages - 1))
        progress(0.6, desc="decoding the atlas page")
        atlas = vq.codebook_atlas(usage=usage, page=page)
        grid = index_map_image(state["indices"], vq.num_codes, cell_size(state["indices"])) if "indices" in state else None
        return (atlas, gr.Slider(maximum=max(1, pages - 1), value=page), usage_figure(usage, image_usage),
                stats_markdown(vq, usage, image_usage), pca_figure(vq.pca_2d(), vq.code_colors(), usage),
                grid, state.get("reconstruction"), state)

    @on_model_thread
    @user_errors
    def atlas_page(label, page, state):
        vq = load(label)
        usage = (state or {}).get("usage")
        if usage is None or (state or {}).get("model") != label:
            usage = reference_usage(vq, label)
        return vq.codebook_atlas(usage=usage, page=int(page))

    @user_errors
    def atlas_click(label, page, state, event: gr.SelectData):
        vq = load(label)
        usage = (state or {}).get("usage")
        order = vq.atlas_order(usage)
        patch = vq.code_patches([0]).shape[-1] + 1  # tile side + 1 px gap
        col, row = event.index[0] // patch, event.index[1] // patch
        position = int(page) * 256 + row * 16 + col
        if not 0 <= position < vq.num_codes or col >= 16:
            raise gr.Error("Click on a code tile.")
        return int(order[position])

    @on_model_thread
    @user_errors
    def cell_info(label, row, col, state):
        state = state_of(state)
        vq = load(label)
        indices = state["indices"]
        row, col = int(row), int(col)
        if not (0 <= row < indices.shape[0] and 0 <= col < indices.shape[1]):
            raise gr.Error(f"The cell must be inside the {indices.shape[0]}x{indices.shape[1]} token grid.")
        code = int(indices[row, col])
        mask = indices == code
        text = (f"Cell ({row}, {col}) holds code **{code}**, used at {int(mask.sum())} of {indices.size} positions "
                f"in this image.")
        return code, vq.code_patch(code).resize((96, 96), Image.Resampling.NEAREST), \
            highlight(state["reconstruction"], indices, mask, vq.downsample_factor), text

    @on_model_thread
    @user_errors
    def grid_click(label, state, event: gr.SelectData):
        state = state_of(state)
        cell = cell_size(state["indices"])
        row, col = event.index[1] // cell, event.index[0] // cell
        return (row, col, *cell_info(label, row, col, state))

    @on_model_thread
    @user_errors
    def code_positions(label, code, state):
        state = state_of(state)
        vq = load(label)
        code = int(code)
        vq.check_indices(np.array([[code]]))
        mask = state["indices"] == code
        text = (f"Code **{code}** appears at {int(mask.sum())} positions." if mask.any()
                else f"Code **{code}** is not used in this image.")
        return vq.code_patch(code).resize((96, 96), Image.Resampling.NEAREST), \
            highlight(state["reconstruction"], state["indices"], mask, vq.downsample_factor), text

    def show_edit(vq: VQ, state: dict, edited: np.ndarray):
        before = vq.decode_indices(state["indices"])
        after = vq.decode_indices(edited)
        state = {**state, "indices": edited}
        changed = int((edited != state["original"]).sum())
        grid = index_map_image(edited, vq.num_codes, cell_size(edited))
        return before, after, grid, f"{changed} of {edited.size} tokens differ from the original image.", state

    def painted_cells(vq: VQ, editor, state: dict) -> np.ndarray:
        """(h, w) bool: the tokens whose f x f patch the brush touched on the analysed image."""
        _, mask = mask_from_editor(editor, "the tokens to edit")
        image = state["image"]
        return vq.cells_touched(mask_of(mask, (image.height, image.width))[0, 0].numpy())

    @on_model_thread
    @user_errors
    def edit_replace(label, editor, code, state):
        state, vq = state_of(state), load(label)
        return show_edit(vq, state, vq.replace_cells(state["indices"], painted_cells(vq, editor, state), int(code)))

    @on_model_thread
    @user_errors
    def edit_resample(label, editor, seed, state):
        state, vq = state_of(state), load(label)
        return show_edit(vq, state, vq.resample_cells(state["indices"], painted_cells(vq, editor, state),
                                                      state["usage"], int(seed)))

    @on_model_thread
    @user_errors
    def edit_swap(label, first, second, state):
        state, vq = state_of(state), load(label)
        return show_edit(vq, state, vq.swap_codes(state["indices"], int(first), int(second)))

    @on_model_thread
    @user_errors
    def edit_reset(label, state):
        state, vq = state_of(state), load(label)
        return show_edit(vq, {**state, "indices": state["original"]}, state["original"].copy())

    def region_canvas(state):
        """The analysed image as the region editor's background, nothing painted yet."""
        image = (state or {}).get("image")
        return gr.skip() if image is None else {"background": image, "layers": [], "composite": image}

    @on_model_thread
    @user_errors
    def interpolate(label, first, second, steps):
        vq = load(label)
        images, snapped = vq.interpolate_codes(int(first), int(second), int(steps))
        alphas = np.linspace(0, 1, len(images))
        blends = [(image.resize((96, 96), Image.Resampling.NEAREST), f"a={a:.2f} -> snaps to {code}")
                  for image, a, code in zip(images, alphas, snapped)]
        snapped_tiles = [(vq.code_patch(code).resize((96, 96), Image.Resampling.NEAREST), f"code {code}")
                         for code in snapped]
        return blends, snapped_tiles

    gr.Markdown("### What does each code mean?\nEvery code tiled over a small grid and decoded, sorted by how often "
                "the reference set (examples + your image) uses it; unused codes are crossed out.")
    state = gr.State({}, time_to_live=3600)
    with gr.Row():
        with gr.Column(scale=1):
            image = SafeImage(label="Image", type="filepath", height=224)
            gr.Examples(example_images(), inputs=image)
            vq_choices = [(text, label) for text, label in registry.choices("vq")
                          if not is_kl(registry.config.vq_models[label])]
            model = gr.Dropdown(vq_choices, value=registry.default("vq", "vqgan-photo"), label="Model")
            analyze_button = gr.Button("Analyze", variant="primary")
        with gr.Column(scale=2):
            atlas = gr.Image(label="Codebook atlas (click a tile to pick its code)", format="png", interactive=False,
                             height=480)
            page = gr.Slider(0, 1, value=0, step=1, label="Atlas page (256 codes each)")
    with gr.Row():
        stats = gr.Markdown()
    with gr.Row():
        usage_plot = gr.Image(label="Usage", format="png", interactive=False)
        pca_plot = gr.Image(label="PCA of code vectors (colour = the code's mean colour)", format="png", interactive=False)
    gr.Markdown("#### Image ↔ codes: click a cell of the token grid")
    with gr.Row():
        grid = gr.Image(label="Token grid (click a cell)", format="png", interactive=False, height=OUTPUT_HEIGHT)
        positions = gr.Image(label="Where the code is used", format="png", interactive=False, height=OUTPUT_HEIGHT)
        with gr.Column():
            patch = gr.Image(label="Code patch", format="png", interactive=False, height=110)
            cell_text = gr.Markdown()
            with gr.Row():
                row = gr.Number(0, label="row", precision=0)
                col = gr.Number(0, label="column", precision=0)
                code = gr.Number(0, label="code", precision=0)
            with gr.Row():
                cell_button = gr.Button("Show cell")
                code_button = gr.Button("Show code")
    gr.Markdown("#### Token editing: paint a region on the analysed image; every token whose f x f patch the "
                "brush touches is edited")
    with gr.Row():
        region = mask_editor("Analysed image (brush = region to edit)", brush_size=8, sources=(), transforms=(),
                             format="png")
        with gr.Column():
            with gr.Row():
                edit_code = gr.Number(0, label="replace with code", precision=0)
                replace_button = gr.Button("Replace region")
            with gr.Row():
                seed = gr.Number(0, label="resample seed", precision=0)
                resample_button = gr.Button("Resample region")
            with gr.Row():
                swap_a, swap_b = gr.Number(0, label="swap code", precision=0), gr.Number(1, label="with code", precision=0)
                swap_button = gr.Button("Swap codes")
            reset_button = gr.Button("Reset")
    with gr.Row():
        before = gr.Image(label="before", format="png", interactive=False, height=OUTPUT_HEIGHT)
        after = gr.Image(label="after", format="png", interactive=False, height=OUTPUT_HEIGHT)
    edit_text = gr.Markdown()
    gr.Markdown("#### Interpolate between two codes")
    with gr.Row():
        first, second = gr.Number(0, label="code A", precision=0), gr.Number(1, label="code B", precision=0)
        steps = gr.Slider(2, 16, value=8, step=1, label="steps")
        interpolate_button = gr.Button("Interpolate")
    blends = gr.Gallery(label="decoded blends (1-a) e_A + a e_B", columns=8, height="auto", format="png")
    snapped = gr.Gallery(label="the code each blend snaps to", columns=8, height="auto", format="png")

    analyze_button.click(analyze, [image, model, page],
                         [atlas, page, usage_plot, stats, pca_plot, grid, positions, state],
                         api_name="codebook", concurrency_id="heavy").success(
        region_canvas, state, region, api_visibility="private", show_progress="hidden")
    page.release(atlas_page, [model, page, state], atlas, api_name="atlas", concurrency_id="heavy")
    atlas.select(atlas_click, [model, page, state], code, api_visibility="private").then(
        code_positions, [model, code, state], [patch, positions, cell_text], api_visibility="private",
        concurrency_id="heavy")
    grid.select(grid_click, [model, state], [row, col, code, patch, positions, cell_text], api_visibility="private",
                concurrency_id="heavy")
    cell_button.click(cell_info, [model, row, col, state], [code, patch, positions, cell_text], api_name="cell", concurrency_id="heavy")
    code_button.click(code_positions, [model, code, state], [patch, positions, cell_text], api_name="code_positions", concurrency_id="heavy")
    edit_outputs = [before, after, grid, edit_text, state]
    replace_button.click(edit_replace, [model, region, edit_code, state], edit_outputs,
                         api_name="edit_replace", concurrency_id="heavy")
    resample_button.click(edit_resample, [model, region, seed, state], edit_outputs,
                          api_name="edit_resample", concurrency_id="heavy")
    swap_button.click(edit_swap, [model, swap_a, swap_b, state], edit_outputs, api_name="edit_swap", concurrency_id="heavy")
    reset_button.click(edit_reset, [model, state], edit_outputs, api_name="edit_reset", concurrency_id="heavy")
    interpolate_button.click(interpolate, [model, first, second, steps], [blends, snapped], api_name="interpolate", concurrency_id="heavy")


def build(registry: Registry, demo: gr.Blocks) -> None:
    build_prior_section(registry, demo)
    build_explorer(registry)
