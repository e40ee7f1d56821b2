"""`genlab.json`: GenLab's own metadata beside a checkpoint, as one typed, checked schema.

diffusers' `config.json` describes a network; `genlab.json` says what GenLab needs to present it: its title,
its class names, the defaults it samples with, and facts of its training (the tile it was trained on, its
latents' range). Hub checkpoints have none, and every field is optional. It is read and written only here:
unknown keys and bad values are refused by name, never silently fixed (diffusers' ConfigMixin, checked).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..sampling import MAX_CHOICE_TEMPERATURE, MAX_GUIDANCE, check_guidance_interval, is_integer, is_number

FILENAME = "genlab.json"
KINDS = ("vq", "autoencoder", "diffusion", "prior")


def _check_clip_range(value) -> float | tuple:
    """A number > 0 (x̂0 within ±value), or per channel [low, high] pairs."""
    if is_number(value) and value > 0:
        return float(value)
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(map(is_number, pair)) and pair[0] < pair[1]
            for pair in value):
        return tuple((float(low), float(high)) for low, high in value)
    raise ValueError(f"clip_sample_range in genlab.json must be a number > 0 or per-channel [low, high] pairs, "
                     f"got {value!r}")


def _check_latent_statistics(value) -> dict:
    keys = {"std", "channel_mean", "channel_std"}
    if not isinstance(value, dict) or set(value) - keys or "std" not in value:
        raise ValueError(f"latent_statistics in genlab.json must be {{'std': number, 'channel_mean': [...], "
                         f"'channel_std': [...]}}, got {value!r}")
    if not (is_number(value["std"]) and value["std"] > 0):
        raise ValueError(f"latent_statistics std in genlab.json must be a number > 0, got {value['std']!r}")
    for key in ("channel_mean", "channel_std"):
        if key in value and not (isinstance(value[key], list) and all(map(is_number, value[key]))):
            raise ValueError(f"latent_statistics {key} in genlab.json must be a list of numbers, got {value[key]!r}")
    return dict(value)


def _check_background(value) -> dict:
    """The keys and types of a VQ's background entry; the code's range is checked against the codebook when the VQ
    loads (`genlab.autoencoders.vq.Background.from_info`)."""
    keys = {"code", "margin", "tolerance"}
    if not isinstance(value, dict) or set(value) - keys or "code" not in value or not all(map(is_integer, value.values())):
        raise ValueError(f"background in genlab.json must be {{'code': int, 'margin': int, 'tolerance': int}}, "
                         f"got {value!r}")
    return dict(value)


def _check_guidance_interval(value) -> tuple[float, float]:
    """[low, high] noise levels, both finite (JSON has no infinity): guidance acts where low < sigma_t <= high."""
    if not (isinstance(value, (list, tuple)) and all(map(is_number, value))):
        raise ValueError(f"default_guidance_interval in genlab.json must be [low, high], two finite noise levels, "
                         f"got {value!r}")
    return check_guidance_interval(value, "default_guidance_interval in genlab.json")


def _number_in(name: str, low: float, high: float):
    def check(value):
        if not (is_number(value) and low <= value <= high):
            raise ValueError(f"{name} in genlab.json must be a number in [{low:g}, {high:g}], got {value!r}")
        return float(value)
    return check


def _positive_int(name: str):
    def check(value):
        if not (is_integer(value) and value > 0):
            raise ValueError(f"{name} in genlab.json must be an integer > 0, got {value!r}")
        return value
    return check


@dataclass(frozen=True)
class ModelInfo:
    """The fields of genlab.json. None (or empty) means "not given": the model's reader picks its default."""

    kind: str | None = None  # one of KINDS: which loader the folder is for
    title: str | None = None  # the name the app lists
    classes: tuple[str, ...] = ()  # class names of a class-conditional model, in label order
    null_class: int | None = None  # the label of the unconditional branch (default: len(classes))
    default_guidance_scale: float | None = None  # classifier-free guidance the app starts at
    default_guidance_interval: tuple | None = None  # diffusion: guide only where low < sigma_t <= high
    default_autoguidance_scale: float | None = None  # diffusion: autoguidance against unet_guide/ (1: off)
    default_choice_temperature: float | None = None  # a token prior's confidence-order Gumbel noise
    clip_sample_range: float | tuple | None = None  # a latent model's x̂0 range: ±number or per-channel pairs
    tile: int | None = None  # the crop (pixels) an autoencoder was trained on: larger inputs run in tiles
    grid: int | None = None  # the token grid side of a prior whose config does not say it
    background: dict | None = None  # a VQ's reserved background code (`genlab.autoencoders.vq.Background`)
    latent_statistics: dict | None = None  # a KL autoencoder's latent std and per-channel mean / std

    def __post_init__(self):
        for name, value in vars(self).items():
            if value is not None and value != ():
                object.__setattr__(self, name, CHECKS[name](value))

    @classmethod
    def from_dict(cls, data) -> ModelInfo:
        """A parsed genlab.json -> ModelInfo; an unknown key or a bad value is a ValueError naming it."""
        if not isinstance(data, dict):
            raise ValueError(f"genlab.json must hold an object, got {type(data).__name__}")
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; genlab.json knows {sorted(known)}")
        return cls(**data)

    @classmethod
    def of(cls, info: ModelInfo | dict | None) -> ModelInfo:
        """Accept a ModelInfo, a genlab.json dict or None (nothing given)."""
        if info is None:
            return cls()
        return info if isinstance(info, cls) else cls.from_dict(info)

    def to_dict(self) -> dict:
        """The JSON object to write: given fields only, in declaration order."""
        out = {}
        for key, value in asdict(self).items():
            if value is None or value == ():
                continue
            if key in ("classes", "default_guidance_interval"):
                value = list(value)
            elif key == "clip_sample_range" and isinstance(value, tuple):
                value = [list(pair) for pair in value]
            out[key] = value
        return out


def _check_kind(value):
    if value not in KINDS:
        raise ValueError(f"kind in genlab.json must be one of {list(KINDS)}, got {value!r}")
    return value


def _check_title(value):
    if not (isinstance(value, str) and value.strip()):
        raise ValueError(f"title in genlab.json must be a non-empty string, got {value!r}")
    return value


def _check_classes(value):
    if not (isinstance(value, (list, tuple)) and all(isinstance(c, str) and c for c in value)):
        raise ValueError(f"classes in genlab.json must be a list of non-empty strings, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"classes in genlab.json must be distinct, got {list(value)!r}")
    return tuple(value)


def _check_null_class(value):
    if not (is_integer(value) and value >= 0):
        raise ValueError(f"null_class in genlab.json must be an integer >= 0, got {value!r}")
    return value


# one check per field: the value it stores, or a ValueError naming the key
CHECKS = {
    "kind": _check_kind, "title": _check_title, "classes": _check_classes, "null_class": _check_null_class,
    "default_guidance_scale": _number_in("default_guidance_scale", 0.0, MAX_GUIDANCE),
    "default_guidance_interval": _check_guidance_interval,
    "default_autoguidance_scale": _number_in("default_autoguidance_scale", 1.0, MAX_GUIDANCE),
    "default_choice_temperature": _number_in("default_choice_temperature", 0.0, MAX_CHOICE_TEMPERATURE),
    "clip_sample_range": _check_clip_range, "tile": _positive_int("tile"), "grid": _positive_int("grid"),
    "background": _check_background, "latent_statistics": _check_latent_statistics,
}
assert set(CHECKS) == {field.name for field in fields(ModelInfo)}


def read_model_info(folder: Path) -> ModelInfo:
    """`folder/genlab.json` as a ModelInfo (empty when the file is absent, as on Hub checkpoints).
    Unreadable JSON, unknown keys and bad values raise ValueError naming the file and the key."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return ModelInfo()
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}") from None
    try:
        for key, value in (data.items() if isinstance(data, dict) else ()):
            if value is None and key in CHECKS:  # a key written as null: refused as a bad value, not read as unset
                CHECKS[key](value)
        return ModelInfo.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{str(path)!r}: {error}") from None


def write_model_info(folder: Path, info: ModelInfo | dict) -> ModelInfo:
    """Check `info` and write it as `folder/genlab.json`; returns the checked ModelInfo."""
    info = ModelInfo.of(info)
    (Path(folder) / FILENAME).write_text(json.dumps(info.to_dict(), indent=1))
    return info
