"""The diffusion tab's text-to-image side through gradio_client: a prompt streamed with its word heat maps, the
page-load example, compare prompts, image to image (SDEdit), the nearest training image, and every bad prompt
answered with a message that says what to fix while the server keeps serving.

The app serves the tiny Stable Diffusion of conftest.py (16 px, a 16-token byte-level tokenizer), a copy of it with
a training index, and the class-conditional tiny DDPM; the shipped weights/sd-emoji is used where it is trained.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

import genlab  # noqa: E402
from genlab.config import parse_args  # noqa: E402
from genlab.imaging.nearest import write_training_index  # noqa: E402
from genlab.tools.bench import free_port  # noqa: E402
from genlab.ui import build_app  # noqa: E402
from genlab.ui.common import OUTPUT_DIR  # noqa: E402
from genlab.ui.text_to_image import TEXT_MODEL, TRAINING_INDEX, nearest_verdict  # noqa: E402

# /sample: model, scheduler, steps, seed, batch, class, guidance, eta, prompt, negative prompt
LIVE_MAPS = 8  # /sample's outputs (the trajectory State is not sent): x_t, x̂0, status, slider, schedule, downloads,
#             latent, ε̂, then the word maps


@pytest.fixture(scope="module")
def indexed_sd_dir(tiny_sd_dir, tmp_path_factory):
    """The tiny Stable Diffusion with a training index of six 16 px images beside it (as sd-emoji stores its own)."""
    folder = tmp_path_factory.mktemp("tiny-sd-indexed") / "tiny-sd-indexed"
    shutil.copytree(tiny_sd_dir, folder)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    write_training_index(images, [f"{i:02d}.png" for i in range(6)], folder / TRAINING_INDEX, side=16)
    return folder


@pytest.fixture(scope="module")
def app(tiny_sd_dir, indexed_sd_dir, tiny_cond_ddpm_dir):
    """(client, text label, indexed text label, class label) of an app serving the tiny models (and weights/)."""
    port = free_port()
    config = parse_args(["--model", f"diffusion={tiny_sd_dir}", "--model", f"diffusion={indexed_sd_dir}",
                         "--model", f"diffusion={tiny_cond_ddpm_dir}", "--port", str(port)], environ={})
    demo = build_app(config)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(OUTPUT_DIR)])
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, str(tiny_sd_dir), str(indexed_sd_dir), str(tiny_cond_ddpm_dir)
    demo.close()


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    y, x = np.mgrid[0:40, 0:60] / 40.0
    path = tmp_path_factory.mktemp("text-app") / "picture.png"
    Image.fromarray((np.clip(np.stack([x, y, 1 - y], axis=-1), 0, 1) * 255).astype(np.uint8)).save(path)
    return str(path)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def captions(gallery) -> list[str]:
    return [item["caption"] for item in gallery or []]


def sample(client, label, prompt, steps=3, negative=""):
    return client.predict(label, "ddim", steps, 0, 1, "", 3.0, 0.0, prompt, negative, api_name="/sample")


def test_a_prompt_streams_frames_with_its_word_maps_and_the_scrub_row_shows_each_steps(app):
    client, text, _, _ = app
    job = client.submit(text, "ddim", 4, 0, 1, "", 3.0, 0.0, "red heart", "", api_name="/sample")
    final = job.result()
    outputs = job.outputs()
    streamed = [output for output in outputs if str(output[2]).startswith("t = ")]
    assert len(streamed) == 4 and all(captions(output[LIVE_MAPS]) == ["red", "heart"] for output in streamed)
    assert final[2].startswith("done: 4 steps, seed 0") and captions(final[LIVE_MAPS]) == ["red", "heart"]
    assert Image.open(final[LIVE_MAPS][0]["image"]).size == Image.open(final[1]).size == (256, 256)
    first = client.predict(text, 0, api_name="/scrub_maps")
    last = client.predict(text, 3, api_name="/scrub_maps")
    assert captions(first) == captions(last) == ["red", "heart"]
    assert not np.array_equal(pixels(first[0]["image"]), pixels(last[0]["image"]))  # each step's own maps and x̂0


def test_word_maps_say_where_each_word_acts_and_a_repeated_word_is_one_map(app):
    client, text, _, _ = app
    final = sample(client, text, "red red heart, pizza!")
    assert captions(final[LIVE_MAPS]) == ["red", "heart", "pizza"]  # punctuation left out, "red" once


def test_the_page_load_example_of_a_text_model_has_its_maps_and_nearest_image(app):
    client, _, indexed, class_label = app
    visitor = Client(client.src, verbose=False)  # a new session, as a fresh page
    status = visitor.predict(indexed, api_name="/diffusion_example")[0]
    assert status.startswith("Example: the prompt 'red heart'") and "step 26 of 50" in status
    run_maps, step_maps, nearest, nearest_text = visitor.predict(indexed, 25, api_name="/text_example")
    assert captions(run_maps) == captions(step_maps) == ["red", "heart"]
    assert nearest is not None and "Nearest of the 6 training images" in nearest_text and "typically" in nearest_text
    visitor.predict(class_label, api_name="/diffusion_example")  # a class model's example: no prompt, no maps
    assert visitor.predict(class_label, 25, api_name="/text_example") == ({"__type__": "update"},) * 4


@pytest.mark.skipif(genlab.embedded_status().get(TEXT_MODEL) != "trained", reason="weights/sd-emoji is not trained")
def test_the_tab_opens_on_sd_emoji_with_its_example_run_maps_and_nearest_training_image(app):
    client = Client(app[0].src, verbose=False)
    status, live_xt, *_ = client.predict(TEXT_MODEL, api_name="/diffusion_example")
    assert status.startswith("Example: the prompt 'red heart' (seed 0, 50 DDIM steps")
    assert Image.open(live_xt).size == (256, 256)  # the example's own image, not the card's grid of 16 prompts
    run_maps, step_maps, nearest, text = client.predict(TEXT_MODEL, 25, api_name="/text_example")
    assert captions(run_maps) == ["red", "heart"] and len(step_maps) == 2
    assert nearest is not None and "training images are typically" in text


def test_compare_prompts_steps_together_from_one_noise_with_their_maps(app):
    client, text, _, _ = app
    job = client.submit(text, "red heart\nblue heart\n\n", 3, 0, "ddim", 3.0, "", api_name="/compare_prompts")
    final = job.result()
    images, galleries, status = final[:4], final[4:8], final[8]
    assert status.startswith("done: 2 prompts from the same x_T (seed 0), 3 steps each")
    first = job.outputs()[0]  # each column labelled with its prompt, the unused ones emptied
    assert [first[i]["label"] for i in range(4)] == ["red heart", "blue heart", "(no prompt)", "(no prompt)"]
    assert first[2]["value"] is None and first[3]["value"] is None
    assert captions(galleries[0]) == ["red", "heart"] and captions(galleries[1]) == ["blue", "heart"]
    streamed = [output for output in job.outputs() if str(output[8]).startswith("t = ")]
    assert len(streamed) == 3 and all(output[0] and output[1] for output in streamed)  # both columns at every step
    alone = sample(client, text, "blue heart")  # the same seed and settings, the prompt alone
    assert np.abs(pixels(images[1]) - pixels(alone[0])).max() <= 2  # one batch or two: the same image
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


def test_image_to_image_redraws_an_upload_under_the_prompt_and_can_be_scrubbed(app, picture):
    client, text, _, _ = app
    job = client.submit(text, handle_file(picture), 0.5, 8, 0, "ddim", 3.0, "red heart", "", api_name="/img2img")
    start, result, maps, summary, *_ = job.result()
    assert summary.startswith("Noised to t = 500 of 1000 (strength 0.5) and redrawn in 4 steps under the prompt")
    assert Image.open(result).size == Image.open(start).size == (256, 176)  # 60x40 brought to 16 px wide, enlarged
    assert captions(maps) == ["red", "heart"]
    assert sum(str(output[3]).startswith("t = ") for output in job.outputs()) == 4  # streamed
    assert client.predict(text, 2, api_name="/scrub")[1] is not None  # the run is the session's last one
    other = client.predict(text, handle_file(picture), 0.5, 8, 0, "ddim", 3.0, "pizza", "", api_name="/img2img")
    assert not np.array_equal(pixels(result), pixels(other[1]))  # the prompt steers it


def test_inpainting_takes_the_prompt(app, picture, tmp_path):
    client, text, _, _ = app
    layer = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (10, 10, 40, 30))
    layer.save(tmp_path / "layer.png")
    editor = {"background": handle_file(picture), "layers": [handle_file(str(tmp_path / "layer.png"))],
              "composite": None}
    first = client.predict(text, editor, 3, 0, "ddim", "", 3.0, "red heart", "", api_name="/inpaint")
    other = client.predict(text, editor, 3, 0, "ddim", "", 3.0, "pizza", "", api_name="/inpaint")
    assert not np.array_equal(pixels(first[0]), pixels(other[0]))
    assert captions(client.predict(text, 1, api_name="/scrub_maps")) == ["pizza"]


def test_the_nearest_training_image_and_its_distance_beside_a_sample(app):
    client, text, indexed, _ = app
    sample(client, indexed, "red heart")
    thumbnail, note = client.predict(indexed, api_name="/nearest")
    assert Image.open(thumbnail).size == (256, 256)
    assert "Nearest of the 6 training images: **" in note and "at distance" in note and "typically" in note
    sample(client, text, "red heart")  # a model with no training index: nothing to show
    assert client.predict(text, api_name="/nearest") == (None, "")


def test_the_verdict_compares_the_distance_with_the_typical_one():
    assert "recalled" in nearest_verdict(0.01, 0.2)
    assert "close variation" in nearest_verdict(0.15, 0.2)
    assert "something new" in nearest_verdict(0.3, 0.2)
    assert "no typical distance" in nearest_verdict(0.3, None)


@pytest.mark.parametrize("prompt, message", [
    ("", "prompt is empty"),
    ("   \t ", "prompt is empty \\(only spaces\\)"),
    ("x" * 10_000, "has 10000 characters; keep it under 2000"),
    ("red\x00heart", "control character U\\+0000"),
    ("red\x1b[31mheart", "control character U\\+001B"),
    (123, "Prompt must be text, got int"),
    ({"text": "red heart"}, "Prompt must be text, got dict"),
])
def test_a_bad_prompt_gets_a_message_and_the_server_keeps_serving(app, prompt, message):
    client, text, _, _ = app
    with pytest.raises(Exception, match=message):
        sample(client, text, prompt)
    assert sample(client, text, "red heart")[2].startswith("done: 3 steps")


@pytest.mark.parametrize("prompt", ["😀 grinning face", "قلب أحمر", "שלום red heart", "e\u0301te\u0301"])
def test_emoji_and_right_to_left_prompts_sample(app, prompt):
    client, text, _, _ = app
    final = sample(client, text, prompt)
    assert final[2].startswith("done: 3 steps") and final[LIVE_MAPS]  # maps for its words


def test_a_prompt_past_the_tokenizer_is_cut_and_the_status_says_so(app):
    client, text, _, _ = app
    final = sample(client, text, "a red heart on a white background")  # 33 characters, 16 tokens at most
    assert "the prompt was cut to the text encoder's 16 tokens" in final[2]
    assert captions(final[LIVE_MAPS])[:3] == ["a", "red", "heart"] and "background" not in captions(final[LIVE_MAPS])


def test_bad_comparisons_and_strengths_get_messages_and_the_server_keeps_serving(app, picture):
    client, text, _, class_label = app
    five = "\n".join(["red heart", "blue heart", "pizza", "sun", "moon"])
    for prompts, message in ((five, "Give 2 to 4 prompts to compare, one a line; got 5"),
                             ("red heart", "Give 2 to 4 prompts to compare, one a line; got 1"),
                             ("red heart\nred\x00heart", "control character U\\+0000"),
                             (["red heart", "pizza"], "Prompts \\(one a line, 2 to 4\\) must be text, got list")):
        with pytest.raises(Exception, match=message):
            client.predict(text, prompts, 2, 0, "ddim", 3.0, "", api_name="/compare_prompts")
    with pytest.raises(Exception, match="not text-conditioned"):
        client.predict(class_label, "red heart\npizza", 2, 0, "ddim", 3.0, "", api_name="/compare_prompts")
    for strength, message in ((0, "strength must be a number in \\(0, 1\\]"), (1.5, "maximum value 1"),
                              (-0.5, "minimum value 0")):
        with pytest.raises(Exception, match=message):
            client.predict(text, handle_file(picture), strength, 4, 0, "ddim", 3.0, "red heart", "",
                           api_name="/img2img")
    with pytest.raises(Exception, match="takes no prompt"):
        client.predict(class_label, handle_file(picture), 0.5, 4, 0, "ddim", 3.0, "red heart", "", api_name="/img2img")
    with pytest.raises(Exception, match="Upload a picture first"):
        client.predict(text, None, 0.5, 4, 0, "ddim", 3.0, "red heart", "", api_name="/img2img")
    with pytest.raises(Exception, match="prompt is empty"):
        client.predict(text, handle_file(picture), 0.5, 4, 0, "ddim", 3.0, "", "", api_name="/img2img")
    done = client.predict(text, "red heart\npizza", 2, 0, "ddim", 3.0, "", api_name="/compare_prompts")
    assert done[8].startswith("done: 2 prompts")


def test_word_heat_maps_are_drawn_without_gradio():
    """genlab.ui.display is importable and usable where gradio is not installed."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['gradio'] = None\n"
            "import numpy as np; from PIL import Image\n"
            "from genlab.ui.display import overlay_heat, word_overlays\n"
            "heat = np.zeros((16, 16), np.float32); heat[:8] = 1\n"
            "items = word_overlays(Image.new('RGB', (64, 64), 'white'), {'red': heat, 'heart': 1 - heat})\n"
            "print([(image.size, word) for image, word in items])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[((256, 256), 'red'), ((256, 256), 'heart')]"


def test_a_heat_map_colours_where_the_word_acts_and_leaves_the_image_readable():
    from genlab.ui.display import HEAT_COLOURS, overlay_heat, upscale

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0  # the right half
    shown = np.asarray(overlay_heat(image, heat), np.float32)
    base = np.asarray(upscale(image), np.float32)
    assert shown.shape == base.shape == (256, 256, 3)
    assert np.array_equal(np.asarray(overlay_heat(image, heat, alpha=0.0)), base.astype(np.uint8))
    hot, cold = HEAT_COLOURS[-1], HEAT_COLOURS[0]
    assert np.abs(shown[:, 200:] - (0.45 * base[:, 200:] + 0.55 * hot)).max() <= 1  # away from the edge: all heat
    assert np.abs(shown[:, :50] - (0.45 * base[:, :50] + 0.55 * cold)).max() <= 1
    with pytest.raises(ValueError, match="alpha"):
        overlay_heat(image, heat, alpha=1.5)


def test_a_kept_run_holds_its_word_maps_per_step_within_the_budget(tiny_sd_dir):
    from genlab.ui.diffusion_views import MAP_SIDE, maps_of, pack_trajectory, stacked_maps

    dm = genlab.load_diffusion(tiny_sd_dir, device="cpu")
    run = dm.sample(seed=0, steps=3, prompt="red heart", attention_maps=True)
    packed = pack_trajectory(run)
    assert packed["words"] == ["red", "heart"] and len(packed["maps"]) == 3 and packed["image"].shape == (16, 16, 3)
    step = maps_of(packed, 1)
    assert list(step) == ["red", "heart"]
    assert np.allclose(step["red"], run.frames[1].attention_maps["red"], atol=1e-3)  # fp16 storage
    assert np.allclose(maps_of(packed)["heart"], run.attention_maps["heart"], atol=1e-3)
    large = stacked_maps({"red": np.ones((512, 256), np.float32)})
    assert large.shape == (1, MAP_SIDE, MAP_SIDE // 2) and large.dtype == np.float16
    assert maps_of(pack_trajectory(dm.sample(seed=0, steps=2, prompt="red heart"))) == {}  # no maps asked for


def test_the_controls_follow_the_model_and_fill_an_empty_prompt(tiny_sd_dir, tiny_cond_ddpm_dir):
    import gradio as gr

    from genlab.ui import diffusion_tab
    from genlab.ui.common import Registry

    models = ["--model", f"diffusion={tiny_sd_dir}", "--model", f"diffusion={tiny_cond_ddpm_dir}"]
    registry = Registry(parse_args(models, environ={}))
    with gr.Blocks() as demo:
        tab = diffusion_tab.build(registry, demo)
    text, prompt = tab.text, tab.conditioning.prompt
    shown = text.controls(str(tiny_sd_dir), "")
    assert shown[prompt] == "red heart" and shown[tab.batch].value == 1
    assert all(shown[component]["visible"] for component in (text.examples, text.sample_extras, text.step_maps))
    assert text.controls(str(tiny_sd_dir), "my own words")[prompt] == gr.skip()  # a typed prompt stays
    hidden = text.controls(str(tiny_cond_ddpm_dir), "red heart")
    assert not hidden[text.sample_extras]["visible"] and hidden[tab.batch].value == 16
    cleared = tab.conditioning.update(registry.diffusion(str(tiny_cond_ddpm_dir)))[prompt]
    assert cleared.value == "" and not cleared.visible  # a class model is never sent a prompt it cannot see
    assert text.to_text_model(str(tiny_cond_ddpm_dir)) == {tab.model: text.text_default}
