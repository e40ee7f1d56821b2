"""The tabs' handlers called directly, without launching the app: each section is built inside a gr.Blocks (its
components exist, nothing is served), its handler takes its request and returns a dict keyed by output
component, and a bad input raises gr.Error with a message that says what to do."""

from __future__ import annotations

import inspect
import json
import shutil
import warnings

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")

import genlab  # noqa: E402
from genlab.config import parse_args  # noqa: E402
from genlab.toy import views  # noqa: E402
from genlab.ui import compat, diffusion_example, diffusion_tab, foundations_tab  # noqa: E402
from genlab.ui.codebook import explorer, generation  # noqa: E402
from genlab.ui.common import DISPLAY_SIDE, Registry, positional, upscale  # noqa: E402


@pytest.fixture(scope="module")
def registry(tiny_cond_ddpm_dir, tiny_prior_dir, tiny_vq_dir):
    config = parse_args(["--model", f"diffusion={tiny_cond_ddpm_dir}", "--model", f"prior={tiny_prior_dir}",
                         "--model", f"vq={tiny_vq_dir}"], environ={})
    return Registry(config)


@pytest.fixture(scope="module")
def tabs(registry):
    """The diffusion tab and the codebook sections, built (not launched)."""
    with gr.Blocks() as demo:
        diffusion = diffusion_tab.build(registry, demo)
        prior = generation.build(registry, demo)
        codebook = explorer.build(registry, demo)
    return diffusion, prior, codebook


def test_positional_adapter_keeps_the_api_parameters_and_builds_the_request():
    adapter = positional(lambda request: request, diffusion_tab.CompareRequest)
    assert list(inspect.signature(adapter).parameters) == ["label", "settings", "seed", "class_name", "guidance",
                                                          "prompt", "negative_prompt"]
    request = adapter("m", ["DDIM 10", "DDIM 50"], 3, "a", 2.0, "", "")
    assert request == diffusion_tab.CompareRequest("m", ["DDIM 10", "DDIM 50"], 3, "a", 2.0, "", "")
    inpaint = positional(lambda request: request, generation.PriorRequest, ("label", "editor", *generation.SETTINGS))
    parameters = inspect.signature(inpaint).parameters
    assert list(parameters)[:3] == ["label", "editor", "order"]
    assert parameters["editor"].default is inspect.Parameter.empty  # only trailing defaults, as the API had them
    assert inpaint("p", {"background": None}, "raster", 4, 1.0, 0, 1.0, 0).editor == {"background": None}


def test_diffusion_sample_yields_outputs_by_component(tabs, tiny_cond_ddpm_dir):
    tab = tabs[0]
    request = diffusion_tab.SampleRequest(label=str(tiny_cond_ddpm_dir), scheduler="ddim", steps=3, seed=0, batch=2,
                                          class_name="a", guidance=2.0, eta=0.0)
    frames = list(tab.sample(request))
    assert frames[0][tab.status] == "x_T: pure noise"
    assert set(frames[0]) == {tab.live_xt, tab.live_x0, tab.status, tab.live_latent, tab.live_eps}
    assert [frame[tab.status] for frame in frames[1:-1]] and all(
        frame[tab.status].startswith("t = ") for frame in frames[1:-1])
    final = frames[-1]
    assert final[tab.status].startswith("done: 3 steps, seed 0")
    assert len(final[tab.trajectory]["timesteps"]) == 3 and final[tab.downloads]
    scrubbed = tab.scrub(str(tiny_cond_ddpm_dir), 1, final[tab.trajectory])
    assert set(scrubbed) == {tab.scrub_xt, tab.scrub_x0, tab.scrub_eps, tab.schedule_plot, tab.scrub_latent}
    assert scrubbed[tab.scrub_latent] is None  # a pixel model has no latent panel


def test_diffusion_handlers_refuse_bad_inputs_with_gr_error(tabs, tiny_cond_ddpm_dir):
    tab = tabs[0]
    label = str(tiny_cond_ddpm_dir)
    with pytest.raises(gr.Error, match="Pick 2 to 4 sampler settings"):
        tab.compare(diffusion_tab.CompareRequest(label, ["DDIM 10"], 0, "a", 1.0))
    with pytest.raises(gr.Error, match="Run a sample or a denoise first"):
        tab.scrub(label, 0, {})
    with pytest.raises(gr.Error, match="Upload an image first"):
        list(tab.denoise(diffusion_tab.DenoiseRequest(label, None, "clean", 100, 25, 0, 0, "ddim", "a", 1.0)))
    with pytest.raises(gr.Error, match="Unknown diffusion model"):
        list(tab.sample(diffusion_tab.SampleRequest("no-such-model", "ddim", 2, 0, 1, "a", 1.0, 0.0)))
    assert tab.switch_model(tab.sampler_default, tab.sampler_default, "other") == {tab.model: "other"}


def test_conditioning_controls_follow_the_model(tabs, tiny_cond_ddpm_dir):
    tab = tabs[0]
    shown = tab.conditioning_update(str(tiny_cond_ddpm_dir))
    controls = tab.conditioning
    assert set(shown) == set(controls.components)
    assert shown[controls.class_name].visible and not shown[controls.prompt].visible
    assert shown[controls.guidance].info == "classifier-free: 1 is the conditional model alone"
    hidden = tab.conditioning_update("no-such-model")
    assert not any(update.visible for update in hidden.values())


def test_the_guidance_slider_names_a_models_guidance_interval(tabs, tiny_cond_ddpm_dir):
    model = genlab.load_diffusion(tiny_cond_ddpm_dir, device="cpu")
    model.default_guidance_interval = (0.5, 10.0)  # as genlab.json's default_guidance_interval loads it
    shown = tabs[0].conditioning.update(model)[tabs[0].conditioning.guidance]
    assert shown.info == "classifier-free, applied where 0.5 < σ_t ≤ 10 (this model's guidance interval)"


def test_the_guidance_slider_names_a_models_autoguidance_and_the_work_cap_counts_its_guide(tabs, tiny_cond_ddpm_dir,
                                                                                           tmp_path):
    import json
    import shutil

    from conftest import build_unet
    from genlab.ui.diffusion_requests import check_work

    folder = shutil.copytree(tiny_cond_ddpm_dir, tmp_path / "guided")
    build_unet(folder / "unet_guide", seed=7, num_class_embeds=3)
    info = json.loads((folder / "genlab.json").read_text())
    (folder / "genlab.json").write_text(json.dumps({**info, "default_autoguidance_scale": 2.0}))
    model = genlab.load_diffusion(folder, device="cpu")
    shown = tabs[0].conditioning.update(model)[tabs[0].conditioning.guidance]
    assert shown.info == ("classifier-free: 1 is the conditional model alone; plus autoguidance 2 away from this "
                          "model's less-trained copy (unet_guide/)")
    plain = genlab.load_diffusion(tiny_cond_ddpm_dir, device="cpu")
    side = (model.sample_size,) * 2
    assert check_work(model, [(10, 2, True)], side) == 3 * check_work(plain, [(10, 2, False)], side)
    assert check_work(model, [(10, 2, False)], side) == 2 * check_work(plain, [(10, 2, False)], side)


def test_prior_handlers_take_a_request_and_refuse_bad_settings(tabs, tiny_prior_dir):
    section = tabs[1]
    label = str(tiny_prior_dir)
    frames = list(section.prior_sample(generation.PriorRequest(label, "confidence", 3, 1.0, 0, 1.0, 0, "a")))
    assert frames[0][section.status].startswith("all 64 tokens masked")
    final = frames[-1]
    assert final[section.status].startswith("done: 3 steps") and final[section.run_state]["model"] == label
    scrubbed = section.prior_scrub(2, final[section.run_state])
    assert scrubbed[section.status].startswith("step 2 of 3")
    with pytest.raises(gr.Error, match="Set a temperature"):
        list(section.prior_sample(generation.PriorRequest(label, "confidence", 3, None, 0, 1.0, 0, "a")))
    with pytest.raises(gr.Error, match="steps must be a whole number"):
        list(section.prior_sample(generation.PriorRequest(label, "confidence", 2.5, 1.0, 0, 1.0, 0, "a")))
    with pytest.raises(gr.Error, match="Generate or inpaint first"):
        section.prior_scrub(1, {})


def test_explorer_handlers_need_an_analysed_image(tabs, tiny_vq_dir, photo_path):
    section = tabs[2]
    label = str(tiny_vq_dir)
    with pytest.raises(gr.Error, match="Analyze an image first"):
        section.cell_info(label, 0, 0, {})
    analysed = section.analyze(str(photo_path), label, 0, progress=lambda *args, **kwargs: None)
    state = analysed[section.state]
    assert analysed[section.grid] is not None and "indices" in state
    shown = section.cell_info(label, 0, 0, state)
    assert set(shown) == {section.code, section.patch, section.positions, section.cell_text}
    assert shown[section.code] == int(state["indices"][0, 0])
    with pytest.raises(gr.Error, match="inside the"):
        section.cell_info(label, 10**4, 0, state)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)


def is_nearest_upscale(big, small) -> bool:
    """`big` is `small` with every pixel an equal square block (nearest neighbour, a whole-number scale)."""
    big, small = pixels(big), pixels(small)
    scale = big.shape[0] // small.shape[0]
    return (scale > 1 and big.shape[:2] == (small.shape[0] * scale, small.shape[1] * scale)
            and np.array_equal(big, small.repeat(scale, axis=0).repeat(scale, axis=1)))


def test_small_images_fill_their_panel_by_nearest_neighbour():
    rng = np.random.default_rng(0)
    for side, scale in ((32, 8), (64, 4), (134, 2), (200, 2)):
        small = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        big = upscale(Image.fromarray(small))
        assert big.size == (side * scale, side * scale) and big.width >= DISPLAY_SIDE
        assert is_nearest_upscale(big, small)
    wide = Image.fromarray(rng.integers(0, 256, (32, 66, 3), dtype=np.uint8))  # a batch of two 32 px samples
    assert upscale(wide).size == (264, 128) and is_nearest_upscale(upscale(wide), wide)
    large = Image.new("RGB", (300, 40))
    assert upscale(large) is large  # already as large as the panel


def test_page_load_fills_the_scrub_row_and_the_slider_scrubs_it(tabs, tiny_cond_ddpm_dir):
    """The example run (seed 0, 50 DDIM steps) is the session's last run: scrub panels filled at the middle step,
    the slider over it, scrubbing at once, and the run sampled once per model."""
    tab = tabs[0]
    label = str(tiny_cond_ddpm_dir)
    shown = tab.example(label)
    trajectory = shown[tab.trajectory]
    assert len(trajectory["timesteps"]) == diffusion_example.EXAMPLE_STEPS
    middle = diffusion_example.EXAMPLE_STEPS // 2
    assert shown[tab.scrub_slider].value == middle and shown[tab.scrub_slider].maximum == len(trajectory["x_t"]) - 1
    for panel, key in ((tab.scrub_xt, "x_t"), (tab.scrub_x0, "x0"), (tab.scrub_eps, "eps")):
        assert shown[panel] is not None and is_nearest_upscale(shown[panel], trajectory[key][middle])
        assert max(shown[panel].size) >= DISPLAY_SIDE
    assert shown[tab.scrub_latent] is None and shown[tab.schedule_plot] is not None
    assert shown[tab.status].startswith("Example: ") and "class 'a'" in shown[tab.status]
    assert shown[tab.live_xt] is not None and max(shown[tab.live_xt].size) >= DISPLAY_SIDE
    scrubbed = tab.scrub(label, 3, trajectory)  # no Sample click needed
    assert is_nearest_upscale(scrubbed[tab.scrub_x0], trajectory["x0"][3])
    again = tab.example(label)
    assert again[tab.trajectory] is trajectory  # cached: sampled once per model per process
    failed = tab.example("no-such-model")
    assert set(failed) == {tab.status} and failed[tab.status].startswith("No example: Unknown diffusion model")


@pytest.fixture(scope="module")
def denoiser_dir(tiny_ddpm_dir, tmp_path_factory):
    """The tiny pixel model as if trained by the photo-denoiser recipe (its run.json names the preset)."""
    folder = tmp_path_factory.mktemp("tiny-denoiser") / "my-denoiser"
    shutil.copytree(tiny_ddpm_dir, folder)
    (folder / "run.json").write_text(json.dumps({"commands": [
        "python -m genlab.train ddpm --preset photo-denoiser --data data/photos/train --out weights/ddpm-photo"]}))
    return folder


def test_a_denoiser_says_so_and_its_samples_are_called_texture(denoiser_dir, tiny_cond_ddpm_dir):
    config = parse_args(["--model", f"diffusion={denoiser_dir}", "--model", f"diffusion={tiny_cond_ddpm_dir}"],
                        environ={})
    registry = Registry(config)
    assert diffusion_example.is_denoiser(registry, "ddpm-photo") == ("ddpm-photo" in config.diffusion_models)
    assert not diffusion_example.is_denoiser(registry, str(tiny_cond_ddpm_dir))
    assert not diffusion_example.is_denoiser(registry, "ddpm-emoji")
    with gr.Blocks() as demo:
        tab = diffusion_tab.build(registry, demo)
    label = str(denoiser_dir)
    about = diffusion_example.about_line(registry, label)  # the line under the model picker
    assert "my-denoiser is a denoiser" in about and "undo Gaussian noise on photos" in about
    assert diffusion_example.about_line(registry, str(tiny_cond_ddpm_dir)) == ""
    assert tab.about.value == ""  # the tab opens on the tiny class model (or ddpm-emoji): a generator
    frames = tab.sample(diffusion_tab.SampleRequest(label, "ddim", 2, 0, 1, None, None, 0.0))
    first = next(frames)  # before the first UNet call
    frames.close()
    assert "texture, not a photo" in first[tab.status] and first[tab.status].endswith("x_T: pure noise")
    assert "texture, not a photo" in tab.example(label)[tab.status]


def test_ddpm_photo_is_a_denoiser_in_the_app_and_in_its_card():
    registry = Registry(parse_args([], environ={}))
    assert "ddpm-photo" in registry.config.diffusion_models and diffusion_example.is_denoiser(registry, "ddpm-photo")
    assert diffusion_example.about_line(registry, "ddpm-photo").startswith("**ddpm-photo is a denoiser**")
    card = (Path(__file__).resolve().parent.parent / "weights" / "ddpm-photo" / "README.md").read_text()
    head = card[:1500]
    assert "denoiser" in head and "not a photo generator" in head and "texture" in head


def test_explorer_shows_the_example_on_page_load(tabs, tiny_vq_dir, photo_path):
    section = tabs[2]
    label = str(tiny_vq_dir)
    shown = section.example(str(photo_path), label, 0)
    for panel in (section.atlas, section.usage_plot, section.pca_plot, section.grid, section.positions):
        assert shown[panel] is not None
    assert "perplexity" in shown[section.stats] and shown[section.cell_text].startswith("Example: photo.png")
    state = shown[section.state]
    clicked = section.cell_info(label, 1, 2, state)  # the explorer works as after Analyze
    assert clicked[section.code] == int(state["indices"][1, 2])
    analysed = section.analyze(str(photo_path), label, 0, progress=lambda *args, **kwargs: None)
    assert np.array_equal(analysed[section.state]["indices"], state["indices"])
    assert section.example(str(photo_path), label, 0)[section.state] is not state  # each visitor: their own dict
    assert set(section.example(None, label, 0)) == {section.stats}
    assert section.example(str(photo_path), "no-such-model", 0)[section.stats].startswith("No example: ")


def test_foundations_reset_returns_the_form_outputs_and_refuses_a_missing_rate():
    with gr.Blocks() as demo:
        tab = foundations_tab.build(None, demo)
    lab = views.Lab()
    form = foundations_tab.ToyForm(lab, "moons", 200, 0, "vae", 1e-3, 16, 1, 2, "nonsaturating", 2, 20, 0)
    shown = tab.reset(form)
    assert set(shown) == {tab.lab_state, tab.status, tab.samples_plot, tab.view_plot, tab.losses_plot}
    assert shown[tab.lab_state] is lab and lab.model is not None and "A fresh, untrained model" in shown[tab.status]
    with pytest.raises(gr.Error, match="Set a learning rate"):
        tab.reset(foundations_tab.ToyForm(lab, "moons", 200, 0, "vae", None, 16, 1, 2, "nonsaturating", 2, 20, 0))
    with pytest.raises(gr.Error, match="Steps per request must be between 1 and 5000"):
        list(tab.train(foundations_tab.ToyForm(lab, "moons", 200, 0, "vae", 1e-3, 16, 1, 2, "nonsaturating", 2, 20, 0,
                                               steps=10**6)))
    assert np.asarray(shown[tab.samples_plot]).ndim == 3


def test_the_gradio_shims_check_the_version_they_were_written_for():
    compat.check_gradio_version(f"{compat.GRADIO_SERIES[0]}.{compat.GRADIO_SERIES[1]}.9")
    with pytest.warns(RuntimeWarning, match="written for gradio 6.31.x"):
        compat.check_gradio_version("6.99.0")
    with pytest.raises(ImportError, match="needs gradio 6.31.x"):
        compat.check_gradio_version("7.0.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.check_gradio_version(gr.__version__)  # the installed one is the one the shims were written for
