"""Pieces every tab shares: brush masks, error translation, the model threads, the model registry, the
conditioning controls, event adapters and downloads. The gradio shims (safe uploads, the atomic image
cache) live in `compat`."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import re
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ..loading import loaders as models
from ..config import AppConfig, prior_autoencoder
from ..imaging.io import InputError, open_image
from ..loading.registry import embedded_status
from .compat import SafeImageEditor
from .display import DISPLAY_SIDE, upscale  # noqa: F401  (the tabs import them from here)
from ..loading.loaders import ModelLoadError, ModelSpec

log = logging.getLogger("genlab")
OUTPUT_HEIGHT = 256  # output images get a fixed height so small results are not squashed under their labels
NOT_TRAINED = "not trained yet"


def image_panel(label: str, value=None) -> gr.Image:
    """A read-only output image of the tabs' fixed height."""
    return gr.Image(value, label=label, format="png", interactive=False, height=OUTPUT_HEIGHT)


def mask_from_editor(value, region: str = "the region the model should repaint") -> tuple[Image.Image, Image.Image]:
    """(image, mask) from gradio's ImageEditor value: the background is the upload (through
    genlab.open_image), the mask the union of the painted layers' alpha (white where painted).
    `region` names what to paint in the error messages."""
    if not isinstance(value, dict) or not value.get("background"):
        raise gr.Error(f"Upload an image into the editor first, then paint {region}.")
    image = open_image(value["background"])
    mask = Image.new("L", image.size, 0)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        painted = Image.open(layer)
        if painted.width * painted.height > 4 * image.width * image.height + 4096:
            raise gr.Error("The mask layer is much larger than the image; paint on the uploaded image.")
        alpha = painted.convert("RGBA").getchannel("A")
        if alpha.size != image.size:
            alpha = alpha.resize(image.size, Image.Resampling.NEAREST)
        mask = Image.fromarray(np.maximum(np.asarray(mask), np.asarray(alpha)))
    if not np.asarray(mask).any():
        raise gr.Error(f"The mask is empty: paint over {region} (brush tool).")
    return image, mask


def mask_editor(label: str, brush_size: int = 12, **options) -> SafeImageEditor:
    """An image editor whose white brush paints a mask over an upload (read back by `mask_from_editor`);
    `options` override or add SafeImageEditor's settings (sources, height, format, ...)."""
    settings = dict(type="filepath", image_mode="RGBA", sources=("upload", "clipboard"), height=320)
    brush = gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=brush_size)
    return SafeImageEditor(label=label, brush=brush, **{**settings, **options})


def user_errors(fn):
    """Turn GenLab's input and loading errors into gr.Error text; never show a traceback."""

    def translate(error: Exception) -> gr.Error:
        if isinstance(error, gr.Error):
            return error
        if isinstance(error, (InputError, ValueError, ModelLoadError)):
            return gr.Error(str(error), print_exception=False)
        if isinstance(error, MemoryError):
            return gr.Error("That request needs more memory than the server has; try a smaller image or batch.")
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Something went wrong ({type(error).__name__}). The server is still running; try again.")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as error:
                raise translate(error) from None
        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            raise translate(error) from None
    return wrapper


def single_threaded_worker() -> None:
    """Initialiser of worker threads that run one intra-op thread each, the process default unchanged elsewhere.

    The 2D toys' matrices are tiny, so more threads only add synchronisation: on a small, loaded CPU a VAE
    trains several times faster on one thread than on two. Two image models at once (`run_pair`) each take
    one core. torch keeps the count per thread (OpenMP) but new threads copy a
    process-wide default, which set_num_threads also changes; another thread puts that default back at
    once, so the image models' threads keep theirs.
    """
    torch.zeros(2).sum()  # this thread's lazy thread-count set-up happens now, not after the change below
    default = torch.get_num_threads()
    torch.set_num_threads(1)
    restore = threading.Thread(target=torch.set_num_threads, args=(default,))
    restore.start()
    restore.join()


MODEL_THREAD = "genlab-model"
_model_thread = ThreadPoolExecutor(1, MODEL_THREAD)


def on_model_thread(fn):
    """Run a heavy handler on GenLab's one model thread and wait for it; a generator runs each step there.

    gradio runs a sync handler on whichever of its worker threads is free. torch's OpenMP keeps a team of
    intra-op threads per calling thread, and glibc a malloc arena per thread, so a model call from a thread
    that has not run one lately pays for cold threads and fresh pages: calls that all come from one thread
    are measurably faster than calls spread over a pool of threads, as gradio's are. Heavy events
    hold one concurrency slot ("heavy") anyway, so one thread serves them all without queueing any of them
    longer. A call made on the model thread itself (a handler calling another) runs directly."""
    def here() -> bool:
        return threading.current_thread().name.startswith(MODEL_THREAD)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            if here():
                yield from fn(*args, **kwargs)
                return
            steps = fn(*args, **kwargs)  # a generator object: nothing runs until the first next()
            try:
                while True:
                    try:
                        item = _model_thread.submit(next, steps).result()
                    except StopIteration:
                        return
                    yield item
            finally:  # cancelled or finished: close it where it ran, so its own cleanup runs there too
                if here():  # an abandoned stream finalised by the garbage collector on the model thread itself:
                    steps.close()  # waiting for the model thread there would wait for itself forever
                else:
                    try:
                        _model_thread.submit(steps.close).result()
                    except RuntimeError:  # the interpreter is exiting: the executor takes no more work
                        steps.close()
        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if here():
            return fn(*args, **kwargs)
        return _model_thread.submit(fn, *args, **kwargs).result()
    return wrapper


_pair = ThreadPoolExecutor(2, "genlab-pair", initializer=single_threaded_worker)


def run_pair(first, second, parallel: bool = True):
    """(first(), second()) for two model calls: with `parallel` (CPU models) at once, each on a worker with one
    intra-op thread, i.e. a core each; else (a GPU, which runs one kernel stream) in turn, first then second.
    Either way `second` may wait for something `first` hands over (the reconstruct tab's shared encoding): the
    pool has a worker for each, and the heavy handlers that call this run one at a time on the model thread.

    Two models side by side scale better than one model's ops split over both cores, where every op ends
    at a barrier that waits for the slower core (`python -m genlab.bench` measures the pair)."""
    if not parallel:
        return first(), second()
    later = _pair.submit(second)
    return _pair.submit(first).result(), later.result()


class Registry:
    """Labels shown in the dropdowns -> loaded models (shared through genlab.loading.loaders' cache).

    Kinds: "vq" (any autoencoder), "diffusion" and "prior" (token priors over a VQ model's codes)."""

    def __init__(self, config: AppConfig):
        self.config = config
        self.status = embedded_status()
        for vq_label, prior_label in self._prior_autoencoders().items():  # a prior's vqvae/ is as trained as the prior
            if prior_label in self.status:
                self.status.setdefault(vq_label, self.status[prior_label])

    def _spec(self, table: dict[str, ModelSpec], label: str, kind: str) -> ModelSpec:
        if not label:
            raise InputError(f"Choose a {kind} model first.")
        if label not in table:
            raise InputError(f"Unknown {kind} model {label!r}; choose one of {sorted(table)}.")
        if self.status.get(label) == NOT_TRAINED:
            raise InputError(
                f"{label} has no trained weights yet, so it would only show noise. Train it with "
                f"`python -m genlab.train ... --out weights/{label}` (see README), or pick another model."
            )
        return table[label]

    def vq(self, label: str):
        spec = self._spec(self.config.vq_models, label, "VQ")
        return models.load_vq(spec.source, spec.subfolder, device=self.config.device, revision=spec.revision)

    def autoencoder(self, label: str):
        """A VQ model or a KL autoencoder (genlab.autoencoders.vq.VQ or genlab.autoencoders.kl.KLAutoencoder)."""
        spec = self._spec(self.config.vq_models, label, "autoencoder")
        return models.load_autoencoder(spec.source, spec.subfolder, device=self.config.device, revision=spec.revision)

    def diffusion(self, label: str):
        spec = self._spec(self.config.diffusion_models, label, "diffusion")
        return models.load_diffusion(spec.source, spec.subfolder, device=self.config.device, revision=spec.revision)

    def prior(self, label: str):
        """A genlab.priors.pipeline.TokenPrior."""
        spec = self._spec(self.config.prior_models, label, "token prior")
        return models.load_prior(spec.source, spec.subfolder, device=self.config.device, revision=spec.revision)

    def _prior_autoencoders(self) -> dict[str, str]:
        """VQ label -> the label of the prior whose vqvae/ it is."""
        by_spec = {prior_autoencoder(spec): label for label, spec in self.config.prior_models.items()}
        return {label: by_spec[spec] for label, spec in self.config.vq_models.items() if spec in by_spec}

    def prior_of(self, vq_label: str) -> str | None:
        """The token prior trained on a VQ model's codes, when one is listed (and trained)."""
        prior = self._prior_autoencoders().get(vq_label)
        return prior if prior is not None and self.status.get(prior) != NOT_TRAINED else None

    def is_latent(self, label: str) -> bool:
        """Whether a diffusion model is a latent one, known without loading it for local folders."""
        spec = self.config.diffusion_models.get(label)
        if spec is None:
            return False
        folder = Path(spec.source) / (spec.subfolder or "")
        return folder.is_dir() and models.is_pipeline(folder) and any((folder / p).is_dir() for p in ("vae", "vqvae"))

    def is_text(self, label: str | None) -> bool:
        """Whether a diffusion model takes a prompt (a Stable Diffusion layout): known without loading it for local
        folders (a `text_encoder/`), else from the loaded model; False when it cannot be loaded."""
        spec = self.config.diffusion_models.get(label) if label else None
        if spec is None:
            return False
        folder = Path(spec.source) / (spec.subfolder or "")
        if folder.is_dir():
            return (folder / "text_encoder").is_dir()
        try:
            return self.diffusion(label).is_text_conditional
        except Exception:
            return False

    def choices(self, kind: str) -> list[tuple[str, str]]:
        shown = []
        for label in self.config.table(kind):
            text = f"{label} (latent)" if kind == "diffusion" and self.is_latent(label) else label
            shown.append((f"{text} ({NOT_TRAINED})" if self.status.get(label) == NOT_TRAINED else text, label))
        return shown

    def default(self, kind: str, prefer: str | None = None, exclude: str | None = None) -> str | None:
        """The preferred model if trained, else the first trained one (never `exclude`)."""
        trained = [label for label in self.config.table(kind) if self.status.get(label) != NOT_TRAINED and label != exclude]
        if prefer in trained:
            return prefer
        return trained[0] if trained else None


# One folder per process: an app never prunes files another app (or test run) has handed out.
OUTPUT_DIR = Path(tempfile.gettempdir()) / f"genlab-outputs-{os.getpid()}"
MAX_OUTPUT_FILES = 200
_output_lock = threading.Lock()


def file_stem(*parts) -> str:
    """A safe file name stem from labels such as 'weights/vqvae-photo' or 'dpm++': 'vqvae-photo_dpmpp'."""
    cleaned = [re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(p).replace("+", "p")).name).strip("-.") for p in parts]
    return "_".join(c for c in cleaned if c) or "genlab"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def save_output(value, name: str) -> str:
    """Write a download (PIL image, numpy array or bytes) under the app's temp folder; returns its path.

    Each file gets its own sub-folder so the visible file name stays `name`; the folder keeps the
    newest MAX_OUTPUT_FILES entries, so it cannot grow without bound.
    """
    with _output_lock:
        OUTPUT_DIR.mkdir(exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=OUTPUT_DIR))
        path = folder / Path(name).name
        if hasattr(value, "save"):
            value.save(path)
        elif isinstance(value, np.ndarray):
            np.save(path, value, allow_pickle=False)
        else:
            path.write_bytes(value)
        entries = sorted(OUTPUT_DIR.iterdir(), key=_mtime)
        for old in entries[:-MAX_OUTPUT_FILES]:
            shutil.rmtree(old, ignore_errors=True)
    return str(path)


# ------------------------------------------------------------------------------ event adapters
def positional(handler, request_type, names: tuple[str, ...] | None = None):
    """`handler(request)`, callable by gradio with the event's inputs as positional values, one per field of
    the dataclass `request_type`: all its fields in order, or `names` in that order (the other fields keep
    their defaults).

    The event lists its inputs in the same order, so the API keeps its parameter order, and its parameter
    names are the fields' names. A set of components as `inputs` would hand over a dict instead, but gradio
    orders a set by component creation, which is not the order the API documents."""
    fields = {f.name: f for f in dataclasses.fields(request_type)}
    names = tuple(fields) if names is None else names
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise TypeError(f"{request_type.__name__} has no fields {unknown}")
    parameters, trailing = [], True  # a default only where every later parameter has one too
    for name in reversed(names):
        default = fields[name].default
        trailing = trailing and default is not dataclasses.MISSING
        parameters.insert(0, inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                               default=default if trailing else inspect.Parameter.empty))
    signature = inspect.Signature(parameters)

    def request(values, named) -> object:
        return request_type(**signature.bind(*values, **named).arguments)

    if inspect.isgeneratorfunction(handler):
        def adapter(*values, **named):
            yield from handler(request(values, named))
    else:
        def adapter(*values, **named):
            return handler(request(values, named))
    adapter.__signature__ = signature
    adapter.__name__ = adapter.__qualname__ = handler.__name__
    adapter.__doc__ = handler.__doc__
    return adapter


def whole(value, name: str) -> int:
    """A UI number that must be a whole number (gr.Number hands over floats)."""
    if value is None or isinstance(value, bool) or not float(value).is_integer():
        raise gr.Error(f"{name} must be a whole number, got {value!r}.")
    return int(value)


# ------------------------------------------------------------------------------ conditioning controls
def guidance_info(model) -> str:
    """What the guidance slider does for `model`: every step, or only inside its default guidance interval; and the
    autoguidance the model adds at its default scale."""
    interval = getattr(model, "default_guidance_interval", None)
    auto = getattr(model, "default_autoguidance_scale", 1.0)
    added = (f"; plus autoguidance {auto:g} away from this model's less-trained copy (unet_guide/)"
             if auto != 1.0 else "")
    if interval is None:
        return "classifier-free: 1 is the conditional model alone" + added
    return (f"classifier-free, applied where {interval[0]:g} < σ_t ≤ {interval[1]:g} (this model's guidance "
            f"interval){added}")


@dataclasses.dataclass
class Conditioning:
    """The controls a conditional model (diffusion or token prior) needs: a class picker, a guidance scale,
    a prompt and a negative prompt; only those its model uses are shown."""

    class_name: gr.Dropdown
    guidance: gr.Slider
    prompt: gr.Textbox
    negative_prompt: gr.Textbox

    @property
    def components(self) -> list:
        return [self.class_name, self.guidance, self.prompt, self.negative_prompt]

    def update(self, model) -> dict:
        """The controls for `model` (a ConditionalModel, or None when it cannot be loaded): class picker and
        guidance for class models, prompt, negative prompt and guidance for text models, none otherwise. A hidden
        prompt box is emptied: a model without text refuses any prompt, and the visitor cannot see one to delete."""
        text = model is not None and model.text is not None
        classes = model is not None and model.is_conditional and not text
        choices = [("(unconditional)", "")] + [(name, name) for name in model.classes] if classes else []
        return {
            self.class_name: gr.Dropdown(choices=choices, value=model.classes[0] if classes else None, visible=classes),
            self.guidance: (gr.Slider(value=model.default_guidance_scale, visible=True, info=guidance_info(model))
                            if text or classes else gr.Slider(visible=False)),
            self.prompt: gr.Textbox(visible=True) if text else gr.Textbox(value="", visible=False),
            self.negative_prompt: gr.Textbox(visible=True) if text else gr.Textbox(value="", visible=False),
        }
