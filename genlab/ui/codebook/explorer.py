"""The codebook tab's explorer: the codebook atlas, usage statistics, the PCA map of code vectors, image <-> codes,
token editing on a painted region, and interpolation between two codes.

`ExplorerSection` holds the registry and the section's components; each handler takes the event's few inputs
and returns a dict keyed by output component. A visitor's analysed image (its token grid, the original
tokens, the reconstruction and the code usage) lives in a gr.State.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from ...autoencoders.vq import VQ, index_map_image, perplexity
from ...imaging.io import mask_of, open_image
from ...loading.loaders import ModelSpec
from ...loading.registry import EXAMPLE_PHOTO, example_images
from ..common import Registry, image_panel, mask_editor, mask_from_editor, on_model_thread, user_errors
from ..compat import SafeImage
from ..plots import pca_figure, usage_figure

STATE_TTL_S = 3600  # a visitor's analysed image is dropped an hour after their last request
PATCH_SIDE = 96  # a code's patch as shown beside the grid

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


def state_of(state: dict | None) -> dict:
    if not state or "indices" not in state:
        raise gr.Error("Analyze an image first (upload one or click an example, then press Analyze).")
    return state


def patch_of(vq: VQ, code: int) -> Image.Image:
    return vq.code_patch(code).resize((PATCH_SIDE, PATCH_SIDE), Image.Resampling.NEAREST)


class ExplorerSection:
    """What each code means, where an image uses it, and what editing the tokens does."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.examples: dict[tuple, dict] = {}  # (image, model, page) -> the example's analysis, computed once
        self.examples_lock = threading.Lock()

    # -------------------------------------------------------------------------- handlers
    @on_model_thread
    @user_errors
    def analyze(self, image_path, label, page, progress=gr.Progress()) -> dict:
        vq = self.registry.vq(label)
        progress(0.1, desc="encoding the image")
        image_usage = None
        state = {"model": label}
        if image_path is not None:
            result = vq.reconstruct(open_image(image_path), max_side=256)
            image_usage = vq.code_usage([result.indices])
            state.update(indices=result.indices, original=result.indices.copy(), image=result.input,
                         reconstruction=result.image)
        progress(0.4, desc="usage over the reference set")
        usage = reference_usage(vq, label) + (image_usage if image_usage is not None else 0)
        state["usage"] = usage
        pages = vq.atlas_pages()
        page = int(min(max(page, 0), pages - 1))
        progress(0.6, desc="decoding the atlas page")
        grid = index_map_image(state["indices"], vq.num_codes, cell_size(state["indices"])) if "indices" in state else None
        return {self.atlas: vq.codebook_atlas(usage=usage, page=page),
                self.page: gr.Slider(maximum=max(1, pages - 1), value=page),
                self.usage_plot: usage_figure(usage, image_usage), self.stats: stats_markdown(vq, usage, image_usage),
                self.pca_plot: pca_figure(vq.pca_2d(), vq.code_colors(), usage), self.grid: grid,
                self.positions: state.get("reconstruction"), self.state: state}

    @on_model_thread
    def example(self, image_path, label, page) -> dict:
        """The section's first view: the example image analysed with the default model, as a click on Analyze gives
        it (cached per model), so the grid, the cell buttons and the edits work at once. Without a model (or if it
        fails) the panels stay empty and the statistics line says why, with no error toast."""
        if not image_path or not label:
            return {self.stats: "No trained VQ model yet: analyze an image once one is."}
        key = (str(image_path), label, int(page))
        try:
            with self.examples_lock:
                if key not in self.examples:
                    self.examples[key] = self.analyze(image_path, label, page)
                outputs = self.examples[key]
        except Exception as error:
            return {self.stats: f"No example: {error}"}
        return {**outputs, self.state: dict(outputs[self.state]),
                self.cell_text: f"Example: {Path(image_path).name}. Click a cell of the token grid, or analyze your own "
                                "image."}

    @on_model_thread
    @user_errors
    def atlas_page(self, label, page, state) -> dict:
        vq = self.registry.vq(label)
        usage = (state or {}).get("usage")
        if usage is None or (state or {}).get("model") != label:
            usage = reference_usage(vq, label)
        return {self.atlas: vq.codebook_atlas(usage=usage, page=int(page))}

    @user_errors
    def atlas_click(self, label, page, state, event: gr.SelectData) -> dict:
        vq = self.registry.vq(label)
        order = vq.atlas_order((state or {}).get("usage"))
        patch = vq.code_patches([0]).shape[-1] + 1  # tile side + 1 px gap
        col, row = event.index[0] // patch, event.index[1] // patch
        position = int(page) * 256 + row * 16 + col
        if not 0 <= position < vq.num_codes or col >= 16:
            raise gr.Error("Click on a code tile.")
        return {self.code: int(order[position])}

    @on_model_thread
    @user_errors
    def cell_info(self, label, row, col, state) -> dict:
        state = state_of(state)
        vq = self.registry.vq(label)
        indices = state["indices"]
        row, col = int(row), int(col)
        if not (0 <= row < indices.shape[0] and 0 <= col < indices.shape[1]):
            raise gr.Error(f"The cell must be inside the {indices.shape[0]}x{indices.shape[1]} token grid.")
        code = int(indices[row, col])
        mask = indices == code
        text = (f"Cell ({row}, {col}) holds code **{code}**, used at {int(mask.sum())} of {indices.size} positions "
                f"in this image.")
        return {self.code: code, self.patch: patch_of(vq, code),
                self.positions: highlight(state["reconstruction"], indices, mask, vq.downsample_factor),
                self.cell_text: text}

    @on_model_thread
    @user_errors
    def grid_click(self, label, state, event: gr.SelectData) -> dict:
        cell = cell_size(state_of(state)["indices"])
        row, col = event.index[1] // cell, event.index[0] // cell
        return {self.row: row, self.col: col, **self.cell_info(label, row, col, state)}

    @on_model_thread
    @user_errors
    def code_positions(self, label, code, state) -> dict:
        state = state_of(state)
        vq = self.registry.vq(label)
        code = int(code)
        vq.check_indices(np.array([[code]]))
        mask = state["indices"] == code
        text = (f"Code **{code}** appears at {int(mask.sum())} positions." if mask.any()
                else f"Code **{code}** is not used in this image.")
        return {self.patch: patch_of(vq, code),
                self.positions: highlight(state["reconstruction"], state["indices"], mask, vq.downsample_factor),
                self.cell_text: text}

    def show_edit(self, vq: VQ, state: dict, edited: np.ndarray) -> dict:
        before = vq.decode_indices(state["indices"])
        after = vq.decode_indices(edited)
        changed = int((edited != state["original"]).sum())
        return {self.before: before, self.after: after, self.grid: index_map_image(edited, vq.num_codes, cell_size(edited)),
                self.edit_text: f"{changed} of {edited.size} tokens differ from the original image.",
                self.state: {**state, "indices": edited}}

    @staticmethod
    def painted_cells(vq: VQ, editor, state: dict) -> np.ndarray:
        """(h, w) bool: the tokens whose f x f patch the brush touched on the analysed image."""
        _, mask = mask_from_editor(editor, "the tokens to edit")
        image = state["image"]
        return vq.cells_touched(mask_of(mask, (image.height, image.width))[0, 0].numpy())

    @on_model_thread
    @user_errors
    def edit_replace(self, label, editor, code, state) -> dict:
        state, vq = state_of(state), self.registry.vq(label)
        return self.show_edit(vq, state, vq.replace_cells(state["indices"], self.painted_cells(vq, editor, state),
                                                          int(code)))

    @on_model_thread
    @user_errors
    def edit_resample(self, label, editor, seed, state) -> dict:
        state, vq = state_of(state), self.registry.vq(label)
        return self.show_edit(vq, state, vq.resample_cells(state["indices"], self.painted_cells(vq, editor, state),
                                                           state["usage"], int(seed)))

    @on_model_thread
    @user_errors
    def edit_swap(self, label, first, second, state) -> dict:
        state, vq = state_of(state), self.registry.vq(label)
        return self.show_edit(vq, state, vq.swap_codes(state["indices"], int(first), int(second)))

    @on_model_thread
    @user_errors
    def edit_reset(self, label, state) -> dict:
        state, vq = state_of(state), self.registry.vq(label)
        return self.show_edit(vq, {**state, "indices": state["original"]}, state["original"].copy())

    def region_canvas(self, state) -> dict:
        """The analysed image as the region editor's background, nothing painted yet."""
        image = (state or {}).get("image")
        return {self.region: gr.skip() if image is None else {"background": image, "layers": [], "composite": image}}

    @on_model_thread
    @user_errors
    def interpolate(self, label, first, second, steps) -> dict:
        vq = self.registry.vq(label)
        images, snapped = vq.interpolate_codes(int(first), int(second), int(steps))
        alphas = np.linspace(0, 1, len(images))
        blends = [(image.resize((PATCH_SIDE, PATCH_SIDE), Image.Resampling.NEAREST), f"a={a:.2f} -> snaps to {code}")
                  for image, a, code in zip(images, alphas, snapped)]
        return {self.blends: blends, self.snapped: [(patch_of(vq, code), f"code {code}") for code in snapped]}

    # -------------------------------------------------------------------------- layout
    def build(self, demo: gr.Blocks) -> None:
        gr.Markdown("### What does each code mean?\nEvery code tiled over a small grid and decoded, sorted by how often "
                    "the reference set (examples + your image) uses it; unused codes are crossed out.")
        self.state = gr.State({}, time_to_live=STATE_TTL_S)
        self.atlas_panels()
        self.cell_panels()
        self.edit_panels()
        gr.Markdown("#### Interpolate between two codes")
        with gr.Row():
            self.first, self.second = gr.Number(0, label="code A", precision=0), gr.Number(1, label="code B", precision=0)
            self.steps = gr.Slider(2, 16, value=8, step=1, label="steps")
            self.interpolate_button = gr.Button("Interpolate")
        self.blends = gr.Gallery(label="decoded blends (1-a) e_A + a e_B", columns=8, height="auto", format="png")
        self.snapped = gr.Gallery(label="the code each blend snaps to", columns=8, height="auto", format="png")
        self.wire(demo)

    def atlas_panels(self) -> None:
        registry = self.registry
        with gr.Row():
            with gr.Column(scale=1):
                vq_choices = [(text, label) for text, label in registry.choices("vq")
                              if not is_kl(registry.config.vq_models[label])]
                self.image = SafeImage(str(EXAMPLE_PHOTO) if vq_choices else None, label="Image", type="filepath",
                                       height=224)
                gr.Examples(example_images(), inputs=self.image)
                self.model = gr.Dropdown(vq_choices, value=registry.default("vq", "vqgan-photo"), label="Model")
                self.analyze_button = gr.Button("Analyze", variant="primary")
            with gr.Column(scale=2):
                self.atlas = gr.Image(label="Codebook atlas (click a tile to pick its code)", format="png",
                                      interactive=False, height=480)
                self.page = gr.Slider(0, 1, value=0, step=1, label="Atlas page (256 codes each)")
        with gr.Row():
            self.stats = gr.Markdown()
        with gr.Row():
            self.usage_plot = gr.Image(label="Usage", format="png", interactive=False)
            self.pca_plot = gr.Image(label="PCA of code vectors (colour = the code's mean colour)", format="png",
                                     interactive=False)

    def cell_panels(self) -> None:
        gr.Markdown("#### Image ↔ codes: click a cell of the token grid")
        with gr.Row():
            self.grid = image_panel("Token grid (click a cell)")
            self.positions = image_panel("Where the code is used")
            with gr.Column():
                self.patch = gr.Image(label="Code patch", format="png", interactive=False, height=110)
                self.cell_text = gr.Markdown()
                with gr.Row():
                    self.row = gr.Number(0, label="row", precision=0)
                    self.col = gr.Number(0, label="column", precision=0)
                    self.code = gr.Number(0, label="code", precision=0)
                with gr.Row():
                    self.cell_button = gr.Button("Show cell")
                    self.code_button = gr.Button("Show code")

    def edit_panels(self) -> None:
        gr.Markdown("#### Token editing: paint a region on the analysed image; every token whose f x f patch the "
                    "brush touches is edited")
        with gr.Row():
            self.region = mask_editor("Analysed image (brush = region to edit)", brush_size=8, sources=(),
                                      transforms=(), format="png")
            with gr.Column():
                with gr.Row():
                    self.edit_code = gr.Number(0, label="replace with code", precision=0)
                    self.replace_button = gr.Button("Replace region")
                with gr.Row():
                    self.seed = gr.Number(0, label="resample seed", precision=0)
                    self.resample_button = gr.Button("Resample region")
                with gr.Row():
                    self.swap_a = gr.Number(0, label="swap code", precision=0)
                    self.swap_b = gr.Number(1, label="with code", precision=0)
                    self.swap_button = gr.Button("Swap codes")
                self.reset_button = gr.Button("Reset")
        with gr.Row():
            self.before = image_panel("before")
            self.after = image_panel("after")
        self.edit_text = gr.Markdown()

    def wire(self, demo: gr.Blocks) -> None:
        model, state, heavy = self.model, self.state, dict(concurrency_id="heavy")
        analyze_outputs = [self.atlas, self.page, self.usage_plot, self.stats, self.pca_plot, self.grid, self.positions,
                           state]
        self.analyze_button.click(self.analyze, [self.image, model, self.page], analyze_outputs, api_name="codebook",
                                  **heavy).success(self.region_canvas, state, self.region, api_visibility="private",
                                                   show_progress="hidden")
        demo.load(self.example, [self.image, model, self.page], [*analyze_outputs, self.cell_text],
                  api_name="codebook_example", api_visibility="undocumented", **heavy).success(
            self.region_canvas, state, self.region, api_visibility="private", show_progress="hidden")
        self.page.release(self.atlas_page, [model, self.page, state], self.atlas, api_name="atlas", **heavy)
        code_outputs = [self.patch, self.positions, self.cell_text]
        self.atlas.select(self.atlas_click, [model, self.page, state], self.code, api_visibility="private").then(
            self.code_positions, [model, self.code, state], code_outputs, api_name="code_positions_after_atlas",
            api_visibility="private", **heavy)
        self.grid.select(self.grid_click, [model, state], [self.row, self.col, self.code, *code_outputs],
                         api_visibility="private", **heavy)
        self.cell_button.click(self.cell_info, [model, self.row, self.col, state], [self.code, *code_outputs],
                               api_name="cell", **heavy)
        self.code_button.click(self.code_positions, [model, self.code, state], code_outputs, api_name="code_positions",
                               **heavy)
        edit_outputs = [self.before, self.after, self.grid, self.edit_text, state]
        self.replace_button.click(self.edit_replace, [model, self.region, self.edit_code, state], edit_outputs,
                                  api_name="edit_replace", **heavy)
        self.resample_button.click(self.edit_resample, [model, self.region, self.seed, state], edit_outputs,
                                   api_name="edit_resample", **heavy)
        self.swap_button.click(self.edit_swap, [model, self.swap_a, self.swap_b, state], edit_outputs,
                               api_name="edit_swap", **heavy)
        self.reset_button.click(self.edit_reset, [model, state], edit_outputs, api_name="edit_reset", **heavy)
        self.interpolate_button.click(self.interpolate, [model, self.first, self.second, self.steps],
                                      [self.blends, self.snapped], api_name="interpolate", **heavy)


def build(registry: Registry, demo: gr.Blocks) -> ExplorerSection:
    section = ExplorerSection(registry)
    section.build(demo)
    return section
