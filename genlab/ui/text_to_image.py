"""What the diffusion tab adds for text-to-image models (Stable Diffusion layouts such as sd-emoji).

- Example prompts one click away: a click types the prompt and samples it.
- Word heat maps (DAAM, Tang et al., arXiv:2210.04885; `genlab.diffusion.attention`): where each word of the
  prompt acted, over the image. Live while a sample streams (the step's maps over its x̂0), the run's maps over
  the final image once it is done, and the scrubbed step's maps in the scrub row.
- Compare prompts: 2 to 4 prompts from the same seed, so the same x_T, stepping together in one batch; each
  column streams its x̂0 and its word maps.
- Image to image with a prompt: SDEdit (Meng et al., arXiv:2108.01073): any picture, brought to the model's size,
  noised to strength x T and redrawn under the prompt, streamed.
- The nearest training image beside a sample (`genlab.imaging.nearest`; Carlini et al., arXiv:2301.13188,
  search samples for copies the same way), with its distance and the typical distance between training images,
  so a visitor sees whether the model drew something new or recalled what it was trained on.

`TextToImage` holds these components and handlers; the `DiffusionTab` builds it, places its panels and wires its
events beside its own, and shares its model picker, prompt boxes, scheduler, guidance and scrub state.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
from PIL import Image

from ..diffusion import Step
from ..diffusion.pipeline import MAX_COMPARE_PROMPTS as MAX_PROMPTS  # compare prompts: at most this many
from ..imaging.io import open_image, tensor_to_pil
from ..imaging.nearest import TrainingIndex
from ..loading.registry import example_images
from ..sampling import check_number
from .common import image_panel, on_model_thread, positional, upscale, user_errors
from .compat import SafeImage, TextOnly
from .diffusion_example import EXAMPLE_PROMPTS
from .diffusion_requests import Img2ImgRequest, PromptsRequest, check_work, is_guided
from .diffusion_views import maps_of, step_images
from .display import word_overlays

TEXT_MODEL = "sd-emoji"  # the embedded text-to-image model: the tab opens on it
TRAINING_INDEX = "training_images"  # a model folder's index of its training images (genlab.imaging.nearest)
MAPS_HEIGHT = 300  # px: a gallery of word maps, in rows of thumbnails beside the panels of OUTPUT_HEIGHT
MAPS_FORMAT = "jpeg"  # smooth colour fields: 0.6 ms an image against PNG's 16 ms, paid per word at every streamed step
TEXT_BATCH, OTHER_BATCH = 1, 16  # the batch slider for a text model (maps and nearest image are per image)


@functools.lru_cache(maxsize=16)
def training_index(folder: str) -> TrainingIndex | None:
    """The training index stored in `folder`, read once; None when there is none."""
    return TrainingIndex.load(Path(folder)) if (Path(folder) / "index.json").is_file() else None


def nearest_verdict(distance: float, typical: float | None) -> str:
    """What a nearest-training-image distance says, against the typical distance between training images."""
    if typical is None:
        return "no typical distance is stored to compare it with."
    if distance < typical / 2:
        return "much closer than two training images usually are: the model most likely **recalled** this one."
    if distance < typical:
        return "closer than two training images usually are: a **close variation** of this training image."
    return "farther than two training images usually are from each other: **something new** (or a blend)."


def split_prompts(text: str | None) -> list[str]:
    """The prompts of the compare box, one a line (blank lines skipped); a count the model would refuse is
    refused here with the box's format in the message."""
    prompts = [line for line in (text or "").splitlines() if line.strip()]
    if not 2 <= len(prompts) <= MAX_PROMPTS:
        raise gr.Error(f"Give 2 to {MAX_PROMPTS} prompts to compare, one a line; got {len(prompts)}.",
                       print_exception=False)
    return prompts


class TextToImage:
    """The text-to-image panels of a `DiffusionTab` (`tab`) and their handlers."""

    def __init__(self, tab):
        self.tab, self.registry = tab, tab.registry
        default = self.registry.default("diffusion", TEXT_MODEL)
        self.text_default = default if self.registry.is_text(default) else None

    # -------------------------------------------------------------------------- handlers
    def controls(self, label, prompt) -> dict:
        """The text panels shown for a text model and hidden otherwise; an empty prompt box filled with the example
        prompt (the one the model's example run shows); the batch slider at one image for a text model (its maps
        and nearest image are per image), at the grid's 16 otherwise."""
        text = self.registry.is_text(label)
        shown = {component: gr.update(visible=text) for component in
                 (self.examples, self.sample_extras, self.step_maps)}
        return {**shown, self.tab.conditioning.prompt: EXAMPLE_PROMPTS[0] if text and not prompt else gr.skip(),
                self.tab.batch: gr.Slider(value=TEXT_BATCH if text else OTHER_BATCH)}

    def to_text_model(self, current) -> dict:
        """Entering Compare prompts or Image to image with a model that takes no prompt picks the text model."""
        switch = self.text_default and not self.registry.is_text(current)
        return {self.tab.model: self.text_default if switch else gr.skip()}

    def fill_prompt(self, values) -> dict:
        return {self.tab.conditioning.prompt: values[0]}

    def maps_update(self, gallery, image, maps) -> dict:
        """{gallery: one heat map per word over `image`} when the run recorded maps, else {} (left as it is)."""
        return {gallery: word_overlays(image, maps)} if maps else {}

    def live(self, frame) -> dict:
        """A streamed step's word maps over its (first image's) x̂0."""
        return self.maps_update(self.live_maps, tensor_to_pil(frame.x0_pixels[0]), frame.attention_maps)

    def done(self, run) -> dict:
        """The run's word maps over its (first) final image."""
        return self.maps_update(self.live_maps, run.images[0], run.attention_maps)

    @on_model_thread
    def example_extras(self, label, index, trajectory) -> dict:
        """After the tab's example run: the run's word maps, the scrubbed step's maps and the nearest training image.
        Nothing for a model without an example prompt."""
        example = self.tab.examples.cached(label)
        if example is None or example.prompt is None or not trajectory or "image" not in trajectory:
            return {self.nearest_text: gr.skip()}  # an empty dict would read as one value, not as no change
        try:
            run_maps = self.maps_update(self.live_maps, Image.fromarray(trajectory["image"]), maps_of(trajectory))
            shown = {**run_maps, **self.scrub_maps(label, index, trajectory), **self.nearest(label, trajectory)}
        except Exception as error:  # the first view says why, with no error toast (as the tab's example does)
            return {self.nearest_text: f"No example maps: {error}"}
        return shown

    @user_errors
    def scrub_maps(self, label, index, trajectory) -> dict:
        """The word maps of the scrubbed step over its x̂0; an empty gallery for a run without maps."""
        if not trajectory or not trajectory.get("words"):
            return {self.step_maps: []}
        index = int(min(max(index, 0), len(trajectory["timesteps"]) - 1))
        x0 = step_images(self.registry.diffusion(label), trajectory, index, ("x0",))["x0"]
        return {self.step_maps: word_overlays(x0, maps_of(trajectory, index))}

    @user_errors
    def nearest(self, label, trajectory) -> dict:
        """The training image nearest to the last run's (first) image, with the distances that say how near."""
        spec = self.registry.config.diffusion_models.get(label) if label else None
        index = training_index(str(Path(spec.source) / (spec.subfolder or "") / TRAINING_INDEX)) if spec else None
        if index is None or not trajectory or "image" not in trajectory:
            return {self.nearest_image: None, self.nearest_text: "" if index is None else "Sample first."}
        name, distance, thumbnail = index.nearest(trajectory["image"])
        typical = index.typical_distance
        text = (f"Nearest of the {len(index):,} training images: **{name}**, at distance {distance:.3f} (RMS "
                f"difference of RGB in [0, 1] at {index.side} px); training images are typically "
                f"{'?' if typical is None else f'{typical:.3f}'} from their nearest neighbour. So: "
                f"{nearest_verdict(distance, typical)}")
        return {self.nearest_image: upscale(thumbnail), self.nearest_text: text}

    @on_model_thread
    @user_errors
    def compare_prompts(self, request: PromptsRequest):
        """2 to 4 prompts from one x_T, streamed side by side with their word maps."""
        prompts = split_prompts(request.prompts)
        dm = self.registry.diffusion(request.label)
        steps, seed = int(request.steps), int(request.seed)
        check_work(dm, [(steps, len(prompts), is_guided(dm, None, request.guidance))], (dm.sample_size,) * 2)
        stream = dm.compare_prompts_stream(prompts, seed=seed, steps=steps, scheduler=request.scheduler,
                                           guidance_scale=request.guidance,
                                           negative_prompt=request.negative_prompt or None, attention_maps=True)
        labels = prompts + ["(no prompt)"] * (MAX_PROMPTS - len(prompts))  # each column named by its prompt
        yield {**{image: gr.Image(value=None, label=label) for image, label in zip(self.columns, labels)},
               **{gallery: gr.Gallery(value=[], label=f"{label}: where each word acts")
                  for gallery, label in zip(self.column_maps, labels)},
               self.prompts_status: f"x_T: seed {seed}, one for all"}
        for items in stream:
            if isinstance(items[0], Step):
                frames = [dm.frame(step, preview=True) for step in items]
                yield {**{image: upscale(frame.x0) for image, frame in zip(self.columns, frames)},
                       **{gallery: word_overlays(frame.x0, frame.attention_maps)
                          for gallery, frame in zip(self.column_maps, frames)},
                       self.prompts_status: f"t = {items[0].timestep}"}
        runs = items
        notes = sorted({note for run in runs for note in run.notes})
        yield {**{image: upscale(run.image) for image, run in zip(self.columns, runs)},
               **{gallery: word_overlays(run.image, run.attention_maps)
                  for gallery, run in zip(self.column_maps, runs)},
               self.prompts_status: f"done: {len(prompts)} prompts from the same x_T (seed {seed}), "
                                    f"{len(runs[0].trajectory.steps)} steps each in one batch; the maps are each "
                                    "run's, over its image" + "".join(f" ({note})" for note in notes) + "."}

    @on_model_thread
    @user_errors
    def img2img(self, request: Img2ImgRequest):
        """SDEdit with the prompt, streamed: the noised start, then x̂0 and the word maps at each step."""
        if request.image_path is None:
            raise gr.Error("Upload a picture first.", print_exception=False)
        strength = check_number(request.strength, "strength", 0.0, 1.0, open_low=True)
        dm = self.registry.diffusion(request.label)
        if not dm.is_text_conditional:
            raise gr.Error(f"{request.label} takes no prompt: pick a text-to-image model ({TEXT_MODEL}), or use "
                           "Denoise an upload for SDEdit without one.", print_exception=False)
        steps, seed = int(request.steps), int(request.seed)
        check_work(dm, [(max(1, round(steps * strength)), 1, is_guided(dm, None, request.guidance))],
                   (dm.sample_size,) * 2)
        stream = dm.img2img_stream(open_image(request.image_path), request.prompt, strength=strength, steps=steps,
                                   seed=seed, scheduler=request.scheduler, guidance_scale=request.guidance,
                                   negative_prompt=request.negative_prompt or None, attention_maps=True)
        for item in stream:
            if not isinstance(item, Step):
                break
            frame = dm.frame(item, preview=True)
            yield {self.img2img_result: upscale(frame.x0), self.img2img_text: f"t = {item.timestep}",
                   **self.maps_update(self.img2img_maps, frame.x0, frame.attention_maps)}
        run = item
        notes = "".join(f" ({note})" for note in run.notes)
        yield {self.img2img_start: upscale(run.noisy), self.img2img_result: upscale(run.image),
               self.img2img_text: f"Noised to t = {run.start_timestep} of {dm.num_train_timesteps} (strength "
                                  f"{strength:g}) and redrawn in {len(run.trajectory.steps)} steps under the "
                                  f"prompt{notes}.",
               **self.maps_update(self.img2img_maps, run.image, run.attention_maps),
               **self.tab.finish(run, request.label, len(run.trajectory.steps), "img2img")}

    # -------------------------------------------------------------------------- layout
    def prompt_examples(self, visible: bool) -> None:
        """Under the Sample button: the example prompts, one click each."""
        self.examples = gr.Dataset(components=[self.tab.conditioning.prompt], samples=[[p] for p in EXAMPLE_PROMPTS],
                                   label="Example prompts (a click samples it)", visible=visible)

    def sample_panels(self, visible: bool) -> None:
        """Under the live panels: the word maps and the nearest training image."""
        with gr.Row(visible=visible) as self.sample_extras:
            self.live_maps = gr.Gallery(label="Where each word acts (live: over x̂0; done: the whole run, over the "
                                              "image)", columns=5, height=MAPS_HEIGHT, format=MAPS_FORMAT,
                                        object_fit="contain", fit_columns=False, scale=3)
            with gr.Column(scale=1):
                self.nearest_image = image_panel("Nearest training image")
                self.nearest_text = gr.Markdown()

    def scrub_panels(self, visible: bool) -> None:
        self.step_maps = gr.Gallery(label="Word heat maps at this step (over x̂0)", columns=7, height=MAPS_HEIGHT,
                                    format=MAPS_FORMAT, object_fit="contain", fit_columns=False, visible=visible)

    def compare_panels(self) -> None:
        gr.Markdown("The same seed, so the same noise x_T, through 2 to 4 prompts stepping together in one batch: "
                    "what changes is the prompt alone. Scheduler, guidance and negative prompt are the ones above.")
        with gr.Row():
            self.prompts = TextOnly("red heart\nblue heart\npurple apple", lines=4, max_lines=8,
                                    label=f"Prompts (one a line, 2 to {MAX_PROMPTS})")
            with gr.Column():
                self.prompts_steps = gr.Slider(1, 250, value=25, step=1, label="Steps")
                self.prompts_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                self.prompts_button = gr.Button("Compare prompts", variant="primary")
        self.prompts_status = gr.Markdown()
        self.columns, self.column_maps = [], []
        with gr.Row():
            for number in range(1, MAX_PROMPTS + 1):
                with gr.Column(min_width=200):
                    self.columns.append(image_panel(f"prompt {number}"))
                    self.column_maps.append(gr.Gallery(
                        label=f"prompt {number}: where each word acts", columns=3, height=MAPS_HEIGHT,
                        format=MAPS_FORMAT, object_fit="contain", fit_columns=False))

    def img2img_panels(self) -> None:
        gr.Markdown("Upload any picture, type a prompt above and pick a strength: the picture is brought to the "
                    "model's size, noised to t = strength x T and redrawn under the prompt (SDEdit, Meng et al. "
                    "2021). Low strength keeps the picture's layout and colours; 1 keeps nothing of it.")
        with gr.Row():
            with gr.Column():
                self.img2img_upload = SafeImage(label="Your picture", type="filepath", height=256)
                gr.Examples(example_images(), inputs=self.img2img_upload)
            with gr.Column():
                self.strength = gr.Slider(0, 1, value=0.7, step=0.05, label="Strength (above 0, at most 1)")
                self.img2img_steps = gr.Slider(1, 250, value=50, step=1,
                                               label="Steps at strength 1 (about strength x steps run)")
                self.img2img_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                self.img2img_button = gr.Button("Redraw with the prompt", variant="primary")
        with gr.Row():
            self.img2img_start = image_panel("your picture noised to the start")
            self.img2img_result = image_panel("redrawn (live: x̂0)")
            self.img2img_maps = gr.Gallery(label="where each word acts", columns=3, height=MAPS_HEIGHT,
                                           format=MAPS_FORMAT, object_fit="contain", fit_columns=False)
        self.img2img_text = gr.Markdown()

    # -------------------------------------------------------------------------- events
    def wire(self, demo: gr.Blocks, example_events: list, wire_sample) -> None:
        """Every text-to-image event. `example_events`: the tab's example runs (page load, model switch), which
        this follows; `wire_sample(listener, public=False)`: the tab's sample event chain on another trigger."""
        tab = self.tab
        model, conditioning = tab.model, tab.conditioning
        controls = [self.examples, self.sample_extras, self.step_maps, conditioning.prompt, tab.batch]
        demo.load(self.controls, [model, conditioning.prompt], controls, api_visibility="private",
                  show_progress="hidden")
        model.change(self.controls, [model, conditioning.prompt], controls, api_visibility="private",
                     show_progress="hidden")
        example_outputs = [self.live_maps, self.step_maps, self.nearest_image, self.nearest_text]
        for number, event in enumerate(example_events):  # the page load's is /text_example, a model switch's private
            event.then(self.example_extras, [model, tab.scrub_slider, tab.trajectory],
                       example_outputs, api_name="text_example" if number == 0 else "text_example_on_switch",
                       api_visibility="undocumented" if number == 0 else "private", show_progress="hidden")
        filled = self.examples.click(self.fill_prompt, self.examples, conditioning.prompt, api_visibility="private",
                                     show_progress="hidden")
        wire_sample(filled.then, public=False)
        tab.scrub_slider.change(self.scrub_maps, [model, tab.scrub_slider, tab.trajectory], self.step_maps,
                                api_name="scrub_maps", show_progress="hidden", trigger_mode="always_last")
        for subtab in (tab.prompts_tab, tab.img2img_tab):
            subtab.select(self.to_text_model, model, model, api_visibility="private", show_progress="hidden")
        self.prompts_button.click(
            positional(self.compare_prompts, PromptsRequest),
            [model, self.prompts, self.prompts_steps, self.prompts_seed, tab.scheduler, conditioning.guidance,
             conditioning.negative_prompt], [*self.columns, *self.column_maps, self.prompts_status],
            api_name="compare_prompts", concurrency_id="heavy")
        img2img_event = self.img2img_button.click(
            positional(self.img2img, Img2ImgRequest),
            [model, self.img2img_upload, self.strength, self.img2img_steps, self.img2img_seed, tab.scheduler,
             conditioning.guidance, conditioning.prompt, conditioning.negative_prompt],
            [self.img2img_start, self.img2img_result, self.img2img_maps, self.img2img_text, tab.trajectory,
             tab.scrub_slider, tab.downloads], api_name="img2img", concurrency_id="heavy")
        tab.stop_button.click(None, None, None, cancels=[img2img_event], api_visibility="private")
        tab.follow_run(img2img_event, "img2img")
