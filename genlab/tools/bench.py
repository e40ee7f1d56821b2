"""GenLab's benchmark (issues 7 and 13): one markdown table of latency and memory against the targets.

    python -m genlab.bench [--device cpu|cuda] [--repeats N] [--quick]

Rows, all on one device (CUDA when available, else CPU; `--device` overrides) and one code path:
  app start to serving        `python app.py --port P` in a subprocess until GET / answers 200 (the
                              2D tab's first view then still trains on a worker, for about 2 s; the
                              rows measured on this server first wait for it, as a page load does)
  resident memory             RSS of a fresh process holding every embedded model plus the built app
  reconstruction 256² / 512²  median `VQ.reconstruct` of a resized example photo, after a warm-up
  reconstruct round trip      `/reconstruct` of a 256² photo with a compare model (vqvae-photo vs
                              vqgan-photo), all panels and the JPEG column, on that same app.py server
                              through gradio's browser protocol, from the click (queue/join, the
                              event stream) to the eight panel images fetched, six at a time as
                              browsers do; the upload is done once beforehand, as the page does
                              when an image is dropped
  atlas page, cold            `VQ.codebook_atlas(page=0)` on a fresh VQ object (empty patch cache)
  sampling step / loop ratio  GenLab's recorded DDIM loop against diffusers' `DDIMPipeline` on the
                              same UNet, steps, batch and noise; repeats interleaved, medians
  first streamed frame        `/sample` on that same app.py server through gradio's browser protocol
                              (queue/join, the event stream, then GET of the frame's images), from
                              submit to the first frame on screen (each job is then cancelled);
                              for ddpm-emoji and for the latent ldm-emoji
  latent vs pixel step        ldm-emoji's DDIM 50 loop (batch 1, unconditional, decode included)
                              against the same loop on a `UNet2DModel` of the same config (blocks,
                              layers, attention) built at 64 px with 3 channels and random weights;
                              repeats interleaved, medians; target: the latent run, decode included,
                              costs at most 1/4 of the pixel UNet's
  KL reconstruction           median `KLAutoencoder.reconstruct` of ldm-emoji-vae on the 64 px emoji
                              example, with its rate (KL bits per pixel) and PSNR in the row name
  prior sample                `TokenPrior.sample` of maskgit-emoji, 12 steps in confidence order (MaskGIT),
                              the first class at the prior's default guidance (the UI's defaults; one
                              transformer call a step when it is guidance-distilled, else two), decode
                              to the image included; batch 1 and batch 16, and batch 16 with
                              REFINE_ROUNDS refine rounds after the last step (no target: an option)
  prior bits per pixel        `TokenPrior.bits_per_pixel` of the 64 px emoji example (a two-part code:
                              one batched call chooses the class, then one transformer call per token,
                              in chunks), with the value against log2 K / f² in the row name

The app rows talk to a server in its own process, as a browser does. A server launched in this
process would share the client's GIL: while it streams a frame every few milliseconds (batch 1 on
CPU), the client thread waits for the GIL and the first frame appears several times later than a
real visitor sees it.

Each timed value is the median of the repeats. Embedded models that are not trained yet (ldm-emoji
or maskgit-emoji while they train) give "n/a" rows instead of failing the run. Timings taken while
other jobs use the CPU are inflated: the header line prints the load average for that reason.
"""

from __future__ import annotations

import argparse
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

from ..loading import loaders as models
from ..loading.registry import EMBEDDED, EMBEDDED_AUTOENCODERS, EXAMPLE_EMOJI, EXAMPLE_PHOTO, REPO_ROOT, WEIGHTS_DIR, embedded_status
from ..autoencoders.vq import ATLAS_PAGE_SIZE

VQ_MODEL, COMPARE_MODEL, DIFFUSION_MODEL = "vqvae-photo", "vqgan-photo", "ddpm-emoji"
LATENT_MODEL, KL_MODEL = "ldm-emoji", "ldm-emoji-vae"
PRIOR_MODEL, PRIOR_STEPS = "maskgit-emoji", 12
REFINE_ROUNDS = 2  # the refined-sampling row
PIXEL_SIDE = 64  # the pixel-space UNet the latent model is measured against
SAMPLE_STEPS = 50
MB = 1e6

# Targets of issue 7, in the unit of the row's value.
TARGETS = {
    "start": ("≤ 10 s", lambda v: v <= 10),
    "rss": ("≤ 1500 MB", lambda v: v <= 1500),
    "rec256": ("≤ 100 ms", lambda v: v <= 100),
    "ratio": ("≤ 1.05", lambda v: v <= 1.05),
    "first_frame": ("≤ 200 ms", lambda v: v <= 200),
    "round_trip": ("≤ 250 ms", lambda v: v <= 250),
    "latent_ratio": ("≤ 0.25", lambda v: v <= 0.25),
    "prior_sample": ("≤ 300 ms", lambda v: v <= 300),
    "prior_batch": ("≤ 1.5 s", lambda v: v <= 1.5),
}


class Missing(Exception):
    """An embedded model this row needs has no trained weights yet."""


# ----------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds for one call of fn, with the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, lazy imports
    return statistics.median(timed(fn, device) for _ in range(repeats))


def is_trained(name: str) -> bool:
    """Whether the embedded model `name` (or embedded pipeline autoencoder) has its weights."""
    return embedded_status().get(name) == "trained"


def load_embedded(name: str, device: torch.device):
    """An embedded model (or an embedded pipeline's autoencoder) through GenLab's loader; one retry,
    since training may be rewriting the file."""
    if not is_trained(name):
        raise Missing("/".join(EMBEDDED_AUTOENCODERS[name]) if name in EMBEDDED_AUTOENCODERS else name)
    if name in EMBEDDED_AUTOENCODERS:
        folder, subfolder = EMBEDDED_AUTOENCODERS[name]
        load = lambda: models.load_autoencoder(WEIGHTS_DIR / folder, subfolder, device=device)  # noqa: E731
    else:
        loader = {"vq": models.load_vq, "prior": models.load_prior}.get(EMBEDDED[name], models.load_diffusion)
        load = lambda: loader(WEIGHTS_DIR / name, device=device)  # noqa: E731
    try:
        return load()
    except models.ModelLoadError:
        time.sleep(2)
        return load()


def require_trained(*names: str) -> None:
    """Raise Missing for the first of `names` (embedded models) without trained weights."""
    for name in names:
        if not is_trained(name):
            raise Missing(name)


def example_photo(side: int):
    from PIL import Image

    return Image.open(EXAMPLE_PHOTO).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------- rows
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


def memory_probe(device: str) -> dict:
    """Run inside a fresh process: load every embedded model present, import gradio, build the app."""
    import psutil

    from ..config import parse_args

    loaded, missing = [], []
    for name in EMBEDDED:
        try:
            load_embedded(name, torch.device(device))
            loaded.append(name)
        except Missing:
            missing.append(name)
    import gradio  # noqa: F401

    from ..ui import build_app

    build_app(parse_args(["--device", device], environ={}))
    return {"rss_mb": psutil.Process().memory_info().rss / MB, "loaded": loaded, "missing": missing,
            "gpu_mb": torch.cuda.memory_allocated() / MB if device == "cuda" else 0.0}


def resident_memory(device: torch.device) -> dict:
    command = [sys.executable, "-m", "genlab.tools.bench", "--memory-probe", "--device", device.type]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def reconstruction_ms(vq, side: int, device: torch.device, repeats: int) -> float:
    image = example_photo(side)
    return 1000 * median_seconds(lambda: vq.reconstruct(image, max_side=None), device, repeats)


def atlas_cold_ms(vq, device: torch.device, repeats: int) -> float:
    """First atlas page with the codebook-tab's usage order, each repeat on a fresh VQ (no cached patches)."""
    from ..autoencoders.vq import VQ

    usage = vq.code_usage([example_photo(256)])
    return 1000 * median_seconds(lambda: VQ(vq.model, name=vq.name).codebook_atlas(usage=usage, page=0),
                                 device, repeats)


class NullClassUNet(torch.nn.Module):
    """The UNet with class_labels fixed to the null class, so that DDIMPipeline, which calls
    `unet(sample, t)`, runs the same unconditional model GenLab runs for class_label=None.

    Its own cost per step, one more module call and a `torch.full` of B labels (tens of
    microseconds), is negligible against a UNet call, so the loop ratio measures the two loops.
    """

    def __init__(self, unet, null_class: int):
        super().__init__()
        self.unet, self.null_class = unet, null_class

    config = property(lambda self: self.unet.config)
    dtype = property(lambda self: self.unet.dtype)
    device = property(lambda self: self.unet.device)

    def forward(self, sample, timestep):
        labels = torch.full((sample.shape[0],), self.null_class, dtype=torch.long, device=sample.device)
        return self.unet(sample, timestep, class_labels=labels)


def sampling_loop(dm, device: torch.device, repeats: int) -> dict:
    """GenLab's `sample(record=True)` against DDIMPipeline: same UNet, DDIM steps, batch 1 and noise.

    Both draw their noise with torch.randn on a CPU generator seeded alike and DDIM with eta 0 is
    deterministic, so the two final images must agree; `max_diff` reports it (0..1 pixel scale).
    """
    import numpy as np
    from diffusers import DDIMPipeline, DDIMScheduler

    seed = 0
    unet = NullClassUNet(dm.unet, dm.null_class) if dm.is_conditional else dm.unet
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(dm.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    results = {}

    def genlab_run():
        results["genlab"] = dm.sample(seed=seed, steps=SAMPLE_STEPS, scheduler="ddim", batch=1,
                                      class_label=None, record=True)

    def pipeline_run():
        results["pipeline"] = pipe(batch_size=1, generator=torch.Generator("cpu").manual_seed(seed),
                                   num_inference_steps=SAMPLE_STEPS, output_type="np").images

    genlab_run(), pipeline_run()  # warm-up
    genlab_s, pipeline_s = [], []
    for _ in range(repeats):  # interleaved, so a change in machine load hits both alike
        genlab_s.append(timed(genlab_run, device))
        pipeline_s.append(timed(pipeline_run, device))
    ours = (results["genlab"].trajectory.final[0].permute(1, 2, 0).numpy() + 1) / 2  # (H, W, 3) in [0, 1]
    return {"step_ms": 1000 * statistics.median(genlab_s) / SAMPLE_STEPS,
            "ratio": statistics.median(g / p for g, p in zip(genlab_s, pipeline_s)),
            "max_diff": float(np.abs(ours - results["pipeline"][0]).max())}


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
    state (a copy of every component's config) on its first event: 20-45 ms for GenLab's four tabs on the
    2-core CPU, which a browser pays once, on the page-load events. Without one, a fresh session is made."""
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


def first_frame_ms(url: str, dm, repeats: int, model: str = DIFFUSION_MODEL, batches=(1, 16)) -> dict[int, float]:
    """Time to the first streamed frame of /sample with the UI's defaults (DDIM 50, first class,
    guidance 3, no prompt), speaking gradio's browser protocol as the page's JavaScript does: POST
    /gradio_api/queue/join, read the event stream /gradio_api/queue/data until the first
    `process_generating` message, then GET the images it names (the frame is visible only then).
    Each job is cancelled once that frame arrived."""
    import httpx

    class_name = dm.classes[0] if dm.is_conditional else ""
    base = url.rstrip("/")
    page = page_session()  # one for every run, as a browser tab has
    with httpx.Client(timeout=60) as http:
        fn_index = api_index(http, base, "sample")

        def first_frame(batch: int) -> float:
            start = time.perf_counter()
            # the sample event's inputs: model, scheduler, steps, seed, batch, class, guidance, eta, prompt, negative
            message, session, event_id = join_event(
                http, base, fn_index, [model, "ddim", SAMPLE_STEPS, 0, batch, class_name, 3.0, 0.0, "", ""],
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


def round_trip_ms(url: str, repeats: int, side: int = 256) -> float:
    """Click to last panel of /reconstruct (VQ_MODEL compared with COMPARE_MODEL, JPEG column) as the page
    does it: queue/join, the event stream to `process_completed`, then GET of the eight panel images, six
    at a time as browsers do per host (the downloads are only linked). The photo is uploaded once
    beforehand, as the page does when an image is dropped."""
    import io

    import httpx

    require_trained(VQ_MODEL, COMPARE_MODEL)
    photo = io.BytesIO()
    example_photo(side).save(photo, format="PNG")
    base = url.rstrip("/")
    with httpx.Client(timeout=120) as http, concurrent.futures.ThreadPoolExecutor(6) as pool:
        fn_index = api_index(http, base, "reconstruct")
        uploaded = http.post(f"{base}/gradio_api/upload", files={"files": ("photo.png", photo.getvalue(), "image/png")})
        uploaded.raise_for_status()
        image = {"path": uploaded.json()[0], "orig_name": "photo.png", "meta": {"_type": "gradio.FileData"}}

        page = page_session()  # one for every click, as a browser tab has

        def once() -> float:
            start = time.perf_counter()
            message, _, _ = join_event(http, base, fn_index, [image, VQ_MODEL, COMPARE_MODEL, 512], "process_completed",
                                       page)
            urls = image_urls(message["output"]["data"])
            if len(urls) != 8:
                raise RuntimeError(f"/reconstruct returned {len(urls)} images, expected 8 panels")
            for response in pool.map(http.get, urls):
                response.raise_for_status()
            return time.perf_counter() - start

        once()  # warm-up: model loads, first calls, the session's state (join_event)
        return 1000 * statistics.median(once() for _ in range(repeats))


def latent_vs_pixel(dm, device: torch.device, repeats: int) -> dict:
    """The latent model's DDIM loop (batch 1, unconditional) with its decode, against the same loop on a
    pixel-space UNet2DModel of the same config at PIXEL_SIDE px, 3 channels, random weights."""
    from diffusers import UNet2DModel

    from ..diffusion.pipeline import DiffusionModel

    torch.manual_seed(0)
    config = {**dict(dm.unet.config), "in_channels": 3, "out_channels": 3, "sample_size": PIXEL_SIDE}
    pixel_unet = models.place(UNet2DModel.from_config(config).eval().requires_grad_(False), device)
    pixel = DiffusionModel(pixel_unet, dm.scheduler_config, {"classes": dm.classes, "null_class": dm.null_class})

    def sample_and_decode(model):
        return model.sample(seed=0, steps=SAMPLE_STEPS, scheduler="ddim", batch=1, class_label=None,
                            record=False).final_pixels

    final = dm.sample(seed=0, steps=SAMPLE_STEPS, scheduler="ddim", batch=1, record=False).trajectory.final
    sample_and_decode(pixel), dm.codec.decode(final)  # warm-up
    latent_s, pixel_s, decode_s = [], [], []
    for _ in range(repeats):  # interleaved, so a change in machine load hits all alike
        latent_s.append(timed(lambda: sample_and_decode(dm), device))
        pixel_s.append(timed(lambda: sample_and_decode(pixel), device))
        decode_s.append(timed(lambda: dm.codec.decode(final), device))
    latent, decode = statistics.median(latent_s), statistics.median(decode_s)
    return {"latent_step_ms": 1000 * (latent - decode) / SAMPLE_STEPS, "decode_ms": 1000 * decode,
            "pixel_step_ms": 1000 * statistics.median(pixel_s) / SAMPLE_STEPS,
            "ratio": statistics.median(ours / theirs for ours, theirs in zip(latent_s, pixel_s))}


def example_emoji(side: int = 64):
    from PIL import Image

    return Image.open(EXAMPLE_EMOJI).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)


def kl_reconstruction(kl, device: torch.device, repeats: int) -> tuple[float, object]:
    """(median ms, the KLReconstruction) of the emoji example at the VAE's 64 px."""
    image = example_emoji()
    result = kl.reconstruct(image, max_side=None)
    return 1000 * median_seconds(lambda: kl.reconstruct(image, max_side=None), device, repeats), result


def prior_timings(prior, device: torch.device, repeats: int) -> dict:
    """Median seconds of `sample` (batch 1 and 16, the image decoded) and of `bits_per_pixel` of the emoji
    example, with that code length; sampling uses the UI's defaults: the first class, default guidance."""
    label = prior.classes[0] if prior.is_conditional else None

    def sample(batch: int, refine: int = 0):
        return prior.sample(seed=0, steps=PRIOR_STEPS, order="confidence", batch=batch, class_label=label,
                            refine=refine).image

    image = prior.fit(example_emoji())
    bpp = prior.bits_per_pixel(image)  # also the warm-up of its timing
    return {"label": label, "one_s": median_seconds(lambda: sample(1), device, repeats),
            "batch_s": median_seconds(lambda: sample(16), device, repeats),
            "refined_s": median_seconds(lambda: sample(16, REFINE_ROUNDS), device, repeats),
            "bpp_s": statistics.median(timed(lambda: prior.bits_per_pixel(image), device) for _ in range(repeats)),
            "bpp": bpp}


# --------------------------------------------------------------------------------- table
def row(name: str, value, target_key: str | None = None, unit: str = "", fmt: str = "{:.1f}") -> list[str]:
    if isinstance(value, str):
        return [name, value, TARGETS[target_key][0] if target_key else "-", "-"]
    target, passes = TARGETS[target_key] if target_key else ("-", None)
    ok = "-" if passes is None else ("yes" if passes(value) else "NO")
    return [name, fmt.format(value) + unit, target, ok]


def failure(error: Exception) -> str:
    if isinstance(error, Missing):
        return f"n/a (weights/{error.args[0]} missing)"
    return f"n/a ({type(error).__name__}: {str(error)[:80]})"


ROW_ORDER = ["start", "rss", "rec256", "rec512", "round_trip", "atlas", "step", "ratio", "first_frame",
             "first_frame_ui", "ldm_first_frame", "ldm_first_frame_ui", "ldm_step", "pixel_step", "latent_ratio",
             "kl_rec", "prior_sample", "prior_batch", "prior_refined", "prior_bpp"]


FRAME_ROWS = {  # row -> (model, batch, target)
    "first_frame": (DIFFUSION_MODEL, 1, "first_frame"), "first_frame_ui": (DIFFUSION_MODEL, 16, None),
    "ldm_first_frame": (LATENT_MODEL, 1, "first_frame"), "ldm_first_frame_ui": (LATENT_MODEL, 16, None),
}


def frame_row_name(model: str, batch: int) -> str:
    kind = ", latent" if model == LATENT_MODEL else ""
    setting = "batch 1, guidance 3" if batch == 1 else f"batch {batch}, the UI default"
    return f"first streamed frame of /sample ({model}{kind}), browser protocol, images fetched ({setting})"


def app_rows(device: torch.device, repeats: int) -> dict[str, list[str]]:
    """The rows measured on one `python app.py` server: start, reconstruct round trip, first frames."""
    rows: dict[str, list[str]] = {}
    trip_name = (f"reconstruct round trip 256², compare + JPEG, through the app ({VQ_MODEL} vs {COMPARE_MODEL}; "
                 "browser protocol in one page session, 8 panels fetched)")
    # After the memory probe, so the start does not pay the cold page cache alone: a re-start.
    try:
        with serving_app(device) as (url, start_s):
            rows["start"] = row("app start to serving (`python app.py`)", start_s, "start", " s", "{:.2f}")
            try:
                await_first_view(url)  # its training would share the CPU with the rows below
            except Exception as error:  # the start was measured; the rows below say what they meet
                rows["start"][0] += f" (the 2D tab's first view failed: {type(error).__name__}: {str(error)[:60]})"
            try:
                rows["round_trip"] = row(trip_name, round_trip_ms(url, repeats), "round_trip", " ms", "{:.0f}")
            except Exception as error:
                rows["round_trip"] = row(trip_name, failure(error), "round_trip")
            for model in (DIFFUSION_MODEL, LATENT_MODEL):
                keys = {batch: key for key, (name, batch, _) in FRAME_ROWS.items() if name == model}
                try:
                    dm = load_embedded(model, device)  # its class names, as the UI's dropdown shows
                    for batch, ms in first_frame_ms(url, dm, repeats, model, tuple(keys)).items():
                        rows[keys[batch]] = row(frame_row_name(model, batch), ms, FRAME_ROWS[keys[batch]][2], " ms",
                                                "{:.0f}")
                except Exception as error:
                    for batch, key in keys.items():
                        rows[key] = row(frame_row_name(model, batch), failure(error), FRAME_ROWS[key][2])
    except Exception as error:
        rows["start"] = row("app start to serving (`python app.py`)", failure(error), "start")
        rows.setdefault("round_trip", row(trip_name, failure(error), "round_trip"))
        for key, (model, batch, target) in FRAME_ROWS.items():
            rows.setdefault(key, row(frame_row_name(model, batch), failure(error), target))
    return rows


def latent_rows(device: torch.device, repeats: int) -> dict[str, list[str]]:
    """ldm-emoji against a pixel UNet of its config, and ldm-emoji-vae's KL reconstruction."""
    rows: dict[str, list[str]] = {}
    step_name = f"latent sampling step ({LATENT_MODEL}, DDIM {SAMPLE_STEPS}, batch 1, unconditional"
    pixel_name = f"pixel UNet step ({LATENT_MODEL}'s UNet config at 3x{PIXEL_SIDE}x{PIXEL_SIDE}, random weights)"
    ratio_name = f"latent {SAMPLE_STEPS} steps + decode / pixel UNet {SAMPLE_STEPS} steps ({PIXEL_SIDE} px images"
    try:
        dm = load_embedded(LATENT_MODEL, device)
        loop = latent_vs_pixel(dm, device, repeats)
        rows["ldm_step"] = row(step_name + ", {}x{}x{} latents)".format(*dm.latent_shape), loop["latent_step_ms"],
                               None, " ms")
        rows["pixel_step"] = row(pixel_name, loop["pixel_step_ms"], None, " ms")
        rows["latent_ratio"] = row(f"{ratio_name}; decode {loop['decode_ms']:.1f} ms)", loop["ratio"], "latent_ratio",
                                   "", "{:.3f}")
    except Exception as error:
        rows["ldm_step"] = row(step_name + ")", failure(error))
        rows["pixel_step"] = row(pixel_name, failure(error))
        rows["latent_ratio"] = row(ratio_name + ")", failure(error), "latent_ratio")
    kl_name = f"KL reconstruction 64² ({KL_MODEL}, emoji example"
    try:
        kl = load_embedded(KL_MODEL, device)
        ms, result = kl_reconstruction(kl, device, repeats)
        rows["kl_rec"] = row(f"{kl_name}: rate {result.bits_per_pixel:.3f} bits per pixel, PSNR {result.psnr:.1f} dB)",
                             ms, None, " ms")
    except Exception as error:
        rows["kl_rec"] = row(kl_name + ")", failure(error))
    return rows


def prior_rows(device: torch.device, repeats: int) -> dict[str, list[str]]:
    """maskgit-emoji: sampling at batch 1 and 16 (and 16 with REFINE_ROUNDS refine rounds), and the code length
    of one image."""
    names = {"prior_sample": f"prior sample, {PRIOR_STEPS} steps, batch 1 ({PRIOR_MODEL}",
             "prior_batch": f"prior sample, {PRIOR_STEPS} steps, batch 16 ({PRIOR_MODEL}",
             "prior_refined": f"prior sample, {PRIOR_STEPS} steps + {REFINE_ROUNDS} refine rounds, batch 16 ({PRIOR_MODEL}",
             "prior_bpp": f"prior bits per pixel of one image ({PRIOR_MODEL}, 64 px emoji example"}
    try:
        prior = load_embedded(PRIOR_MODEL, device)
        timings = prior_timings(prior, device, repeats)
        label = f"class {timings['label']!r}" if timings["label"] is not None else "unconditional"
        guidance = prior.default_guidance_scale
        distilled = prior.is_conditional and prior.distilled_for(guidance) is not None
        setting = (f"{prior.grid[0]}x{prior.grid[1]} tokens, confidence order, {label}, guidance {guidance:g}"
                   f"{' (one guidance-distilled call a step)' if distilled else ''}, decode included)")
        rows = {"prior_sample": row(f"{names['prior_sample']}, {setting}", 1000 * timings["one_s"], "prior_sample",
                                    " ms", "{:.0f}"),
                "prior_batch": row(f"{names['prior_batch']}, the same settings)", timings["batch_s"], "prior_batch",
                                   " s", "{:.2f}"),
                "prior_refined": row(f"{names['prior_refined']}, the same settings)", timings["refined_s"], None,
                                     " s", "{:.2f}")}
        index_bpp = prior.index_bits_per_pixel
        rows["prior_bpp"] = row(f"{names['prior_bpp']}: {timings['bpp']:.3f} bits per pixel, "
                                f"{timings['bpp'] / index_bpp:.0%} of log2 K / f² = {index_bpp:.3f})",
                                1000 * timings["bpp_s"], None, " ms", "{:.0f}")
        return rows
    except Exception as error:
        return {key: row(name + ")", failure(error), key if key in TARGETS else None) for key, name in names.items()}


def run(device: torch.device, repeats: int) -> list[list[str]]:
    rows: dict[str, list[str]] = {}

    try:
        memory = resident_memory(device)
        skipped = f"; {', '.join(memory['missing'])} not trained" if memory["missing"] else ""
        gpu = f" + {memory['gpu_mb']:.0f} MB GPU" if device.type == "cuda" else ""
        rows["rss"] = row(f"resident memory: {', '.join(memory['loaded']) or 'no models'} + app{skipped}",
                          memory["rss_mb"], "rss", " MB" + gpu, "{:.0f}")
    except Exception as error:
        rows["rss"] = row("resident memory, every embedded model + app", failure(error), "rss")

    rows.update(app_rows(device, repeats))

    rec_names = {"rec256": f"reconstruction 256² ({VQ_MODEL})", "rec512": f"reconstruction 512² ({VQ_MODEL})",
                 "atlas": f"atlas page 0, cold ({VQ_MODEL})"}
    try:
        vq = load_embedded(VQ_MODEL, device)
        rows["rec256"] = row(rec_names["rec256"], reconstruction_ms(vq, 256, device, repeats), "rec256", " ms")
        rows["rec512"] = row(rec_names["rec512"], reconstruction_ms(vq, 512, device, repeats), None, " ms")
        rows["atlas"] = row(f"atlas page 0, cold ({VQ_MODEL}: {vq.num_codes} codes, "
                            f"{min(ATLAS_PAGE_SIZE, vq.num_codes)} tiles)", atlas_cold_ms(vq, device, repeats), None, " ms")
    except Exception as error:
        for key, name in rec_names.items():
            rows.setdefault(key, row(name, failure(error), "rec256" if key == "rec256" else None))

    step_name = f"sampling step ({DIFFUSION_MODEL}, DDIM {SAMPLE_STEPS}, batch 1, unconditional)"
    try:
        dm = load_embedded(DIFFUSION_MODEL, device)
        loop = sampling_loop(dm, device, repeats)
        rows["step"] = row(step_name, loop["step_ms"], None, " ms")
        rows["ratio"] = row(f"loop ratio GenLab record=True / DDIMPipeline (same image: max abs diff "
                            f"{loop['max_diff']:.1e})", loop["ratio"], "ratio", "", "{:.3f}")
    except Exception as error:
        rows["step"] = row(step_name, failure(error))
        rows["ratio"] = row("loop ratio GenLab record=True / DDIMPipeline", failure(error), "ratio")

    rows.update(latent_rows(device, repeats))
    rows.update(prior_rows(device, repeats))
    return [rows[key] for key in ROW_ORDER]


def markdown(rows: list[list[str]]) -> str:
    lines = ["| measurement | value | target | ok |", "|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genlab.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per row (default 5, 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)  # the RSS row's subprocess
    args = parser.parse_args(argv)
    device = models.pick_device(args.device)
    if args.memory_probe:
        print(json.dumps(memory_probe(device.type)))
        return
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 1:
        parser.error(f"--repeats must be at least 1, got {repeats}")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    start = time.perf_counter()
    rows = run(device, repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"GenLab bench on {device.type} ({name}); torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); {repeats} repeats, medians; "
          f"load average {load}; {time.perf_counter() - start:.0f} s in all")
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
