"""Pieces every tab shares: safe image upload, brush masks, error translation, the model registry, examples."""

from __future__ import annotations

import functools
import inspect
import logging
import os
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
from ..loading.registry import EXAMPLES_DIR, embedded_status, example_images  # noqa: F401  (the tabs import them here)
from ..config import AppConfig, prior_autoencoder
from ..imaging.io import InputError, open_image
from ..loading.loaders import ModelLoadError, ModelSpec

log = logging.getLogger("genlab")
OUTPUT_HEIGHT = 256  # output images get a fixed height so small results are not squashed under their labels
NOT_TRAINED = "not trained yet"
DISPLAY_SIDE = 256


def upscale(image: Image.Image) -> Image.Image:
    """Small outputs (32x32 emoji) are shown enlarged with visible pixels."""
    if max(image.size) < DISPLAY_SIDE:
        scale = DISPLAY_SIDE // max(image.size)
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


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


class SafeImage(gr.Image):
    """gr.Image whose upload reaches GenLab as the raw file path, undecoded.

    gradio's own preprocessing opens uploads with Pillow, so a decompression bomb, an SVG or a
    non-image would fail inside gradio with an unhelpful message. Here every upload goes through
    `genlab.open_image` in the event function instead, which explains what is wrong.
    """

    @classmethod
    def get_component_class_id(cls) -> str:
        return gr.Image.get_component_class_id()

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error("The upload did not arrive; please try again.")
        return payload.path

    def api_info(self):
        return gr.Image.api_info(self)


class SafeImageEditor(gr.ImageEditor):
    """gr.ImageEditor whose background and painted layers reach GenLab as file paths, undecoded (see SafeImage).

    gradio's own preprocessing decodes them with Pillow and converts them to `image_mode`, which fails
    with an unhelpful message on a non-image, an SVG or a bomb, and on any JPEG sent through the API
    (RGBA cannot be saved as JPEG). Here the background is decoded by `genlab.open_image` in the event
    function (`mask_from_editor`), and each layer is checked by it before the event runs. The browser
    sends its canvas as PNG bytes; those are written to gradio's cache (and deleted with it) first.
    """

    @classmethod
    def get_component_class_id(cls) -> str:
        return gr.ImageEditor.get_component_class_id()

    def get_block_name(self) -> str:
        return "imageeditor"

    def preprocess(self, payload):
        if payload is None:
            return None
        source = payload if payload.id is None else self.blob_storage.pop(payload.id, None)
        if source is None:  # the browser's blobs never arrived
            return {"background": None, "layers": [], "composite": None}
        return {"background": self._path(source.background),
                "layers": [self._layer(layer) for layer in source.layers if layer is not None],
                "composite": self._path(source.composite)}

    def _path(self, file) -> str | None:
        if file is None:
            return None
        if isinstance(file, (bytes, bytearray, memoryview)):  # a canvas export from the browser
            Path(self.GRADIO_CACHE).mkdir(parents=True, exist_ok=True)
            handle, path = tempfile.mkstemp(suffix=f".{self.format}", dir=self.GRADIO_CACHE)
            with os.fdopen(handle, "wb") as out:
                out.write(file)
            self.temp_files.add(path)
            return path
        if file.path is None:
            raise gr.Error("The upload did not arrive; please try again.")
        return file.path

    def _layer(self, file) -> str:
        path = self._path(file)
        try:
            open_image(path)
        except InputError as error:
            raise gr.Error(f"A painted layer cannot be read: {error}", print_exception=False) from None
        return path


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

    The 2D toys' matrices are tiny, so threads only add synchronisation: on this project's 2-core machine
    under load, a VAE trains at ~200 steps/s on one thread and 5-30 on two. Two image models at once
    (`run_pair`) each take one core. torch keeps the count per thread (OpenMP) but new threads copy a
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
    that has not run one lately pays for cold threads and fresh pages. Measured on the 2-core CPU
    (vqvae-photo then vqgan-photo reconstructing a 256² photo, medians of 16 calls): 173 ms when every call
    comes from one thread, 241 ms when they come from a pool of 12 threads, as gradio's do. Heavy events
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
    at a barrier that waits for the slower core. Measured on the 2-core CPU (vqvae-photo and vqgan-photo
    reconstructing a 256² photo, medians of 10, three rounds): 148-151 ms at once, 177-214 ms in turn
    on two intra-op threads."""
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

    def table(self, kind: str) -> dict[str, ModelSpec]:
        return {"vq": self.config.vq_models, "diffusion": self.config.diffusion_models,
                "prior": self.config.prior_models}[kind]

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

    def choices(self, kind: str) -> list[tuple[str, str]]:
        shown = []
        for label in self.table(kind):
            text = f"{label} (latent)" if kind == "diffusion" and self.is_latent(label) else label
            shown.append((f"{text} ({NOT_TRAINED})" if self.status.get(label) == NOT_TRAINED else text, label))
        return shown

    def default(self, kind: str, prefer: str | None = None, exclude: str | None = None) -> str | None:
        """The preferred model if trained, else the first trained one (never `exclude`)."""
        trained = [label for label in self.table(kind) if self.status.get(label) != NOT_TRAINED and label != exclude]
        if prefer in trained:
            return prefer
        return trained[0] if trained else None


# One folder per process: an app never prunes files another app (or test run) has handed out.
OUTPUT_DIR = Path(tempfile.gettempdir()) / f"genlab-outputs-{os.getpid()}"
MAX_OUTPUT_FILES = 200
_output_lock = threading.Lock()


def install_atomic_image_cache() -> None:
    """Make gradio write cached output images atomically (temp file + os.replace).

    gradio 6.31's `processing_utils.save_pil_to_cache` names the file by a hash of its bytes and
    rewrites it in place, so two visitors receiving a byte-identical image at the same moment (a
    schedule plot, an example's result) can download a truncated file. Its `save_file_to_cache`
    already writes atomically; this gives images the same treatment. Idempotent.
    """
    from gradio import processing_utils

    original = processing_utils.save_pil_to_cache
    if getattr(original, "_genlab_atomic", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        if not target.exists():
            handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(staging, target)
        return str(target)

    save_pil_to_cache._genlab_atomic = True
    processing_utils.save_pil_to_cache = save_pil_to_cache


def file_stem(*parts) -> str:
    """A safe file name stem from labels such as 'weights/vqvae-photo' or 'dpm++': 'vqvae-photo_dpmpp'."""
    import re

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
    import numpy as np

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
