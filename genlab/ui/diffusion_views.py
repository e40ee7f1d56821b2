"""A diffusion run as the diffusion tab shows it: the visitor's packed trajectory, the live and scrubbed panels, the
word heat maps of a text model, the cost line, the downloads (PNG, GIF, MP4) and the denoise summary beside
scikit-image's non-local means. No gradio.

Word heat maps (DAAM, Tang et al., arXiv:2210.04885; the maps come from `genlab.diffusion.attention`): each
word's (H, W) map in [0, 1] is coloured and blended over the image it explains, x̂0 of a step or the final
image, so a visitor sees where the model put "red" and where "heart".
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..diffusion import DiffusionModel, DiffusionRun, Frame, Step, noise_as_image
from ..imaging.io import as_image, image_grid
from ..imaging.metrics import non_local_means, psnr
from .common import DISPLAY_SIDE, Registry, save_output, upscale

TRAJECTORY_BYTES = 16 * 2**20  # per visitor: a longer trajectory keeps evenly spaced steps only
MAP_SIDE = 64  # px: a kept word map's longer side at most (sd-emoji's maps are 64 px)


def pack_trajectory(run: DiffusionRun) -> dict:
    """A visitor's copy of the trajectory within TRAJECTORY_BYTES (every k-th step when too long).

    Pixel models: native-size uint8 grids. Latent models: the sample-space tensors (fp16), decoded by
    the real decoder when a step is scrubbed. Both keep the first final image ("image", uint8) and, for a run
    that recorded attention maps, the words in prompt order with each kept step's maps and the run's
    ("maps", "run_maps": `stacked_maps`)."""
    steps = run.trajectory.steps
    if not steps:
        return {"timesteps": [], "x_t": [], "x0": [], "eps": []}
    latent = run.codec.is_latent
    words = list(run.attention_maps or {})
    per_step = (2 if latent else 3) * steps[0].x_t.numel() * (2 if latent else 1) + len(words) * MAP_SIDE ** 2 * 2
    keep = max(1, min(len(steps), TRAJECTORY_BYTES // per_step))
    chosen = sorted(set(np.linspace(0, len(steps) - 1, keep).round().astype(int).tolist()))
    packed = {"timesteps": [steps[i].timestep for i in chosen], "image": np.asarray(run.images[0])}
    if latent:
        packed.update({"latent": True, "crop": list(run.crop or []),
                       **{key: [getattr(steps[i], name).numpy().astype(np.float16) for i in chosen]
                          for key, name in (("x_t", "x_t"), ("x0", "pred_x0"), ("eps", "pred_eps"))}})
    else:
        packed.update({
            "x_t": [np.asarray(as_image(steps[i].x_t)) for i in chosen],  # native resolution; a grid for B > 1
            "x0": [np.asarray(as_image(steps[i].pred_x0)) for i in chosen],
            "eps": [np.asarray(noise_as_image(steps[i].pred_eps)) for i in chosen],
        })
    if words:
        frames = run.frames
        packed.update({"words": words, "run_maps": stacked_maps(run.attention_maps),
                       "maps": [stacked_maps(frames[i].attention_maps) for i in chosen]})
    return packed


def stacked_maps(maps: dict[str, np.ndarray]) -> np.ndarray:
    """{word: (H, W) in [0, 1]} -> fp16 (words, h, w) in the dict's (the prompt's) order, area-averaged to at most
    MAP_SIDE px a side: the overlay smooths them over the image anyway, and a visitor keeps one per step and word."""
    heat = np.stack(list(maps.values())).astype(np.float32)  # (N, H, W)
    height, width = heat.shape[1:]
    scale = MAP_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))  # (w, h)
        heat = np.stack([np.asarray(Image.fromarray(word).resize(size, Image.Resampling.BOX)) for word in heat])
    return heat.astype(np.float16)


def maps_of(trajectory: dict, index: int | None = None) -> dict[str, np.ndarray]:
    """A packed trajectory's word maps {word: (H, W) float32}: kept step `index`'s, or the run's (None); {} when
    the run recorded none."""
    words = trajectory.get("words")
    if not words:
        return {}
    stacked = trajectory["run_maps"] if index is None else trajectory["maps"][index]
    return {word: heat.astype(np.float32) for word, heat in zip(words, stacked)}


def step_images(dm: DiffusionModel, trajectory: dict, index: int, keys=("x_t", "x0", "eps")) -> dict:
    """Kept step `index` of a packed trajectory as native-size images: `keys` of x_t, x0, eps, and "latent" (the
    latent x_t's channels; None for a pixel model). A latent step is decoded by the model's real decoder."""
    if not trajectory.get("latent"):
        return {"latent": None, **{key: Image.fromarray(np.asarray(trajectory[key][index], dtype=np.uint8))
                                   for key in keys}}
    if not dm.is_latent:
        raise ValueError("That trajectory came from a latent model; run the selected model first.")
    step = Step(trajectory["timesteps"][index], *(torch.from_numpy(np.asarray(trajectory[key][index], dtype=np.float32))
                                                  for key in ("x_t", "x0", "eps")))
    frame = dm.frame(step, preview=False, crop=tuple(trajectory["crop"]) or None)
    return {"latent": frame.latent, **{key: getattr(frame, key) for key in keys}}


def live_panels(frame: Frame) -> tuple:
    """(latent x_t or None, x_t, x̂0, ε̂) for a streamed frame, enlarged."""
    latent = frame.latent
    return (None if latent is None else upscale(latent), upscale(frame.x_t), upscale(frame.x0), upscale(frame.eps))


def cost_line(dm: DiffusionModel, run: DiffusionRun, seconds: float) -> str:
    """Pixels vs latent elements per step and the measured time per step."""
    steps = max(1, len(run.trajectory.steps))
    final = run.trajectory.final
    per_step = f"{seconds / steps * 1000:.0f} ms per step"
    if not dm.is_latent:
        return f"{final.shape[1]}x{final.shape[2]}x{final.shape[3]} pixel values per step; {per_step}."
    channels, h, w = final.shape[1:]
    pixels = 3 * h * w * dm.codec.factor ** 2
    return (f"latent {channels}x{h}x{w} = {channels * h * w:,} values per step, against {pixels:,} pixel values "
            f"at {h * dm.codec.factor}x{w * dm.codec.factor} ({pixels / (channels * h * w):.0f}x fewer); {per_step}.")


def export_files(run: DiffusionRun, stem: str) -> list[str]:
    """The final image as PNG, the trajectory (x_t | x0_hat) as an animated GIF, and MP4 with ffmpeg.
    A latent model's GIF frames use its preview decode (the final frame: the real decoder)."""
    files = [save_output(run.image, f"{stem}.png")]
    preview = run.codec.is_latent

    def shown(image: Image.Image) -> Image.Image:  # large images (an 800 px inpaint) reduced, small ones enlarged
        if image.height > DISPLAY_SIDE:
            image = image.resize((max(1, image.width * DISPLAY_SIDE // image.height), DISPLAY_SIDE))
        return upscale(image)

    frames = [image_grid([shown(f.x_t), shown(f.x0)], columns=2)
              for f in (Frame(step, run.codec, preview, run.crop) for step in run.trajectory.steps)]
    if frames:
        frames.append(image_grid([shown(run.image)] * 2, columns=2))
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
        files.append(save_output(buffer.getvalue(), f"{stem}.gif"))
        if shutil.which("ffmpeg"):
            with tempfile.TemporaryDirectory() as folder:
                for index, frame in enumerate(frames):
                    frame.save(Path(folder) / f"{index:05d}.png")
                target = Path(folder) / f"{stem}.mp4"
                subprocess.run(["ffmpeg", "-loglevel", "error", "-framerate", "12", "-i", f"{folder}/%05d.png",
                                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p", str(target)],
                               check=False, timeout=120)
                if target.exists():
                    files.append(save_output(target.read_bytes(), target.name))
    return files


def nlm(noisy: Image.Image, sigma: float) -> Image.Image:
    """scikit-image's non-local means at the same sigma: the classical baseline beside the reverse process."""
    result = non_local_means(np.asarray(noisy, dtype=np.float64) / 255.0, sigma)
    return Image.fromarray((np.clip(result, 0, 1) * 255).round().astype(np.uint8))


def denoise_summary(dm: DiffusionModel, run, baseline: Image.Image) -> str:
    """What a denoise run did and, with a clean original, its PSNR against non-local means'."""
    sigma, reference, count = run.sigma, run.reference, len(run.trajectory.steps)
    if reference is not None:
        text = (f"Noised to t = {run.start_timestep} (sigma = {sigma * 255:.1f}/255) and denoised in "
                f"{count} steps. PSNR vs the original: GenLab {psnr(reference, run.image):.2f} dB, "
                f"non-local means {psnr(reference, baseline):.2f} dB, noisy input {psnr(reference, run.noisy):.2f} dB.")
    else:
        text = (f"Started at t = {run.start_timestep} for sigma = {sigma * 255:.1f}/255; {count} "
                f"step{'' if count == 1 else 's'}. No clean original, so no PSNR: compare with non-local means by eye.")
    if dm.is_latent:
        text += " Latent model: the image is encoded, noised and denoised in its latent space, then decoded."
    return text


def example_result(registry: Registry, label: str | None) -> Image.Image | None:
    """The model card's sample grid of an embedded model, enlarged, shown before the visitor's first run."""
    spec = registry.config.diffusion_models.get(label) if label else None
    path = Path(spec.source) / "samples.png" if spec else None
    return upscale(Image.open(path).convert("RGB")) if path is not None and path.is_file() else None
