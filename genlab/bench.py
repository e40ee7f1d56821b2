"""GenLab's benchmark (issue 7): one markdown table of latency and memory against the targets.

    python -m genlab.bench [--device cpu|cuda] [--repeats N] [--quick]

Rows, all on one device (CUDA when available, else CPU; `--device` overrides) and one code path:
  app start to serving        `python app.py --port P` in a subprocess until GET / answers 200
  resident memory             RSS of a fresh process holding every embedded model plus the built app
  reconstruction 256² / 512²  median `VQ.reconstruct` of a resized example photo, after a warm-up
  atlas page, cold            `VQ.codebook_atlas(page=0)` on a fresh VQ object (empty patch cache)
  sampling step / loop ratio  GenLab's recorded DDIM loop against diffusers' `DDIMPipeline` on the
                              same UNet, steps, batch and noise; repeats interleaved, medians
  first streamed frame        `/sample` on that same app.py server through gradio's browser protocol
                              (queue/join, the event stream, then GET of the frame's images), from
                              submit to the first frame on screen (each job is then cancelled)

The first-frame rows talk to a server in its own process, as a browser does. A server launched
in this process would share the client's GIL: while it streams a frame every few milliseconds
(batch 1 on CPU), the client thread waits for the GIL and the first frame appears several times
later than a real visitor sees it.

Each timed value is the median of the repeats. Embedded models that are not trained yet give
"n/a" rows instead of failing the run. Timings taken while other jobs use the CPU are inflated:
the header line prints the load average for that reason.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

import torch

from . import models
from .models import EMBEDDED, WEIGHTS_DIR
from .vq import ATLAS_PAGE_SIZE

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PHOTO = Path(__file__).resolve().parent / "assets" / "examples" / "rocket.png"
VQ_MODEL, DIFFUSION_MODEL = "vqvae-photo", "ddpm-emoji"
SAMPLE_STEPS = 50
MB = 1e6

# Targets of issue 7, in the unit of the row's value.
TARGETS = {
    "start": ("≤ 10 s", lambda v: v <= 10),
    "rss": ("≤ 1500 MB", lambda v: v <= 1500),
    "rec256": ("≤ 100 ms", lambda v: v <= 100),
    "ratio": ("≤ 1.05", lambda v: v <= 1.05),
    "first_frame": ("≤ 200 ms", lambda v: v <= 200),
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


def load_embedded(name: str, device: torch.device):
    """An embedded model through GenLab's loader; one retry, since training may be rewriting the file."""
    if models.embedded_status()[name] != "trained":
        raise Missing(name)
    load = models.load_vq if EMBEDDED[name] == "vq" else models.load_diffusion
    try:
        return load(WEIGHTS_DIR / name, device=device)
    except models.ModelLoadError:
        time.sleep(2)
        return load(WEIGHTS_DIR / name, device=device)


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

    from .config import parse_args

    loaded, missing = [], []
    for name in EMBEDDED:
        try:
            load_embedded(name, torch.device(device))
            loaded.append(name)
        except Missing:
            missing.append(name)
    import gradio  # noqa: F401

    from .ui import build_app

    build_app(parse_args(["--device", device], environ={}))
    return {"rss_mb": psutil.Process().memory_info().rss / MB, "loaded": loaded, "missing": missing,
            "gpu_mb": torch.cuda.memory_allocated() / MB if device == "cuda" else 0.0}


def resident_memory(device: torch.device) -> dict:
    command = [sys.executable, "-m", "genlab.bench", "--memory-probe", "--device", device.type]
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
    from .vq import VQ

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


def first_frame_ms(url: str, dm, repeats: int, batches=(1, 16)) -> dict[int, float]:
    """Time to the first streamed frame of /sample with the UI's defaults (DDIM 50, first class,
    guidance 3), speaking gradio's browser protocol as the page's JavaScript does: POST
    /gradio_api/queue/join, read the event stream /gradio_api/queue/data until the first
    `process_generating` message, then GET the images it names (the frame is visible only then).
    Each job is cancelled once that frame arrived."""
    import httpx

    class_name = dm.classes[0] if dm.is_conditional else ""
    base = url.rstrip("/")
    with httpx.Client(timeout=60) as http:
        fn_index = next(d["id"] for d in http.get(f"{base}/config").json()["dependencies"]
                        if d.get("api_name") == "sample")

        def first_frame(batch: int) -> float:
            session = uuid.uuid4().hex[:12]
            start = time.perf_counter()
            joined = http.post(f"{base}/gradio_api/queue/join", json={
                "data": [DIFFUSION_MODEL, "ddim", SAMPLE_STEPS, 0, batch, class_name, 3.0, 0.0],
                "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})
            joined.raise_for_status()
            elapsed = None
            with http.stream("GET", f"{base}/gradio_api/queue/data", params={"session_hash": session}) as events:
                for line in events.iter_lines():
                    message = json.loads(line[5:]) if line.startswith("data:") else {}
                    if message.get("msg") == "process_completed":
                        raise RuntimeError(f"/sample ended before streaming a frame: {message.get('output')}")
                    if message.get("msg") == "process_generating":
                        for value in message["output"]["data"]:
                            if isinstance(value, dict) and value.get("url"):
                                http.get(value["url"]).raise_for_status()
                        elapsed = time.perf_counter() - start
                        break
            if elapsed is None:
                raise RuntimeError("/sample's event stream closed without a frame")
            http.post(f"{base}/gradio_api/cancel",
                      json={"session_hash": session, "fn_index": fn_index, "event_id": joined.json()["event_id"]})
            time.sleep(0.5)  # let the server finish the cancelled step before the next submit
            return elapsed

        results = {}
        for batch in batches:
            first_frame(batch)  # warm-up: model load, this batch size's first UNet call
            results[batch] = 1000 * statistics.median(first_frame(batch) for _ in range(repeats))
        return results


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


ROW_ORDER = ["start", "rss", "rec256", "rec512", "atlas", "step", "ratio", "first_frame", "first_frame_ui"]


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

    frame_names = {1: "first streamed frame of /sample, browser protocol, images fetched (batch 1, guidance 3)",
                   16: "first streamed frame of /sample, browser protocol, images fetched (batch 16, the UI default)"}
    frame_keys = {1: ("first_frame", "first_frame"), 16: ("first_frame_ui", None)}  # row, target
    # After the memory probe, so the start does not pay the cold page cache alone: a re-start.
    try:
        with serving_app(device) as (url, start_s):
            rows["start"] = row("app start to serving (`python app.py`)", start_s, "start", " s", "{:.2f}")
            try:
                dm = load_embedded(DIFFUSION_MODEL, device)  # its class names, as the UI's dropdown shows
                for batch, ms in first_frame_ms(url, dm, repeats).items():
                    key, target = frame_keys[batch]
                    rows[key] = row(frame_names[batch], ms, target, " ms", "{:.0f}")
            except Exception as error:
                for batch, (key, target) in frame_keys.items():
                    rows[key] = row(frame_names[batch], failure(error), target)
    except Exception as error:
        rows["start"] = row("app start to serving (`python app.py`)", failure(error), "start")
        for batch, (key, target) in frame_keys.items():
            rows.setdefault(key, row(frame_names[batch], failure(error), target))

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
