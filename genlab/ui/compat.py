"""GenLab's patches over gradio, in one place, for the gradio version they were written against.

- `SafeImage` and `SafeImageEditor` hand uploads to GenLab as file paths, undecoded, so every upload is
  decoded by `genlab.open_image` in the event function, which explains what is wrong with a bad file.
- `TextOnly` refuses a value that is not text (gradio's Textbox turns any JSON value sent through the API into
  its `str`, so `123` or `{"a": 1}` would become a prompt).
- `install_atomic_image_cache` makes gradio write cached output images atomically.

Each reaches into gradio internals (`preprocess` payloads, `blob_storage`, `processing_utils`), so this
module checks the installed gradio against GRADIO_SERIES on import: another minor version warns (the
app may still work; the tests say whether), another major version is refused.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import gradio as gr

from ..imaging.io import InputError, open_image

GRADIO_SERIES = (6, 31)  # the gradio major.minor these shims were written and tested against


def check_gradio_version(version: str = gr.__version__) -> None:
    """Refuse a gradio of another major version; warn on another minor version of the same major."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        warnings.warn(f"GenLab cannot read gradio's version {version!r}; its UI shims expect "
                      f"{GRADIO_SERIES[0]}.{GRADIO_SERIES[1]}.x", RuntimeWarning, stacklevel=2)
        return
    expected = f"{GRADIO_SERIES[0]}.{GRADIO_SERIES[1]}.x"
    if major != GRADIO_SERIES[0]:
        raise ImportError(f"GenLab's UI needs gradio {expected} (its upload and cache shims patch gradio "
                          f"internals); found gradio {version}. Install the version in requirements.txt.")
    if minor != GRADIO_SERIES[1]:
        warnings.warn(f"GenLab's UI shims (genlab/ui/compat.py) were written for gradio {expected}; found "
                      f"{version}. Uploads and cached images may misbehave: run the app tests.",
                      RuntimeWarning, stacklevel=2)


check_gradio_version()


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
    function (`common.mask_from_editor`), and each layer is checked by it before the event runs. The browser
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


class TextOnly(gr.Textbox):
    """gr.Textbox that hands GenLab text or None, and refuses any other value sent through the API with a
    gr.Error naming its type (gradio's own preprocessing returns `str(payload)`)."""

    @classmethod
    def get_component_class_id(cls) -> str:
        return gr.Textbox.get_component_class_id()

    def get_block_name(self) -> str:
        return "textbox"

    def preprocess(self, payload):
        if payload is not None and not isinstance(payload, str):
            raise gr.Error(f"{self.label or 'This box'} must be text, got {type(payload).__name__}: send a string.",
                           print_exception=False)
        return payload

    def api_info(self):
        return gr.Textbox.api_info(self)


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
