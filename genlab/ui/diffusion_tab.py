"""Step-by-step diffusion tab: sample with streamed frames, scrub the trajectory, denoise uploads, compare samplers.

`DiffusionTab` holds the registry and the tab's components; its handlers take one request dataclass
(`SampleRequest`, `DenoiseRequest`, ...; `diffusion_requests`) whose fields are the API's parameters in order, and
return or yield a dict keyed by output component (a component left out keeps its value). It opens on the
text-to-image model, whose own panels (example prompts, word heat maps, compare prompts, image to image, the
nearest training image) `text_to_image.TextToImage` adds.
"""

from __future__ import annotations

import time

import gradio as gr
import numpy as np

from ..autoencoders.kl import channels_image
from ..diffusion import DiffusionRun, Step, estimate_sigma
from ..imaging.io import as_image, open_image
from ..loading.registry import example_images
from .common import (Conditioning, Registry, file_stem, image_panel, mask_editor, mask_from_editor, on_model_thread,
                     positional, upscale, user_errors)
from .compat import SafeImage, TextOnly
from .diffusion_example import ExampleRuns, about_line, denoiser_note, is_denoiser, step_slider
from .diffusion_requests import (CompareRequest, DenoiseRequest, InpaintRequest, PreviewRequest, SampleRequest,
                                 check_work, conditions, is_guided)
from .diffusion_views import (cost_line, denoise_summary, example_result, export_files, live_panels, nlm,
                              pack_trajectory, step_images)
from .plots import schedule_figure
from .text_to_image import OTHER_BATCH, TEXT_BATCH, TEXT_MODEL, TextToImage

SCHEDULER_CHOICES = [("DDPM", "ddpm"), ("DDIM", "ddim"), ("DPM-Solver++", "dpm++")]
COMPARE_CHOICES = ["DDIM 10", "DDIM 50", "DPM-Solver++ 10", "DPM-Solver++ 25", "DDPM 100", "DDPM 1000"]
COMPARE_NAMES = {"DDIM": "ddim", "DPM-Solver++": "dpm++", "DDPM": "ddpm"}
STATE_TTL_S = 3600  # a visitor's trajectory is dropped an hour after their last run


# ------------------------------------------------------------------------------ the tab
class DiffusionTab:
    """The tab's components (made by `build`) and its handlers over the registry's diffusion models."""

    def __init__(self, registry: Registry):
        self.registry = registry
        # Each sub-tab has its natural embedded model: the text-to-image emoji sampler, the photo denoiser.
        self.sampler_default = registry.default("diffusion", TEXT_MODEL)
        self.denoiser_default = registry.default("diffusion", "ddpm-photo")
        self.examples = ExampleRuns(registry)
        self.text = TextToImage(self)

    # -------------------------------------------------------------------------- handlers
    def conditioning_update(self, label) -> dict:
        try:
            dm = self.registry.diffusion(label)
        except Exception:
            dm = None
        return self.conditioning.update(dm)

    def finish(self, run: DiffusionRun, label: str, steps: int, kind: str) -> dict:
        """The scrubbable trajectory, the step slider over it and the downloads of a finished run."""
        stem = file_stem(label, run.scheduler, f"{steps}steps", f"seed{run.seed}", kind)
        trajectory = pack_trajectory(run)
        scrub = step_slider(len(trajectory["timesteps"]), 0)
        return {self.trajectory: trajectory, self.scrub_slider: scrub, self.downloads: export_files(run, stem)}

    @on_model_thread
    def example(self, label) -> dict:
        """The first view of a model (page load, model switch): its example run becomes the session's last run,
        scrubbed at the middle step. Without one the status says why, with no error toast."""
        try:
            example = self.examples.get(label) if label else None
            if example is None:
                return {self.status: about_line(self.registry, label) or "Press Sample to watch a run step by step."}
            middle = len(example.trajectory["timesteps"]) // 2
            scrubbed = self.scrub(label, middle, example.trajectory)
        except Exception as error:
            return {self.status: f"No example: {error}"}
        return {**scrubbed, self.trajectory: example.trajectory, self.status: example.description,
                self.scrub_slider: step_slider(len(example.trajectory["timesteps"]), middle),
                self.live_xt: example.samples, self.live_x0: example.samples, self.live_latent: None, self.live_eps: None}

    @on_model_thread
    @user_errors
    def sample(self, request: SampleRequest):
        dm = self.registry.diffusion(request.label)
        seed, steps, batch = int(request.seed), int(request.steps), int(request.batch)
        check_work(dm, [(steps, batch, is_guided(dm, request.class_name, request.guidance))], (dm.sample_size,) * 2)
        maps = dm.is_text_conditional and request.prompt is not None  # a text model's word heat maps
        stream = dm.sample_stream(seed=seed, steps=steps, scheduler=request.scheduler, batch=batch, eta=request.eta,
                                  attention_maps=maps, **conditions(request, dm))
        schedule = dm.schedule()
        # x_T first: the visitor sees the run start before the first (batched, guided) UNet call
        noise = dm.initial_noise(seed, batch)
        latent = upscale(channels_image(noise, upscale=dm.codec.factor)) if dm.is_latent else None
        note = denoiser_note(request.label) + " " if is_denoiser(self.registry, request.label) else ""  # up front
        yield {self.live_xt: upscale(as_image(dm.codec.preview(noise))), self.live_x0: None,
               self.status: f"{note}x_T: pure noise", self.live_latent: latent, self.live_eps: None}
        started = time.perf_counter()
        for item in stream:
            if isinstance(item, Step):
                frame = dm.frame(item, preview=True)
                latent_xt, x_t, x0, eps = live_panels(frame)
                yield {self.live_xt: x_t, self.live_x0: x0, self.status: f"t = {item.timestep}",
                       self.live_latent: latent_xt, self.live_eps: eps, **self.text.live(frame)}
        run = item
        seconds = time.perf_counter() - started
        finished = self.finish(run, request.label, steps, "sample")
        timesteps = finished[self.trajectory]["timesteps"]
        final = upscale(run.image)
        notes = "".join(f" ({note})" for note in run.notes)
        final_latent = upscale(channels_image(run.trajectory.final, upscale=dm.codec.factor)) if dm.is_latent else None
        yield {self.live_xt: final, self.live_x0: final,
               self.status: f"{note}done: {len(run.trajectory.steps)} steps, seed {run.seed}{notes}. "
                            f"{cost_line(dm, run, seconds)}",
               **finished, self.schedule_plot: schedule_figure(schedule, timesteps[0] if timesteps else None),
               self.live_latent: final_latent, self.live_eps: None, **self.text.done(run)}

    @user_errors
    def scrub(self, label, index, trajectory) -> dict:
        if not trajectory or not trajectory.get("timesteps"):
            raise gr.Error("Run a sample or a denoise first; then scrub through its steps.")
        index = int(min(max(index, 0), len(trajectory["timesteps"]) - 1))
        dm = self.registry.diffusion(label)
        images = {key: None if image is None else upscale(image)
                  for key, image in step_images(dm, trajectory, index).items()}
        return {self.scrub_xt: images["x_t"], self.scrub_x0: images["x0"], self.scrub_eps: images["eps"],
                self.schedule_plot: schedule_figure(dm.schedule(), trajectory["timesteps"][index]),
                self.scrub_latent: images["latent"]}

    @user_errors
    def noise_preview(self, request: PreviewRequest) -> dict:
        if request.image_path is None:
            raise gr.Error("Upload an image first.")
        dm = self.registry.diffusion(request.label)
        if request.mode == "noisy":
            return {self.noisy: open_image(request.image_path), self.schedule_plot: schedule_figure(dm.schedule(), None)}
        t = int(request.t)
        return {self.noisy: dm.forward_noise(request.image_path, t, seed=int(request.seed)),
                self.schedule_plot: schedule_figure(dm.schedule(), t)}

    @user_errors
    def estimate(self, image_path) -> dict:
        if image_path is None:
            raise gr.Error("Upload an image first.")
        return {self.sigma: round(estimate_sigma(np.asarray(open_image(image_path))) * 255, 1)}

    def stream_x0(self, dm, stream, image, text):
        """Yield the streamed x̂0 (preview decode for latent models) into `image`, the step into `text`; then
        return the run."""
        for item in stream:
            if isinstance(item, Step):
                yield {image: upscale(dm.frame(item, preview=True).x0), text: f"t = {item.timestep}"}
            else:
                return item

    @on_model_thread
    @user_errors
    def denoise(self, request: DenoiseRequest):
        if request.image_path is None:
            raise gr.Error("Upload an image first.")
        dm = self.registry.diffusion(request.label)
        image = open_image(request.image_path)
        kwargs = dict(seed=int(request.seed), scheduler=request.scheduler,
                      steps=int(request.steps) if request.steps else None, **conditions(request, dm))
        if request.mode == "noisy":
            if not 0 < request.sigma_255 <= 255:
                raise gr.Error("Set the noise level sigma (0-255 units) above 0, or press Estimate.")
            stream = dm.denoise_stream(image, sigma=request.sigma_255 / 255.0, **kwargs)
        else:
            stream = dm.denoise_stream(image, t=int(request.t), **kwargs)
        planned = int(request.steps) if request.steps else 50  # the default is at most 50 steps (about 50 t / T)
        check_work(dm, [(planned, 1, is_guided(dm, request.class_name, request.guidance))],
                   (min(image.height, 512), min(image.width, 512)))
        run = yield from self.stream_x0(dm, stream, self.denoised, self.denoise_text)
        baseline = nlm(run.noisy, run.sigma)
        yield {self.denoised: run.image, self.baseline: baseline, self.denoise_text: denoise_summary(dm, run, baseline),
               **self.finish(run, request.label, len(run.trajectory.steps), "denoise")}

    @on_model_thread
    @user_errors
    def inpaint(self, request: InpaintRequest):
        dm = self.registry.diffusion(request.label)
        image, mask = mask_from_editor(request.editor)
        side = (min(image.height, 512), min(image.width, 512))
        check_work(dm, [(int(request.steps), 1, is_guided(dm, request.class_name, request.guidance))], side)
        stream = dm.inpaint_stream(image, mask, steps=int(request.steps), seed=int(request.seed),
                                   scheduler=request.scheduler, **conditions(request, dm),
                                   attention_maps=dm.is_text_conditional and request.prompt is not None)
        run = yield from self.stream_x0(dm, stream, self.inpainted, self.inpaint_text)
        painted = int(np.count_nonzero(np.asarray(mask)))
        text = (f"Repainted {painted:,} of {image.width * image.height:,} pixels in {len(run.trajectory.steps)} steps; "
                "outside the mask the result keeps your image's pixels"
                + (", and every latent cell the mask touches is resampled." if dm.is_latent else "."))
        yield {self.inpainted: upscale(run.image), self.mask_view: upscale(mask.convert("RGB")), self.inpaint_text: text,
               **self.finish(run, request.label, int(request.steps), "inpaint")}

    @on_model_thread
    @user_errors
    def compare(self, request: CompareRequest) -> dict:
        if not 2 <= len(request.settings or []) <= 4:
            raise gr.Error("Pick 2 to 4 sampler settings to compare.")
        dm = self.registry.diffusion(request.label)
        plans = [(setting, *setting.rpartition(" ")[::2]) for setting in request.settings]
        guided = is_guided(dm, request.class_name, request.guidance)
        check_work(dm, [(int(steps), 1, guided) for _, _, steps in plans], (dm.sample_size,) * 2)
        items = []
        for setting, name, steps in plans:
            run = dm.sample(seed=int(request.seed), steps=int(steps), scheduler=COMPARE_NAMES[name], record=False,
                            **conditions(request, dm))
            items.append((upscale(run.image), setting))
        return {self.gallery: items}

    def switch_model(self, current: str, source: str, target: str) -> dict:
        """Entering a sub-tab while the other sub-tab's embedded default is chosen picks this one's
        (Sample and Compare samplers: sd-emoji, Denoise: ddpm-photo); any other model (e.g. a --model checkpoint)
        stays."""
        return {self.model: target if current == source and target else gr.skip()}

    def to_denoiser(self, current: str) -> dict:
        return self.switch_model(current, self.sampler_default, self.denoiser_default)

    def to_sampler(self, current: str) -> dict:
        return self.switch_model(current, self.denoiser_default, self.sampler_default)

    def mode_controls(self, mode: str) -> dict:
        """t for a clean upload; sigma and its estimate for a noisy one."""
        return {self.t: gr.Slider(visible=mode == "clean"), self.sigma: gr.Slider(visible=mode == "noisy"),
                self.estimate_button: gr.Button(visible=mode == "noisy")}

    # -------------------------------------------------------------------------- layout
    def build(self, demo: gr.Blocks) -> None:
        gr.Markdown("### From noise to image, one step at a time\nx_t is the sample entering each step; x̂0 is the model's "
                    "guess of the clean image at that step (Ho et al. eq. 15). Latent models (Stable Diffusion's recipe, "
                    "Rombach et al. 2022) run the same loop on an autoencoder's small latent: the live panels decode it "
                    "with a cheap linear preview, the final image and scrubbed steps with the real decoder.")
        self.trajectory = gr.State({}, time_to_live=STATE_TTL_S)
        self.model_controls()
        self.about = gr.Markdown(about_line(self.registry, self.sampler_default))
        with gr.Tab("Sample") as self.sample_tab:
            self.sample_panels()
        with gr.Tab("Denoise an upload") as self.denoise_tab:
            self.denoise_panels()
        with gr.Tab("Inpaint"):
            self.inpaint_panels()
        with gr.Tab("Compare samplers") as self.compare_tab:
            self.compare_panels()
        with gr.Tab("Compare prompts") as self.prompts_tab:
            self.text.compare_panels()
        with gr.Tab("Image to image") as self.img2img_tab:
            self.text.img2img_panels()
        self.scrub_panels()
        self.wire(demo)

    def model_controls(self) -> None:
        registry = self.registry
        with gr.Row():
            self.model = gr.Dropdown(registry.choices("diffusion"), value=self.sampler_default, label="Model")
            self.scheduler = gr.Radio(SCHEDULER_CHOICES, value="ddim", label="Scheduler")
            class_name = gr.Dropdown([], label="Category", visible=False, allow_custom_value=True)
            guidance = gr.Slider(0, 10, value=3.0, step=0.5, label="Guidance scale", visible=False)
        text = registry.is_text(self.sampler_default)  # shown from the start; page load sets every control
        with gr.Row():
            prompt = TextOnly("", label="Prompt", visible=text, max_lines=3, placeholder="red heart")
            negative_prompt = TextOnly("", label="Negative prompt", visible=text, max_lines=2,
                                       placeholder="blurry, low quality")
        self.conditioning = Conditioning(class_name, guidance, prompt, negative_prompt)

    def sample_panels(self) -> None:
        example = example_result(self.registry, self.sampler_default)
        text = self.registry.is_text(self.sampler_default)
        with gr.Row():
            self.steps = gr.Slider(1, 1000, value=50, step=1, label="Steps")
            self.seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            self.batch = gr.Slider(1, 16, value=TEXT_BATCH if text else OTHER_BATCH, step=1, label="Batch (grid)")
            self.eta = gr.Slider(0, 1, value=0, step=0.1, label="η (DDIM only)")
        with gr.Row():
            self.sample_button = gr.Button("Sample", variant="primary")
            self.stop_button = gr.Button("Stop", variant="stop")
        self.text.prompt_examples(text)
        self.status = gr.Markdown("Example: the model card's 16 samples (50 DDIM steps, seed 0). Press Sample to "
                                  "watch a run step by step." if example else "")
        with gr.Row():
            self.live_latent = image_panel("latent x_t: its channels side by side (latent models)")
            self.live_xt = image_panel("x_t (live)", example)
            self.live_x0 = image_panel("x̂0 (live)", example)
            self.live_eps = image_panel("ε̂ (live)")
        self.text.sample_panels(text)

    def denoise_panels(self) -> None:
        with gr.Row():
            with gr.Column():
                self.upload = SafeImage(label="Image", type="filepath", height=256)
                gr.Examples(example_images(), inputs=self.upload)
            with gr.Column():
                self.mode = gr.Radio([("My image is clean: noise it to t", "clean"),
                                      ("My photo is already noisy: give sigma", "noisy")], value="clean", label="Mode")
                self.t = gr.Slider(0, 999, value=250, step=1, label="t (forward-noise the image to this timestep)")
                with gr.Row():
                    self.sigma = gr.Slider(0, 100, value=25, step=0.5, label="sigma (0-255 units)", visible=False)
                    self.estimate_button = gr.Button("Estimate sigma", visible=False)
                self.denoise_steps = gr.Number(0, label="Steps (0 = default)", precision=0, minimum=0, maximum=1000,
                                               info="default: 1 step (the x̂0 estimate) for sigma, about 50·t/1000 for t")
                self.noise_seed = gr.Number(0, label="Noise seed", precision=0, minimum=0)
                self.denoise_button = gr.Button("Denoise from here", variant="primary")
        with gr.Row():
            self.noisy = image_panel("x_t = q(x_t | x_0)")
            self.denoised = image_panel("GenLab (reverse process)")
            self.baseline = image_panel("scikit-image non-local means, same sigma")
        self.denoise_text = gr.Markdown()

    def inpaint_panels(self) -> None:
        gr.Markdown("Upload an image, paint the region to repaint with the brush, then Inpaint. Every step re-imposes "
                    "the known region from q(x_t | x_0) (RePaint's conditioning, Lugmayr et al. 2022), so only the "
                    "painted region is generated.")
        with gr.Row():
            self.editor = mask_editor("Image and mask (brush = repaint)")
            with gr.Column():
                self.inpaint_steps = gr.Slider(1, 250, value=50, step=1, label="Steps")
                self.inpaint_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                self.inpaint_button = gr.Button("Inpaint", variant="primary")
        with gr.Row():
            self.inpainted = image_panel("result (live: x̂0)")
            self.mask_view = image_panel("mask (white = repainted)")
        self.inpaint_text = gr.Markdown()

    def compare_panels(self) -> None:
        with gr.Row():
            self.settings = gr.CheckboxGroup(COMPARE_CHOICES, value=["DDIM 10", "DDIM 50", "DPM-Solver++ 10"],
                                             label="Same initial noise through 2-4 settings")
            self.compare_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            self.compare_button = gr.Button("Compare", variant="primary")
        self.gallery = gr.Gallery(label="Same noise, different samplers", columns=4, height="auto", format="png",
                                  object_fit="contain")

    def scrub_panels(self) -> None:
        gr.Markdown("#### Scrub the last run (no recomputation of the reverse process; latent steps are decoded by the "
                    "real decoder)")
        with gr.Row():
            self.scrub_slider = gr.Slider(0, 1, value=0, step=1, label="step", interactive=True)
        with gr.Row():
            self.scrub_latent = image_panel("latent x_t (latent models)")
            self.scrub_xt = image_panel("x_t")
            self.scrub_x0 = image_panel("x̂0")
            self.scrub_eps = image_panel("ε̂ (predicted noise)")
            self.schedule_plot = image_panel("Noise schedule (ᾱ_t, log-SNR)")
        self.text.scrub_panels(self.registry.is_text(self.sampler_default))
        self.downloads = gr.File(label="Downloads (PNG, GIF; MP4 when ffmpeg is installed)", file_count="multiple",
                                 interactive=False)

    def wire(self, demo: gr.Blocks) -> None:
        """Every event; the API's parameter order is each event's `inputs` order (the request's fields)."""
        model, conditioning = self.model, self.conditioning.components
        self.denoise_tab.select(self.to_denoiser, model, model, api_visibility="private", show_progress="hidden")
        for tab in (self.sample_tab, self.compare_tab):
            tab.select(self.to_sampler, model, model, api_visibility="private", show_progress="hidden")
        model.change(self.conditioning_update, model, conditioning, api_visibility="private")
        model.change(lambda label: about_line(self.registry, label), model, self.about, api_visibility="private",
                     queue=False, show_progress="hidden")
        example_outputs = [self.status, self.live_xt, self.live_x0, self.live_latent, self.live_eps, self.trajectory,
                           self.scrub_slider, self.scrub_xt, self.scrub_x0, self.scrub_eps, self.schedule_plot,
                           self.scrub_latent]
        examples = [demo.load(self.example, model, example_outputs, api_name="diffusion_example",
                              api_visibility="undocumented", concurrency_id="heavy"),
                    model.change(self.example, model, example_outputs, api_visibility="private",
                                 concurrency_id="heavy")]
        self.wire_sample(self.sample_button.click)
        self.scrub_slider.change(self.scrub, *self.scrub_io, api_name="scrub", show_progress="hidden",
                                 trigger_mode="always_last")
        self.text.wire(demo, examples, self.wire_sample)
        preview = positional(self.noise_preview, PreviewRequest)
        preview_inputs = [model, self.upload, self.mode, self.t, self.sigma, self.noise_seed]
        preview_outputs = [self.noisy, self.schedule_plot]
        self.t.change(preview, preview_inputs, preview_outputs, api_name="noise_preview", show_progress="hidden",
                      trigger_mode="always_last")
        self.upload.upload(preview, preview_inputs, preview_outputs, api_visibility="private")
        self.mode.change(preview, preview_inputs, preview_outputs, api_visibility="private")
        self.estimate_button.click(self.estimate, self.upload, self.sigma, api_name="estimate_sigma")
        run_outputs = [self.trajectory, self.scrub_slider, self.downloads]
        denoise_event = self.denoise_button.click(
            positional(self.denoise, DenoiseRequest),
            [model, self.upload, self.mode, self.t, self.sigma, self.denoise_steps, self.noise_seed, self.scheduler,
             *conditioning], [self.denoised, self.baseline, self.denoise_text, *run_outputs], api_name="denoise",
            concurrency_id="heavy")
        self.stop_button.click(None, None, None, cancels=[denoise_event], api_visibility="private")
        self.follow_run(denoise_event, "denoise")
        inpaint_event = self.inpaint_button.click(
            positional(self.inpaint, InpaintRequest),
            [model, self.editor, self.inpaint_steps, self.inpaint_seed, self.scheduler, *conditioning],
            [self.inpainted, self.mask_view, self.inpaint_text, *run_outputs], api_name="inpaint",
            concurrency_id="heavy")
        self.follow_run(inpaint_event, "inpaint")
        self.mode.change(self.mode_controls, self.mode, [self.t, self.sigma, self.estimate_button],
                         api_visibility="private")
        self.compare_button.click(positional(self.compare, CompareRequest),
                                  [model, self.settings, self.compare_seed, *conditioning], self.gallery,
                                  api_name="compare", concurrency_id="heavy")
        demo.load(self.conditioning_update, model, conditioning, api_visibility="private")

    @property
    def scrub_io(self) -> tuple[list, list]:
        """The scrub event's inputs (the API's label and step; the trajectory is the session's) and outputs."""
        return ([self.model, self.scrub_slider, self.trajectory],
                [self.scrub_xt, self.scrub_x0, self.scrub_eps, self.schedule_plot, self.scrub_latent])

    def follow_run(self, event, kind: str) -> None:
        """After a run that became the session's last one: the scrub row, and its word maps, at its first step."""
        event.success(self.scrub, *self.scrub_io, api_name=f"scrub_after_{kind}", api_visibility="private",
                      show_progress="hidden")
        event.success(self.text.scrub_maps, self.scrub_io[0], self.text.step_maps, api_name=f"scrub_maps_after_{kind}",
                      api_visibility="private", show_progress="hidden")

    def wire_sample(self, listener, public: bool = True):
        """The streamed sample on `listener` (the Sample button's click, public: /sample then /nearest; or an example
        prompt's), cancelled by Stop, followed by the scrub row and the nearest training image."""
        conditioning = self.conditioning.components
        kind, visibility = ("sample", "public") if public else ("example_prompt", "private")
        event = listener(
            positional(self.sample, SampleRequest),
            [self.model, self.scheduler, self.steps, self.seed, self.batch, *conditioning[:2], self.eta,
             *conditioning[2:]],
            [self.live_xt, self.live_x0, self.status, self.trajectory, self.scrub_slider, self.schedule_plot,
             self.downloads, self.live_latent, self.live_eps, self.text.live_maps],
            api_name="sample" if public else "sample_example_prompt", api_visibility=visibility, concurrency_id="heavy")
        self.stop_button.click(None, None, None, cancels=[event], api_visibility="private")
        self.follow_run(event, kind)
        event.success(self.text.nearest, [self.model, self.trajectory],
                      [self.text.nearest_image, self.text.nearest_text], api_name="nearest" if public else "nearest_example_prompt", api_visibility=visibility,
                      show_progress="hidden")
        return event

def build(registry: Registry, demo: gr.Blocks) -> DiffusionTab:
    tab = DiffusionTab(registry)
    tab.build(demo)
    return tab
