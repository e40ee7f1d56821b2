"""GenLab's benchmark: one markdown table of latency and memory against the targets.

    python -m genlab.bench [--device cpu|cuda] [--repeats N] [--quick]

Rows, all on one device (CUDA when available, else CPU; `--device` overrides) and one code path:
  app start to serving        `python app.py --port P` in a subprocess until GET / answers 200 (the
                              2D tab's first view then still trains on a worker; the
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
  latent vs pixel step        ldm-emoji's DDIM 50 loop (batch 1, unconditional, no autoguidance, decode included)
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
  text-to-image sample        sd-emoji: `DiffusionModel.sample` of "red heart", 64 px, 25 DPM-Solver++ steps at
                              its default guidance (two UNet branches a step), batch 1, decode included
  text-to-image first frame   sd-emoji: from `sample_stream` to its first Step and that Step's preview-decoded x̂0
                              (the frame the app shows first), the stream then closed
  attention maps' cost        sd-emoji: `sample(attention_maps=True)` (maps read) over `sample()`, interleaved;
                              "n/a" while `DiffusionModel.sample` has no `attention_maps`

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
import json
import os
import subprocess
import sys
import time

import torch

from ..autoencoders.vq import ATLAS_PAGE_SIZE
from ..loading import loaders as models
from ..loading.registry import EMBEDDED, EMBEDDED_AUTOENCODERS, REPO_ROOT, WEIGHTS_DIR, embedded_status
from .bench_app import await_first_view, first_frame_ms, free_port, round_trip_ms, serving_app  # noqa: F401 (tests)
from .bench_timings import (
    PIXEL_SIDE,
    PRIOR_STEPS,
    REFINE_ROUNDS,
    SAMPLE_STEPS,
    TEXT_PROMPT,
    TEXT_STEPS,
    atlas_cold_ms,
    example_photo,
    kl_reconstruction,
    latent_vs_pixel,
    prior_timings,
    reconstruction_ms,
    sampling_loop,
    text_to_image_timings,
)

VQ_MODEL, COMPARE_MODEL, DIFFUSION_MODEL = "vqvae-photo", "vqgan-photo", "ddpm-emoji"
LATENT_MODEL, KL_MODEL = "ldm-emoji", "ldm-emoji-vae"
PRIOR_MODEL = "maskgit-emoji"
TEXT_MODEL = "sd-emoji"
MB = 1e6

# The targets, in the unit of the row's value.
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
    "text_sample": ("≤ 1.0 s", lambda v: v <= 1.0),
    "text_first_frame": ("≤ 200 ms", lambda v: v <= 200),
    "attention_ratio": ("≤ 1.5", lambda v: v <= 1.5),
}


class Missing(Exception):
    """An embedded model this row needs has no trained weights yet."""


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


def example_png(side: int) -> bytes:
    """The example photo at side x side as PNG bytes, as a page uploads it (both models must be trained)."""
    import io

    require_trained(VQ_MODEL, COMPARE_MODEL)
    photo = io.BytesIO()
    example_photo(side).save(photo, format="PNG")
    return photo.getvalue()


# --------------------------------------------------------------------------------- rows


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
             "kl_rec", "prior_sample", "prior_batch", "prior_refined", "prior_bpp", "text_sample", "text_first_frame",
             "attention_ratio"]


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
                rows["round_trip"] = row(trip_name, round_trip_ms(url, example_png(256), VQ_MODEL, COMPARE_MODEL, repeats), "round_trip", " ms", "{:.0f}")
            except Exception as error:
                rows["round_trip"] = row(trip_name, failure(error), "round_trip")
            for model in (DIFFUSION_MODEL, LATENT_MODEL):
                keys = {batch: key for key, (name, batch, _) in FRAME_ROWS.items() if name == model}
                try:
                    dm = load_embedded(model, device)  # its class names, as the UI's dropdown shows
                    for batch, ms in first_frame_ms(url, model, dm.classes[0] if dm.is_conditional else "", SAMPLE_STEPS, repeats,
                                                 tuple(keys)).items():
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


def text_rows(device: torch.device, repeats: int) -> dict[str, list[str]]:
    """sd-emoji: one sample, the first streamed frame, and what recording attention maps costs."""
    setting = f"{TEXT_STEPS} DPM-Solver++ steps, batch 1, {TEXT_PROMPT!r}"
    names = {"text_sample": f"text-to-image sample ({TEXT_MODEL}, 64 px, {setting}",
             "text_first_frame": f"first streamed frame of sample_stream ({TEXT_MODEL}, {setting}, preview x̂0",
             "attention_ratio": f"attention maps' cost: sample(attention_maps=True) / sample() "
                                f"({TEXT_MODEL}, {setting}"}
    try:
        dm = load_embedded(TEXT_MODEL, device)
        timings = text_to_image_timings(dm, device, repeats)
        guidance = f", guidance {dm.default_guidance_scale:g}"
        ratio = timings["attention_ratio"]
        return {"text_sample": row(f"{names['text_sample']}{guidance}, decode included)", timings["sample_s"],
                                   "text_sample", " s", "{:.2f}"),
                "text_first_frame": row(f"{names['text_first_frame']}{guidance})", timings["first_frame_ms"],
                                        "text_first_frame", " ms", "{:.0f}"),
                "attention_ratio": row(f"{names['attention_ratio']}{guidance})",
                                       "n/a (DiffusionModel.sample has no attention_maps yet)" if ratio is None
                                       else ratio, "attention_ratio", "x", "{:.2f}")}
    except Exception as error:
        return {key: row(name + ")", failure(error), key) for key, name in names.items()}


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
    rows.update(text_rows(device, repeats))
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
