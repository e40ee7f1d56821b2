"""Step-by-step diffusion tab: sample with streamed frames, scrub the trajectory, denoise uploads, compare samplers."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from ..autoencoders.kl import channels_image
from ..diffusion.pipeline import DiffusionModel, DiffusionRun, Frame, Step, as_image, estimate_sigma, noise_as_image
from ..imaging.io import InputError, image_grid, open_image
from ..imaging.metrics import non_local_means, psnr
from .common import (DISPLAY_SIDE, OUTPUT_HEIGHT, Registry, SafeImage, example_images, file_stem, mask_editor,
                     mask_from_editor, on_model_thread, save_output, upscale, user_errors)
from .plots import schedule_figure

SCHEDULER_CHOICES = [("DDPM", "ddpm"), ("DDIM", "ddim"), ("DPM-Solver++", "dpm++")]
COMPARE_CHOICES = ["DDIM 10", "DDIM 50", "DPM-Solver++ 10", "DPM-Solver++ 25", "DDPM 100", "DDPM 1000"]
COMPARE_NAMES = {"DDIM": "ddim", "DPM-Solver++": "dpm++", "DDPM": "ddpm"}
TRAJECTORY_BYTES = 16 * 2**20  # per visitor: a longer trajectory keeps evenly spaced steps only
STATE_TTL_S = 3600  # a visitor's trajectory is dropped an hour after their last run
# One request's work: UNet evaluations x positions of the sample (latent or pixel), guidance counted
# twice. ddpm-emoji at 1000 steps x batch 16 x guidance (32.8M) and every default pass; a 512^2 photo
# denoised in 1000 steps (262M) does not.
MAX_WORK = 40_000_000


to_grid, noise_grid = as_image, noise_as_image  # native resolution; a grid for B > 1


def check_work(dm: DiffusionModel, runs: list[tuple[int, int, bool]], side: tuple[int, int]) -> int:
    """Refuse requests over MAX_WORK; `runs` holds (UNet calls, batch, guided) per run, `side` the pixel
    (height, width). Returns the work units."""
    f = dm.codec.factor
    positions = -(-side[0] // f) * -(-side[1] // f)
    work = sum(steps * batch * (2 if guided else 1) * positions for steps, batch, guided in runs)
    if work > MAX_WORK:
        raise InputError(
            f"This request asks for {work / 1e6:.0f}M units of work (UNet calls x batch x sample positions, "
            f"guidance counted twice), over the {MAX_WORK / 1e6:.0f}M a request may use so the model stays "
            "free for other visitors. Lower the steps, the batch, the image size or set guidance to 1.")
    return work


def is_guided(dm: DiffusionModel, class_name, guidance) -> bool:
    guidance = dm.default_guidance_scale if guidance is None else float(guidance)
    return guidance != 1.0 and (dm.is_text_conditional or (dm.is_conditional and bool(class_name)))


def pack_trajectory(run: DiffusionRun) -> dict:
    """A visitor's copy of the trajectory within TRAJECTORY_BYTES (every k-th step when too long).

    Pixel models: native-size uint8 grids. Latent models: the sample-space tensors (fp16), decoded by
    the real decoder when a step is scrubbed."""
    steps = run.trajectory.steps
    if not steps:
        return {"timesteps": [], "x_t": [], "x0": [], "eps": []}
    latent = run.codec.is_latent
    per_step = (2 if latent else 3) * steps[0].x_t.numel() * (2 if latent else 1)
    keep = max(1, min(len(steps), TRAJECTORY_BYTES // per_step))
    chosen = sorted(set(np.linspace(0, len(steps) - 1, keep).round().astype(int).tolist()))
    if latent:
        return {"timesteps": [steps[i].timestep for i in chosen], "latent": True, "crop": list(run.crop or []),
                **{key: [getattr(steps[i], name).numpy().astype(np.float16) for i in chosen]
                   for key, name in (("x_t", "x_t"), ("x0", "pred_x0"), ("eps", "pred_eps"))}}
    return {
        "timesteps": [steps[i].timestep for i in chosen],
        "x_t": [np.asarray(to_grid(steps[i].x_t)) for i in chosen],
        "x0": [np.asarray(to_grid(steps[i].pred_x0)) for i in chosen],
        "eps": [np.asarray(noise_grid(steps[i].pred_eps)) for i in chosen],
    }


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

    def shown(image: Image.Image) -> Image.Image:  # small images enlarged, large ones (an 800 px inpaint) reduced
        image = upscale(image)
        if image.height > DISPLAY_SIDE:
            image = image.resize((max(1, image.width * DISPLAY_SIDE // image.height), DISPLAY_SIDE))
        return image

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


def example_result(registry: Registry, label: str | None):
    """The model card's sample grid of an embedded model, shown before the visitor's first run."""
    spec = registry.config.diffusion_models.get(label) if label else None
    path = Path(spec.source) / "samples.png" if spec else None
    return str(path) if path is not None and path.is_file() else None


def build(registry: Registry, demo: gr.Blocks) -> None:
    def nlm(noisy: Image.Image, sigma: float) -> Image.Image:
        result = non_local_means(np.asarray(noisy, dtype=np.float64) / 255.0, sigma)
        return Image.fromarray((np.clip(result, 0, 1) * 255).round().astype(np.uint8))

    def conditioning_update(label):
        """Category + guidance for class models, prompt + negative prompt + guidance for text models."""
        hidden = (gr.Dropdown(choices=[], value=None, visible=False), gr.Slider(visible=False),
                  gr.Textbox(visible=False), gr.Textbox(visible=False))
        try:
            dm = registry.diffusion(label)
        except Exception:
            return hidden
        if dm.is_text_conditional:
            return (gr.Dropdown(choices=[], value=None, visible=False), gr.Slider(value=dm.default_guidance_scale, visible=True),
                    gr.Textbox(visible=True), gr.Textbox(visible=True))
        if not dm.is_conditional:
            return hidden
        choices = [("(unconditional)", "")] + [(name, name) for name in dm.classes]
        return (gr.Dropdown(choices=choices, value=dm.classes[0], visible=True),
                gr.Slider(value=dm.default_guidance_scale, visible=True), gr.Textbox(visible=False), gr.Textbox(visible=False))

    def finish(run: DiffusionRun, label: str, steps: int, kind: str):
        stem = file_stem(label, run.scheduler, f"{steps}steps", f"seed{run.seed}", kind)
        trajectory = pack_trajectory(run)
        scrub = gr.Slider(minimum=0, maximum=max(1, len(trajectory["timesteps"]) - 1), value=0, step=1,
                          interactive=True, label=f"step ({len(trajectory['timesteps'])} kept)")
        return trajectory, scrub, export_files(run, stem)

    def conditions(class_name, guidance, prompt, negative_prompt) -> dict:
        return dict(class_label=class_name or None, guidance_scale=guidance, prompt=prompt or None,
                    negative_prompt=negative_prompt or None)

    @on_model_thread
    @user_errors
    def sample(label, scheduler, steps, seed, batch, class_name, guidance, eta, prompt="", negative_prompt=""):
        dm = registry.diffusion(label)
        check_work(dm, [(int(steps), int(batch), is_guided(dm, class_name, guidance))], (dm.sample_size,) * 2)
        stream = dm.sample_stream(seed=int(seed), steps=int(steps), scheduler=scheduler, batch=int(batch), eta=eta,
                                  **conditions(class_name, guidance, prompt, negative_prompt))
        schedule = dm.schedule()
        # x_T first: the visitor sees the run start before the first (batched, guided) UNet call
        noise = dm.initial_noise(int(seed), int(batch))
        latent = upscale(channels_image(noise, upscale=dm.codec.factor)) if dm.is_latent else None
        yield (upscale(as_image(dm.codec.preview(noise))), None, "x_T: pure noise",
               gr.skip(), gr.skip(), gr.skip(), gr.skip(), latent, None)
        started = time.perf_counter()
        for item in stream:
            if isinstance(item, Step):
                latent_xt, x_t, x0, eps = live_panels(dm.frame(item, preview=True))
                yield (x_t, x0, f"t = {item.timestep}", gr.skip(), gr.skip(), gr.skip(), gr.skip(), latent_xt, eps)
        run = item
        seconds = time.perf_counter() - started
        trajectory, scrub, files = finish(run, label, int(steps), "sample")
        final = upscale(run.image)
        notes = "".join(f" ({note})" for note in run.notes)
        final_latent = upscale(channels_image(run.trajectory.final, upscale=dm.codec.factor)) if dm.is_latent else None
        yield (final, final, f"done: {len(run.trajectory.steps)} steps, seed {run.seed}{notes}. {cost_line(dm, run, seconds)}",
               trajectory, scrub, schedule_figure(schedule, trajectory["timesteps"][0] if trajectory["timesteps"] else None),
               files, final_latent, None)

    @user_errors
    def scrub(label, index, trajectory):
        if not trajectory or not trajectory.get("timesteps"):
            raise gr.Error("Run a sample or a denoise first; then scrub through its steps.")
        index = int(min(max(index, 0), len(trajectory["timesteps"]) - 1))
        t = trajectory["timesteps"][index]
        dm = registry.diffusion(label)
        schedule = dm.schedule()
        if trajectory.get("latent"):
            if not dm.is_latent:
                raise gr.Error("That trajectory came from a latent model; run the selected model first.")
            import torch

            step = Step(t, *(torch.from_numpy(np.asarray(trajectory[key][index], dtype=np.float32))
                             for key in ("x_t", "x0", "eps")))
            latent_xt, x_t, x0, eps = live_panels(dm.frame(step, preview=False, crop=tuple(trajectory["crop"]) or None))
            return x_t, x0, eps, schedule_figure(schedule, t), latent_xt
        return (*(upscale(Image.fromarray(np.asarray(trajectory[key][index], dtype=np.uint8))) for key in ("x_t", "x0", "eps")),
                schedule_figure(schedule, t), None)

    @user_errors
    def noise_preview(label, image_path, mode, t, sigma_255, seed):
        if image_path is None:
            raise gr.Error("Upload an image first.")
        dm = registry.diffusion(label)
        if mode == "noisy":
            return open_image(image_path), schedule_figure(dm.schedule(), None)
        return dm.forward_noise(image_path, int(t), seed=int(seed)), schedule_figure(dm.schedule(), int(t))

    @user_errors
    def estimate(image_path):
        if image_path is None:
            raise gr.Error("Upload an image first.")
        return round(estimate_sigma(np.asarray(open_image(image_path))) * 255, 1)

    def stream_x0(dm, stream, extra):
        """Yield the streamed x̂0 (preview decode for latent models) in the first output, then return the run."""
        for item in stream:
            if isinstance(item, Step):
                yield (upscale(dm.frame(item, preview=True).x0), gr.skip(), f"t = {item.timestep}", *extra)
            else:
                return item

    @on_model_thread
    @user_errors
    def denoise(label, image_path, mode, t, sigma_255, steps, seed, scheduler, class_name, guidance,
                prompt="", negative_prompt=""):
        if image_path is None:
            raise gr.Error("Upload an image first.")
        dm = registry.diffusion(label)
        image = open_image(image_path)
        kwargs = dict(seed=int(seed), scheduler=scheduler, steps=int(steps) if steps else None,
                      **conditions(class_name, guidance, prompt, negative_prompt))
        if mode == "noisy":
            if not 0 < sigma_255 <= 255:
                raise gr.Error("Set the noise level sigma (0-255 units) above 0, or press Estimate.")
            stream = dm.denoise_stream(image, sigma=sigma_255 / 255.0, **kwargs)
        else:
            stream = dm.denoise_stream(image, t=int(t), **kwargs)
        planned = int(steps) if steps else 50  # the default is at most 50 steps (about 50 t / T)
        check_work(dm, [(planned, 1, is_guided(dm, class_name, guidance))], (min(image.height, 512), min(image.width, 512)))
        run = yield from stream_x0(dm, stream, (gr.skip(), gr.skip(), gr.skip()))
        result = run.image
        sigma = run.sigma
        reference = run.reference
        baseline = nlm(run.noisy, sigma)
        count = len(run.trajectory.steps)
        if reference is not None:
            text = (f"Noised to t = {run.start_timestep} (sigma = {sigma * 255:.1f}/255) and denoised in "
                    f"{count} steps. PSNR vs the original: GenLab {psnr(reference, result):.2f} dB, "
                    f"non-local means {psnr(reference, baseline):.2f} dB, noisy input {psnr(reference, run.noisy):.2f} dB.")
        else:
            text = (f"Started at t = {run.start_timestep} for sigma = {sigma * 255:.1f}/255; {count} "
                    f"step{'' if count == 1 else 's'}. No clean original, so no PSNR: compare with non-local means by eye.")
        if dm.is_latent:
            text += " Latent model: the image is encoded, noised and denoised in its latent space, then decoded."
        trajectory, scrub_slider, files = finish(run, label, count, "denoise")
        yield result, baseline, text, trajectory, scrub_slider, files

    @on_model_thread
    @user_errors
    def inpaint(label, editor, steps, seed, scheduler, class_name, guidance, prompt="", negative_prompt=""):
        dm = registry.diffusion(label)
        image, mask = mask_from_editor(editor)
        side = (min(image.height, 512), min(image.width, 512))
        check_work(dm, [(int(steps), 1, is_guided(dm, class_name, guidance))], side)
        stream = dm.inpaint_stream(image, mask, steps=int(steps), seed=int(seed), scheduler=scheduler,
                                   **conditions(class_name, guidance, prompt, negative_prompt))
        run = yield from stream_x0(dm, stream, (gr.skip(), gr.skip(), gr.skip()))
        trajectory, scrub_slider, files = finish(run, label, int(steps), "inpaint")
        painted = int(np.count_nonzero(np.asarray(mask)))
        text = (f"Repainted {painted:,} of {image.width * image.height:,} pixels in {len(run.trajectory.steps)} steps; "
                "outside the mask the result keeps your image's pixels"
                + (", and every latent cell the mask touches is resampled." if dm.is_latent else "."))
        yield upscale(run.image), upscale(mask.convert("RGB")), text, trajectory, scrub_slider, files

    @on_model_thread
    @user_errors
    def compare(label, settings, seed, class_name, guidance, prompt="", negative_prompt=""):
        if not 2 <= len(settings or []) <= 4:
            raise gr.Error("Pick 2 to 4 sampler settings to compare.")
        dm = registry.diffusion(label)
        plans = [(setting, *setting.rpartition(" ")[::2]) for setting in settings]
        guided = is_guided(dm, class_name, guidance)
        check_work(dm, [(int(steps), 1, guided) for _, _, steps in plans], (dm.sample_size,) * 2)
        items = []
        for setting, name, steps in plans:
            run = dm.sample(seed=int(seed), steps=int(steps), scheduler=COMPARE_NAMES[name], record=False,
                            **conditions(class_name, guidance, prompt, negative_prompt))
            items.append((upscale(run.image), setting))
        return items

    gr.Markdown("### From noise to image, one step at a time\nx_t is the sample entering each step; x̂0 is the model's "
                "guess of the clean image at that step (Ho et al. eq. 15). Latent models (Stable Diffusion's recipe, "
                "Rombach et al. 2022) run the same loop on an autoencoder's small latent: the live panels decode it "
                "with a cheap linear preview, the final image and scrubbed steps with the real decoder.")
    trajectory = gr.State({}, time_to_live=STATE_TTL_S)
    # Each sub-tab has its natural embedded model: the emoji sampler, the photo denoiser.
    sampler_default = registry.default("diffusion", "ddpm-emoji")
    denoiser_default = registry.default("diffusion", "ddpm-photo")
    example = example_result(registry, sampler_default)
    with gr.Row():
        model = gr.Dropdown(registry.choices("diffusion"), value=sampler_default, label="Model")
        scheduler = gr.Radio(SCHEDULER_CHOICES, value="ddim", label="Scheduler")
        class_name = gr.Dropdown([], label="Category", visible=False, allow_custom_value=True)
        guidance = gr.Slider(0, 10, value=3.0, step=0.5, label="Guidance scale", visible=False)
    with gr.Row():
        prompt = gr.Textbox("", label="Prompt", visible=False, max_lines=3, placeholder="a photo of an astronaut riding a horse")
        negative_prompt = gr.Textbox("", label="Negative prompt", visible=False, max_lines=2, placeholder="blurry, low quality")
    with gr.Tab("Sample") as sample_tab:
        with gr.Row():
            steps = gr.Slider(1, 1000, value=50, step=1, label="Steps")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            batch = gr.Slider(1, 16, value=16, step=1, label="Batch (grid)")
            eta = gr.Slider(0, 1, value=0, step=0.1, label="η (DDIM only)")
        with gr.Row():
            sample_button = gr.Button("Sample", variant="primary")
            stop_button = gr.Button("Stop", variant="stop")
        status = gr.Markdown("Example: the model card's 16 samples (50 DDIM steps, seed 0). Press Sample to watch "
                             "a run step by step." if example else "")
        with gr.Row():
            live_latent = gr.Image(label="latent x_t: its channels side by side (latent models)", format="png",
                                   interactive=False, height=OUTPUT_HEIGHT)
            live_xt = gr.Image(example, label="x_t (live)", format="png",
                               interactive=False, height=OUTPUT_HEIGHT)
            live_x0 = gr.Image(example, label="x̂0 (live)", format="png", interactive=False, height=OUTPUT_HEIGHT)
            live_eps = gr.Image(label="ε̂ (live)", format="png", interactive=False, height=OUTPUT_HEIGHT)
    with gr.Tab("Denoise an upload") as denoise_tab:
        with gr.Row():
            with gr.Column():
                upload = SafeImage(label="Image", type="filepath", height=256)
                gr.Examples(example_images(), inputs=upload)
            with gr.Column():
                mode = gr.Radio([("My image is clean: noise it to t", "clean"),
                                 ("My photo is already noisy: give sigma", "noisy")], value="clean", label="Mode")
                t = gr.Slider(0, 999, value=250, step=1, label="t (forward-noise the image to this timestep)")
                with gr.Row():
                    sigma = gr.Slider(0, 100, value=25, step=0.5, label="sigma (0-255 units)", visible=False)
                    estimate_button = gr.Button("Estimate sigma", visible=False)
                denoise_steps = gr.Number(0, label="Steps (0 = default)", precision=0, minimum=0, maximum=1000,
                                          info="default: 1 step (the x̂0 estimate) for sigma, about 50·t/1000 for t")
                noise_seed = gr.Number(0, label="Noise seed", precision=0, minimum=0)
                denoise_button = gr.Button("Denoise from here", variant="primary")
        with gr.Row():
            noisy = gr.Image(label="x_t = q(x_t | x_0)", format="png",
                             interactive=False, height=OUTPUT_HEIGHT)
            denoised = gr.Image(label="GenLab (reverse process)", format="png", interactive=False, height=OUTPUT_HEIGHT)
            baseline = gr.Image(label="scikit-image non-local means, same sigma", format="png", interactive=False, height=OUTPUT_HEIGHT)
        denoise_text = gr.Markdown()
    with gr.Tab("Inpaint"):
        gr.Markdown("Upload an image, paint the region to repaint with the brush, then Inpaint. Every step re-imposes "
                    "the known region from q(x_t | x_0) (RePaint's conditioning, Lugmayr et al. 2022), so only the "
                    "painted region is generated.")
        with gr.Row():
            editor = mask_editor("Image and mask (brush = repaint)")
            with gr.Column():
                inpaint_steps = gr.Slider(1, 250, value=50, step=1, label="Steps")
                inpaint_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                inpaint_button = gr.Button("Inpaint", variant="primary")
        with gr.Row():
            inpainted = gr.Image(label="result (live: x̂0)", format="png", interactive=False, height=OUTPUT_HEIGHT)
            mask_view = gr.Image(label="mask (white = repainted)", format="png", interactive=False, height=OUTPUT_HEIGHT)
        inpaint_text = gr.Markdown()
    with gr.Tab("Compare samplers") as compare_tab:
        with gr.Row():
            settings = gr.CheckboxGroup(COMPARE_CHOICES, value=["DDIM 10", "DDIM 50", "DPM-Solver++ 10"],
                                        label="Same initial noise through 2-4 settings")
            compare_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            compare_button = gr.Button("Compare", variant="primary")
        gallery = gr.Gallery(label="Same noise, different samplers", columns=4, height="auto", format="png",
                             object_fit="contain")
    gr.Markdown("#### Scrub the last run (no recomputation of the reverse process; latent steps are decoded by the "
                "real decoder)")
    with gr.Row():
        scrub_slider = gr.Slider(0, 1, value=0, step=1, label="step", interactive=True)
    with gr.Row():
        scrub_latent = gr.Image(label="latent x_t (latent models)", format="png", interactive=False, height=OUTPUT_HEIGHT)
        scrub_xt = gr.Image(label="x_t", format="png", interactive=False, height=OUTPUT_HEIGHT)
        scrub_x0 = gr.Image(label="x̂0", format="png", interactive=False, height=OUTPUT_HEIGHT)
        scrub_eps = gr.Image(label="ε̂ (predicted noise)", format="png", interactive=False, height=OUTPUT_HEIGHT)
        schedule_plot = gr.Image(label="Noise schedule (ᾱ_t, log-SNR)", format="png", interactive=False,
                                 height=OUTPUT_HEIGHT)
    downloads = gr.File(label="Downloads (PNG, GIF; MP4 when ffmpeg is installed)", file_count="multiple",
                        interactive=False)

    def switch(current: str, source: str, target: str):
        """Entering a sub-tab while the other sub-tab's embedded default is chosen picks this one's
        (Sample and Compare: ddpm-emoji, Denoise: ddpm-photo); any other model (e.g. a --model checkpoint) stays."""
        return target if current == source and target else gr.skip()

    denoise_tab.select(lambda current: switch(current, sampler_default, denoiser_default), model, model,
                       api_visibility="private", show_progress="hidden")
    for tab in (sample_tab, compare_tab):
        tab.select(lambda current: switch(current, denoiser_default, sampler_default), model, model,
                   api_visibility="private", show_progress="hidden")
    conditioning = [class_name, guidance, prompt, negative_prompt]
    model.change(conditioning_update, model, conditioning, api_visibility="private")
    sample_event = sample_button.click(
        sample, [model, scheduler, steps, seed, batch, class_name, guidance, eta, prompt, negative_prompt],
        [live_xt, live_x0, status, trajectory, scrub_slider, schedule_plot, downloads, live_latent, live_eps],
        api_name="sample", concurrency_id="heavy")
    stop_button.click(None, None, None, cancels=[sample_event], api_visibility="private")
    scrub_inputs = [model, scrub_slider, trajectory]
    scrub_outputs = [scrub_xt, scrub_x0, scrub_eps, schedule_plot, scrub_latent]
    sample_event.success(scrub, scrub_inputs, scrub_outputs, api_name="scrub_after_sample", api_visibility="private",
                         show_progress="hidden")
    scrub_slider.change(scrub, scrub_inputs, scrub_outputs, api_name="scrub", show_progress="hidden",
                        trigger_mode="always_last")
    preview_inputs = [model, upload, mode, t, sigma, noise_seed]
    t.change(noise_preview, preview_inputs, [noisy, schedule_plot], api_name="noise_preview", show_progress="hidden",
             trigger_mode="always_last")
    upload.upload(noise_preview, preview_inputs, [noisy, schedule_plot], api_visibility="private")
    mode.change(noise_preview, preview_inputs, [noisy, schedule_plot], api_visibility="private")
    estimate_button.click(estimate, upload, sigma, api_name="estimate_sigma")
    denoise_event = denoise_button.click(
        denoise, [model, upload, mode, t, sigma, denoise_steps, noise_seed, scheduler, class_name, guidance, prompt,
                  negative_prompt],
        [denoised, baseline, denoise_text, trajectory, scrub_slider, downloads], api_name="denoise",
        concurrency_id="heavy")
    stop_button.click(None, None, None, cancels=[denoise_event], api_visibility="private")
    denoise_event.success(scrub, scrub_inputs, scrub_outputs, api_name="scrub_after_denoise", api_visibility="private",
                          show_progress="hidden")
    inpaint_event = inpaint_button.click(
        inpaint, [model, editor, inpaint_steps, inpaint_seed, scheduler, class_name, guidance, prompt, negative_prompt],
        [inpainted, mask_view, inpaint_text, trajectory, scrub_slider, downloads], api_name="inpaint",
        concurrency_id="heavy")
    inpaint_event.success(scrub, scrub_inputs, scrub_outputs, api_name="scrub_after_inpaint", api_visibility="private",
                          show_progress="hidden")
    mode.change(lambda m: (gr.Slider(visible=m == "clean"), gr.Slider(visible=m == "noisy"), gr.Button(visible=m == "noisy")),
                mode, [t, sigma, estimate_button], api_visibility="private")
    compare_button.click(compare, [model, settings, compare_seed, class_name, guidance, prompt, negative_prompt], gallery,
                         api_name="compare", concurrency_id="heavy")
    demo.load(conditioning_update, model, conditioning, api_visibility="private")
