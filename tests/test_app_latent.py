"""The diffusion tab on latent and text-conditioned models, inpainting and the work cap, through gradio_client."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

import genlab  # noqa: E402
from genlab.tools.bench import free_port  # noqa: E402
from genlab.config import parse_args  # noqa: E402
from genlab.ui import build_app, diffusion_requests, diffusion_tab  # noqa: E402
from genlab.ui.common import OUTPUT_DIR  # noqa: E402


@pytest.fixture(scope="module")
def app(tiny_kl_ldm_dir, tiny_sd_dir, tiny_cond_ddpm_dir):
    """(client, latent label, text label, pixel label) for an app serving the tiny models."""
    port = free_port()
    config = parse_args(["--model", f"diffusion={tiny_kl_ldm_dir}", "--model", f"diffusion={tiny_sd_dir}",
                         "--model", f"diffusion={tiny_cond_ddpm_dir}", "--port", str(port)], environ={})
    demo = build_app(config)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(OUTPUT_DIR)])
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, str(tiny_kl_ldm_dir), str(tiny_sd_dir), str(tiny_cond_ddpm_dir)
    demo.close()


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    y, x = np.mgrid[0:16, 0:16] / 15.0
    path = tmp_path_factory.mktemp("latent-app") / "picture.png"
    Image.fromarray((np.stack([x, y, 1 - x], axis=-1) * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def brush(tmp_path_factory) -> str:
    """An editor layer: transparent, with a painted square."""
    layer = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (4, 4, 10, 10))
    path = tmp_path_factory.mktemp("latent-app") / "layer.png"
    layer.save(path)
    return str(path)


def size(path) -> tuple[int, int]:
    return Image.open(path).size


def test_latent_sample_streams_latent_and_decoded_frames(app):
    client, latent, _, _ = app
    job = client.submit(latent, "ddim", 4, 0, 1, "a", 2.0, 0.0, "", "", api_name="/sample")
    final = job.result()
    outputs = job.outputs()
    assert outputs[0][2] == "x_T: pure noise" and outputs[0][6] is not None  # the latent x_T is shown first
    streamed = outputs[1]
    assert streamed[2].startswith("t = ")
    assert size(streamed[0]) == size(streamed[1]) == (256, 256)  # 16 px decoded (preview), enlarged
    assert size(streamed[6]) == (256, 64)  # four 8x8 latent channels side by side, enlarged
    assert final[2].startswith("done: 4 steps") and "latent 4x8x8 = 256 values per step" in final[2]
    assert "768 pixel values" in final[2] and "ms per step" in final[2]


def test_latent_scrub_decodes_with_the_real_decoder(app):
    client, latent, _, _ = app
    client.predict(latent, "ddim", 3, 5, 1, "b", 1.0, 0.0, "", "", api_name="/sample")
    x_t, x0, eps, _, latent_panel = client.predict(latent, 1, api_name="/scrub")
    assert size(x_t) == size(x0) == (256, 256) and latent_panel is not None and eps is not None
    dm = genlab.load_diffusion(latent, device="cpu")
    run = dm.sample(seed=5, steps=3, class_label="b", guidance_scale=1.0)
    expected = diffusion_tab.upscale(run.frames[1].x0)  # the real decoder's x̂0 of the same step
    got = np.asarray(Image.open(x0).convert("RGB"), dtype=np.int16)
    assert np.abs(got - np.asarray(expected, dtype=np.int16)).max() <= 2  # fp16 storage of the latent


def test_text_model_takes_prompts(app):
    client, _, text, _ = app
    first = client.predict(text, "ddim", 2, 0, 1, "", 3.0, 0.0, "a red fox", "blurry", api_name="/sample")
    other = client.predict(text, "ddim", 2, 0, 1, "", 3.0, 0.0, "a grey cat", "blurry", api_name="/sample")
    assert not np.array_equal(np.asarray(Image.open(first[0])), np.asarray(Image.open(other[0])))
    with pytest.raises(Exception, match="conditioned on text"):
        client.predict(text, "ddim", 2, 0, 1, "a", 3.0, 0.0, "a fox", "", api_name="/sample")
    with pytest.raises(Exception, match="not text-conditioned"):
        client.predict(app[1], "ddim", 2, 0, 1, "a", 3.0, 0.0, "a fox", "", api_name="/sample")


def test_latent_denoise_and_noise_preview(app, picture):
    client, latent, _, _ = app
    preview, _ = client.predict(latent, handle_file(picture), "clean", 300, 25, 0, api_name="/noise_preview")
    assert size(preview) == (16, 16)
    result = client.predict(latent, handle_file(picture), "clean", 100, 25, 2, 0, "ddim", "", 1.0, "", "",
                            api_name="/denoise")
    assert size(result[0]) == (16, 16) and "latent space" in result[2]
    result = client.predict(latent, handle_file(picture), "noisy", 0, 25, 0, 0, "ddim", "", 1.0, "", "",
                            api_name="/denoise")
    assert "sigma = 25.0/255" in result[2]


@pytest.mark.parametrize("model", [1, 3])  # latent, pixel
def test_inpaint_keeps_the_unpainted_pixels(app, picture, brush, model):
    client, label = app[0], app[model]
    editor = {"background": handle_file(picture), "layers": [handle_file(brush)], "composite": None}
    result, mask, text, *_ = client.predict(label, editor, 3, 0, "ddim", "a", 1.0, "", "", api_name="/inpaint")
    assert "Repainted 36 of 256 pixels" in text
    out = np.asarray(Image.open(result).convert("RGB").resize((16, 16), Image.Resampling.NEAREST), dtype=np.int16)
    source = np.asarray(Image.open(picture), dtype=np.int16)
    outside = np.ones((16, 16), bool)
    outside[4:10, 4:10] = False
    assert (out[outside] == source[outside]).all()


def test_inpaint_refuses_an_empty_mask_or_no_image(app, picture, tmp_path):
    client, latent = app[0], app[1]
    blank = tmp_path / "blank.png"
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(blank)
    editor = {"background": handle_file(picture), "layers": [handle_file(str(blank))], "composite": None}
    with pytest.raises(Exception, match="mask is empty"):
        client.predict(latent, editor, 3, 0, "ddim", "a", 1.0, "", "", api_name="/inpaint")
    with pytest.raises(Exception, match="Upload an image"):
        client.predict(latent, {"background": None, "layers": [], "composite": None}, 3, 0, "ddim", "a", 1.0, "", "",
                       api_name="/inpaint")


def test_work_cap_says_what_to_lower_and_the_server_keeps_serving(app, monkeypatch):
    client, latent, _, pixel = app
    monkeypatch.setattr(diffusion_requests, "MAX_WORK", 10_000)
    with pytest.raises(Exception, match="Lower the steps, the batch"):
        client.predict(pixel, "ddim", 50, 0, 4, "a", 3.0, 0.0, "", "", api_name="/sample")
    with pytest.raises(Exception, match="Lower the steps"):
        client.predict(pixel, ["DDIM 10", "DDPM 100"], 0, "a", 3.0, "", "", api_name="/compare")
    monkeypatch.undo()
    assert client.predict(latent, "ddim", 2, 0, 1, "a", 1.0, 0.0, "", "", api_name="/sample")[2].startswith("done")


def test_work_cap_passes_the_defaults_and_presets_of_the_embedded_models(tiny_dm, tiny_kl_ldm_dir):
    """Units only depend on the sample positions: emulate ddpm-emoji (32 px), ldm-emoji (64 px, f = 4) and
    ddpm-photo (denoising up to 512 px) with the tiny models' codecs."""
    ldm = genlab.load_diffusion(tiny_kl_ldm_dir, device="cpu")
    check = diffusion_requests.check_work
    assert check(tiny_dm, [(1000, 16, True)], (32, 32)) <= diffusion_requests.MAX_WORK  # slider maxima, guided
    assert check(tiny_dm, [(10, 1, True), (50, 1, True), (100, 1, True), (1000, 1, True)], (32, 32))  # compare
    ldm.codec.factor = 4
    try:
        assert check(ldm, [(1000, 16, True)], (64, 64)) <= diffusion_requests.MAX_WORK
    finally:
        ldm.codec.factor = 2
    assert check(tiny_dm, [(50, 1, False)], (512, 512))  # the denoiser's default at the largest upload
    with pytest.raises(genlab.InputError, match="Lower the steps"):
        check(tiny_dm, [(1000, 1, False)], (512, 512))
