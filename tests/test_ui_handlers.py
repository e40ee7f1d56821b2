"""The tabs' handlers called directly, without launching the app: each section is built inside a gr.Blocks (its
components exist, nothing is served), its handler takes its request and returns a dict keyed by output
component, and a bad input raises gr.Error with a message that says what to do."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from genlab.config import parse_args  # noqa: E402
from genlab.toy import views  # noqa: E402
from genlab.ui import compat, diffusion_tab, foundations_tab  # noqa: E402
from genlab.ui.codebook import explorer, generation  # noqa: E402
from genlab.ui.common import Registry, positional  # noqa: E402


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
        codebook = explorer.build(registry)
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
    hidden = tab.conditioning_update("no-such-model")
    assert not any(update.visible for update in hidden.values())


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
