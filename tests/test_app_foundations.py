"""The Foundations (2D) tab through gradio_client: training streams and resumes, Step / Reset / Pause,
"All four", readable errors for bad settings, and that the app keeps serving.

The app is launched once on loopback as in test_app.py; the toy models need no weights.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from genlab import toy  # noqa: E402
from genlab.tools.bench import free_port  # noqa: E402
from genlab.config import parse_args  # noqa: E402
from genlab.ui import build_app, foundations_tab  # noqa: E402
from genlab.ui.common import OUTPUT_DIR  # noqa: E402
from genlab.toy import views  # noqa: E402


@pytest.fixture(scope="module")
def app():
    port = free_port()
    demo = build_app(parse_args(["--port", str(port)], environ={}))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(OUTPUT_DIR)])
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def client(app):
    """A fresh visitor (its own session, so its own lab) for each test."""
    client = Client(app, verbose=False)
    yield client
    client.close() if hasattr(client, "close") else None


def form(**changes) -> list:
    """The tab's form in event order: dataset, n, data seed, family, lr, width, depth, latent, loss, transforms,
    timesteps, seed; a small, fast diffusion model on 400 gaussians unless changed."""
    values = dict(dataset="gaussians", n=400, data_seed=0, family="diffusion", lr=1e-3, width=32, depth=2, latent=2,
                  loss="nonsaturating", transforms=2, timesteps=50, seed=0)
    values.update(changes)
    return list(values.values())


def step_of(status: str) -> int:
    return int(re.search(r"step \*\*(\d+)\*\*", status).group(1))


def test_train_streams_updates_and_resumes(client):
    job = client.submit(*form(), 300, api_name="/toy_train")
    status, samples, view, losses = job.result()
    updates = job.outputs()
    assert len(updates) >= 2 and updates[0][0].startswith("New data or settings: a fresh model. Training Diffusion")
    assert status.startswith("Done: 300 steps this request.") and step_of(status) == 300
    assert "energy distance" in status and "one fitted Gaussian" in status
    for path in (samples, view, losses):
        assert Image.open(path).size[0] > 200
    # the same settings again: training resumes from step 300
    status = client.predict(*form(), 100, api_name="/toy_train")[0]
    assert step_of(status) == 400 and "fresh model" not in status
    status = client.predict(*form(), api_name="/toy_step")[0]
    assert step_of(status) == 400 + foundations_tab.STEP_BUTTON_STEPS
    # a changed setting starts over; Reset shows the untrained model
    status = client.predict(*form(lr=2e-3), 100, api_name="/toy_train")[0]
    assert step_of(status) == 100
    status = client.predict(*form(lr=2e-3), api_name="/toy_reset")[0]
    assert step_of(status) == 0 and "fresh, untrained" in status


def test_every_family_trains_in_the_app_and_is_deterministic(client):
    finals = {}
    for family in toy.FAMILIES:
        status, samples, view, _ = client.predict(*form(family=family, lr=toy.FAMILIES[family].Config().lr), 100,
                                                  api_name="/toy_train")
        assert f"**{views.FAMILY_NAMES[family]}**" in status and step_of(status) == 100
        finals[family] = np.asarray(Image.open(samples))
    # another visitor with the same settings sees the same samples
    other = Client(client.src, verbose=False)
    _, samples, _, _ = other.predict(*form(), 100, api_name="/toy_train")
    np.testing.assert_array_equal(np.asarray(Image.open(samples)), finals["diffusion"])


def test_pause_stops_training_and_keeps_the_model(client):
    job = client.submit(*form(), 5000, api_name="/toy_train")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 2 and time.monotonic() < deadline:  # a plot update has arrived: training runs
        time.sleep(0.2)
    status = client.predict(api_name="/toy_pause")[0]
    paused_at = step_of(status)
    assert status.startswith(f"Paused at step {paused_at}") and 0 < paused_at < 5000
    time.sleep(1.0)
    assert step_of(client.predict(api_name="/toy_pause")[0]) == paused_at  # nothing trains on in the background
    status = client.predict(*form(), 100, api_name="/toy_train")[0]
    assert step_of(status) == paused_at + 100  # Train resumes from the paused model


def test_all_four_reports_each_family(client):
    plot, table, status = client.predict("moons", 400, 0, 0, 100, api_name="/toy_all_four")
    assert Image.open(plot).size[0] > 600
    rows = table["data"]
    assert [row[0] for row in rows] == ["VAE", "GAN", "Flow", "Diffusion"]
    assert table["headers"] == views.ALL_FOUR_HEADERS
    for row in rows:
        family, steps, distance, ratio, seconds, speed, _ = row
        assert int(steps) == 100 and float(seconds) > 0 and float(speed) > 0
        assert float(ratio) == pytest.approx(float(distance) / float(re.search(r"scores (\S+);", status).group(1)),
                                             rel=0.02, abs=2e-3)
    assert status.startswith("Done: 100 steps each")


BAD_SETTINGS = [
    (dict(lr=-1.0), 100, "lr must be between"),
    (dict(lr=None), 100, "Set a learning rate"),
    (dict(width=0), 100, "minimum value 8"),  # gradio's own slider check
    (dict(), 10**6, "maximum value 5000"),
    (dict(dataset="mine"), 100, "your points: need at least 16 points"),
    (dict(dataset="spirals"), 100, "spirals"),
    (dict(family="pixelcnn"), 100, "pixelcnn"),
    (dict(loss="wasserstein", family="gan"), 100, "wasserstein"),
]


def test_bad_settings_are_readable_errors_and_the_app_keeps_serving(client):
    for change, steps, message in BAD_SETTINGS:
        with pytest.raises(Exception, match=message) as error:
            client.predict(*form(**change), steps, api_name="/toy_train")
        assert "Traceback" not in str(error.value), change
    status = client.predict(*form(), 100, api_name="/toy_train")[0]
    assert step_of(status) == 100


def test_all_four_and_step_caps(client):
    with pytest.raises(Exception, match="maximum value 3000"):
        client.predict("moons", 400, 0, 0, 10**5, api_name="/toy_all_four")
    with pytest.raises(Exception, match="need at least 16 points"):
        client.predict("mine", 400, 0, 0, 100, api_name="/toy_all_four")
    assert client.predict(api_name="/toy_clear_points") is not None


def test_lab_memory_is_bounded_at_the_controls_limits():
    lab = views.Lab(clicked=np.zeros((foundations_tab.MAX_CLICKED, 2), np.float32))
    limits = foundations_tab.UI_LIMITS
    for family in toy.FAMILIES:
        settings = foundations_tab.settings_for(family, 1e-3, limits["width"][1], limits["depth"][1],
                                                limits["latent"][1], "hinge", limits["transforms"][1],
                                                limits["timesteps"][1])
        foundations_tab.prepare(lab, "moons", foundations_tab.MAX_N, 0, family, settings, 0)
        lab.model.history = [(i, {name: 0.0 for name in lab.model.loss_names}) for i in range(toy.core.MAX_HISTORY)]
        lab.distances = [(i, 0.0) for i in range(toy.core.MAX_HISTORY)]
        assert foundations_tab.lab_bytes(lab) < foundations_tab.LAB_MAX_BYTES, family


def test_the_first_view_arrives_with_the_page_load(app):
    """The page is served before the first view has trained; the page's load event (`toy_first_view`, which
    the bench also waits on) brings it: the status of the 500 steps and its three plots."""
    import httpx

    from genlab.tools.bench_app import api_index, await_first_view, join_event

    await_first_view(app)
    base = app.rstrip("/")
    with httpx.Client(timeout=60) as http:
        message, _, _ = join_event(http, base, api_index(http, base, "toy_first_view"), [], "process_completed")
    status, *plots = message["output"]["data"][1:]
    assert status.startswith("Trained for 500 steps when the app started") and "step **500**" in status
    assert len(plots) == 3 and all(plot["url"] for plot in plots)


def test_a_first_view_that_fails_leaves_the_tab_serving(monkeypatch):
    """If the first view cannot be trained, the page load says why and hands over an empty lab: Train works."""
    import gradio as gr
    import httpx

    from genlab.tools.bench_app import api_index, join_event

    def broken():
        raise RuntimeError("no moons today")

    monkeypatch.setattr(foundations_tab, "first_view", broken)
    with gr.Blocks() as demo:
        foundations_tab.build(None, demo)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(OUTPUT_DIR)])
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=60) as http:
            message, _, _ = join_event(http, base, api_index(http, base, "toy_first_view"), [], "process_completed")
        assert message["output"]["data"][1] == "The first view could not be trained (no moons today); press Train."
        status = Client(base + "/", verbose=False).predict(*form(), 100, api_name="/toy_train")[0]
        assert step_of(status) == 100
    finally:
        demo.close()


def test_two_apps_starting_together_train_one_first_view(monkeypatch):
    """Two builds in one process submit the first view on two toy workers at once: one trains it, the other waits
    for that lab instead of training a second one."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    calls, real_train = [], toy.train

    def counted(*args, **kwargs):
        calls.append(threading.get_ident())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(toy, "train", counted)
    foundations_tab._train_first_view.cache_clear()
    start = threading.Barrier(2)

    def first():
        start.wait()
        return foundations_tab.first_view()

    try:
        with ThreadPoolExecutor(2) as pool:
            views = list(pool.map(lambda _: first(), range(2)))
        assert len(calls) == 1
        assert views[0][0] is views[1][0]
    finally:
        foundations_tab._train_first_view.cache_clear()  # the next caller trains with the real toy.train
