"""The app through gradio_client: every main endpoint, streaming, readable errors, and that it keeps serving.

The app is launched once on loopback with the tiny random checkpoints of conftest.py given as
extra models (the `--model KIND=SOURCE` path), so these tests need no trained weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from genlab.tools.bench import free_port  # noqa: E402
from genlab.config import parse_args  # noqa: E402
from genlab.ui import build_app  # noqa: E402
from genlab.ui.common import OUTPUT_DIR  # noqa: E402


@pytest.fixture(scope="module")
def app(tiny_vq_dir, tiny_cond_ddpm_dir):
    """(client, vq label, diffusion label) for an app serving the tiny models."""
    port = free_port()
    config = parse_args(["--model", f"vq={tiny_vq_dir}", "--model", f"diffusion={tiny_cond_ddpm_dir}",
                         "--port", str(port), "--max-file-mb", "1"], environ={})
    demo = build_app(config)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                max_file_size="1mb", allowed_paths=[str(OUTPUT_DIR)])
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, str(tiny_vq_dir), str(tiny_cond_ddpm_dir)
    client.close() if hasattr(client, "close") else None
    demo.close()


@pytest.fixture(scope="module")
def photo(photo_path) -> str:
    return str(photo_path)  # gradio_client's handle_file takes a str


def image_size(path) -> tuple[int, int]:
    return Image.open(path).size


def test_reconstruct_returns_every_panel_and_metric(app, photo):
    client, vq_label, _ = app
    result = client.predict(handle_file(photo), vq_label, "", 512, api_name="/reconstruct")
    original, reconstruction, error, tokens, _, _, _, jpeg, table, note, downloads = result
    assert image_size(original) == image_size(reconstruction) == image_size(error) == (44, 30)
    assert image_size(jpeg) == (44, 30)
    rows = {row[0]: row[1:] for row in table["data"]}
    assert set(rows) >= {"PSNR (dB)", "SSIM", "bits per pixel", "distinct codes used (JPEG: quality)", "latency (ms)"}
    assert table["headers"][-1].startswith("JPEG")
    assert float(rows["bits per pixel"][0]) == pytest.approx(15 * 22 * 5 / (44 * 30), rel=1e-3)  # K = 32, f = 2
    assert "44x30" in note
    png, tokens_file = downloads
    assert Path(png).name == "reconstruction_tiny-vq0.png" and Path(tokens_file).name == "tokens_tiny-vq0.npy"
    assert np.load(tokens_file, allow_pickle=False).shape == (15, 22)


def test_first_view_is_the_example_reconstructed(app, photo, tmp_path):
    """The tab's page-load event: the example image through the default model, as Reconstruct gives it; with no
    model or an unreadable example the panels stay as they are and the note says why (no error toast)."""
    client, vq_label, _ = app
    example = client.predict(handle_file(photo), vq_label, "", 512, api_name="/reconstruct_example")
    clicked = client.predict(handle_file(photo), vq_label, "", 512, api_name="/reconstruct")
    assert example[9] == f"Example: {Path(photo).name}. " + clicked[9]
    assert np.array_equal(np.asarray(Image.open(example[1])), np.asarray(Image.open(clicked[1])))
    def without_latency(table):
        return [row for row in table["data"] if row[0] != "latency (ms)"]

    assert without_latency(example[8]) == without_latency(clicked[8])
    nothing = client.predict(None, None, "", 512, api_name="/reconstruct_example")
    unchanged = {"__type__": "update"}  # gr.skip(): the panel keeps what it shows
    assert nothing[9].startswith("No trained autoencoder yet") and nothing[1] == unchanged
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    failed = client.predict(handle_file(str(broken)), vq_label, "", 512, api_name="/reconstruct_example")
    assert failed[9].startswith("No example: ") and "image" in failed[9] and failed[1] == unchanged


def test_bad_upload_gives_readable_error_and_server_keeps_serving(app, photo, tmp_path):
    client, vq_label, _ = app
    svg = tmp_path / "drawing.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    with pytest.raises(Exception, match="SVG"):
        client.predict(handle_file(str(svg)), vq_label, "", 512, api_name="/reconstruct")
    text = tmp_path / "notes.png"
    text.write_text("not a picture at all")
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(str(text)), vq_label, "", 512, api_name="/reconstruct")
    result = client.predict(handle_file(photo), vq_label, "", 512, api_name="/reconstruct")
    assert image_size(result[1]) == (44, 30)


def test_upload_over_the_size_limit_is_refused_before_genlab(app, tmp_path):
    client, vq_label, _ = app
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(2 * 1024 * 1024))
    with pytest.raises(Exception):
        client.predict(handle_file(str(big)), vq_label, "", 512, api_name="/reconstruct")


def test_unknown_model_is_a_readable_error(app, photo):
    client, _, _ = app
    with pytest.raises(Exception, match="(?i)model"):
        client.predict(handle_file(photo), "no-such-model", "", 512, api_name="/reconstruct")


def test_sample_streams_intermediate_frames_before_the_final_one(app):
    client, _, dm_label = app
    job = client.submit(dm_label, "ddim", 6, 0, 2, "a", 2.0, 0.0, api_name="/sample")
    final = job.result()
    outputs = job.outputs()
    assert len(outputs) >= 4  # x_T, several streamed steps, then the final update
    assert outputs[0][2] == "x_T: pure noise" and outputs[0][1] is None  # shown before the first UNet call
    assert outputs[1][2].startswith("t = ")
    x_T, first_step_input = (np.asarray(Image.open(outputs[i][0])) for i in (0, 1))
    assert np.array_equal(x_T, first_step_input)  # the noise shown first is the sample's real x_T
    assert final[2].startswith("done: 6 steps")
    downloads = final[5]  # (x_t, x0, status, scrub slider, schedule plot, downloads): State is not sent
    assert [Path(f).suffix for f in downloads] == [".png", ".gif"]
    assert Path(downloads[0]).name == f"{Path(dm_label).name}_ddim_6steps_seed0_sample.png"
    gif = Image.open(downloads[1])
    assert gif.n_frames == 7  # six steps and the final image


def test_sample_is_deterministic_and_rejects_absurd_values(app):
    client, _, dm_label = app
    first = client.predict(dm_label, "ddpm", 3, 7, 1, "b", 1.0, 0.0, api_name="/sample")
    second = client.predict(dm_label, "ddpm", 3, 7, 1, "b", 1.0, 0.0, api_name="/sample")
    assert np.array_equal(np.asarray(Image.open(first[0])), np.asarray(Image.open(second[0])))
    with pytest.raises(Exception, match="maximum value 1000"):  # gradio's own slider check
        client.predict(dm_label, "ddim", 10**9, 0, 1, "a", 1.0, 0.0, api_name="/sample")
    with pytest.raises(Exception, match="maximum value 16"):
        client.predict(dm_label, "ddim", 2, 0, 10**6, "a", 1.0, 0.0, api_name="/sample")
    with pytest.raises(Exception, match="minimum value 0"):
        client.predict(dm_label, "ddim", 2, -1, 1, "a", 1.0, 0.0, api_name="/sample")


def test_scrub_shows_stored_steps(app):
    client, _, dm_label = app
    client.predict(dm_label, "ddim", 4, 0, 1, "a", 1.0, 0.0, api_name="/sample")
    x_t, x0, eps, plot, latent = client.predict(dm_label, 2, api_name="/scrub")
    assert image_size(x_t) == image_size(x0) == image_size(eps)
    assert latent is None  # a pixel model has no latent panel


def is_nearest_upscale(path, native) -> bool:
    """The served panel at `path` is `native` (an (H, W, 3) array) with every pixel an equal square block."""
    shown = np.asarray(Image.open(path).convert("RGB"))
    scale = shown.shape[0] // native.shape[0]
    return scale > 1 and np.array_equal(shown, native.repeat(scale, axis=0).repeat(scale, axis=1))


def test_page_load_fills_the_scrub_row_and_the_slider_scrubs_it_without_a_sample(app):
    """A fresh visitor's page load (the tab's load event): the example run's middle step in the scrub row, the
    step slider over it, and /scrub working on it before any Sample."""
    client, _, dm_label = app
    visitor = Client(client.src, verbose=False)  # a new session: no run of its own
    status, live_xt, live_x0, _, _, slider, x_t, x0, eps, plot, latent = visitor.predict(
        dm_label, api_name="/diffusion_example")
    assert status.startswith("Example: ") and "shown at step 26 of 50" in status
    assert slider["value"] == 25 and slider["maximum"] == 49
    assert all(Path(path).is_file() for path in (live_xt, live_x0, x_t, x0, eps, plot)) and latent is None
    assert min(image_size(x_t)) >= 256 and image_size(x_t) == image_size(x0) == image_size(eps)  # filled panels
    scrubbed = visitor.predict(dm_label, 10, api_name="/scrub")
    assert image_size(scrubbed[0]) == image_size(x_t) and scrubbed[4] is None
    again = visitor.predict(dm_label, 25, api_name="/scrub")  # the middle step again: what page load showed
    assert np.array_equal(np.asarray(Image.open(again[1])), np.asarray(Image.open(x0)))
    first = np.asarray(Image.open(x0).convert("RGB"))
    block = image_size(x0)[0] // 16  # the tiny model's 16 px samples, enlarged by nearest neighbour
    assert is_nearest_upscale(x0, first[::block, ::block])


def test_codebook_explorer_shows_the_example_on_page_load(app, photo):
    client, vq_label, _ = app
    visitor = Client(client.src, verbose=False)
    atlas, page, usage, stats, pca, grid, positions, note = visitor.predict(
        handle_file(photo), vq_label, 0, api_name="/codebook_example")
    assert all(Path(path).is_file() for path in (atlas, usage, pca, grid, positions))
    assert "current image" in stats and note.startswith("Example: photo.png")
    code, patch, _, text = visitor.predict(vq_label, 1, 2, api_name="/cell")  # clicks work as after Analyze
    assert f"code **{int(code)}**" in text and Path(patch).is_file()


def test_denoise_and_noise_preview(app, photo):
    client, _, dm_label = app
    preview, _ = client.predict(dm_label, handle_file(photo), "clean", 100, 25, 0, api_name="/noise_preview")
    assert image_size(preview) == (44, 30)
    job = client.submit(dm_label, handle_file(photo), "clean", 200, 25, 4, 0, "ddim", "", 1.0, api_name="/denoise")
    result = job.result()
    denoised, baseline, text = result[:3]
    assert image_size(denoised) == image_size(baseline) == (44, 30)
    assert "PSNR" in text and "non-local means" in text
    # Steps 0 is the form's default (the browser sends 0 for an empty gr.Number): about 50 t / T steps.
    result = client.predict(dm_label, handle_file(photo), "clean", 200, 25, 0, 0, "ddim", "", 1.0, api_name="/denoise")
    assert "denoised in 10 steps" in result[2]
    result = client.predict(dm_label, handle_file(photo), "noisy", 0, 25, 0, 0, "ddim", "", 1.0,
                            api_name="/denoise")
    assert "sigma = 25.0/255; 1 step." in result[2]  # the x0 estimate by default
    sigma = client.predict(handle_file(photo), api_name="/estimate_sigma")
    assert 5 < sigma < 60  # the test photo carries noise of std 20


def test_compare_samplers_in_one_grid(app):
    client, _, dm_label = app
    gallery = client.predict(dm_label, ["DDIM 10", "DPM-Solver++ 10"], 0, "a", 1.0, api_name="/compare")
    assert [item["caption"] for item in gallery] == ["DDIM 10", "DPM-Solver++ 10"]
    with pytest.raises(Exception, match="2 to 4"):
        client.predict(dm_label, ["DDIM 10"], 0, "a", 1.0, api_name="/compare")


def region(photo: str, folder: Path, box: tuple[int, int, int, int]) -> dict:
    """The region editor's value: the analysed photo (44x30) with the pixel box (x0, y0, x1, y1) painted."""
    layer = Image.new("RGBA", (44, 30), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), box)
    path = folder / f"region-{'-'.join(map(str, box))}.png"
    layer.save(path)
    return {"background": handle_file(photo), "layers": [handle_file(str(path))], "composite": None}


def test_codebook_explorer_endpoints(app, photo, tmp_path):
    client, vq_label, _ = app
    atlas, _, _, stats, _, grid, _ = client.predict(handle_file(photo), vq_label, 0, api_name="/codebook")
    assert Image.open(atlas).width > 0 and "perplexity" in stats
    code, patch, positions, text = client.predict(vq_label, 1, 2, api_name="/cell")
    assert f"code **{int(code)}**" in text
    # pixel columns 1..6 and rows 0..6 touch the 2x2 patches (f = 2) of token rows 0..3 and columns 0..3
    painted = region(photo, tmp_path, (1, 0, 7, 7))
    before, after, _, edit_text, = client.predict(vq_label, painted, 5, api_name="/edit_replace")[:4]
    assert "16 of 330 tokens differ" in edit_text
    assert image_size(before) == image_size(after) == (44, 30)
    _, _, _, reset_text = client.predict(vq_label, api_name="/edit_reset")[:4]
    assert reset_text.startswith("0 of 330")
    _, _, _, resample_text = client.predict(vq_label, region(photo, tmp_path, (43, 29, 44, 30)), 0,
                                            api_name="/edit_resample")[:4]
    assert resample_text.endswith("of 330 tokens differ from the original image.")  # one corner token, maybe unchanged
    with pytest.raises(Exception, match="code"):
        client.predict(vq_label, painted, 10**6, api_name="/edit_replace")
    with pytest.raises(Exception, match="mask is empty: paint over the tokens to edit"):
        client.predict(vq_label, region(photo, tmp_path, (0, 0, 0, 0)), 5, api_name="/edit_replace")
    blends, snapped = client.predict(vq_label, 0, 1, 4, api_name="/interpolate")
    assert len(blends) == len(snapped) == 4


def hostile_files(folder: Path) -> dict[str, Path]:
    """Odd and hostile uploads: each must be served or refused with readable text, never a traceback."""
    import io

    files = {}
    bomb = Image.new("1", (20000, 20000))  # 400 megapixels, a few kB as PNG
    bomb.save(folder / "bomb.png")
    files["bomb"] = folder / "bomb.png"
    good = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(good, format="PNG")
    (folder / "truncated.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    files["truncated"] = folder / "truncated.png"
    (folder / "empty.png").write_bytes(b"")
    files["empty"] = folder / "empty.png"
    (folder / "vector.svg").write_text('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>')
    files["svg"] = folder / "vector.svg"
    (folder / "script.png").write_bytes(b"#!/bin/sh\nrm -rf /\n")
    files["not an image"] = folder / "script.png"
    Image.new("RGB", (1, 1), (0, 0, 255)).save(folder / "one.png")
    files["1x1"] = folder / "one.png"
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(folder / "sixteen.png")
    files["16-bit"] = folder / "sixteen.png"
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    files["CMYK"] = folder / "cmyk.jpg"
    frames = [Image.new("P", (16, 16), i) for i in (1, 2, 3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    files["animated"] = folder / "anim.gif"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (40, 20), (10, 120, 10)).save(folder / "rotated.jpg", exif=exif)
    files["EXIF-rotated"] = folder / "rotated.jpg"
    Image.new("RGB", (4000, 3), (90, 90, 200)).save(folder / "strip.png")
    files["extreme aspect"] = folder / "strip.png"
    return files


REFUSED = {"bomb": "megapixels", "truncated": "damaged", "empty": "empty", "svg": "SVG", "not an image": "not an image"}


def test_hostile_uploads_are_served_or_refused_readably(app, tmp_path, photo):
    import os

    client, vq_label, _ = app
    before = set(os.listdir("."))
    for kind, path in hostile_files(tmp_path).items():
        if kind in REFUSED:
            with pytest.raises(Exception, match=REFUSED[kind]) as error:
                client.predict(handle_file(str(path)), vq_label, "", 512, api_name="/reconstruct")
            assert "Traceback" not in str(error.value), kind
        else:
            result = client.predict(handle_file(str(path)), vq_label, "", 512, api_name="/reconstruct")
            width, height = image_size(result[1])
            assert width >= 1 and height >= 1, kind
            if kind == "EXIF-rotated":
                assert (width, height) == (20, 40)
            if kind == "extreme aspect":
                assert width == 512
    assert set(os.listdir(".")) == before  # nothing written beside the app
    assert image_size(client.predict(handle_file(photo), vq_label, "", 512, api_name="/reconstruct")[1]) == (44, 30)


def test_build_app_resolves_diffusers_lazy_imports_before_serving():
    """gradio runs events in worker threads: two first uses of diffusers' lazy modules at once met accelerate
    half-imported ("partially initialized module 'accelerate.state'"), so build_app imports them first."""
    import subprocess
    import sys

    code = ("import sys; from genlab.config import parse_args; from genlab.ui import build_app; "
            "build_app(parse_args([], environ={})); "
            "missing = [m for m in ('accelerate.state', 'diffusers.models.autoencoders.vq_model', "
            "'diffusers.models.unets.unet_2d', 'diffusers.models.unets.uvit_2d') if m not in sys.modules]; "
            "print(missing); sys.exit(bool(missing))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
