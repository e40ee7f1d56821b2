"""Loaders of GenLab's four kinds of model: VQ autoencoders, KL autoencoders, diffusion models and token priors.

Each `load_*` resolves its source (`genlab.loading.hub`: a folder or a Hub repo id, revision, subfolder), builds
the diffusers networks strictly from safetensors (`genlab.loading.checkpoints`), wraps them in GenLab's model
object with their genlab.json (`genlab.loading.schema`), and caches it per (source, device).

Pipeline folders (diffusers' `model_index.json` with `unet/`, `vae/` or `vqvae/`, `scheduler/`, and
for Stable Diffusion or aMUSEd `text_encoder/` + `tokenizer/`) load as latent diffusion models or token priors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoints import (ModelLoadError, cached, load_diffusers_model, model_info, pick_device, pipeline_class,
                          place, read_config)
from .hub import CONVERSION_BOT, CONVERSIONS, DISTILLED, ModelSpec, is_pipeline, resolve_source


def _label(source, subfolder: str | None, revision: str | None) -> str:
    """The model's name in messages and the UI; says when a conversion pull request replaced main."""
    label = ModelSpec(str(source), subfolder, revision).label
    conversion = CONVERSIONS.get((str(source), subfolder)) if revision in (None, "main") else None
    return f"{label} (safetensors from {conversion} by {CONVERSION_BOT})" if conversion else label


def _component(folder: Path, names: tuple[str, ...]) -> str | None:
    """The first of `names` that the pipeline's model_index.json lists with a subfolder present."""
    index = json.loads((folder / "model_index.json").read_text())
    for name in names:
        if isinstance(index.get(name), list) and index[name][0] is not None and (folder / name).is_dir():
            return name
    return None


def _autoencoder_folder(folder: Path) -> Path:
    """A pipeline folder's vae/ or vqvae/, or the folder itself."""
    if is_pipeline(folder):
        part = _component(folder, ("vae", "vqvae"))
        if part is None:
            raise ModelLoadError(f"the pipeline {str(folder)!r} has no vae/ or vqvae/ autoencoder")
        return folder / part
    return folder


def _build_vq(folder: Path, device: torch.device, name: str):
    from diffusers import VQModel

    from ..autoencoders.vq import VQ, Background

    config = read_config(folder)
    if config.get("_class_name", "VQModel") != "VQModel":
        raise ModelLoadError(f"{str(folder)!r} holds a {config['_class_name']}, not a VQModel")
    # Quirk: some checkpoints (CompVis/ldm-celebahq-256's vqvae) predate `scaling_factor`, so
    # diffusers' 0.18215 default would apply; their latents are unscaled, i.e. factor 1.
    overrides = {} if "scaling_factor" in config else {"scaling_factor": 1.0}
    model = place(load_diffusers_model(VQModel, folder, overrides), device)
    if device.type == "cuda":
        model.quantize.float()  # codebook look-ups stay fp32
    info = model_info(folder)
    # aMUSEd's VQ-GAN reads and writes [0, 1] pixels; its pipeline folder says so by its class name
    unit_pixels = pipeline_class(folder.parent).startswith("Amused")
    try:  # the code must lie in this model's codebook: checked against it here
        background = Background.from_info(info.background, model.config.num_vq_embeddings)
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"{str(folder)!r}: genlab.json: {error}") from None
    return VQ(model, name=info.title or name, tile=info.tile, unit_pixels=unit_pixels, background=background)


def _build_kl(folder: Path, device: torch.device, name: str):
    from diffusers import AutoencoderKL

    from ..autoencoders.kl import KLAutoencoder

    model = place(load_diffusers_model(AutoencoderKL, folder), device)
    return KLAutoencoder(model, name=model_info(folder).title or name)


def load_vq(source, subfolder: str | None = None, device=None, revision: str | None = None):
    """A `genlab.autoencoders.vq.VQ` for a diffusers VQModel checkpoint (folder or Hub repo id)."""
    device = pick_device(device)
    return cached(("vq", str(source), subfolder, revision, str(device)),
                  lambda: _build_vq(resolve_source(source, subfolder, revision), device, _label(source, subfolder, revision)))


def load_autoencoder(source, subfolder: str | None = None, device=None, revision: str | None = None):
    """A `genlab.autoencoders.vq.VQ` (VQModel) or a `genlab.autoencoders.kl.KLAutoencoder` (AutoencoderKL); a pipeline
    folder gives its vae/ or vqvae/. Both have `.reconstruct(image)` with psnr, ssim, bits_per_pixel."""
    device = pick_device(device)

    def build():
        folder = _autoencoder_folder(resolve_source(source, subfolder, revision))
        kind = read_config(folder).get("_class_name", "VQModel")
        name = _label(source, subfolder, revision)
        if kind == "VQModel":
            return _build_vq(folder, device, name)
        if kind == "AutoencoderKL":
            return _build_kl(folder, device, name)
        raise ModelLoadError(f"{str(folder)!r} holds a {kind}, not a VQModel or an AutoencoderKL")

    return cached(("autoencoder", str(source), subfolder, revision, str(device)), build)


def _scheduler_config(folder: Path) -> dict:
    for path in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json",
                 folder.parent / "scheduler" / "scheduler_config.json"):  # single folder, pipeline, pipeline/unet
        if path.is_file():
            return json.loads(path.read_text())
    raise ModelLoadError(f"{str(folder)!r} has no scheduler_config.json beside the UNet")


def _latent_codec(folder: Path, device: torch.device):
    """(LatentCodec, genlab autoencoder) for a pipeline's vae/ or vqvae/, scaled as its config says."""
    from ..autoencoders.kl import LatentCodec

    part = _autoencoder_folder(folder)
    raw = read_config(part)
    kind = raw.get("_class_name")
    if kind == "VQModel":
        autoencoder = _build_vq(part, device, part.name)
        # no scaling_factor in the config: unscaled latents (factor 1), not diffusers' 0.18215
        codec = LatentCodec(autoencoder.model, "vq", raw.get("scaling_factor", 1.0))
    elif kind == "AutoencoderKL":
        autoencoder = _build_kl(part, device, part.name)
        codec = LatentCodec(autoencoder.model, "kl", raw.get("scaling_factor", 0.18215), raw.get("shift_factor"),
                            raw.get("latents_mean"), raw.get("latents_std"))
    else:
        raise ModelLoadError(f"{str(part)!r} holds a {kind}; latent diffusion needs a VQModel or an AutoencoderKL")
    return codec, autoencoder


def _text_encoder(folder: Path, device: torch.device):
    """A `genlab.conditioning.text.TextEncoder` from the pipeline's tokenizer/ and text_encoder/ (safetensors only):
    a `CLIPTextModel` (Stable Diffusion) or, where its config says so, a `CLIPTextModelWithProjection` (aMUSEd)."""
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    from ..conditioning.text import TextEncoder

    for part in ("tokenizer", "text_encoder"):
        if not (folder / part).is_dir():
            raise ModelLoadError(f"the text-conditioned pipeline {str(folder)!r} has no {part}/ folder")
    if not list((folder / "text_encoder").glob("*.safetensors")):
        raise ModelLoadError(f"{str(folder / 'text_encoder')!r} has no .safetensors weights file")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        architectures = read_config(folder / "text_encoder").get("architectures") or []
        cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in architectures else CLIPTextModel
        # dtype given: transformers otherwise builds the model under the file's dtype (fp16 for sd-emoji) by setting
        # torch's process-wide default dtype, and a sampler on another thread then makes fp16 tensors meanwhile
        model, info = cls.from_pretrained(folder / "text_encoder", use_safetensors=True, output_loading_info=True,
                                          dtype=torch.float32)
    except Exception as error:
        raise ModelLoadError(f"cannot load the text encoder of {str(folder)!r}: {error}") from None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise ModelLoadError(f"the text encoder weights in {str(folder)!r} do not match its config: "
                             f"{', '.join(map(str, (info.get('missing_keys') or info.get('mismatched_keys'))[:8]))}")
    model = model.eval().requires_grad_(False).to(device)  # built in fp32 (sd-emoji's file is fp16); fp16 on CUDA
    return TextEncoder(tokenizer, model.half() if device.type == "cuda" else model)


GUIDE_FOLDER = "unet_guide"  # a diffusion model's optional guide network for autoguidance, beside unet/


def load_diffusion(source, subfolder: str | None = None, device=None, revision: str | None = None):
    """A `genlab.diffusion.pipeline.DiffusionModel`: a pixel `UNet2DModel` folder with its scheduler config, or a
    diffusers pipeline folder (unet/ over the latents of vae/ or vqvae/, scheduler/, and for Stable
    Diffusion a `UNet2DConditionModel` with text_encoder/ + tokenizer/). Either may hold unet_guide/, a weaker
    UNet of the same kind for autoguidance (diffusers' pipelines do not read it)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    from ..diffusion.pipeline import DiffusionModel

    device = pick_device(device)

    def build():
        folder = resolve_source(source, subfolder, revision)
        name = _label(source, subfolder, revision)
        codec = autoencoder = text = None
        info = model_info(folder)
        unet_folder = folder
        if is_pipeline(folder):
            if not (folder / "unet").is_dir():
                raise ModelLoadError(f"the pipeline {str(folder)!r} has no unet/ folder")
            unet_folder = folder / "unet"
            if _component(folder, ("vae", "vqvae")):
                codec, autoencoder = _latent_codec(folder, device)
        kind = read_config(unet_folder).get("_class_name", "UNet2DModel")
        if kind not in ("UNet2DModel", "UNet2DConditionModel"):
            raise ModelLoadError(f"{str(unet_folder)!r} holds a {kind}, not a UNet2DModel or UNet2DConditionModel")
        scheduler_config = _scheduler_config(folder if unet_folder is folder else unet_folder)
        if kind == "UNet2DConditionModel":
            if codec is None:
                raise ModelLoadError(f"{str(folder)!r}: a text-conditioned UNet needs a pipeline folder with vae/")
            text = _text_encoder(folder, device)
        unet_class = UNet2DConditionModel if text else UNet2DModel
        unet = place(load_diffusers_model(unet_class, unet_folder), device)
        guide = None
        if (folder / GUIDE_FOLDER).is_dir():  # autoguidance's weaker network (genlab.diffusion.loop)
            guide = place(load_diffusers_model(unet_class, folder / GUIDE_FOLDER), device)
        try:
            return DiffusionModel(unet, scheduler_config, info, name=info.title or name, codec=codec,
                                  autoencoder=autoencoder, text=text, guide=guide)
        except ValueError as error:
            raise ModelLoadError(f"{str(folder)!r}: {error}") from None

    return cached(("diffusion", str(source), subfolder, revision, str(device)), build)


def load_prior(source, subfolder: str | None = None, device=None, revision: str | None = None):
    """A `genlab.priors.pipeline.TokenPrior`: a pipeline folder (local or Hub) with vqvae/ (VQModel), transformer/
    (GenLab's `MaskedTokenTransformer` or `MaskedTokenUNet`, or diffusers' `UVit2DModel`), scheduler/ (`AmusedScheduler`) and,
    for aMUSEd, text_encoder/ + tokenizer/; optionally transformer_distilled/, a guidance-distilled copy
    of GenLab's network that guided sampling calls once a step."""
    from diffusers import UVit2DModel

    from ..priors.pipeline import TokenPrior
    from ..priors.transformer import MaskedTokenTransformer
    from ..priors.unet import MaskedTokenUNet

    device = pick_device(device)
    transformers = {"MaskedTokenTransformer": MaskedTokenTransformer, "MaskedTokenUNet": MaskedTokenUNet,
                    "UVit2DModel": UVit2DModel}

    def build():
        folder = resolve_source(source, subfolder, revision)
        if not is_pipeline(folder):
            raise ModelLoadError(f"{str(folder)!r} is not a token-prior pipeline folder (model_index.json with "
                                 "vqvae/, transformer/ and scheduler/)")
        for part in ("vqvae", "transformer", "scheduler"):
            if not (folder / part).is_dir():
                raise ModelLoadError(f"the token-prior pipeline {str(folder)!r} has no {part}/ folder")
        kind = read_config(folder / "transformer").get("_class_name")
        if kind not in transformers:
            raise ModelLoadError(f"{str(folder / 'transformer')!r} holds a {kind}; a token prior needs one of {sorted(transformers)}")
        scheduler_config = _scheduler_config(folder)
        if scheduler_config.get("_class_name") != "AmusedScheduler":
            raise ModelLoadError(f"{str(folder / 'scheduler')!r} holds a {scheduler_config.get('_class_name')}, "
                                 "not an AmusedScheduler")
        name = _label(source, subfolder, revision)
        vq = _build_vq(folder / "vqvae", device, "vqvae")
        transformer = place(load_diffusers_model(transformers[kind], folder / "transformer"), device)
        distilled = None
        if (folder / DISTILLED).is_dir():
            distilled_kind = read_config(folder / DISTILLED).get("_class_name")
            if distilled_kind != kind:
                raise ModelLoadError(f"{str(folder / DISTILLED)!r} holds a {distilled_kind}; the guidance-distilled "
                                     f"copy of a {kind} is a {kind}")
            distilled = place(load_diffusers_model(transformers[kind], folder / DISTILLED), device)
        text = _text_encoder(folder, device) if (folder / "text_encoder").is_dir() else None
        info = model_info(folder)
        try:
            return TokenPrior(vq, transformer, scheduler_config, info, name=info.title or name, text=text,
                              distilled=distilled)
        except ValueError as error:
            raise ModelLoadError(f"{str(folder)!r}: {error}") from None

    return cached(("prior", str(source), subfolder, revision, str(device)), build)


def import_model_classes() -> None:
    """Resolve diffusers' lazy model and scheduler imports (and accelerate's) now, in the calling thread.

    gradio runs events in worker threads. Two events that first touch diffusers' lazy modules at the same
    time (the codebook tab's example run on page load and a click on Reconstruct) can meet accelerate
    half-imported: "cannot import name 'AcceleratorState' from partially initialized module"."""
    import accelerate  # noqa: F401
    from diffusers import (AmusedScheduler, AutoencoderKL, DDIMScheduler, DDPMScheduler,  # noqa: F401
                           DPMSolverMultistepScheduler, UNet2DConditionModel, UNet2DModel, UVit2DModel, VQModel)
