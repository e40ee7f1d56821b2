"""The token-prior parts of the app through gradio_client: streamed generation, scrubbing, inpainting with a
painted mask, the first view's example, bits per pixel under the prior, and readable errors.

The app serves conftest's tiny token priors (8x8 tokens over a K = 16, f = 2 VQ model: 16x16 pixel
images): the class-conditional one, an unconditional one built here, and the aMUSEd-layout text prior,
given as `--model prior=...`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

import genlab  # noqa: E402
import genlab.config  # noqa: E402
from genlab.tools.bench import free_port  # noqa: E402
from genlab.config import parse_args  # noqa: E402
from genlab.loading.loaders import ModelSpec  # noqa: E402
from genlab.priors.sampling import refinement_steps  # noqa: E402
from genlab.priors.transformer import MaskedTokenTransformer  # noqa: E402
from genlab.ui import build_app  # noqa: E402
from genlab.ui.codebook import generation  # noqa: E402
from genlab.ui.common import OUTPUT_DIR  # noqa: E402
from genlab.ui.compat import SafeImageEditor  # noqa: E402
from genlab.autoencoders.vq import index_colors  # noqa: E402

from conftest import PRIOR_CODES, PRIOR_GRID, build_token_prior  # noqa: E402
from test_app import REFUSED, hostile_files  # noqa: E402

GRID = PRIOR_GRID  # tokens a side; 16 pixels at f = 2


@pytest.fixture(scope="module")
def app(tiny_prior_dir, tiny_amused_dir, tiny_vq_dir, tmp_path_factory):
    """(client, class prior label, unconditional prior label, plain VQ label, text prior label)."""
    plain_prior = str(build_token_prior(tmp_path_factory.mktemp("tiny-plain-prior"), seed=1, num_classes=0))
    port = free_port()
    config = parse_args(["--model", f"prior={tiny_prior_dir}", "--model", f"prior={plain_prior}",
                         "--model", f"prior={tiny_amused_dir}", "--model", f"vq={tiny_vq_dir}",
                         "--port", str(port)], environ={})
    demo = build_app(config)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(OUTPUT_DIR)])
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, str(tiny_prior_dir), plain_prior, str(tiny_vq_dir), str(tiny_amused_dir)
    demo.close()


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    y, x = np.mgrid[0:16, 0:16] / 15.0
    path = tmp_path_factory.mktemp("prior-app") / "picture.png"
    Image.fromarray((np.stack([x, y, 1 - x], axis=-1) * 255).astype(np.uint8)).save(path)
    return str(path)


def painted_layer(folder, size: tuple[int, int], box: tuple[int, int, int, int]) -> str:
    """An editor layer of `size` (width, height): transparent, with the pixel box (x0, y0, x1, y1) painted."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), box)
    path = folder / f"layer-{size[0]}x{size[1]}-{'-'.join(map(str, box))}.png"
    layer.save(path)
    return str(path)


def editor_value(background, *layers) -> dict:
    """The editor's value as the API takes it: the background's and the painted layers' files (or None)."""
    return {"background": background and handle_file(str(background)),
            "layers": [handle_file(str(layer)) for layer in layers], "composite": None}


def inpaint(client, label, editor):
    """/prior_inpaint with the class prior's usual settings: 4 confidence steps, class "a"."""
    return client.predict(label, editor, "confidence", 4, 1.0, 0, 2.0, 0, "a", "", "", api_name="/prior_inpaint")


def grid_cells(path) -> np.ndarray:
    """(GRID, GRID, 3) colour at the centre of each cell of a streamed token-grid picture."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    cell = pixels.shape[0] // GRID
    centres = np.arange(GRID) * cell + cell // 2
    return pixels[centres][:, centres]


def masked_cells(path) -> int:
    return int((grid_cells(path) == generation.MASKED).all(axis=-1).sum())


def args(label, order="confidence", steps=6, temperature=1.0, top_k=0, guidance=2.0, seed=0, class_name="b",
         prompt="", negative_prompt="", refine=0):
    return (label, order, steps, temperature, top_k, guidance, seed, class_name, prompt, negative_prompt, refine)


def test_generate_streams_the_grid_filling_in(app):
    client, label = app[0], app[1]
    job = client.submit(*args(label), api_name="/prior_sample")
    final = job.result()
    outputs = job.outputs()
    assert outputs[0][3] == "all 64 tokens masked; 6 steps to go" and masked_cells(outputs[0][0]) == 64
    streamed = outputs[1:-1]
    assert len(streamed) >= 4 and all(update[3].startswith("step ") for update in streamed)
    masked = [masked_cells(update[0]) for update in streamed]
    assert masked == sorted(masked, reverse=True) and 0 < masked[-1] < masked[0] < 64  # fills in, step by step
    assert Image.open(streamed[0][1]).size == Image.open(streamed[0][2]).size == (256, 256)  # 16 px, enlarged
    grid, image, x0, status, step = final
    assert status.startswith("done: 6 steps, confidence order, seed 0") and step["value"] == step["maximum"] == 6
    run = genlab.load_prior(label, device="cpu").sample(seed=0, steps=6, class_label="b", guidance_scale=2.0)
    assert masked_cells(grid) == 0
    assert np.array_equal(grid_cells(grid), index_colors(PRIOR_CODES)[run.tokens])  # the API's own tokens
    expected = run.image.resize((256, 256), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(Image.open(image).convert("RGB")), np.asarray(expected))


def test_refine_rounds_follow_the_sampling_steps(app):
    client, label = app[0], app[1]
    grid, image, x0, status, step = client.predict(*args(label, steps=4, refine=2), api_name="/prior_sample")
    total = 4 + refinement_steps(2)
    assert status.startswith(f"done: {total} steps") and step["maximum"] == total
    run = genlab.load_prior(label, device="cpu").sample(seed=0, steps=4, class_label="b", guidance_scale=2.0, refine=2)
    assert np.array_equal(grid_cells(grid), index_colors(PRIOR_CODES)[run.tokens])  # the API's own refined tokens
    remasked = client.predict(5, api_name="/prior_scrub")  # step 5: the first round's re-masked grid
    assert remasked[3].startswith(f"step 5 of {total}") and masked_cells(remasked[0]) == int((run.frames[4].tokens < 0).sum()) > 0


def test_scrub_replays_any_step_of_the_finished_run(app):
    client, label = app[0], app[1]
    client.predict(*args(label, steps=5, seed=3), api_name="/prior_sample")
    grid, image, x0, status = client.predict(2, api_name="/prior_scrub")
    assert status.startswith("step 2 of 5:") and "done: 5 steps" in status
    run = genlab.load_prior(label, device="cpu").sample(seed=3, steps=5, class_label="b", guidance_scale=2.0)
    frame = run.frames[1]
    expected = generation.token_grid_image(frame.tokens, frame.new, PRIOR_CODES, 32)
    assert np.array_equal(np.asarray(Image.open(grid).convert("RGB")), np.asarray(expected))
    assert masked_cells(grid) == int((frame.tokens < 0).sum()) > 0
    expected_x0 = frame.x0.resize((256, 256), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(Image.open(x0).convert("RGB")), np.asarray(expected_x0))
    with pytest.raises(Exception, match="greater than maximum value 5"):  # the slider now spans this run's steps
        client.predict(6, api_name="/prior_scrub")


def test_raster_order_streams_every_kth_step(app):
    client, label = app[0], app[2]
    job = client.submit(*args(label, order="raster", guidance=1.0, class_name=""), api_name="/prior_sample")
    final = job.result()
    outputs = job.outputs()
    assert final[3].startswith("done: 64 steps, raster order") and final[4]["value"] == 64
    assert 8 <= len(outputs) <= generation.MAX_LIVE_FRAMES + 2  # the first grid, every k-th step, the last
    assert outputs[1][3].startswith("step 2 of 64")  # 64 steps over 32 frames: every second one
    assert client.predict(17, api_name="/prior_scrub")[3].startswith("step 17 of 64")  # every step stays scrubbable


def test_inpaint_resamples_only_the_painted_tokens(app, picture, tmp_path):
    client, label = app[0], app[1]
    layer = painted_layer(tmp_path, (16, 16), (4, 4, 10, 10))  # pixels 4..9: tokens 2..4 at f = 2
    job = client.submit(label, editor_value(picture, layer), "confidence", 4, 1.0, 0, 2.0, 0, "a", "", "",
                        api_name="/prior_inpaint")
    final = job.result()
    first = job.outputs()[0]
    assert first[3].startswith("9 of 64 tokens masked") and masked_cells(first[0]) == 9
    decoded = np.asarray(Image.open(first[1]).convert("RGB"))  # 16 px enlarged 16x: tokens 2..4 = pixels 64..159
    assert (decoded[64:160, 64:160] == generation.MASKED).all() and not (decoded[:64] == generation.MASKED).all()
    assert final[3].startswith("Resampled 9 of 64 tokens") and "done: 4 steps" in final[3]
    own = genlab.load_prior(label, device="cpu").tokens_of(picture)[0].numpy()
    outside = np.ones((GRID, GRID), bool)
    outside[2:5, 2:5] = False
    assert np.array_equal(grid_cells(final[0])[outside], index_colors(PRIOR_CODES)[own][outside])
    assert client.predict(1, api_name="/prior_scrub")[3].startswith("step 1 of 4")


@pytest.mark.parametrize("change, message", [
    (dict(steps=0), "steps must be an integer in [1, 64]"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(temperature=0.0), "temperature must be a number in (0, 10]"),
    (dict(top_k=1000), "top_k must be an integer in [1, 16]"),
    (dict(top_k=-2), "top_k must be an integer in [1, 16]"),
    (dict(top_k=1.5), "top-k must be a whole number"),
    (dict(class_name="zebra"), "unknown class 'zebra'"),
    (dict(prompt="a red fox"), "not text-conditioned; leave the prompt empty and choose a class"),
    (dict(order="spiral"), "spiral"),
    (dict(steps=None), "steps must be a whole number, got None"),
    (dict(seed=None), "seed must be a whole number, got None"),
    (dict(seed=-1), "less than minimum value 0"),
    (dict(guidance=11), "greater than maximum value 10"),
    (dict(temperature=11), "greater than maximum value 10"),
    (dict(negative_prompt="blurry"), "not text-conditioned; leave the prompt empty"),
    (dict(refine=1.5), "refine rounds must be a whole number, got 1.5"),
    (dict(refine=9), "greater than maximum value 8"),
    (dict(refine=-1), "less than minimum value 0"),
])
def test_bad_settings_are_refused_readably(app, change, message):
    client, label = app[0], app[1]
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace("[", r"\[")) as error:
        client.predict(*args(label, **change), api_name="/prior_sample")
    assert "Traceback" not in str(error.value)


def test_errors_leave_the_app_serving(app, picture, tmp_path):
    client, class_label, plain_label = app[0], app[1], app[2]
    with pytest.raises(Exception, match="is not class-conditional; leave the class empty"):
        client.predict(*args(plain_label, class_name="a"), api_name="/prior_sample")
    blank = painted_layer(tmp_path, (16, 16), (0, 0, 0, 0))
    with pytest.raises(Exception, match="mask is empty: paint over the region the prior should resample"):
        inpaint(client, class_label, editor_value(picture, blank))
    with pytest.raises(Exception, match="Upload an image"):
        inpaint(client, class_label, editor_value(None))
    with pytest.raises(Exception, match="no/such-prior"):
        client.predict(*args("no/such-prior"), api_name="/prior_sample")
    fresh = Client(client.src, verbose=False)  # a new session has no run to scrub
    with pytest.raises(Exception, match="Generate or inpaint first"):
        fresh.predict(1, api_name="/prior_scrub")
    assert client.predict(*args(class_label, steps=2), api_name="/prior_sample")[3].startswith("done: 2 steps")


def test_first_view_shows_a_finished_example(app):
    client, label = app[0], app[1]
    grid, image, x0, status, step = client.predict(label, api_name="/prior_example")
    assert status.startswith("Example: a, done: 12 steps, confidence order, seed 0") and step["value"] == 12
    assert masked_cells(grid) == 0 and Image.open(image).size == (256, 256)
    assert client.predict(3, api_name="/prior_scrub")[3].startswith("step 3 of 12")  # the example is scrubbable


def test_reconstruction_gives_bits_per_pixel_under_the_prior(app, picture):
    client, label, _, plain_vq, _ = app
    vq_label = f"{label}#vqvae"  # a prior's vqvae/ is listed among the autoencoders
    outputs = client.predict(handle_file(picture), vq_label, plain_vq, 512, api_name="/reconstruct")
    pending = {row[0]: row[1:] for row in outputs[8]["data"]}  # the panels do not wait for the prior
    assert pending["bits per pixel under its token prior"] == ["computing…", "-", "-"]
    table, note = client.predict(handle_file(outputs[0]), outputs[8], outputs[9], api_name="/reconstruct_prior_bits")
    rows = {row[0]: row[1:] for row in table["data"]}
    assert {name: values for name, values in rows.items() if name != "bits per pixel under its token prior"} == \
        {name: values for name, values in pending.items() if name != "bits per pixel under its token prior"}
    expected = genlab.load_prior(label, device="cpu").bits_per_pixel(Image.open(picture))
    assert float(rows["bits per pixel under its token prior"][0]) == pytest.approx(expected, abs=1e-4)
    assert rows["bits per pixel under its token prior"][1:] == ["-", "-"]  # the plain VQ model and JPEG have none
    assert float(rows["bits per pixel"][0]) == pytest.approx(1.0)  # log2 16 / 2^2
    assert f"token prior {label}" in note and "log2 K / f² = 1.000" in note
    code = genlab.load_prior(label, device="cpu").code_length(Image.open(picture))  # a two-part code: 2 bits name it
    named = "no class (the unconditional model)" if code.label == "no class" else f"the class {code.label!r}"
    assert f"2.0 bits to name {named}, chosen among its 3 classes and none as the likeliest at 4 seeded" in note
    plain = client.predict(handle_file(picture), plain_vq, "", 512, api_name="/reconstruct")
    assert "bits per pixel under its token prior" not in {row[0] for row in plain[8]["data"]}
    assert client.predict(handle_file(plain[0]), plain[8], plain[9], api_name="/reconstruct_prior_bits") == \
        ({"__type__": "update"}, {"__type__": "update"})  # nothing to fill: both left as they are
    with pytest.raises(Exception, match="Reconstruct an image first"):
        client.predict(None, outputs[8], outputs[9], api_name="/reconstruct_prior_bits")
    forged = {**outputs[8], "headers": ["metric", "no-such-model", plain_vq, "JPEG"]}  # a column no prior belongs to
    table, _ = client.predict(handle_file(outputs[0]), forged, "", api_name="/reconstruct_prior_bits")
    assert {row[0]: row[1:] for row in table["data"]}["bits per pixel under its token prior"] == ["-", "-", "-"]


def test_priors_and_their_autoencoders_are_configured_like_other_models(tmp_path, monkeypatch):
    monkeypatch.setattr(genlab.config, "WEIGHTS_DIR", tmp_path)
    config = parse_args([], environ={"GENLAB_MODELS": "prior=amused/amused-256@main,vq=amused/amused-256@main#vqvae"})
    assert config.prior_models["maskgit-emoji"] == ModelSpec(str(tmp_path / "maskgit-emoji"))
    assert config.vq_models["maskgit-emoji-vq"] == ModelSpec(str(tmp_path / "maskgit-emoji"), "vqvae")
    assert config.prior_models["amused/amused-256@main"] == ModelSpec("amused/amused-256", None, "main")
    # the Hub prior's vqvae/ was given as a vq model already: listed once, under the given label
    assert [label for label in config.vq_models if "amused" in label] == ["amused/amused-256@main#vqvae"]
    with pytest.raises(SystemExit):
        parse_args(["--model", "token=some/prior"], environ={})


def test_text_prior_takes_a_prompt_not_a_class(app):
    client, text_prior = app[0], app[4]
    first = client.predict(*args(text_prior, steps=3, guidance=3.0, class_name="", prompt="a red fox"),
                           api_name="/prior_sample")
    other = client.predict(*args(text_prior, steps=3, guidance=3.0, class_name="", prompt="a grey cat"),
                           api_name="/prior_sample")
    assert first[3].startswith("done: 3 steps")
    assert not np.array_equal(grid_cells(first[0]), grid_cells(other[0]))  # the prompt reaches the transformer
    with pytest.raises(Exception, match="conditioned on text, not on classes; give a prompt instead"):
        client.predict(*args(text_prior, class_name="a", prompt="a fox"), api_name="/prior_sample")


def test_hostile_uploads_to_the_inpaint_editor_are_refused_readably(app, picture, tmp_path):
    """The editor hands GenLab its files undecoded: every hostile background or layer gets genlab.open_image's
    message (gradio's own decoding failed unreadably on them, and on any JPEG); odd but valid images are served."""
    client, label = app[0], app[1]
    layer = painted_layer(tmp_path, (16, 16), (4, 4, 10, 10))
    for kind, path in hostile_files(tmp_path).items():
        if kind in REFUSED:
            for editor in (editor_value(path, layer), editor_value(picture, path)):
                with pytest.raises(Exception, match=REFUSED[kind]) as error:
                    inpaint(client, label, editor)
                assert "Traceback" not in str(error.value), kind
        else:  # the layer is scaled to the image: a 16x16 stroke over the middle of any image
            assert inpaint(client, label, editor_value(path, layer))[3].startswith("Resampled "), kind
    assert inpaint(client, label, editor_value(picture, layer))[3].startswith("Resampled 9 of 64 tokens")


def test_bad_masks_are_refused_readably(app, picture, tmp_path):
    client, label = app[0], app[1]
    with pytest.raises(Exception, match="mask is empty: paint over the region the prior should resample"):
        inpaint(client, label, editor_value(picture))  # no layer at all
    with pytest.raises(Exception, match="mask layer is much larger than the image"):
        inpaint(client, label, editor_value(picture, painted_layer(tmp_path, (400, 400), (0, 0, 10, 10))))
    wide = tmp_path / "wide.png"  # 64x16: the prior sees its centre 16x16 square only
    Image.new("RGB", (64, 16), (20, 120, 20)).save(wide)
    with pytest.raises(Exception, match="mask lies outside the centre crop the prior sees"):
        inpaint(client, label, editor_value(wide, painted_layer(tmp_path, (64, 16), (0, 0, 6, 16))))
    assert inpaint(client, label, editor_value(wide, painted_layer(tmp_path, (64, 16), (30, 6, 34, 10))))[3] \
        .startswith("Resampled 4 of 64 tokens")  # pixels 30..33 of the crop at 24..40: crop pixels 6..9


def test_the_editor_reads_the_browsers_canvas_blobs(picture, tmp_path):
    """The browser sends the editor's canvas as PNG bytes: they reach mask_from_editor as files."""
    from gradio.components.image_editor import EditorData, EditorDataBlobs

    from genlab.ui.common import mask_from_editor

    editor = SafeImageEditor(type="filepath", image_mode="RGBA")
    layer = Path(painted_layer(tmp_path, (16, 16), (4, 4, 10, 10))).read_bytes()
    editor.blob_storage["canvas"] = EditorDataBlobs(background=Path(picture).read_bytes(), layers=[None, layer],
                                                    composite=None)
    value = editor.preprocess(EditorData(id="canvas"))
    assert "canvas" not in editor.blob_storage and len(value["layers"]) == 1 and value["composite"] is None
    image, mask = mask_from_editor(value)
    assert image.size == (16, 16) and np.array_equal(np.nonzero(np.asarray(mask).any(axis=0))[0], np.arange(4, 10))
    editor.blob_storage["broken"] = EditorDataBlobs(background=None, layers=[b"#!/bin/sh"], composite=None)
    with pytest.raises(Exception, match="A painted layer cannot be read: This file is not an image"):
        editor.preprocess(EditorData(id="broken"))
    assert editor.preprocess(EditorData(id="never-sent")) == {"background": None, "layers": [], "composite": None}


def test_stop_ends_a_streaming_run(app):
    """Cancelling the event (the Stop button, or a client's cancel) closes the generator: the transformer
    stops running long before the 64 steps of a raster run."""
    client, label = app[0], app[2]
    calls = []

    def slow_step(module, inputs, output):
        if isinstance(module, MaskedTokenTransformer):
            calls.append(module)
            time.sleep(0.25)  # 16 s for all 64 steps: a loaded machine's cancel latency stays far below it

    hook = torch.nn.modules.module.register_module_forward_hook(slow_step)
    try:
        job = client.submit(*args(label, order="raster", guidance=1.0, class_name=""), api_name="/prior_sample")
        deadline = time.monotonic() + 60
        while len(job.outputs()) < 2 and time.monotonic() < deadline:  # the empty grid, then the first frame
            time.sleep(0.02)
        assert job.outputs()[1][3].startswith("step 2 of 64")
        at_cancel = len(calls)
        job.cancel()
        counted, deadline = -1, time.monotonic() + 30
        while counted != len(calls) and time.monotonic() < deadline:  # until the transformer stays idle
            counted = len(calls)
            time.sleep(0.5)
    finally:
        hook.remove()
    assert at_cancel >= 2 and counted - at_cancel < 24  # calls after the cancel: a few frames, not the ~62 left
    assert not any(output[3].startswith("done") for output in job.outputs())
    assert client.predict(*args(label, steps=2, guidance=1.0, class_name=""), api_name="/prior_sample")[3] \
        .startswith("done: 2 steps")


def test_region_edits_refuse_bad_regions_readably(app, picture, tmp_path):
    """The explorer's replace / resample take a painted region; bad ones are refused and the session goes on."""
    client, vq_label = Client(app[0].src, verbose=False), app[3]
    layer = painted_layer(tmp_path, (16, 16), (0, 0, 3, 3))  # pixels 0..2: tokens 0..1 at f = 2
    with pytest.raises(Exception, match="Analyze an image first"):
        client.predict(vq_label, editor_value(picture, layer), 5, api_name="/edit_replace")
    client.predict(handle_file(picture), vq_label, 0, api_name="/codebook")
    script = tmp_path / "script.png"
    script.write_bytes(b"#!/bin/sh\n")
    for editor, message in [(editor_value(picture), "mask is empty: paint over the tokens to edit"),
                            (editor_value(picture, script), "painted layer cannot be read: This file is not an image"),
                            (editor_value(script, layer), "not an image GenLab can read"),
                            (editor_value(picture, painted_layer(tmp_path, (400, 400), (0, 0, 9, 9))), "much larger")]:
        for endpoint, value in (("/edit_replace", 5), ("/edit_resample", 0)):
            with pytest.raises(Exception, match=message):
                client.predict(vq_label, editor, value, api_name=endpoint)
    jpeg = tmp_path / "picture.jpg"  # gradio's own editor could not hand a JPEG over as RGBA
    Image.open(picture).save(jpeg, quality=95)
    text = client.predict(vq_label, editor_value(jpeg, layer), 5, api_name="/edit_replace")[3]
    assert text.endswith("of 64 tokens differ from the original image.") and 0 < int(text.split()[0]) <= 4
