"""Load: concurrent visitors, a soak for memory and temp-file growth, and a bounded queue.

Like test_app.py, the app runs in this process on a free loopback port with the tiny random
checkpoints of conftest.py, so the server's resident memory is this process's. The app's output
folder is a private temporary one (other runs of the app write the shared default) with its cap
lowered, so that the soak reaches the cap many times over.
"""

from __future__ import annotations

import collections
import gc
import threading
import time

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
psutil = pytest.importorskip("psutil")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.utils import QueueError, Status  # noqa: E402

import genlab.loading.loaders  # noqa: E402
from genlab.tools.bench import free_port  # noqa: E402
from genlab.config import parse_args  # noqa: E402
from genlab.ui import build_app, common  # noqa: E402
from genlab.ui.diffusion_tab import upscale  # noqa: E402

VISITORS = 6
QUEUE_SIZE = 8  # >= VISITORS, so test (a) never fills it; test (c) overfills it on purpose
OUTPUT_CAP = 20  # common.MAX_OUTPUT_FILES while this module runs
SOAK_CALLS, WARM_UP_CALLS = 300, 30  # multiples of SOAK_CLIENTS
SOAK_CLIENTS = 3
RSS_GROWTH_LIMIT = 50 * 2**20
CALL_TIMEOUT_S = 60  # no single call may hang the suite


def make_photo(path, width: int, height: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, height * width * 3).reshape(height, width, 3)
    Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)).save(path)
    return str(path)


def call(client: Client, *args, api_name: str):
    return client.submit(*args, api_name=api_name).result(timeout=CALL_TIMEOUT_S)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def app(tiny_vq_dir, tiny_cond_ddpm_dir, tmp_path_factory):
    """(url, vq label, diffusion label, output folder) of an app serving the tiny models."""
    output_dir = tmp_path_factory.mktemp("genlab-outputs")
    with pytest.MonkeyPatch.context() as patch:
        # gradio's cache is content-addressed and shared by every gradio process on the machine, and an
        # app deletes the files it cached when it closes: a private cache keeps other runs out of ours.
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-cache")))
        patch.setattr(common, "OUTPUT_DIR", output_dir)
        patch.setattr(common, "MAX_OUTPUT_FILES", OUTPUT_CAP)
        port = free_port()
        config = parse_args(["--model", f"vq={tiny_vq_dir}", "--model", f"diffusion={tiny_cond_ddpm_dir}",
                             "--port", str(port)], environ={})
        config.queue_size = QUEUE_SIZE
        demo = build_app(config)
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    allowed_paths=[str(output_dir)])
        yield f"http://127.0.0.1:{port}/", str(tiny_vq_dir), str(tiny_cond_ddpm_dir), output_dir
        demo.close()


def test_concurrent_visitors_each_get_their_own_right_sized_results(app, tmp_path):
    url, vq_label, dm_label, _ = app
    widths = [40 + 2 * i for i in range(VISITORS)]  # a different size per visitor shows any mix-up
    photos = [make_photo(tmp_path / f"photo{i}.png", width, 30, seed=i) for i, width in enumerate(widths)]
    results: dict[int, list] = {i: [] for i in range(VISITORS)}
    errors = []
    start = threading.Barrier(VISITORS)

    def visitor(i: int):
        try:
            client = Client(url, verbose=False)
            start.wait(timeout=60)
            for _ in range(2):
                reconstruction = call(client, handle_file(photos[i]), vq_label, "", 512, api_name="/reconstruct")
                sample = call(client, dm_label, "ddim", 3, i, 1, "a", 2.0, 0.0, api_name="/sample")
                results[i].append((reconstruction, sample))
            client.close()
        except Exception as error:  # collected: an exception in a thread would not fail the test
            errors.append(f"visitor {i}: {error!r}")

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(VISITORS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)

    dm = genlab.loading.loaders.load_diffusion(dm_label, device="cpu")
    for i, width in enumerate(widths):
        expected = np.asarray(upscale(dm.sample(seed=i, steps=3, scheduler="ddim", batch=1, class_label="a",
                                                guidance_scale=2.0, eta=0.0).image), dtype=np.int16)
        assert len(results[i]) == 2
        for reconstruction, sample in results[i]:
            original, rebuilt = reconstruction[:2]
            assert Image.open(original).size == Image.open(rebuilt).size == (width, 30)
            tokens = reconstruction[-1][1]
            assert np.load(tokens, allow_pickle=False).shape == (15, width // 2)  # f = 2
            final_xt, _, status = sample[:3]
            assert status.startswith(f"done: 3 steps, seed {i}. ")  # then the cost line
            assert Image.open(final_xt).size == (256, 256)  # 16 px sample shown at 16x
            assert np.abs(pixels(final_xt) - expected).max() <= 1  # this visitor's seed, not another's


def test_soak_keeps_memory_and_the_output_folder_bounded(app, tmp_path):
    url, vq_label, dm_label, output_dir = app
    # Each visitor its own photo and seed: gradio rewrites a cached output in place, so two visitors
    # fetching byte-identical outputs at once can read a truncated file (a gradio race, not a leak).
    photos = [make_photo(tmp_path / f"photo{i}.png", 40 + 2 * i, 30, seed=i) for i in range(SOAK_CLIENTS)]
    clients = [Client(url, verbose=False) for _ in range(SOAK_CLIENTS)]
    endpoints = {  # i: the visitor; k varies the arguments from call to call
        "/reconstruct": lambda i, k: call(clients[i], handle_file(photos[i]), vq_label, "", 512,
                                          api_name="/reconstruct"),
        "/estimate_sigma": lambda i, k: call(clients[i], handle_file(photos[i]), api_name="/estimate_sigma"),
        "/noise_preview": lambda i, k: call(clients[i], dm_label, handle_file(photos[i]), "clean", 10 * k % 1000,
                                            25, k, api_name="/noise_preview"),
        "/scrub": lambda i, k: call(clients[i], dm_label, k % 4, api_name="/scrub"),
    }
    # Weighted to the cheap endpoint, so that 330 calls fit the suite's time on a busy CPU.
    cycle = ["/reconstruct", "/estimate_sigma", "/noise_preview", "/estimate_sigma", "/scrub", "/estimate_sigma"]
    for i, client in enumerate(clients):  # each session's trajectory, for /scrub
        call(client, dm_label, "ddim", 4, i, 1, "a", 1.0, 0.0, api_name="/sample")
    counts = collections.Counter()
    counts_lock = threading.Lock()
    errors = []

    def visit(i: int, first: int, calls: int):
        try:
            for k in range(first, first + calls):
                name = cycle[k % len(cycle)]
                endpoints[name](i, k)
                with counts_lock:
                    counts[name] += 1
                if k % 10 == 0:
                    # gradio's and torch's own reference cycles are freed only by the cyclic collector;
                    # collecting often keeps when it happens to run out of the measurement.
                    gc.collect()
        except Exception as error:
            errors.append(f"call {k} ({name}): {error!r}")

    def run(calls: int, offset: int):
        per_client = calls // len(clients)
        threads = [threading.Thread(target=visit, args=(i, offset + i * per_client, per_client))
                   for i in range(len(clients))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors

    process = psutil.Process()
    run(WARM_UP_CALLS, 0)
    gc.collect()
    rss_after_warm_up = process.memory_info().rss
    run(SOAK_CALLS, WARM_UP_CALLS)
    gc.collect()
    growth = process.memory_info().rss - rss_after_warm_up
    for client in clients:
        client.close()

    assert sum(counts.values()) == WARM_UP_CALLS + SOAK_CALLS
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.0f} MiB over {SOAK_CALLS} calls"
    assert 2 * counts["/reconstruct"] > 5 * OUTPUT_CAP  # a PNG and a token file each: the cap was reached often
    entries = list(output_dir.iterdir())
    assert 2 <= len(entries) <= OUTPUT_CAP  # the newest outputs stay, the oldest go


def test_queue_is_bounded(app):
    assert parse_args([], environ={}).queue_size > 0  # the app's default config bounds the queue too
    url, _, dm_label, _ = app
    client = Client(url, verbose=False)
    # Long runs (1000 DDPM steps): one runs, QUEUE_SIZE wait, the rest must be turned away.
    jobs = [client.submit(dm_label, "ddpm", 1000, k, 1, "a", 2.0, 0.0, api_name="/sample")
            for k in range(QUEUE_SIZE + 6)]
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while any(not job.done() and job.status().code == Status.STARTING for job in jobs):
        assert time.monotonic() < deadline, "the server answered not every submission"
        time.sleep(0.05)
    rejected = [job for job in jobs if job.done() and isinstance(job.exception(), QueueError)]
    accepted = [job for job in jobs if job not in rejected]
    for job in accepted:
        job.cancel()
    for job in accepted:
        while not job.done():
            assert time.monotonic() < deadline + CALL_TIMEOUT_S, "a cancelled run kept going"
            time.sleep(0.05)
    client.close()

    assert len(rejected) >= 1
    assert len(accepted) <= QUEUE_SIZE + 2  # one running, QUEUE_SIZE waiting, one more if a run ended early
