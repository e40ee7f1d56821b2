"""Step-by-step diffusion tab: sample with streamed frames, scrub the trajectory, denoise uploads, compare samplers."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from ..diffusion import DiffusionRun, Step, as_image, estimate_sigma, noise_as_image
from ..images import image_grid, open_image
from ..metrics import non_local_means, psnr
from .common import OUTPUT_HEIGHT, Registry, SafeImage, example_images, file_stem, save_output, user_errors
from .plots import schedule_figure

SCHEDULER_CHOICES = [("DDPM", "ddpm"), ("DDIM", "ddim"), ("DPM-Solver++", "dpm++")]
COMPARE_CHOICES = ["DDIM 10", "DDIM 50", "DPM-Solver++ 10", "DPM-Solver++ 25", "DDPM 100", "DDPM 1000"]
COMPARE_NAMES = {"DDIM": "ddim", "DPM-Solver++": "dpm++", "DDPM": "ddpm"}
TRAJECTORY_BYTES = 16 * 2**20  # per visitor: a longer trajectory keeps evenly spaced steps only
STATE_TTL_S = 3600  # a visitor's trajectory is dropped an hour after their last run
DISPLAY_SIDE = 256


to_grid, noise_grid = as_image, noise_as_image  # native resolution; a grid for B > 1


def upscale(image: Image.Image) -> Image.Image:
    """Small samples (32x32 emoji) are shown enlarged with visible pixels."""
    if max(image.size) < DISPLAY_SIDE:
        scale = DISPLAY_SIDE // max(image.size)
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


def to_display(tensor) -> Image.Image:
    return upscale(to_grid(tensor))


def pack_trajectory(steps: list[Step]) -> dict:
    """Keep the trajectory as native-size uint8 grids within TRAJECTORY_BYTES (every k-th step when too long)."""
    if not steps:
        return {"timesteps": [], "x_t": [], "x0": [], "eps": []}
    per_step = 3 * steps[0].x_t.numel()
    keep = max(1, min(len(steps), TRAJECTORY_BYTES // per_step))
    chosen = sorted(set(np.linspace(0, len(steps) - 1, keep).round().astype(int).tolist()))
    return {
        "timesteps": [steps[i].timestep for i in chosen],
        "x_t": [np.asarray(to_grid(steps[i].x_t)) for i in chosen],
        "x0": [np.asarray(to_grid(steps[i].pred_x0)) for i in chosen],
        "eps": [np.asarray(noise_grid(steps[i].pred_eps)) for i in chosen],
    }


def export_files(run: DiffusionRun, stem: str) -> list[str]:
    """The final image as PNG, the trajectory (x_t | x0_hat) as an animated GIF, and MP4 with ffmpeg."""
    files = [save_output(run.image, f"{stem}.png")]
    frames = [image_grid([to_display(s.x_t), to_display(s.pred_x0)], columns=2) for s in run.trajectory.steps]
    if frames:
        frames.append(image_grid([to_display(run.trajectory.final)] * 2, columns=2))
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


def build(registry: Registry, demo: gr.Blocks) -> None:
    def nlm(noisy: Image.Image, sigma: float) -> Image.Image:
        result = non_local_means(np.asarray(noisy, dtype=np.float64) / 255.0, sigma)
        return Image.fromarray((np.clip(result, 0, 1) * 255).round().astype(np.uint8))

    def class_update(label):
        try:
            dm = registry.diffusion(label)
        except Exception:
            return gr.Dropdown(choices=[], value=None, visible=False), gr.Slider(visible=False)
        if not dm.is_conditional:
            return gr.Dropdown(choices=[], value=None, visible=False), gr.Slider(visible=False)
        choices = [("(unconditional)", "")] + [(name, name) for name in dm.classes]
        return (gr.Dropdown(choices=choices, value=dm.classes[0], visible=True),
                gr.Slider(value=dm.default_guidance_scale, visible=True))

    def finish(run: DiffusionRun, label: str, steps: int, kind: str):
        stem = file_stem(label, run.scheduler, f"{steps}steps", f"seed{run.seed}", kind)
        trajectory = pack_trajectory(run.trajectory.steps)
        scrub = gr.Slider(minimum=0, maximum=max(1, len(trajectory["timesteps"]) - 1), value=0, step=1,
                          interactive=True, label=f"step ({len(trajectory['timesteps'])} kept)")
        return trajectory, scrub, export_files(run, stem)

    @user_errors
    def sample(label, scheduler, steps, seed, batch, class_name, guidance, eta):
        dm = registry.diffusion(label)
        stream = dm.sample_stream(seed=int(seed), steps=int(steps), scheduler=scheduler, batch=int(batch),
                                  class_label=class_name or None, guidance_scale=guidance, eta=eta)
        schedule = dm.schedule()
        # x_T first: the visitor sees the run start before the first (batched, guided) UNet call
        yield (to_display(dm.initial_noise(int(seed), int(batch))), None, "x_T: pure noise",
               gr.skip(), gr.skip(), gr.skip(), gr.skip())
        for item in stream:
            if isinstance(item, Step):
                yield (to_display(item.x_t), to_display(item.pred_x0), f"t = {item.timestep}",
                       gr.skip(), gr.skip(), gr.skip(), gr.skip())
        run = item
        trajectory, scrub, files = finish(run, label, int(steps), "sample")
        yield (to_display(run.trajectory.final), to_display(run.trajectory.final),
               f"done: {len(run.trajectory.steps)} steps, seed {run.seed}", trajectory, scrub,
               schedule_figure(schedule, trajectory["timesteps"][0] if trajectory["timesteps"] else None), files)

    @user_errors
    def scrub(label, index, trajectory):
        if not trajectory or not trajectory.get("timesteps"):
            raise gr.Error("Run a sample or a denoise first; then scrub through its steps.")
        index = int(min(max(index, 0), len(trajectory["timesteps"]) - 1))
        t = trajectory["timesteps"][index]
        schedule = registry.diffusion(label).schedule()
        return (*(upscale(Image.fromarray(trajectory[key][index])) for key in ("x_t", "x0", "eps")),
                schedule_figure(schedule, t))

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

    @user_errors
    def denoise(label, image_path, mode, t, sigma_255, steps, seed, scheduler, class_name, guidance):
        if image_path is None:
            raise gr.Error("Upload an image first.")
        dm = registry.diffusion(label)
        image = open_image(image_path)
        kwargs = dict(seed=int(seed), scheduler=scheduler, class_label=class_name or None, guidance_scale=guidance,
                      steps=int(steps) if steps else None)
        if mode == "noisy":
            if not 0 < sigma_255 <= 255:
                raise gr.Error("Set the noise level sigma (0-255 units) above 0, or press Estimate.")
            stream = dm.denoise_stream(image, sigma=sigma_255 / 255.0, **kwargs)
        else:
            stream = dm.denoise_stream(image, t=int(t), **kwargs)
        for item in stream:
            if isinstance(item, Step):
                yield (to_display(item.pred_x0), gr.skip(), f"t = {item.timestep}", gr.skip(), gr.skip(), gr.skip())
        run = item
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
        trajectory, scrub_slider, files = finish(run, label, count, "denoise")
        yield result, baseline, text, trajectory, scrub_slider, files

    @user_errors
    def compare(label, settings, seed, class_name, guidance):
        if not 2 <= len(settings or []) <= 4:
            raise gr.Error("Pick 2 to 4 sampler settings to compare.")
        dm = registry.diffusion(label)
        items = []
        for setting in settings:
            name, _, steps = setting.rpartition(" ")
            run = dm.sample(seed=int(seed), steps=int(steps), scheduler=COMPARE_NAMES[name],
                            class_label=class_name or None, guidance_scale=guidance, record=False)
            items.append((to_display(run.trajectory.final), setting))
        return items

    gr.Markdown("### From noise to image, one step at a time\nx_t is the sample entering each step; x̂0 is the model's "
                "guess of the clean image at that step (Ho et al. eq. 15).")
    trajectory = gr.State({}, time_to_live=STATE_TTL_S)
    # Each sub-tab has its natural embedded model: the emoji sampler, the photo denoiser.
    sampler_default = registry.default("diffusion", "ddpm-emoji")
    denoiser_default = registry.default("diffusion", "ddpm-photo")
    with gr.Row():
        model = gr.Dropdown(registry.choices("diffusion"), value=sampler_default, label="Model")
        scheduler = gr.Radio(SCHEDULER_CHOICES, value="ddim", label="Scheduler")
        class_name = gr.Dropdown([], label="Category", visible=False, allow_custom_value=True)
        guidance = gr.Slider(0, 10, value=3.0, step=0.5, label="Guidance scale", visible=False)
    with gr.Tab("Sample") as sample_tab:
        with gr.Row():
            steps = gr.Slider(1, 1000, value=50, step=1, label="Steps")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            batch = gr.Slider(1, 16, value=16, step=1, label="Batch (grid)")
            eta = gr.Slider(0, 1, value=0, step=0.1, label="η (DDIM only)")
        with gr.Row():
            sample_button = gr.Button("Sample", variant="primary")
            stop_button = gr.Button("Stop", variant="stop")
        status = gr.Markdown()
        with gr.Row():
            live_xt = gr.Image(label="x_t (live)", format="png", interactive=False, height=OUTPUT_HEIGHT)
            live_x0 = gr.Image(label="x̂0 (live)", format="png", interactive=False, height=OUTPUT_HEIGHT)
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
            noisy = gr.Image(label="x_t = q(x_t | x_0) (no model call)", format="png", interactive=False, height=OUTPUT_HEIGHT)
            denoised = gr.Image(label="GenLab (reverse process)", format="png", interactive=False, height=OUTPUT_HEIGHT)
            baseline = gr.Image(label="scikit-image non-local means, same sigma", format="png", interactive=False, height=OUTPUT_HEIGHT)
        denoise_text = gr.Markdown()
    with gr.Tab("Compare samplers") as compare_tab:
        with gr.Row():
            settings = gr.CheckboxGroup(COMPARE_CHOICES, value=["DDIM 10", "DDIM 50", "DPM-Solver++ 10"],
                                        label="Same initial noise through 2-4 settings")
            compare_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            compare_button = gr.Button("Compare", variant="primary")
        gallery = gr.Gallery(label="Same noise, different samplers", columns=4, height="auto", format="png",
                             object_fit="contain")
    gr.Markdown("#### Scrub the last sample or denoise run (no recomputation)")
    with gr.Row():
        scrub_slider = gr.Slider(0, 1, value=0, step=1, label="step", interactive=True)
    with gr.Row():
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
    model.change(class_update, model, [class_name, guidance], api_visibility="private")
    sample_event = sample_button.click(
        sample, [model, scheduler, steps, seed, batch, class_name, guidance, eta],
        [live_xt, live_x0, status, trajectory, scrub_slider, schedule_plot, downloads],
        api_name="sample", concurrency_id="heavy")
    stop_button.click(None, None, None, cancels=[sample_event], api_visibility="private")
    scrub_inputs, scrub_outputs = [model, scrub_slider, trajectory], [scrub_xt, scrub_x0, scrub_eps, schedule_plot]
    sample_event.success(scrub, scrub_inputs, scrub_outputs, api_name="scrub_after_sample", api_visibility="private",
                         show_progress="hidden")
    scrub_slider.change(scrub, [model, scrub_slider, trajectory], [scrub_xt, scrub_x0, scrub_eps, schedule_plot],
                        api_name="scrub", show_progress="hidden", trigger_mode="always_last")
    preview_inputs = [model, upload, mode, t, sigma, noise_seed]
    t.change(noise_preview, preview_inputs, [noisy, schedule_plot], api_name="noise_preview", show_progress="hidden",
             trigger_mode="always_last")
    upload.upload(noise_preview, preview_inputs, [noisy, schedule_plot], api_visibility="private")
    mode.change(noise_preview, preview_inputs, [noisy, schedule_plot], api_visibility="private")
    estimate_button.click(estimate, upload, sigma, api_name="estimate_sigma")
    denoise_event = denoise_button.click(
        denoise, [model, upload, mode, t, sigma, denoise_steps, noise_seed, scheduler, class_name, guidance],
        [denoised, baseline, denoise_text, trajectory, scrub_slider, downloads], api_name="denoise",
        concurrency_id="heavy")
    stop_button.click(None, None, None, cancels=[denoise_event], api_visibility="private")
    denoise_event.success(scrub, scrub_inputs, scrub_outputs, api_name="scrub_after_denoise", api_visibility="private",
                          show_progress="hidden")
    mode.change(lambda m: (gr.Slider(visible=m == "clean"), gr.Slider(visible=m == "noisy"), gr.Button(visible=m == "noisy")),
                mode, [t, sigma, estimate_button], api_visibility="private")
    compare_button.click(compare, [model, settings, compare_seed, class_name, guidance], gallery,
                         api_name="compare", concurrency_id="heavy")
    demo.load(class_update, model, [class_name, guidance], api_visibility="private")
