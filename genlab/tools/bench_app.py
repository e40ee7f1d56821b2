"""The benchmark's app rows: `python app.py` started as a user starts it, and spoken to as a browser does.

The server runs in its own process: a server in the benchmark's process would share the client's GIL, and
while it streams a frame every few milliseconds the client would see the first frame later than a visitor.
The client speaks gradio's browser protocol (POST /gradio_api/queue/join, the event stream
/gradio_api/queue/data, then GET of the images a message names, six at a time as browsers fetch per host),
because what a visitor waits for includes those image downloads and the page's session reuse.
`gradio_client` answers the same events but downloads outputs one by one into files and opens a session
per client, so it would time something else than the page.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import torch

from ..loading.registry import REPO_ROOT


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving_app(device: torch.device, timeout_s: float = 120.0):
    """Start `python app.py` as a user would; yields (url, seconds until its page answered 200)."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "app.py", "--port", str(port), "--device", device.type]
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
                    raise RuntimeError(f"app.py exited with code {process.returncode}: {' / '.join(tail)}")
                if time.perf_counter() - start > timeout_s:
                    raise TimeoutError(f"app.py did not serve within {timeout_s:.0f} s")
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:  # not listening yet (connection refused, reset, timeout)
                    pass
                time.sleep(0.05)
            yield url, time.perf_counter() - start
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def api_index(http, base: str, api_name: str) -> int:
    """The fn_index the page sends for the event with this api_name (read from /config, as the page does)."""
    return next(d["id"] for d in http.get(f"{base}/config").json()["dependencies"] if d.get("api_name") == api_name)


def page_session() -> str:
    """A session hash as a page makes one: a browser tab keeps it for all its events (see join_event)."""
    return uuid.uuid4().hex[:12]


def join_event(http, base: str, fn_index: int, data: list, until: str,
               session: str | None = None) -> tuple[dict, str, str]:
    """POST /gradio_api/queue/join, then read the event stream /gradio_api/queue/data until this event's first
    message `until` ("process_generating" or "process_completed"); returns (message, session, event id).

    `session`: the page's session hash. A page keeps one for all its events, and gradio builds a session's
    state (a copy of every component's config) on its first event, which a browser pays once, on the page-load
    events. Without one, a fresh session is made."""
    session = session or page_session()
    joined = http.post(f"{base}/gradio_api/queue/join", json={
        "data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})
    joined.raise_for_status()
    event_id = joined.json()["event_id"]
    with http.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session}) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") in ("unexpected_error", "server_stopped"):
                raise RuntimeError(f"event {fn_index}: the server sent {message['msg']}: {str(message)[:200]}")
            if message.get("event_id") != event_id:  # heartbeats; an earlier (cancelled) event's last messages
                continue
            finished = message.get("msg") == "process_completed"
            if finished and (until != "process_completed" or not message.get("success")):
                raise RuntimeError(f"event {fn_index} ended without {until}: {str(message.get('output'))[:200]}")
            if message.get("msg") == until:
                return message, session, event_id
    raise RuntimeError(f"event {fn_index}'s stream closed before {until}")


def image_urls(outputs: list) -> list[str]:
    """URLs of the image outputs of an event (a list of files, such as the downloads, is only linked by the page)."""
    return [value["url"] for value in outputs if isinstance(value, dict) and value.get("url")]


def first_frame_ms(url: str, model: str, class_name: str, steps: int, repeats: int, batches=(1, 16)) -> dict[int, float]:
    """Time to the first streamed frame of /sample with the UI's defaults (DDIM `steps`, `class_name`,
    guidance 3, no prompt), speaking gradio's browser protocol as the page's JavaScript does: POST
    /gradio_api/queue/join, read the event stream /gradio_api/queue/data until the first
    `process_generating` message, then GET the images it names (the frame is visible only then).
    Each job is cancelled once that frame arrived."""
    import httpx

    base = url.rstrip("/")
    page = page_session()  # one for every run, as a browser tab has
    with httpx.Client(timeout=60) as http:
        fn_index = api_index(http, base, "sample")

        def first_frame(batch: int) -> float:
            start = time.perf_counter()
            # the sample event's inputs: model, scheduler, steps, seed, batch, class, guidance, eta, prompt, negative
            message, session, event_id = join_event(
                http, base, fn_index, [model, "ddim", steps, 0, batch, class_name, 3.0, 0.0, "", ""],
                "process_generating", page)
            for frame_url in image_urls(message["output"]["data"]):
                http.get(frame_url).raise_for_status()
            elapsed = time.perf_counter() - start
            http.post(f"{base}/gradio_api/cancel",
                      json={"session_hash": session, "fn_index": fn_index, "event_id": event_id})
            time.sleep(0.5)  # let the server finish the cancelled step before the next submit
            return elapsed

        results = {}
        for batch in batches:
            first_frame(batch)  # warm-up: model load, this batch size's first UNet call
            results[batch] = 1000 * statistics.median(first_frame(batch) for _ in range(repeats))
        return results


def await_first_view(url: str) -> None:
    """Wait, as a page load does, for the 2D tab's first view (`toy_first_view`), which the app trains on a
    worker while it starts serving."""
    import httpx

    base = url.rstrip("/")
    with httpx.Client(timeout=120) as http:
        join_event(http, base, api_index(http, base, "toy_first_view"), [], "process_completed")


def round_trip_ms(url: str, photo_png: bytes, model: str, compare: str, repeats: int) -> float:
    """Click to last panel of /reconstruct (`model` compared with `compare`, JPEG column) as the page
    does it: queue/join, the event stream to `process_completed`, then GET of the eight panel images, six
    at a time as browsers do per host (the downloads are only linked). The photo is uploaded once
    beforehand, as the page does when an image is dropped."""
    import httpx

    base = url.rstrip("/")
    with httpx.Client(timeout=120) as http, concurrent.futures.ThreadPoolExecutor(6) as pool:
        fn_index = api_index(http, base, "reconstruct")
        uploaded = http.post(f"{base}/gradio_api/upload", files={"files": ("photo.png", photo_png, "image/png")})
        uploaded.raise_for_status()
        image = {"path": uploaded.json()[0], "orig_name": "photo.png", "meta": {"_type": "gradio.FileData"}}

        page = page_session()  # one for every click, as a browser tab has

        def once() -> float:
            start = time.perf_counter()
            message, _, _ = join_event(http, base, fn_index, [image, model, compare, 512], "process_completed",
                                       page)
            urls = image_urls(message["output"]["data"])
            if len(urls) != 8:
                raise RuntimeError(f"/reconstruct returned {len(urls)} images, expected 8 panels")
            for response in pool.map(http.get, urls):
                response.raise_for_status()
            return time.perf_counter() - start

        once()  # warm-up: model loads, first calls, the session's state (join_event)
        return 1000 * statistics.median(once() for _ in range(repeats))


