"""What the benchmark's model rows time: each function runs one operation as the app runs it and returns medians.

Timings synchronise the device around each call (CUDA runs asynchronously) and take the median of the
repeats after a warm-up, so a first call's allocation and lazy imports stay out of the figures; where two
implementations are compared, their repeats are interleaved so a change in machine load hits both alike.
"""

from __future__ import annotations

import inspect
import statistics
import time

import torch

from ..loading.registry import EXAMPLE_EMOJI, EXAMPLE_PHOTO

PRIOR_STEPS = 12  # MaskGIT's step count, the UI's default
REFINE_ROUNDS = 2  # the refined-sampling row
PIXEL_SIDE = 64  # the pixel-space UNet the latent model is measured against
SAMPLE_STEPS = 50
TEXT_STEPS = 25  # DPM-Solver++ steps of a text-to-image sample
TEXT_PROMPT = "red heart"


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



def example_photo(side: int):
    from PIL import Image

    return Image.open(EXAMPLE_PHOTO).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)



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

    def genlab_run():  # one UNet call a step, as the pipeline (no autoguidance's guide network)
        results["genlab"] = dm.sample(seed=seed, steps=SAMPLE_STEPS, scheduler="ddim", batch=1,
                                      class_label=None, record=True, autoguidance_scale=1.0)

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



def latent_vs_pixel(dm, device: torch.device, repeats: int) -> dict:
    """The latent model's DDIM loop (batch 1, unconditional) with its decode, against the same loop on a
    pixel-space UNet2DModel of the same config at PIXEL_SIDE px, 3 channels, random weights."""
    from diffusers import UNet2DModel

    from ..diffusion.pipeline import DiffusionModel
    from ..loading import loaders as models

    torch.manual_seed(0)
    config = {**dict(dm.unet.config), "in_channels": 3, "out_channels": 3, "sample_size": PIXEL_SIDE}
    pixel_unet = models.place(UNet2DModel.from_config(config).eval().requires_grad_(False), device)
    pixel = DiffusionModel(pixel_unet, dm.scheduler_config, {"classes": dm.classes, "null_class": dm.null_class})

    def sample_and_decode(model):  # one UNet call a step in both spaces (no autoguidance's guide network)
        return model.sample(seed=0, steps=SAMPLE_STEPS, scheduler="ddim", batch=1, class_label=None,
                            record=False, autoguidance_scale=1.0).final_pixels

    final = dm.sample(seed=0, steps=SAMPLE_STEPS, scheduler="ddim", batch=1, record=False,
                      autoguidance_scale=1.0).trajectory.final
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



def text_to_image_timings(dm, device: torch.device, repeats: int) -> dict:
    """A text-to-image model at TEXT_STEPS DPM-Solver++ steps, batch 1, TEXT_PROMPT at the model's default guidance:
    median seconds of `sample` (steps recorded, as the app keeps them for its scrub row; the image decoded),
    median ms from `sample_stream` to its first frame on screen (the Step and its preview-decoded x̂0, the stream
    then closed, as a cancelled request is), and the median ratio of `sample(attention_maps=True)` (the maps
    read) to `sample()`, repeats interleaved; the ratio is None while `DiffusionModel.sample` has no
    `attention_maps`."""
    settings = {"prompt": TEXT_PROMPT, "seed": 0, "steps": TEXT_STEPS, "scheduler": "dpm++"}

    def sample():
        return dm.sample(**settings).image

    def first_frame():
        stream = dm.sample_stream(**settings)
        try:
            return dm.frame(next(stream), preview=True).x0
        finally:
            stream.close()

    results = {"sample_s": median_seconds(sample, device, repeats),
               "first_frame_ms": 1000 * median_seconds(first_frame, device, repeats), "attention_ratio": None}
    if "attention_maps" in inspect.signature(dm.sample).parameters:
        def with_maps():
            run = dm.sample(**settings, attention_maps=True)
            return run.image, run.attention_maps

        with_maps()  # warm-up
        ratios = [timed(with_maps, device) / timed(sample, device) for _ in range(repeats)]
        results["attention_ratio"] = statistics.median(ratios)
    return results
