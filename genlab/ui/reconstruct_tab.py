"""Reconstruction tab: upload, reconstruct with a VQ model or a KL autoencoder, measure against JPEG at the
same bit rate, compare two models.

A VQ model's row shows its reconstruction, the absolute error and the token map; a KL autoencoder's
row shows the decode of the posterior mean, the decode of one posterior sample and the posterior std
(see genlab.autoencoders.kl). The "bits per pixel" row is the model's rate either way: log2(K) / f^2 for
VQ, the KL term in bits over the pixels for KL; the "distinct codes used" row gives a KL model's
latent shape instead. A VQ model with a token prior (a prior pipeline's vqvae/) adds the row "bits per
pixel under its token prior": the code length of the image's tokens, -log2 p(tokens) under the prior
over the pixels (genlab.priors.pipeline.TokenPrior.code_length; for a class-conditional prior a two-part code that
first names a class in log2(C + 1) bits, and the note says which), i.e. what an entropy coder driven by
the prior would spend, against the log2(K) / f^2 of storing each index as it is. That takes one
network call per token (batched), so a follow-up event fills the row after the panels are shown.

Speed: each panel is encoded once, as a PNG with zlib's run-length strategy, and handed to gradio as
a file. gradio's own encoder uses Pillow's defaults (zlib level 6, default strategy): on photos and heat
maps that is several times slower for files of about the same size, and the reconstruction was encoded a
second time for its download; with a compare model, 8 panels were most of the time spent outside the models.
The JPEG's SSIM reuses the `metrics.SsimReference` of the lane that makes it (the first model's, or the
compare model's when that lane makes the JPEG, below), so the input's own statistics are filtered once for both.

On a CPU the model and the compare model run at once, a core each (`common.run_pair`): each one's
"lane" reconstructs, measures and encodes its own row (`run_lane`), and the first also makes the JPEG
at its rate. Each model's "latency" is then its time on one core. When the two models share their
encoder and codebook (`VQ.encoder_key`: vqgan-photo is vqvae-photo's encoder under a GAN-trained
decoder), the image is encoded once: the compare lane makes the JPEG while the first lane encodes, then
decodes the same tokens with its own decoder. Measured through the app with `python -m genlab.bench`
(vqvae-photo vs vqgan-photo): see the README's benchmark table.

`ReconstructTab` holds the registry and the tab's components; its handlers return dicts keyed by output
component.
"""

from __future__ import annotations

import functools
import io
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from ..imaging import metrics
from ..loading.registry import EXAMPLE_PHOTO
from ..autoencoders.kl import KLAutoencoder, KLReconstruction
from ..imaging.io import limit_side, open_image
from ..priors.pipeline import PROBE_MASKS
from ..autoencoders.vq import VQ, heatmap_image, index_map_image
from ..loading.registry import example_images
from .common import OUTPUT_HEIGHT, Registry, file_stem, on_model_thread, run_pair, save_output, user_errors
from .compat import SafeImage

METRIC_ROWS = ("PSNR (dB)", "SSIM", "bits per pixel", "compression vs 24-bit RGB",
               "distinct codes used (JPEG: quality)", "latency (ms)")
PRIOR_ROW = "bits per pixel under its token prior"
PENDING = "computing…"  # the prior row's cells until /reconstruct_prior_bits fills them
PANEL_LABELS = {  # the three panels of a model's row
    "vq": ("reconstruction", "absolute error", "token indices (codes as colours)"),
    "kl": ("reconstruction: decode of the posterior mean", "decode of a posterior sample z ~ q(z|x)",
           "posterior std, mean over latent channels (black 0, white 1 = the prior's)"),
}
COMPARE_LABELS = {  # the compare row's, shorter
    "vq": ("reconstruction (compare)", "absolute error (compare)", "token indices (compare)"),
    "kl": ("posterior mean decode (compare)", "posterior sample decode (compare)", "posterior std (compare)"),
}


def encode_file(value) -> bytes:
    """A PIL image as PNG (module docstring: zlib's run-length strategy), a numpy array as .npy."""
    buffer = io.BytesIO()
    if isinstance(value, Image.Image):
        value.save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    else:
        np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()


def save_files(files: list[tuple[str, bytes]]) -> list[str]:
    """Write one event's files, (name, encoded bytes), into one output folder; returns their paths in order
    (names must differ).

    The first goes through `save_output`, which gives it a fresh folder and prunes the oldest; the rest
    join that folder. A folder per file, as `save_output` alone makes, would cost 8 prunes per event once
    the output folder is full, and removing a folder is not free on a slow disk."""
    (first_name, first_data), *rest = files
    folder = Path(save_output(first_data, first_name)).parent
    for name, data in rest:
        (folder / name).write_bytes(data)
    return [str(folder / name) for name, _ in files]


def std_image(std_map: np.ndarray, factor: int, size: tuple[int, int]) -> Image.Image:
    """(h, w) posterior std -> a heat map at the image's size (each latent cell an f x f block)."""
    cells = heatmap_image(std_map, vmax=1.0)  # 1 = the prior N(0, I)'s std
    upscaled = cells.resize((cells.width * factor, cells.height * factor), Image.Resampling.NEAREST)
    return upscaled.crop((0, 0, *size))  # the padded border cells cover pixels outside the image


def kind_of(autoencoder) -> str:
    return "kl" if isinstance(autoencoder, KLAutoencoder) else "vq"


def describe(autoencoder, label: str, result, prefix: str = "", reference: metrics.SsimReference | None = None):
    """One autoencoder's reconstruction as the tab shows it: (its three panels and its code as (file name,
    value), metric column, the SsimReference of its input, for the JPEG's SSIM to reuse). The code is what
    the download offers beside the reconstruction: the token grid (VQ) or the posterior std (KL). `prefix`
    starts the file names (the compare row's, so names never clash); `reference`: one already made of the input."""
    reference = metrics.SsimReference(result.input) if reference is None else reference
    stem = file_stem(label)
    if kind_of(autoencoder) == "kl":
        panels = [(f"{prefix}reconstruction_{stem}.png", result.image),
                  (f"{prefix}posterior-sample_{stem}.png", result.sample),
                  (f"{prefix}posterior-std_{stem}.png",
                   std_image(result.std_map, autoencoder.downsample_factor, result.input.size))]
        code = (f"{prefix}posterior-std_{stem}.npy", result.std_map.astype(np.float32))
        bottleneck = "none: a {}x{}x{} latent, bpp = its KL rate".format(*result.latent_shape)
    else:
        cell = max(1, 256 // max(result.indices.shape))
        panels = [(f"{prefix}reconstruction_{stem}.png", result.image),
                  (f"{prefix}error_{stem}.png", heatmap_image(result.error_map)),
                  (f"{prefix}token-map_{stem}.png", index_map_image(result.indices, autoencoder.num_codes, cell))]
        code = (f"{prefix}tokens_{stem}.npy", result.indices.astype(np.int32))
        bottleneck = f"{result.distinct_codes} of {autoencoder.num_codes} codes"
    column = [round(result.psnr, 2), round(reference.ssim(result.image), 4), round(result.bits_per_pixel, 4),
              f"{result.compression_ratio:.1f}x", bottleneck, round(result.latency_s * 1000, 1)]
    return panels, code, column, reference


def jpeg_column(image, bpp: float, reference: metrics.SsimReference | None = None):
    """JPEG of `image` at <= bpp bits per pixel and its metric column; `reference`: an SsimReference of
    `image` to reuse (the models' input)."""
    jpeg = metrics.jpeg_at_bpp(image, bpp)
    reference = metrics.SsimReference(image) if reference is None else reference
    return jpeg, [round(jpeg.psnr, 2), round(reference.ssim(jpeg.image), 4), round(jpeg.bits_per_pixel, 4),
                  f"{24 / jpeg.bits_per_pixel:.1f}x", f"quality {jpeg.quality}", "-"]


@dataclass
class Lane:
    """One model's share of /reconstruct, computed on one core: its result, its row's three panels and its
    code as (file name, encoded bytes), its metric column; the lane `with_jpeg` also encodes the original
    and makes the JPEG at the first model's rate."""

    result: object
    panels: list[tuple[str, bytes]]
    code: tuple[str, bytes]
    column: list
    original: tuple[str, bytes] | None = None
    jpeg: object = None
    jpeg_file: tuple[str, bytes] | None = None
    jpeg_values: list | None = None


def run_lane(autoencoder, label: str, image, max_side: int, prefix: str = "", with_jpeg: bool = False,
             tokens: Future | None = None, share: Future | None = None) -> Lane:
    """`share`: a future this lane resolves with its `Encoding` as soon as it has one (or with its error), for a
    compare model of the same encoder. `tokens`: such a future from the other lane, to decode instead of encoding
    (the module docstring: encoded once). A lane that waits makes its JPEG first (a VQ model's rate is known
    before encoding: `VQ.bits_per_pixel_for`), so the two lanes stay even."""
    jpeg, reference = {}, None
    if with_jpeg and tokens is not None:
        shown, _ = limit_side(image, int(max_side))
        jpeg, reference = jpeg_part(shown, autoencoder.bits_per_pixel_for(*shown.size))
    if tokens is not None:
        result = autoencoder.reconstruct_from(tokens.result())
    elif share is not None:
        try:
            encoding = autoencoder.encode_image(image, max_side=int(max_side))
        except BaseException as error:
            share.set_exception(error)  # the other lane waits for it
            raise
        share.set_result(encoding)
        result = autoencoder.reconstruct_from(encoding)
    else:
        result = autoencoder.reconstruct(image, max_side=int(max_side))
    panels, (code_name, code), column, reference = describe(autoencoder, label, result, prefix, reference)
    if with_jpeg and not jpeg:
        jpeg, _ = jpeg_part(result.input, result.bits_per_pixel, reference)
    return Lane(result=result, panels=[(name, encode_file(value)) for name, value in panels],
                code=(code_name, encode_file(code)), column=column, **jpeg)


def jpeg_part(image, bpp: float, reference: metrics.SsimReference | None = None) -> tuple[dict, metrics.SsimReference]:
    """The JPEG column's share of a lane: (its `Lane` fields: the original and the JPEG at <= bpp bits per pixel,
    encoded, and the JPEG's metric column; the input's SsimReference)."""
    reference = metrics.SsimReference(image) if reference is None else reference
    jpeg, values = jpeg_column(image, bpp, reference)
    part = {"original": ("original.png", encode_file(image)), "jpeg": jpeg,
            "jpeg_file": (f"jpeg_q{jpeg.quality}.png", encode_file(jpeg.image)), "jpeg_values": values}
    return part, reference


def shared_encoder(first, second) -> bool:
    """Whether two autoencoders give every image the same tokens (`VQ.encoder_key`), so one encoding serves both."""
    if not (isinstance(first, VQ) and isinstance(second, VQ)) or first.device != second.device:
        return False
    cheap = (first.num_codes, first.code_dim, first.downsample_factor, first.tile)  # no hashing when these differ
    return cheap == (second.num_codes, second.code_dim, second.downsample_factor, second.tile) and \
        first.encoder_key == second.encoder_key


def shape_note(result, max_side: int) -> str:
    if result.resized_from:
        return (f"Downscaled from {result.resized_from[0]}x{result.resized_from[1]} to "
                f"{result.input.width}x{result.input.height} (max side {int(max_side)}).")
    size = f"{result.input.width}x{result.input.height} pixels"
    if isinstance(result, KLReconstruction):
        return "{} -> a {}x{}x{} latent (posterior mean and std).".format(size, *result.latent_shape)
    return f"{size} -> {result.indices.shape[0]}x{result.indices.shape[1]} tokens."


def prior_bits(registry: Registry, label: str, image) -> tuple[str, str]:
    """(table cell, note) for the bits per pixel of `image` under the token prior of VQ model `label`;
    ("-", "") when it has none."""
    prior_label = registry.prior_of(label)
    if prior_label is None:
        return "-", ""
    prior = registry.prior(prior_label)
    code = prior.code_length(image)
    bpp = code.bits_per_pixel
    (height, width), index_bpp = prior.image_size, prior.index_bits_per_pixel
    ratio = (f"{index_bpp / bpp:.1f}x fewer bits" if bpp <= index_bpp else
             f"{bpp / index_bpp:.1f}x more: the prior finds this image unlikely")
    how = "-log2 p of its tokens in raster order"
    if code.label_bits:
        named = "no class (the unconditional model)" if code.label == "no class" else f"the class {code.label!r}"
        how = (f"{code.label_bits:.1f} bits to name {named}, chosen among its {len(prior.classes)} classes and none "
               f"as the likeliest at {PROBE_MASKS} seeded half-masks, then {how} under it")
    return str(round(bpp, 4)), (
        f" {label}'s token prior {prior_label} codes the image, centre-cropped and resized to {width}x{height}, in "
        f"{bpp:.3f} bits per pixel ({how}), against log2 K / f² = {index_bpp:.3f} for the raw indices ({ratio}).")


class ReconstructTab:
    """The tab's components and handlers over the registry's autoencoders (and the token priors of VQ models)."""

    def __init__(self, registry: Registry):
        self.registry = registry

    # -------------------------------------------------------------------------- handlers
    @on_model_thread
    @user_errors
    def reconstruct(self, image_path, model, compare_model, max_side, progress=gr.Progress()) -> dict:
        if image_path is None:
            raise gr.Error("Upload an image or click an example first.")
        progress(0.1, desc="decoding the upload")
        image = open_image(image_path)
        compare_model = compare_model if compare_model != model else ""
        first = self.registry.autoencoder(model)
        progress(0.3, desc=f"reconstructing with {' and '.join(filter(None, (model, compare_model)))}")
        if not compare_model:
            lanes = [run_lane(first, model, image, max_side, with_jpeg=True)]
            shared = False
        else:  # module docstring: the two models at once, a core each
            second = self.registry.autoencoder(compare_model)
            parallel = first.device.type == second.device.type == "cpu"
            shared = shared_encoder(first, second)
            tokens = Future() if shared else None
            main_lane = functools.partial(run_lane, first, model, image, max_side, with_jpeg=not shared, share=tokens)
            compare_lane = functools.partial(run_lane, second, compare_model, image, max_side, "compare_",
                                             with_jpeg=shared, tokens=tokens)
            lanes = list(run_pair(main_lane, compare_lane, parallel=parallel))
        jpeg_lane = next(lane for lane in lanes if lane.jpeg is not None)  # the compare lane when it waited for tokens
        note = shape_note(lanes[0].result, max_side)
        if shared:
            note += (f" {compare_model} has {model}'s encoder and codebook: the same tokens, encoded once, decoded "
                     "by two decoders.")
        compare_panels = lanes[1].panels if len(lanes) == 2 else []
        original, *row_paths, jpeg_path, code_path = save_files(
            [jpeg_lane.original, *lanes[0].panels, *compare_panels, jpeg_lane.jpeg_file, lanes[0].code])
        main_row, compare_row = row_paths[:3], row_paths[3:] or [None, None, None]
        return {self.original: original, **dict(zip(self.main_row, main_row)),
                **dict(zip(self.compare_row, compare_row)), self.jpeg: jpeg_path,
                self.table: self.metrics_table(lanes, jpeg_lane, (model, compare_model)), self.note: note,
                self.downloads: [main_row[0], code_path]}

    def metrics_table(self, lanes: list[Lane], jpeg_lane: Lane, labels: tuple[str, str]) -> pd.DataFrame:
        """A column per model and the JPEG's; the prior row pending where a model has a token prior."""
        headers = ["metric", *labels[:len(lanes)],
                   "JPEG at <= the same bpp" if jpeg_lane.jpeg.within_budget else
                   "JPEG at quality 1 (cannot go as low as the model's bpp)"]
        columns = [lane.column for lane in lanes] + [jpeg_lane.jpeg_values]
        rows = [[name, *map(str, values)] for name, *values in zip(METRIC_ROWS, *columns)]
        priors = [self.registry.prior_of(label) for label in headers[1:-1]]
        if any(priors):  # filled in by /reconstruct_prior_bits
            rows.insert(METRIC_ROWS.index("bits per pixel") + 1, [PRIOR_ROW, *(PENDING if p else "-" for p in priors), "-"])
        return pd.DataFrame(rows, columns=headers)

    @on_model_thread
    @user_errors
    def prior_rows(self, original_path, table, note) -> dict:
        """The follow-up of /reconstruct: fills the "bits per pixel under its token prior" row for the models (the
        table's columns) that have a token prior, from the reconstructed input (the "original" panel). One
        network call per token, so the panels do not wait for it."""
        rows = table.values.tolist() if isinstance(table, pd.DataFrame) else []
        row = next((row for row in rows if row and row[0] == PRIOR_ROW), None)
        if row is None or PENDING not in row:
            return gr.skip()
        if not original_path:
            raise gr.Error("Reconstruct an image first.")
        image = open_image(original_path)
        labels = list(table.columns)[1:-1]
        for column, label in enumerate(labels, start=1):
            if row[column] == PENDING:
                row[column], note_text = prior_bits(self.registry, label, image)
                note = (note or "") + note_text
        return {self.table: pd.DataFrame(rows, columns=list(table.columns)), self.note: note}

    def row_for(self, label, panels: list, labels: dict[str, tuple[str, str, str]]) -> dict:
        """A row's panels emptied and relabelled for the model just chosen (VQ or KL), so they never show one
        model's output under another's labels. A model that cannot be loaded leaves the row as it is:
        /reconstruct says why when it runs."""
        try:
            kind = kind_of(self.registry.autoencoder(label)) if label else "vq"
        except Exception:
            return {panel: gr.skip() for panel in panels}
        return {panel: gr.update(value=None, label=text) for panel, text in zip(panels, labels[kind])}

    def main_labels(self, label) -> dict:
        return self.row_for(label, self.main_row, PANEL_LABELS)

    def compare_labels(self, label) -> dict:
        return self.row_for(label, self.compare_row, COMPARE_LABELS)

    @on_model_thread
    def example(self, image_path, label, compare_label, side) -> dict:
        """The tab's first view: the example photo through the default models, as a click on Reconstruct gives
        it. Without a model (or if it fails) the panels stay empty and the note says why, with no error toast."""
        if not image_path or not label:
            return {self.note: "No trained autoencoder yet: upload an image once one is."}
        try:
            outputs = self.reconstruct(image_path, label, compare_label, side)
        except Exception as error:
            return {self.note: f"No example: {error}"}
        return {**outputs, self.note: f"Example: {Path(image_path).name}. " + outputs[self.note]}

    # -------------------------------------------------------------------------- layout
    def build(self, demo: gr.Blocks) -> None:
        registry = self.registry
        gr.Markdown(
            "### What does a bottleneck keep?\nA VQ model turns each f x f patch into one of K codes: "
            "log2(K) / f^2 bits per pixel. A KL autoencoder (VAE) keeps a Gaussian posterior per latent cell: "
            "its rate is the KL divergence to the prior, in bits per pixel, and its row shows the decode of the "
            "posterior mean, of one sample from it, and the posterior's std. The JPEG column encodes the same "
            "image at no more than the first model's rate."
        )
        with gr.Row():
            with gr.Column(scale=1):
                self.image = SafeImage(str(EXAMPLE_PHOTO) if registry.choices("vq") else None, type="filepath",
                                       height=256, label="Image (PNG, JPEG, WebP, BMP, GIF, TIFF)")
                gr.Examples(example_images(), inputs=self.image,
                            label="Examples (held-out photos and Noto Emoji; see assets/CREDITS.md)")
            with gr.Column(scale=1):
                first = registry.default("vq", "vqvae-photo")
                self.model = gr.Dropdown(registry.choices("vq"), value=first, label="Model")
                self.compare = gr.Dropdown([("(none)", "")] + registry.choices("vq"),
                                           value=registry.default("vq", "vqgan-photo", exclude=first) or "",
                                           label="Compare with")
                self.max_side = gr.Slider(32, 1024, value=512, step=32, label="Max side (larger uploads are downscaled)")
                self.run = gr.Button("Reconstruct", variant="primary")
                self.note = gr.Markdown()
        with gr.Row():
            self.original = panel("original")
            self.main_row = [panel(text) for text in PANEL_LABELS["vq"]]  # reconstruction, error, tokens
        with gr.Row():
            gr.Markdown("**Compare model** →")
            self.compare_row = [panel(text) for text in COMPARE_LABELS["vq"]]
            self.jpeg = panel("JPEG at the same bits per pixel")
        self.table = gr.Dataframe(headers=["metric"], label="Metrics", interactive=False)
        # KL models offer their posterior std as the .npy; tests/test_browser.py reads this label
        self.downloads = gr.File(label="Downloads: reconstruction (PNG) and token grid (.npy)", file_count="multiple",
                                 interactive=False)
        self.wire(demo)

    def wire(self, demo: gr.Blocks) -> None:
        inputs = [self.image, self.model, self.compare, self.max_side]
        outputs = [self.original, *self.main_row, *self.compare_row, self.jpeg, self.table, self.note, self.downloads]
        example_event = demo.load(self.example, inputs, outputs, api_name="reconstruct_example",
                                  api_visibility="undocumented", concurrency_id="heavy")
        click_event = self.run.click(self.reconstruct, inputs, outputs, api_name="reconstruct", concurrency_id="heavy")
        prior_inputs = [self.original, self.table, self.note]  # the row's models are the table's columns
        example_event.success(self.prior_rows, prior_inputs, [self.table, self.note], api_visibility="private",
                              concurrency_id="heavy")
        click_event.success(self.prior_rows, prior_inputs, [self.table, self.note], api_name="reconstruct_prior_bits",
                            concurrency_id="heavy")
        # Labels change with the dropdowns, off the click's path (update objects among /reconstruct's own outputs
        # would also reach API clients as dicts instead of file paths). Loading the model here is what the next
        # click would do first anyway.
        self.model.change(self.main_labels, self.model, self.main_row, queue=False, show_progress="hidden",
                          api_name="reconstruct_labels", api_visibility="undocumented")
        self.compare.change(self.compare_labels, self.compare, self.compare_row, queue=False, show_progress="hidden",
                            api_name="reconstruct_compare_labels", api_visibility="undocumented")


def panel(label: str) -> gr.Image:
    """A read-only output image, handed over as a file path."""
    return gr.Image(label=label, type="filepath", format="png", interactive=False, height=OUTPUT_HEIGHT)


def build(registry: Registry, demo: gr.Blocks) -> ReconstructTab:
    tab = ReconstructTab(registry)
    tab.build(demo)
    return tab
