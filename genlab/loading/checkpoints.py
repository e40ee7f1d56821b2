"""Strict checkpoint loading: safetensors only, every key matched, placed on a device, built once.

diffusers' `from_pretrained` only warns on missing or unexpected keys; `load_diffusers_model` asks for the loading
info (`output_loading_info=True`) and raises `ModelLoadError` naming them. Folders with only pickle weights
(.bin, .ckpt, ...) are refused, since unpickling can run arbitrary code. genlab.json is read through
`genlab.loading.schema` (`model_info`), its bad values refused as load errors naming the file and key.

Device policy: CUDA when available, else CPU; `device=` or `--device` (`DEFAULT_DEVICE`) overrides. On CUDA the
networks run in fp16, while the codebook look-up (VQ) and the scheduler arithmetic (diffusion) stay in fp32.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from .schema import ModelInfo, read_model_info

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
DEFAULT_DEVICE: str | None = None  # set by the app's --device


class ModelLoadError(RuntimeError):
    """A checkpoint that GenLab cannot or will not load; the message names the reason."""


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


def place(model, device: torch.device):
    """Move a loaded network to `device` for inference: fp16 on CUDA, and channels-last (NHWC)
    layout, which oneDNN and cuDNN convolutions run faster, with the same fp32 results up to rounding."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.half()
    return model.to(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------ files
def pickle_refusal(where: str, pickles: list[str]) -> str:
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
            raise ModelLoadError(pickle_refusal(str(folder), pickles))
        raise ModelLoadError(f"{str(folder)!r} has no .safetensors weights file")


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read {str(folder / 'config.json')!r}: {error}") from None


def pipeline_class(folder: Path) -> str:
    """The `_class_name` of `folder/model_index.json`, "" when there is none."""
    try:
        return str(json.loads((folder / "model_index.json").read_text()).get("_class_name", ""))
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""


def model_info(folder: Path) -> ModelInfo:
    """GenLab's own metadata beside a checkpoint (`folder/genlab.json`, checked by `genlab.loading.schema`); an
    empty ModelInfo for Hub checkpoints. A bad value is a ModelLoadError naming the file and the key."""
    try:
        return read_model_info(folder)
    except ValueError as error:
        raise ModelLoadError(str(error)) from None


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
