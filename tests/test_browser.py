"""GenLab in a real browser: headless Chromium clicks through every tab of the gradio page.

The app is launched once on loopback with the tiny random checkpoints of conftest.py (as in
test_app.py, plus a token prior) and an empty weights folder, so the tiny models are the dropdowns'
defaults and the tests need no trained weights. Each test opens the page in a fresh browser context, uploads files
through the image components' own file inputs, presses the tab's main button, waits for the
outputs to render, and saves a full-page screenshot.

Needs Debian's Chromium (/usr/bin/chromium) and the `playwright` Python package; never run
`playwright install`. Without them the module is skipped, unless GENLAB_REQUIRE_BROWSER=1 (CI),
which turns the skip into a failure. Screenshots go to $GENLAB_SCREENSHOTS (relative paths are
taken from the repository root, e.g. GENLAB_SCREENSHOTS=artifacts/screenshots), else to a
pytest temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError as error:  # pragma: no cover - depends on the machine
    expect = sync_playwright = None
    PLAYWRIGHT_ERROR: str | None = f"the playwright package is not importable ({error}); pip install playwright==1.65.2"
else:
    PLAYWRIGHT_ERROR = None

import torch  # noqa: E402

import genlab.config  # noqa: E402
import genlab.loading.loaders  # noqa: E402
import genlab.loading.registry  # noqa: E402
from genlab.tools.bench import free_port, serving_app  # noqa: E402
from genlab.config import parse_args  # noqa: E402
from genlab.ui import build_app  # noqa: E402
from genlab.ui.common import OUTPUT_DIR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("GENLAB_REQUIRE_BROWSER", "") == "1"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ACTION_MS = 60_000  # per action: the CPU is slow and shared
LOAD_MS = 60_000
EMBEDDED_MS = 180_000  # per action on the real models (16 emoji x 50 steps, a photo denoise)

TABS = ("VQ-VAE reconstruction", "VQGAN codebook", "Diffusion, step by step", "Foundations (2D)")
DIFFUSION_SUBTABS = ("Sample", "Denoise an upload", "Inpaint", "Compare samplers")
RECONSTRUCT_UPLOAD = "Image (PNG, JPEG, WebP, BMP, GIF, TIFF)"


def missing_browser() -> str | None:
    if PLAYWRIGHT_ERROR:
        return PLAYWRIGHT_ERROR
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    return None


MISSING = missing_browser()
if MISSING and not REQUIRE_BROWSER:
    pytest.skip(f"browser tests need Chromium and playwright: {MISSING} "
                "(set GENLAB_REQUIRE_BROWSER=1 to fail instead)", allow_module_level=True)


# ------------------------------------------------------------------------------ fixtures
@contextlib.contextmanager
def served_app(weights, arguments=(), **launch):
    """The app's URL, served on a free port while the block runs, with `weights` as its weights/ folder (the
    embedded models it holds, and only those, read as trained) and `arguments` on its command line."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(genlab.loading.registry, "WEIGHTS_DIR", weights)
        patch.setattr(genlab.config, "WEIGHTS_DIR", weights)
        port = free_port()
        demo = build_app(parse_args([*arguments, "--port", str(port)], environ={}))
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    allowed_paths=[str(OUTPUT_DIR)], **launch)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            demo.close()


@pytest.fixture(scope="module")
def app(tiny_vq_dir, tiny_vq_lookup_dir, tiny_cond_ddpm_dir, tiny_prior_dir, tmp_path_factory):
    """(url, vq label, second vq label, diffusion label) of an app that serves only the tiny models."""
    # Whatever weights/ holds on this machine, the embedded models read as untrained, so the
    # dropdowns default to the tiny models and no test runs a real network on the CPU.
    arguments = ["--model", f"vq={tiny_vq_dir}", "--model", f"vq={tiny_vq_lookup_dir}",
                 "--model", f"diffusion={tiny_cond_ddpm_dir}", "--model", f"prior={tiny_prior_dir}", "--max-file-mb", "1"]
    with served_app(tmp_path_factory.mktemp("no-weights"), arguments, max_file_size="1mb") as url:
        yield url, str(tiny_vq_dir), str(tiny_vq_lookup_dir), str(tiny_cond_ddpm_dir)


@pytest.fixture(scope="module")
def browser():
    if MISSING:
        pytest.fail(f"GENLAB_REQUIRE_BROWSER=1 but the browser tests cannot run: {MISSING}", pytrace=False)
    expect.set_options(timeout=ACTION_MS)  # playwright's default of 5 s is too short on a busy CPU
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def opened_page(browser, url: str, action_ms: int = ACTION_MS):
    """A fresh page on the app at `url`, loaded; fails on any uncaught JavaScript error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(action_ms)
    page = context.new_page()
    js_errors: list[str] = []
    page.on("pageerror", lambda error: js_errors.append(str(error)))
    page.goto(url, timeout=LOAD_MS)
    expect(page.get_by_role("button", name="Reconstruct")).to_be_visible(timeout=LOAD_MS)
    yield page
    context.close()
    assert not js_errors, f"uncaught JavaScript errors in the page: {js_errors}"


@pytest.fixture
def page(browser, app):
    with opened_page(browser, app[0]) as page:
        yield page


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("GENLAB_SCREENSHOTS")
    folder = (REPO / folder) if folder else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def photo(photo_path) -> Path:
    return photo_path


# ------------------------------------------------------------------------------ helpers
def block(page, label: str):
    """The component (gradio's div.block) whose visible label is exactly `label`.

    Most components label themselves with label[data-testid=block-label]; the Dataframe uses a
    <p> in its header row.
    """
    labels = page.locator("label[data-testid=block-label], .header-row .label p")
    text = labels.get_by_text(label, exact=True).filter(visible=True)
    return text.locator("xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' block ')][1]")


def open_tab(page, name: str) -> None:
    tab = page.get_by_role("tab", name=name, exact=True)
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")


def upload(page, label: str, path: Path) -> None:
    """Upload `path` through the image component's own file input and wait until it has arrived."""
    component = block(page, label)
    with page.expect_response(lambda r: "/gradio_api/upload" in r.url and r.request.method == "POST",
                              timeout=ACTION_MS) as response:
        component.locator("input[type=file]").set_input_files(str(path))
    assert response.value.ok, f"uploading {path.name} failed: HTTP {response.value.status}"
    # The preview shows the uploaded copy (gradio inlines an SVG as a data: URL) once the component
    # holds the new value; pressing a button before that would send the previous image or none.
    shown = r"/file=.+/" + re.escape(path.name) + "$"
    if path.suffix.lower() == ".svg":
        shown = f"({shown})|(^data:image/svg\\+xml,)"
    expect(component.locator("img").first).to_have_attribute("src", re.compile(shown), timeout=ACTION_MS)


def expect_image(page, label: str) -> None:
    """The output image component `label` shows an image served by the app."""
    expect(block(page, label).locator("img").first).to_have_attribute("src", re.compile(r"^https?://.+/file="),
                                                                      timeout=ACTION_MS)


def expect_download(files, name) -> None:
    """The gr.File component `files` lists `name` (a string or a pattern) with a download link."""
    cell = files.get_by_label(name, exact=True) if isinstance(name, str) else files.get_by_label(name)
    expect(cell).to_have_count(1, timeout=ACTION_MS)
    link = cell.locator("xpath=ancestor::tr[1]").locator("a[data-testid=download-link]")
    expect(link).to_have_attribute("href", re.compile(r"/file=.+"))


def expect_toast(page, text: str):
    """A gr.Error toast containing `text` is shown, fully faded in (so a screenshot shows it)."""
    toast = page.locator(".toast-body").filter(has_text=text)
    expect(toast.first).to_be_visible(timeout=ACTION_MS)
    page.wait_for_function(
        """toast => {
            let opacity = 1;
            for (let node = toast; node && node.nodeType === 1; node = node.parentElement)
                opacity *= parseFloat(getComputedStyle(node).opacity);
            return opacity > 0.99;
        }""", arg=toast.first.element_handle(), timeout=10_000)
    return toast


def dismiss_toasts(page) -> None:
    for close in page.locator(".toast-body .toast-close").all():
        if close.is_visible():
            close.click()
    expect(page.locator(".toast-body")).to_have_count(0, timeout=10_000)


def screenshot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 0, path
    return path


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the gradio dropdown labelled `label`."""
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(page.get_by_label(label, exact=True)).to_have_value(option)


def set_number(page, label: str, value, slider: bool = False) -> None:
    """Type `value` into the number box labelled `label` (a gr.Number, or a gr.Slider's box) and commit it."""
    box = page.get_by_label(f"number input for {label}" if slider else label, exact=True).filter(visible=True)
    box.fill(str(value))
    box.press("Enter")
    expect(box).to_have_value(str(value))
    if slider:
        expect(page.get_by_label(f"range slider for {label}", exact=True).filter(visible=True)).to_have_value(str(value))


# ------------------------------------------------------------------------------ tests
def test_every_tab_and_sub_tab_opens(page, shots):
    for name in TABS:
        open_tab(page, name)
    open_tab(page, "Diffusion, step by step")
    expect(page.get_by_role("button", name="Sample", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Reconstruct")).to_be_hidden()
    main_button = {"Sample": "Sample", "Denoise an upload": "Denoise from here", "Inpaint": "Inpaint",
                   "Compare samplers": "Compare"}
    for name in DIFFUSION_SUBTABS:
        open_tab(page, name)
        expect(page.get_by_role("button", name=main_button[name], exact=True)).to_be_visible()
    # The class-conditional tiny model shows its category picker once the page has loaded.
    expect(page.get_by_label("Category", exact=True)).to_be_visible()
    # Every panel shows the example on load: the scrub row holds the example run's middle step, before any click.
    for label in ("x_t", "x̂0", "ε̂ (predicted noise)", "Noise schedule (ᾱ_t, log-SNR)"):
        expect_image(page, label)
    open_tab(page, "Sample")
    expect(page.get_by_text(re.compile(r"^Example: .* shown at step 26 of 50"))).to_be_visible()
    open_tab(page, "VQGAN codebook")
    expect(page.get_by_role("button", name="Analyze")).to_be_visible()
    for label in ("Codebook atlas (click a tile to pick its code)", "Usage",
                  "PCA of code vectors (colour = the code's mean colour)", "Token grid (click a cell)"):
        expect_image(page, label)
    expect(page.get_by_text(re.compile(r"^Example: rocket\.png\. Click a cell"))).to_be_visible()
    open_tab(page, "VQ-VAE reconstruction")
    expect(page.get_by_role("button", name="Reconstruct")).to_be_visible()
    screenshot(page, shots, "00-start")


def test_reconstruct_tab_shows_panels_metrics_and_downloads(page, app, photo, shots):
    _, vq_label, other_vq, _ = app
    upload(page, RECONSTRUCT_UPLOAD, photo)
    choose(page, "Compare with", other_vq)
    page.get_by_role("button", name="Reconstruct").click()
    for label in ("original", "reconstruction", "absolute error", "token indices (codes as colours)",
                  "reconstruction (compare)", "absolute error (compare)", "token indices (compare)",
                  "JPEG at the same bits per pixel"):
        expect_image(page, label)
    table = block(page, "Metrics")
    for text in ("PSNR (dB)", "SSIM", "bits per pixel", "distinct codes used (JPEG: quality)"):
        expect(table.get_by_text(text, exact=True).filter(visible=True).first).to_be_visible()
    expect(table.get_by_text(re.compile(r"^JPEG at ")).filter(visible=True).first).to_be_visible()
    expect(table.get_by_role("columnheader")).to_have_count(4)  # metric, model, compare model, JPEG
    expect(page.get_by_text("44x30 pixels -> 15x22 tokens.")).to_be_visible()
    downloads = block(page, "Downloads: reconstruction (PNG) and token grid (.npy)")
    expect_download(downloads, f"reconstruction_{Path(vq_label).name}.png")
    expect_download(downloads, f"tokens_{Path(vq_label).name}.npy")
    expect(page.locator(".toast-body")).to_have_count(0)
    screenshot(page, shots, "01-reconstruct")


def test_bad_uploads_show_a_readable_error_and_the_app_keeps_working(page, photo, tmp_path, shots):
    svg = tmp_path / "drawing.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>')
    text = tmp_path / "notes.png"
    text.write_text("not a picture at all")
    button = page.get_by_role("button", name="Reconstruct")

    upload(page, RECONSTRUCT_UPLOAD, svg)
    button.click()
    expect_toast(page, "SVG is a vector format GenLab cannot read")
    screenshot(page, shots, "02-bad-upload-svg")
    dismiss_toasts(page)

    upload(page, RECONSTRUCT_UPLOAD, text)
    button.click()
    expect_toast(page, "This file is not an image GenLab can read")
    screenshot(page, shots, "03-bad-upload-text")
    dismiss_toasts(page)
    expect(page.get_by_text("Traceback")).to_have_count(0)

    upload(page, RECONSTRUCT_UPLOAD, photo)
    button.click()
    expect_image(page, "reconstruction")
    expect(block(page, "Metrics").get_by_text("PSNR (dB)", exact=True).filter(visible=True).first).to_be_visible()
    expect(page.locator(".toast-body")).to_have_count(0)


def test_codebook_tab_analyzes_an_upload(page, photo, shots):
    open_tab(page, "VQGAN codebook")
    upload(page, "Image", photo)
    page.get_by_role("button", name="Analyze").click()
    expect_image(page, "Codebook atlas (click a tile to pick its code)")
    expect_image(page, "Token grid (click a cell)")
    expect(page.get_by_text("current image", exact=True)).to_be_visible()  # the stats table's second row
    expect(page.get_by_role("columnheader", name="perplexity")).to_be_visible()
    for plot in ("Usage", "PCA of code vectors (colour = the code's mean colour)"):
        expect(block(page, plot).locator(".js-plotly-plot, canvas, svg.main-svg, img").first).to_be_visible()
    page.get_by_role("button", name="Show cell").click()
    expect_image(page, "Where the code is used")
    expect(page.get_by_text(re.compile(r"Cell \(0, 0\) holds code"))).to_be_visible()
    expect(page.locator(".toast-body")).to_have_count(0)
    screenshot(page, shots, "04-codebook")


def upload_and_paint(page, label: str, path) -> None:
    """Upload `path` into the image editor labelled `label` (its own Upload button) and paint a brush stroke."""
    editor = block(page, label)
    with page.expect_file_chooser() as chooser:
        editor.get_by_role("button", name="Upload", exact=True).click()
    chooser.value.set_files(str(path))
    paint_stroke(page, editor)


def paint_stroke(page, editor) -> None:
    """Pick the editor's brush and drag a short stroke across the middle of its canvas."""
    canvas = editor.locator("canvas").first
    expect(canvas).to_be_visible()
    page.wait_for_timeout(2000)  # the editor draws its background onto the canvas
    editor.get_by_role("button", name="Brush", exact=True).click()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 8):
        page.mouse.move(x + step * box["width"] * 0.02, y + step * box["height"] * 0.01)
    page.mouse.up()


def test_token_prior_example_generate_scrub_and_inpaint(page, photo, shots):
    """The codebook tab opens on a finished example run; Generate streams to done; the step slider scrubs;
    a brush stroke inpaints tokens."""
    open_tab(page, "VQGAN codebook")
    expect(page.get_by_text(re.compile(r"^Example: a, done: 12 steps, confidence order, seed 0"))).to_be_visible()
    for label in ("token grid (grey = masked, outlined = new)", "decoded so far (masked cells grey)",
                  "x̂0: the decoded full prediction"):
        expect_image(page, label)
    expect(page.get_by_label("Class", exact=True)).to_have_value("a")
    screenshot(page, shots, "24-prior-example")
    set_number(page, "Steps", 6)
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text(re.compile(r"^done: 6 steps, confidence order, seed 0"))).to_be_visible()
    set_number(page, "step (scrub the finished run: 6 steps)", 2, slider=True)
    expect(page.get_by_text(re.compile(r"^step 2 of 6: \d+ of 64 tokens known"))).to_be_visible()
    screenshot(page, shots, "25-prior-scrub")
    open_tab(page, "Inpaint tokens")
    upload_and_paint(page, "Image and mask (brush = resample)", photo)
    page.get_by_role("button", name="Inpaint with the prior", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Resampled \d+ of 64 tokens"))).to_be_visible()
    expect(page.locator(".toast-body")).to_have_count(0)
    screenshot(page, shots, "26-prior-inpaint")


def test_codebook_region_edit_with_a_brush(page, photo, shots):
    open_tab(page, "VQGAN codebook")
    upload(page, "Image", photo)
    page.get_by_role("button", name="Analyze").click()
    expect_image(page, "Token grid (click a cell)")
    editor = block(page, "Analysed image (brush = region to edit)")
    expect(editor.locator("canvas").first).to_be_visible()
    paint_stroke(page, editor)
    set_number(page, "replace with code", 5)
    page.get_by_role("button", name="Replace region").click()
    expect(page.get_by_text(re.compile(r"^[1-9]\d* of 330 tokens differ from the original image"))).to_be_visible()
    expect_image(page, "after")
    expect(page.locator(".toast-body")).to_have_count(0)
    screenshot(page, shots, "27-codebook-region-edit")


def test_diffusion_sample_streams_to_done(page, shots):
    open_tab(page, "Diffusion, step by step")
    open_tab(page, "Sample")
    set_number(page, "Steps", 8, slider=True)
    set_number(page, "Batch (grid)", 4, slider=True)
    page.get_by_role("button", name="Sample", exact=True).click()
    expect(page.get_by_text(re.compile(r"^done: 8 steps, seed 0"))).to_be_visible(timeout=ACTION_MS)
    expect_image(page, "x_t (live)")
    expect_image(page, "x̂0 (live)")
    downloads = block(page, "Downloads (PNG, GIF; MP4 when ffmpeg is installed)")
    expect_download(downloads, re.compile(r"_ddim_8steps_seed0_sample\.png$"))
    expect_download(downloads, re.compile(r"_ddim_8steps_seed0_sample\.gif$"))
    expect(page.locator(".toast-body")).to_have_count(0)
    # Scrubbing replays the stored trajectory without another model call.
    set_number(page, "step (8 kept)", 3, slider=True)
    for label in ("x_t", "x̂0", "ε̂ (predicted noise)"):
        expect_image(page, label)
    screenshot(page, shots, "05-diffusion-sample")


def test_diffusion_denoise_an_upload(page, photo, shots):
    open_tab(page, "Diffusion, step by step")
    open_tab(page, "Denoise an upload")
    upload(page, "Image", photo)
    expect_image(page, "x_t = q(x_t | x_0)")  # the upload's preview, before any button
    set_number(page, "Steps (0 = default)", 4)
    page.get_by_role("button", name="Denoise from here").click()
    expect(page.get_by_text(re.compile(r"PSNR vs the original: GenLab .* dB"))).to_be_visible(timeout=ACTION_MS)
    expect_image(page, "GenLab (reverse process)")
    expect_image(page, "scikit-image non-local means, same sigma")
    expect(page.locator(".toast-body")).to_have_count(0)
    screenshot(page, shots, "06-diffusion-denoise")


def test_diffusion_inpaint_with_a_brush(page, photo, shots):
    """Upload into gradio's image editor, paint a stroke with the brush, inpaint: only the stroke is repainted."""
    open_tab(page, "Diffusion, step by step")
    open_tab(page, "Inpaint")
    upload_and_paint(page, "Image and mask (brush = repaint)", photo)
    page.get_by_role("button", name="Inpaint", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Repainted [\d,]+ of 1,320 pixels"))).to_be_visible(timeout=ACTION_MS)
    expect_image(page, "result (live: x̂0)")
    expect_image(page, "mask (white = repainted)")
    expect(page.locator(".toast-body")).to_have_count(0)
    screenshot(page, shots, "08-diffusion-inpaint")


def test_diffusion_compare_samplers(page, shots):
    open_tab(page, "Diffusion, step by step")
    open_tab(page, "Compare samplers")
    page.get_by_role("button", name="Compare", exact=True).click()
    gallery = block(page, "Same noise, different samplers")
    images = gallery.locator("img")
    expect(images).to_have_count(3, timeout=ACTION_MS)
    for index, caption in enumerate(("DDIM 10", "DDIM 50", "DPM-Solver++ 10")):
        expect(images.nth(index)).to_have_attribute("alt", caption)
        expect(images.nth(index)).to_have_attribute("src", re.compile(r"/file=.+"))
    expect(page.locator(".toast-body")).to_have_count(0)
    screenshot(page, shots, "07-diffusion-compare")


# --------------------------------------------------------------- the embedded models, as shipped
@pytest.fixture(scope="module")
def embedded_app():
    """`python app.py` as a user starts it (the bench's launcher): the models committed in weights/."""
    with pytest.MonkeyPatch.context() as patch:  # REPO/weights: the `app` fixture patches WEIGHTS_DIR
        patch.setattr(genlab.loading.registry, "WEIGHTS_DIR", REPO / "weights")
        missing = [name for name, status in genlab.loading.registry.embedded_status().items() if status != "trained"]
    assert not missing, f"weights/ lacks the embedded models {missing}"
    with serving_app(torch.device("cpu"), timeout_s=LOAD_MS / 1000) as (url, _):
        yield url


def test_embedded_models_end_to_end(browser, embedded_app, shots):
    """Every tab's main action on the shipped weights: the app tests' checks in a real browser."""
    with opened_page(browser, embedded_app, EMBEDDED_MS) as page:
        click_through_embedded_models(page, shots)


def click_through_embedded_models(page, shots) -> None:
    rocket = REPO / "genlab" / "assets" / "examples" / "rocket.png"
    # the first view: the example photo already reconstructed by vqvae-photo against vqgan-photo
    expect(page.get_by_text(re.compile(r"^Example: rocket\.png\. 256x256 pixels"))).to_be_visible(timeout=EMBEDDED_MS)
    for label in ("original", "reconstruction", "reconstruction (compare)", "JPEG at the same bits per pixel"):
        expect_image(page, label)
    screenshot(page, shots, "09-embedded-first-view")
    upload(page, RECONSTRUCT_UPLOAD, rocket)
    page.get_by_role("button", name="Reconstruct").click()
    expect_image(page, "reconstruction")
    expect(block(page, "Metrics").get_by_text("PSNR (dB)", exact=True).filter(visible=True).first).to_be_visible()
    screenshot(page, shots, "10-embedded-reconstruct")

    open_tab(page, "VQGAN codebook")
    upload(page, "Image", rocket)
    page.get_by_role("button", name="Analyze").click()
    expect_image(page, "Token grid (click a cell)")
    expect_image(page, "Codebook atlas (click a tile to pick its code)")
    screenshot(page, shots, "11-embedded-codebook")

    # VQGAN's second stage: maskgit-emoji's example run is there on load; generate a class, scrub it, inpaint tokens
    expect(page.get_by_text(re.compile(r"^Example: Smileys & Emotion, done: 12 steps, confidence order, seed 0"))
           ).to_be_visible(timeout=EMBEDDED_MS)
    choose(page, "Class", "Animals & Nature")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text(re.compile(r"^done: 12 steps, confidence order, seed 0"))).to_be_visible(timeout=EMBEDDED_MS)
    set_number(page, "step (scrub the finished run: 12 steps)", 4, slider=True)
    expect(page.get_by_text(re.compile(r"^step 4 of 12: \d+ of 256 tokens known"))).to_be_visible()
    for label in ("token grid (grey = masked, outlined = new)", "decoded so far (masked cells grey)",
                  "x̂0: the decoded full prediction"):
        expect_image(page, label)
    screenshot(page, shots, "17-embedded-prior-generate")
    open_tab(page, "Inpaint tokens")
    upload_and_paint(page, "Image and mask (brush = resample)", REPO / "genlab" / "assets" / "examples" / "emoji-grinning.png")
    page.get_by_role("button", name="Inpaint with the prior", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Resampled \d+ of 256 tokens"))).to_be_visible(timeout=EMBEDDED_MS)
    screenshot(page, shots, "18-embedded-prior-inpaint")
    expect(page.locator(".toast-body")).to_have_count(0)

    open_tab(page, "Diffusion, step by step")
    model = page.get_by_label("Model", exact=True).filter(visible=True)
    expect(model).to_have_value("sd-emoji (latent)")  # the text-to-image model, its example prompt in the box
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("red heart", timeout=EMBEDDED_MS)
    page.get_by_role("button", name="Sample", exact=True).click()  # the UI defaults: DDIM 50, one image
    expect(page.get_by_text(re.compile(r"^done: 50 steps, seed 0"))).to_be_visible(timeout=EMBEDDED_MS)
    expect_image(page, "x̂0 (live)")
    set_number(page, "step (50 kept)", 10, slider=True)
    for label in ("x_t", "x̂0", "ε̂ (predicted noise)", "Noise schedule (ᾱ_t, log-SNR)"):
        expect_image(page, label)
    screenshot(page, shots, "12-embedded-sample")

    open_tab(page, "Denoise an upload")
    expect(model).to_have_value("ddpm-photo")  # the photo denoiser is this sub-tab's default
    upload(page, "Image", rocket)
    expect_image(page, "x_t = q(x_t | x_0)")
    page.get_by_role("button", name="Denoise from here").click()
    expect(page.get_by_text(re.compile(r"PSNR vs the original: GenLab .* dB"))).to_be_visible(timeout=EMBEDDED_MS)
    expect_image(page, "GenLab (reverse process)")
    expect_image(page, "scikit-image non-local means, same sigma")
    page.get_by_label("My photo is already noisy: give sigma", exact=True).check()
    page.get_by_role("button", name="Estimate sigma").click()
    page.get_by_role("button", name="Denoise from here").click()
    expect(page.get_by_text(re.compile(r"^Started at t = \d+ for sigma"))).to_be_visible(timeout=EMBEDDED_MS)
    screenshot(page, shots, "13-embedded-denoise")

    open_tab(page, "Compare samplers")
    expect(model).to_have_value("sd-emoji (latent)")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("red heart")  # emptied for ddpm-photo, refilled
    page.get_by_role("button", name="Compare", exact=True).click()
    expect(block(page, "Same noise, different samplers").locator("img")).to_have_count(3, timeout=EMBEDDED_MS)
    screenshot(page, shots, "14-embedded-compare")
    expect(page.locator(".toast-body")).to_have_count(0)

    # latent diffusion: ldm-emoji's 64 px samples from 16x16x4 latents, then SDEdit of an emoji in its latent space
    open_tab(page, "Sample")
    model.click()
    page.get_by_role("option", name="ldm-emoji (latent)", exact=True).click()
    expect(model).to_have_value("ldm-emoji (latent)")
    choose(page, "Category", "Animals & Nature")
    set_number(page, "Batch (grid)", 4, slider=True)
    page.get_by_role("button", name="Sample", exact=True).click()
    expect(page.get_by_text(re.compile(r"^done: 50 steps, seed 0.*latent 4x16x16 = 1,024 values per step"))).to_be_visible(
        timeout=EMBEDDED_MS)
    expect_image(page, "latent x_t: its channels side by side (latent models)")
    set_number(page, "step (50 kept)", 20, slider=True)
    for label in ("latent x_t (latent models)", "x_t", "x̂0", "ε̂ (predicted noise)"):
        expect_image(page, label)
    screenshot(page, shots, "15-embedded-latent-sample")
    open_tab(page, "Denoise an upload")
    expect(model).to_have_value("ldm-emoji (latent)")  # only the pixel models' defaults switch
    upload(page, "Image", REPO / "genlab" / "assets" / "examples" / "emoji-grinning.png")
    page.get_by_label("My image is clean: noise it to t", exact=True).check()
    page.get_by_role("button", name="Denoise from here").click()
    expect(page.get_by_text(re.compile(r"PSNR vs the original: GenLab .* latent space"))).to_be_visible(timeout=EMBEDDED_MS)
    screenshot(page, shots, "16-embedded-latent-sdedit")
    expect(page.locator(".toast-body")).to_have_count(0)
