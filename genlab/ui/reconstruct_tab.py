"""VQ-VAE reconstruction tab: upload, reconstruct, measure against JPEG at the same bit rate, compare two models."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

from .. import metrics
from ..images import open_image
from ..vq import heatmap_image, index_map_image
from .common import OUTPUT_HEIGHT, Registry, SafeImage, example_images, file_stem, save_output, user_errors

METRIC_ROWS = ("PSNR (dB)", "SSIM", "bits per pixel", "compression vs 24-bit RGB", "distinct codes used (JPEG: quality)",
               "latency (ms)")


def reconstruct_one(registry: Registry, label: str, image, max_side: int):
    """Run one model; returns (reconstruction result, panels, metric column)."""
    vq = registry.vq(label)
    result = vq.reconstruct(image, max_side=int(max_side))
    cell = max(1, 256 // max(result.indices.shape))
    panels = [result.image, heatmap_image(result.error_map), index_map_image(result.indices, vq.num_codes, cell)]
    column = [round(result.psnr, 2), round(result.ssim, 4), round(result.bits_per_pixel, 4),
              f"{result.compression_ratio:.1f}x", f"{result.distinct_codes} of {vq.num_codes}",
              round(result.latency_s * 1000, 1)]
    return result, panels, column


def jpeg_column(image, bpp: float):
    jpeg = metrics.jpeg_at_bpp(image, bpp)
    return jpeg, [round(jpeg.psnr, 2), round(metrics.ssim(image, jpeg.image), 4), round(jpeg.bits_per_pixel, 4),
                  f"{24 / jpeg.bits_per_pixel:.1f}x", f"quality {jpeg.quality}", "-"]


def build(registry: Registry) -> None:
    @user_errors
    def reconstruct(image_path, model, compare_model, max_side, progress=gr.Progress()):
        if image_path is None:
            raise gr.Error("Upload an image or click an example first.")
        progress(0.1, desc="decoding the upload")
        image = open_image(image_path)
        progress(0.3, desc=f"reconstructing with {model}")
        result, panels, column = reconstruct_one(registry, model, image, max_side)
        headers, columns = ["metric", model], [column]
        compare_panels = [None, None, None]
        if compare_model and compare_model != model:
            progress(0.6, desc=f"reconstructing with {compare_model}")
            _, compare_panels, compare_column = reconstruct_one(registry, compare_model, image, max_side)
            headers.append(compare_model)
            columns.append(compare_column)
        progress(0.8, desc="JPEG at the same bit rate")
        jpeg, jpeg_values = jpeg_column(result.input, result.bits_per_pixel)
        headers.append("JPEG at <= the same bpp" if jpeg.within_budget else
                       "JPEG at quality 1 (cannot go as low as the model's bpp)")
        columns.append(jpeg_values)
        table = pd.DataFrame([[name, *map(str, values)] for name, *values in zip(METRIC_ROWS, *columns)],
                             columns=headers)
        note = (f"Downscaled from {result.resized_from[0]}x{result.resized_from[1]} to "
                f"{result.input.width}x{result.input.height} (max side {int(max_side)})." if result.resized_from else
                f"{result.input.width}x{result.input.height} pixels -> {result.indices.shape[0]}x{result.indices.shape[1]} tokens.")
        png = save_output(result.image, f"{file_stem('reconstruction', model)}.png")
        tokens = save_output(result.indices.astype(np.int32), f"{file_stem('tokens', model)}.npy")
        return (result.input, *panels, *compare_panels, jpeg.image, table,
                note, [png, tokens])

    gr.Markdown(
        "### What does a discrete bottleneck keep?\nEach f x f patch becomes one of K codes: "
        "log2(K) / f^2 bits per pixel. The JPEG column encodes the same image at no more than that rate."
    )
    with gr.Row():
        with gr.Column(scale=1):
            image = SafeImage(label="Image (PNG, JPEG, WebP, BMP, GIF, TIFF)", type="filepath", height=256)
            gr.Examples(example_images(), inputs=image, label="Examples (held-out photos and Noto Emoji; see assets/CREDITS.md)")
        with gr.Column(scale=1):
            first = registry.default("vq", "vqvae-photo")
            model = gr.Dropdown(registry.choices("vq"), value=first, label="Model")
            compare = gr.Dropdown([("(none)", "")] + registry.choices("vq"),
                                  value=registry.default("vq", "vqgan-photo", exclude=first) or "", label="Compare with")
            max_side = gr.Slider(32, 1024, value=512, step=32, label="Max side (larger uploads are downscaled)")
            run = gr.Button("Reconstruct", variant="primary")
            note = gr.Markdown()
    with gr.Row():
        original = gr.Image(label="original", format="png", interactive=False, height=OUTPUT_HEIGHT)
        rec = gr.Image(label="reconstruction", format="png", interactive=False, height=OUTPUT_HEIGHT)
        error = gr.Image(label="absolute error", format="png", interactive=False, height=OUTPUT_HEIGHT)
        tokens = gr.Image(label="token indices (codes as colours)", format="png", interactive=False, height=OUTPUT_HEIGHT)
    with gr.Row():
        gr.Markdown("**Compare model** →")
        rec_b = gr.Image(label="reconstruction (compare)", format="png", interactive=False, height=OUTPUT_HEIGHT)
        error_b = gr.Image(label="absolute error (compare)", format="png", interactive=False, height=OUTPUT_HEIGHT)
        tokens_b = gr.Image(label="token indices (compare)", format="png", interactive=False, height=OUTPUT_HEIGHT)
        jpeg = gr.Image(label="JPEG at the same bits per pixel", format="png", interactive=False, height=OUTPUT_HEIGHT)
    table = gr.Dataframe(headers=["metric"], label="Metrics", interactive=False)
    downloads = gr.File(label="Downloads: reconstruction (PNG) and token grid (.npy)", file_count="multiple",
                        interactive=False)
    run.click(reconstruct, [image, model, compare, max_side],
              [original, rec, error, tokens, rec_b, error_b, tokens_b, jpeg, table, note, downloads],
              api_name="reconstruct", concurrency_id="heavy")
