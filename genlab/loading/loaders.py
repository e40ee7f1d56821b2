"""Model loading: diffusers-format safetensors checkpoints from a local folder or the Hugging Face Hub.

One path for every source: `resolve_source` turns a folder or a Hub repo id (+ revision, subfolder)
into a local folder (downloading only JSON, tokenizer text and safetensors files), `check_checkpoint`
refuses folders without safetensors weights, and `load_vq` / `load_autoencoder` / `load_diffusion`
build the diffusers model, raise on missing or unexpected keys (diffusers only warns), place it on a
device and cache it.

Pipeline folders (diffusers' `model_index.json` with `unet/`, `vae/` or `vqvae/`, `scheduler/`, and
for Stable Diffusion `text_encoder/` + `tokenizer/`) load as latent diffusion models.

Safetensors conversions: many classic Hub checkpoints keep pickle weights on `main` and safetensors
on a pull request opened by the Hub's conversion bot (`SFconvertbot`), e.g. CompVis/ldm-celebahq-256
at refs/pr/7. When `main` has only pickle weights, GenLab uses such a pull request and says so, as
transformers does; a pull request by anyone else is never used (anyone can open one).

Device policy: CUDA when available, else CPU; `device=` or `--device` overrides. On CUDA the
networks run in fp16, while the codebook look-up (VQ) and the scheduler arithmetic (diffusion)
stay in fp32.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch


PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
DEFAULT_DEVICE: str | None = None  # set by the app's --device
CONVERSION_BOT = "SFconvertbot"  # the Hub's safetensors conversion bot: the only pull-request author trusted
REVISION = re.compile(r"^[\w.\-/]+$")
log = logging.getLogger("genlab")


class ModelLoadError(RuntimeError):
    """A checkpoint that GenLab cannot or will not load; the message names the reason."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: a local folder or Hub repo id, an optional Hub revision and subfolder."""

    source: str
    subfolder: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """'SOURCE[@REVISION][#SUBFOLDER]' (the command-line and GENLAB_MODELS form)."""
        source, _, subfolder = text.strip().partition("#")
        source = source.strip()
        revision = None
        if "@" in source and not Path(source).expanduser().exists():
            source, _, revision = source.rpartition("@")
            if not revision:
                raise ValueError(f"empty revision after '@' in {text!r}")
            check_revision(revision)
        if not source:
            raise ValueError(f"empty model source in {text!r}")
        return cls(source, subfolder.strip() or None, revision)

    @property
    def label(self) -> str:
        text = f"{self.source}@{self.revision}" if self.revision else self.source
        return f"{text}#{self.subfolder}" if self.subfolder else text


def check_revision(revision: str | None) -> str | None:
    """A branch, tag, commit hash or refs/pr/N; anything else raises ValueError."""
    if revision is None:
        return None
    if not isinstance(revision, str) or not REVISION.match(revision) or ".." in revision:
        raise ValueError(f"{revision!r} is not a Hub revision (a branch, tag, commit hash or refs/pr/N)")
    return revision


# ------------------------------------------------------------------------------ devices
def pick_device(device: str | torch.device | None = None) -> torch.device:
    device = device or DEFAULT_DEVICE
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"unsupported device {str(device)!r}; choose 'cpu' or 'cuda'")
    return device


# ------------------------------------------------------------------------------ sources
DISTILLED = "transformer_distilled"  # a token prior's guidance-distilled transformer (optional)
# pipeline parts that hold weights
WEIGHT_COMPONENTS = ("unet", "vae", "vqvae", "text_encoder", "transformer", DISTILLED)
FILE_COMPONENTS = WEIGHT_COMPONENTS + ("scheduler", "tokenizer")


def resolve_source(source: str | os.PathLike, subfolder: str | None = None, revision: str | None = None) -> Path:
    """A local folder holding the checkpoint: `source` itself, or a Hub download of JSON + safetensors."""
    check_revision(revision)
    path = Path(source).expanduser()
    if path.exists():
        if revision:
            raise ModelLoadError(f"{str(path)!r} is a local folder: a revision ({revision!r}) applies to Hub repos only")
        folder = path / subfolder if subfolder else path
        if not folder.is_dir():
            raise ModelLoadError(f"{str(folder)!r} is not a folder")
        return folder
    name = str(source)
    if not REPO_ID.match(name):
        raise ModelLoadError(f"{name!r} is neither a local folder nor a Hugging Face Hub repo id (owner/name)")
    try:
        return _download(name, subfolder, revision)
    except ModelLoadError as error:
        raise ModelLoadError(f"there is no local folder {name!r}, and as a Hub repo id: {error}") from None


def _snapshot(repo_id: str, prefix: str, revision: str | None) -> Path:
    """Download JSON, tokenizer text and the plain safetensors weights under `prefix` (or of every
    pipeline component), skipping variants such as *.fp16.safetensors; returns the snapshot root."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hub_errors

    patterns = [f"{prefix}{pattern}" for pattern in (
        "*.json", "*.txt", "diffusion_pytorch_model*.safetensors", "model*.safetensors",
        "*/diffusion_pytorch_model*.safetensors", "*/model*.safetensors")]
    if prefix:
        patterns.append("model_index.json")  # the pipeline a component belongs to (aMUSEd's VQ reads [0, 1] pixels)
    variants = ["*.fp16.safetensors", "*.fp16-*.safetensors", "*non_ema*", "*.ema.safetensors"]
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, ignore_patterns=variants))
    except hub_errors.RevisionNotFoundError:
        raise ModelLoadError(f"the Hub repo {repo_id!r} has no revision {revision!r}") from None
    except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as error:
        raise ModelLoadError(f"the Hub repo {repo_id!r} does not exist or is not public ({type(error).__name__})") from None
    except (hub_errors.OfflineModeIsEnabled, hub_errors.LocalEntryNotFoundError, OSError, hub_errors.HfHubHTTPError) as error:
        why = "HF_HUB_OFFLINE=1 is set" if offline else f"the Hub could not be reached ({type(error).__name__})"
        raise ModelLoadError(
            f"cannot download {repo_id!r}: {why}, and it is not in the local cache. "
            "The embedded models under weights/ keep working offline."
        ) from None


def is_pipeline(folder: Path) -> bool:
    """A diffusers pipeline folder: model_index.json beside component subfolders (a root that holds
    its own config.json, like google/ddpm-cifar10-32, is a single model)."""
    return (folder / "model_index.json").is_file() and not (folder / "config.json").is_file()


def _missing_weights(folder: Path) -> list[Path]:
    """The folders of a snapshot that should hold weights but hold no safetensors."""
    if is_pipeline(folder):
        index = json.loads((folder / "model_index.json").read_text())
        parts = [folder / part for part in WEIGHT_COMPONENTS
                 if isinstance(index.get(part), list) and index[part][0] is not None]
        return [part for part in parts if not any(part.glob("*.safetensors"))]
    return [] if any(folder.glob("*.safetensors")) else [folder]


def find_conversion_pr(repo_id: str) -> str | None:
    """`refs/pr/N` of an open pull request by the Hub's safetensors conversion bot, else None."""
    from huggingface_hub import get_repo_discussions

    try:
        for discussion in get_repo_discussions(repo_id, repo_type="model"):
            if discussion.is_pull_request and discussion.status == "open" and discussion.author == CONVERSION_BOT:
                return f"refs/pr/{discussion.num}"
    except Exception as error:  # the Hub's discussion API is a best effort: refusing stays the answer
        log.warning("could not list the pull requests of %s: %s", repo_id, error)
    return None


def _download(repo_id: str, subfolder: str | None, revision: str | None = None) -> Path:
    from huggingface_hub import list_repo_files

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    root = _snapshot(repo_id, prefix, revision)
    folder = root / prefix if prefix else root
    missing = _missing_weights(folder)
    if missing:
        try:
            remote = [f for f in list_repo_files(repo_id, revision=revision) if f.startswith(prefix)]
        except Exception:
            remote = []
        pickles = [f for f in remote if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            conversion = find_conversion_pr(repo_id) if revision in (None, "main") else None
            if conversion is None:
                raise ModelLoadError(_pickle_refusal(f"{repo_id}/{prefix}", pickles))
            log.warning("%s has only pickle weights on main; using the safetensors of %s, a pull request opened "
                        "by %s", repo_id, conversion, CONVERSION_BOT)
            CONVERSIONS[(repo_id, subfolder)] = conversion
            return _download(repo_id, subfolder, conversion)
        if not (folder / "config.json").exists() and not (folder / "model_index.json").exists():
            raise ModelLoadError(f"{repo_id!r} has no diffusers checkpoint (config.json) under {prefix or 'its root'!r}")
    return folder


CONVERSIONS: dict[tuple[str, str | None], str] = {}  # (repo, subfolder) -> the conversion PR used instead of main


def _pickle_refusal(where: str, pickles: list[str]) -> str:
    names = ", ".join(sorted(Path(p).name for p in pickles)[:4])
    return (f"refused {where!r}: it holds only pickle weights ({names}), which are not safetensors. "
            "GenLab loads safetensors only, since unpickling can run arbitrary code; convert the "
            "checkpoint with diffusers' save_pretrained(safe_serialization=True).")


def check_checkpoint(folder: Path) -> None:
    """Refuse folders without config.json or without safetensors weights (naming pickle files)."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{str(folder)!r} has no config.json: not a diffusers checkpoint folder")
    if not list(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelLoadError(_pickle_refusal(str(folder), pickles))
        raise ModelLoadError(f"{str(folder)!r} has no .safetensors weights file")


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read {str(folder / 'config.json')!r}: {error}") from None


def _pipeline_class(folder: Path) -> str:
    """The `_class_name` of `folder/model_index.json`, "" when there is none."""
    try:
        return str(json.loads((folder / "model_index.json").read_text()).get("_class_name", ""))
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""


def genlab_info(folder: Path) -> dict:
    """GenLab's own metadata beside a checkpoint (classes, title); {} for Hub checkpoints."""
    path = folder / "genlab.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_diffusers_model(cls, folder: Path, config_overrides: dict | None = None):
    """`cls.from_pretrained` with safetensors only, raising on missing / unexpected / mismatched keys."""
    check_checkpoint(folder)
    try:
        model, info = cls.from_pretrained(
            folder, use_safetensors=True, output_loading_info=True, low_cpu_mem_usage=False, **(config_overrides or {})
        )
    except ModelLoadError:
        raise
    except Exception as error:  # safetensors header errors, shape errors, bad config values
        raise ModelLoadError(f"cannot load {cls.__name__} from {str(folder)!r}: {error}") from None
    problems = {key: info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(key)}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v[:8]))}" + (" ..." if len(v) > 8 else "")
                           for k, v in problems.items())
        raise ModelLoadError(f"the weights in {str(folder)!r} do not match the {cls.__name__} config: {detail}")
    return model.eval().requires_grad_(False)


def place(model, device: torch.device):
    """Move a loaded network to `device` for inference: fp16 on CUDA, and channels-last (NHWC)
    layout, which oneDNN and cuDNN convolutions run faster (measured on vqvae-photo, 2-core CPU:
    256^2 reconstruction 115 -> 96 ms, the same fp32 results up to 5e-6)."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.half()
    return model.to(memory_format=torch.channels_last)


# -------------------------------------------------------------------------------- cache
_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()
_key_locks: dict[tuple, threading.Lock] = {}


def cached(key: tuple, build):
    """Build each key once, even under concurrent requests; later calls share the object."""
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        value = build()
        with _cache_lock:
            _cache[key] = value
        return value


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _key_locks.clear()


# ------------------------------------------------------------------------------ loaders
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
    info = genlab_info(folder)
    # aMUSEd's VQ-GAN reads and writes [0, 1] pixels; its pipeline folder says so by its class name
    unit_pixels = _pipeline_class(folder.parent).startswith("Amused")
    try:
        background = Background.from_info(info.get("background"), model.config.num_vq_embeddings)
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"{str(folder)!r}: genlab.json: {error}") from None
    return VQ(model, name=info.get("title") or name, tile=info.get("tile"), unit_pixels=unit_pixels,
              background=background)


def _build_kl(folder: Path, device: torch.device, name: str):
    from diffusers import AutoencoderKL

    from ..autoencoders.kl import KLAutoencoder

    model = place(load_diffusers_model(AutoencoderKL, folder), device)
    return KLAutoencoder(model, name=genlab_info(folder).get("title") or name)


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
        model, info = cls.from_pretrained(folder / "text_encoder", use_safetensors=True, output_loading_info=True)
    except Exception as error:
        raise ModelLoadError(f"cannot load the text encoder of {str(folder)!r}: {error}") from None
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise ModelLoadError(f"the text encoder weights in {str(folder)!r} do not match its config: "
                             f"{', '.join(map(str, (info.get('missing_keys') or info.get('mismatched_keys'))[:8]))}")
    model = model.eval().requires_grad_(False).to(device)
    return TextEncoder(tokenizer, model.half() if device.type == "cuda" else model)


def load_diffusion(source, subfolder: str | None = None, device=None, revision: str | None = None):
    """A `genlab.diffusion.pipeline.DiffusionModel`: a pixel `UNet2DModel` folder with its scheduler config, or a
    diffusers pipeline folder (unet/ over the latents of vae/ or vqvae/, scheduler/, and for Stable
    Diffusion a `UNet2DConditionModel` with text_encoder/ + tokenizer/)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    from ..diffusion.pipeline import DiffusionModel

    device = pick_device(device)

    def build():
        folder = resolve_source(source, subfolder, revision)
        name = _label(source, subfolder, revision)
        codec = autoencoder = text = None
        info = genlab_info(folder)
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
        unet = place(load_diffusers_model(UNet2DConditionModel if text else UNet2DModel, unet_folder), device)
        return DiffusionModel(unet, scheduler_config, info, name=info.get("title") or name, codec=codec,
                              autoencoder=autoencoder, text=text)

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
        info = genlab_info(folder)
        try:
            return TokenPrior(vq, transformer, scheduler_config, info, name=info.get("title") or name, text=text,
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
