"""Model loading: diffusers-format safetensors checkpoints from a local folder or the Hugging Face Hub.

One path for every source: `resolve_source` turns a folder or a Hub repo id (+ subfolder) into a
local folder (downloading only JSON and safetensors files), `check_checkpoint` refuses folders
without safetensors weights, and `load_vq` / `load_diffusion` build the diffusers model, raise on
missing or unexpected keys (diffusers only warns), place it on a device and cache it.

Device policy: CUDA when available, else CPU; `device=` or `--device` overrides. On CUDA the
networks run in fp16, while the codebook look-up (VQ) and the scheduler arithmetic (diffusion)
stay in fp32.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

WEIGHTS_DIR = Path(os.environ.get("GENLAB_WEIGHTS", Path(__file__).resolve().parent.parent / "weights"))
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
DEFAULT_DEVICE: str | None = None  # set by the app's --device


class ModelLoadError(RuntimeError):
    """A checkpoint that GenLab cannot or will not load; the message names the reason."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: a local folder or Hub repo id, and an optional subfolder."""

    source: str
    subfolder: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """'SOURCE' or 'SOURCE#SUBFOLDER' (the command-line and GENLAB_MODELS form)."""
        source, _, subfolder = text.strip().partition("#")
        if not source:
            raise ValueError(f"empty model source in {text!r}")
        return cls(source, subfolder or None)

    @property
    def label(self) -> str:
        return f"{self.source}#{self.subfolder}" if self.subfolder else self.source


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
def resolve_source(source: str | os.PathLike, subfolder: str | None = None) -> Path:
    """A local folder holding the checkpoint: `source` itself, or a Hub download of JSON + safetensors."""
    path = Path(source).expanduser()
    if path.exists():
        folder = path / subfolder if subfolder else path
        if not folder.is_dir():
            raise ModelLoadError(f"{str(folder)!r} is not a folder")
        return folder
    name = str(source)
    if not REPO_ID.match(name):
        raise ModelLoadError(f"{name!r} is neither a local folder nor a Hugging Face Hub repo id (owner/name)")
    try:
        return _download(name, subfolder)
    except ModelLoadError as error:
        raise ModelLoadError(f"there is no local folder {name!r}, and as a Hub repo id: {error}") from None


def _download(repo_id: str, subfolder: str | None) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download
    from huggingface_hub import errors as hub_errors

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        root = snapshot_download(repo_id, allow_patterns=[f"{prefix}*.json", f"{prefix}*.safetensors"])
    except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as error:
        raise ModelLoadError(f"the Hub repo {repo_id!r} does not exist or is not public ({type(error).__name__})") from None
    except (hub_errors.OfflineModeIsEnabled, hub_errors.LocalEntryNotFoundError, OSError, hub_errors.HfHubHTTPError) as error:
        why = "HF_HUB_OFFLINE=1 is set" if offline else f"the Hub could not be reached ({type(error).__name__})"
        raise ModelLoadError(
            f"cannot download {repo_id!r}: {why}, and it is not in the local cache. "
            "The embedded models under weights/ keep working offline."
        ) from None
    folder = Path(root) / prefix if prefix else Path(root)
    if not any(folder.glob("*.safetensors")):
        try:
            remote = [f for f in list_repo_files(repo_id) if f.startswith(prefix)]
        except Exception:
            remote = []
        pickles = [f for f in remote if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise ModelLoadError(_pickle_refusal(f"{repo_id}/{prefix}", pickles))
        if not (folder / "config.json").exists():
            raise ModelLoadError(f"{repo_id!r} has no diffusers checkpoint (config.json) under {prefix or 'its root'!r}")
    return folder


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
def load_vq(source, subfolder: str | None = None, device=None):
    """A `genlab.vq.VQ` for a diffusers VQModel checkpoint (folder or Hub repo id)."""
    from diffusers import VQModel

    from .vq import VQ

    device = pick_device(device)

    def build():
        folder = resolve_source(source, subfolder)
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
        return VQ(model, name=info.get("title") or ModelSpec(str(source), subfolder).label, tile=info.get("tile"))

    return cached(("vq", str(source), subfolder, str(device)), build)


def load_diffusion(source, subfolder: str | None = None, device=None):
    """A `genlab.diffusion.DiffusionModel` for a UNet2DModel checkpoint plus its scheduler config."""
    from diffusers import UNet2DModel

    from .diffusion import DiffusionModel

    device = pick_device(device)

    def build():
        folder = resolve_source(source, subfolder)
        config = read_config(folder)
        if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise ModelLoadError(f"{str(folder)!r} holds a {config['_class_name']}, not a UNet2DModel")
        scheduler_file = folder / "scheduler_config.json"
        if not scheduler_file.is_file() and (folder.parent / "scheduler" / "scheduler_config.json").is_file():
            scheduler_file = folder.parent / "scheduler" / "scheduler_config.json"  # pipeline layout: unet/ + scheduler/
        if not scheduler_file.is_file():
            raise ModelLoadError(f"{str(folder)!r} has no scheduler_config.json beside the UNet")
        unet = place(load_diffusers_model(UNet2DModel, folder), device)
        info = genlab_info(folder)
        return DiffusionModel(unet, json.loads(scheduler_file.read_text()), info,
                              name=info.get("title") or ModelSpec(str(source), subfolder).label)

    return cached(("diffusion", str(source), subfolder, str(device)), build)


# ---------------------------------------------------------------------- embedded models
EMBEDDED = {
    "vqvae-photo": "vq", "vqgan-photo": "vq", "ddpm-emoji": "diffusion", "ddpm-photo": "diffusion",
}


def embedded_status() -> dict[str, str]:
    """name -> 'trained' when weights/NAME holds safetensors weights, else 'not trained yet'."""
    return {
        name: "trained" if list((WEIGHTS_DIR / name).glob("*.safetensors")) else "not trained yet"
        for name in EMBEDDED
    }
