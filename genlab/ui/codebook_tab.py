"""VQGAN codebook explorer tab: atlas, usage statistics, PCA map, image <-> codes, token editing, interpolation."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from ..images import open_image
from ..models import ModelSpec
from ..vq import VQ, index_map_image, perplexity
from .common import OUTPUT_HEIGHT, Registry, SafeImage, example_images, user_errors
from .plots import pca_figure, usage_figure

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


def build(registry: Registry) -> None:
    def load(label: str) -> VQ:
        return registry.vq(label)

    def state_of(state: dict | None) -> dict:
        if not state or "indices" not in state:
            raise gr.Error("Analyze an image first (upload one or click an example, then press Analyze).")
        return state

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

    @user_errors
    def grid_click(label, state, event: gr.SelectData):
        state = state_of(state)
        cell = cell_size(state["indices"])
        row, col = event.index[1] // cell, event.index[0] // cell
        return (row, col, *cell_info(label, row, col, state))

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

    @user_errors
    def edit_replace(label, row0, row1, col0, col1, code, state):
        state, vq = state_of(state), load(label)
        return show_edit(vq, state, vq.replace_region(state["indices"], (row0, row1), (col0, col1), int(code)))

    @user_errors
    def edit_resample(label, row0, row1, col0, col1, seed, state):
        state, vq = state_of(state), load(label)
        return show_edit(vq, state, vq.resample_region(state["indices"], (row0, row1), (col0, col1),
                                                       state["usage"], int(seed)))

    @user_errors
    def edit_swap(label, first, second, state):
        state, vq = state_of(state), load(label)
        return show_edit(vq, state, vq.swap_codes(state["indices"], int(first), int(second)))

    @user_errors
    def edit_reset(label, state):
        state, vq = state_of(state), load(label)
        return show_edit(vq, {**state, "indices": state["original"]}, state["original"].copy())

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
    gr.Markdown("#### Token editing: rows/columns are inclusive token coordinates")
    with gr.Row():
        row0, row1 = gr.Number(0, label="from row", precision=0), gr.Number(7, label="to row", precision=0)
        col0, col1 = gr.Number(0, label="from column", precision=0), gr.Number(7, label="to column", precision=0)
        edit_code = gr.Number(0, label="replace with code", precision=0)
        seed = gr.Number(0, label="resample seed", precision=0)
    with gr.Row():
        swap_a, swap_b = gr.Number(0, label="swap code", precision=0), gr.Number(1, label="with code", precision=0)
        replace_button = gr.Button("Replace region")
        resample_button = gr.Button("Resample region")
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
                         api_name="codebook", concurrency_id="heavy")
    page.release(atlas_page, [model, page, state], atlas, api_name="atlas", concurrency_id="heavy")
    atlas.select(atlas_click, [model, page, state], code, api_visibility="private").then(
        code_positions, [model, code, state], [patch, positions, cell_text], api_visibility="private",
        concurrency_id="heavy")
    grid.select(grid_click, [model, state], [row, col, code, patch, positions, cell_text], api_visibility="private",
                concurrency_id="heavy")
    cell_button.click(cell_info, [model, row, col, state], [code, patch, positions, cell_text], api_name="cell", concurrency_id="heavy")
    code_button.click(code_positions, [model, code, state], [patch, positions, cell_text], api_name="code_positions", concurrency_id="heavy")
    edit_outputs = [before, after, grid, edit_text, state]
    replace_button.click(edit_replace, [model, row0, row1, col0, col1, edit_code, state], edit_outputs,
                         api_name="edit_replace", concurrency_id="heavy")
    resample_button.click(edit_resample, [model, row0, row1, col0, col1, seed, state], edit_outputs,
                          api_name="edit_resample", concurrency_id="heavy")
    swap_button.click(edit_swap, [model, swap_a, swap_b, state], edit_outputs, api_name="edit_swap", concurrency_id="heavy")
    reset_button.click(edit_reset, [model, state], edit_outputs, api_name="edit_reset", concurrency_id="heavy")
    interpolate_button.click(interpolate, [model, first, second, steps], [blends, snapped], api_name="interpolate", concurrency_id="heavy")
