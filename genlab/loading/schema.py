"""`genlab.json`: GenLab's own metadata beside a checkpoint, as one typed, checked schema.

diffusers' `config.json` describes a network; `genlab.json` says what GenLab needs to present it: its title,
its class names, the defaults it samples with, and facts of its training (the tile it was trained on, its
latents' range). Hub checkpoints have none, and every field is optional. It is read and written only here:
unknown keys and bad values are refused by name, never silently fixed (diffusers' ConfigMixin, checked).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

FILENAME = "genlab.json"
KINDS = ("vq", "autoencoder", "diffusion", "prior")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _check_clip_range(value) -> float | tuple:
    """A number > 0 (x̂0 within ±value), or per channel [low, high] pairs."""
    if _is_number(value) and value > 0:
        return float(value)
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(map(_is_number, pair)) and pair[0] < pair[1]
            for pair in value):
        return tuple((float(low), float(high)) for low, high in value)
    raise ValueError(f"clip_sample_range must be a number > 0 or per-channel [low, high] pairs, got {value!r}")


def _check_latent_statistics(value) -> dict:
    keys = {"std", "channel_mean", "channel_std"}
    if not isinstance(value, dict) or set(value) - keys or "std" not in value:
        raise ValueError(f"latent_statistics must be {{'std': number, 'channel_mean': [...], 'channel_std': [...]}}, "
                         f"got {value!r}")
    if not (_is_number(value["std"]) and value["std"] > 0):
        raise ValueError(f"latent_statistics std must be a number > 0, got {value['std']!r}")
    for key in ("channel_mean", "channel_std"):
        if key in value and not (isinstance(value[key], list) and all(map(_is_number, value[key]))):
            raise ValueError(f"latent_statistics {key} must be a list of numbers, got {value[key]!r}")
    return dict(value)


@dataclass(frozen=True)
class ModelInfo:
    """The fields of genlab.json. None (or empty) means "not given": the model's reader picks its default."""

    kind: str | None = None  # one of KINDS: which loader the folder is for
    title: str | None = None  # the name the app lists
    classes: tuple[str, ...] = ()  # class names of a class-conditional model, in label order
    null_class: int | None = None  # the label of the unconditional branch (default: len(classes))
    default_guidance_scale: float | None = None  # classifier-free guidance the app starts at
    default_choice_temperature: float | None = None  # a token prior's confidence-order Gumbel noise
    clip_sample_range: float | tuple | None = None  # a latent model's x̂0 range: ±number or per-channel pairs
    tile: int | None = None  # the crop (pixels) an autoencoder was trained on: larger inputs run in tiles
    grid: int | None = None  # the token grid side of a prior whose config does not say it
    background: dict | None = None  # a VQ's reserved background code (`genlab.autoencoders.vq.Background`)
    latent_statistics: dict | None = None  # a KL autoencoder's latent std and per-channel mean / std

    def __post_init__(self):
        self._check()

    def _check(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.title is not None and not (isinstance(self.title, str) and self.title.strip()):
            raise ValueError(f"title must be a non-empty string, got {self.title!r}")
        if not (isinstance(self.classes, tuple) and all(isinstance(c, str) and c for c in self.classes)):
            raise ValueError(f"classes must be a list of non-empty strings, got {self.classes!r}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct, got {list(self.classes)!r}")
        if self.null_class is not None and not (_is_int(self.null_class) and self.null_class >= 0):
            raise ValueError(f"null_class must be an integer >= 0, got {self.null_class!r}")
        for name in ("default_guidance_scale", "default_choice_temperature"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("tile", "grid"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value > 0):
                raise ValueError(f"{name} must be an integer > 0, got {value!r}")
        if self.clip_sample_range is not None:
            object.__setattr__(self, "clip_sample_range", _check_clip_range(self.clip_sample_range))
        if self.background is not None and not isinstance(self.background, dict):
            raise ValueError(f"background must be {{'code': int, 'margin': int, 'tolerance': int}}, "
                             f"got {self.background!r}")
        if self.latent_statistics is not None:
            object.__setattr__(self, "latent_statistics", _check_latent_statistics(self.latent_statistics))

    @classmethod
    def from_dict(cls, data) -> ModelInfo:
        """A parsed genlab.json -> ModelInfo; an unknown key or a bad value is a ValueError naming it."""
        if not isinstance(data, dict):
            raise ValueError(f"genlab.json must hold an object, got {type(data).__name__}")
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; genlab.json knows {sorted(known)}")
        values = dict(data)
        if "classes" in values:
            if not isinstance(values["classes"], list):
                raise ValueError(f"classes must be a list of non-empty strings, got {values['classes']!r}")
            values["classes"] = tuple(values["classes"])
        return cls(**values)

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
            if key == "classes":
                value = list(value)
            elif key == "clip_sample_range" and isinstance(value, tuple):
                value = [list(pair) for pair in value]
            out[key] = value
        return out


def read_model_info(folder: Path) -> ModelInfo:
    """`folder/genlab.json` as a ModelInfo (empty when the file is absent, as on Hub checkpoints).
    Unreadable JSON, unknown keys and bad values raise ValueError naming the file and the key."""
    path = Path(folder) / FILENAME
    if not path.is_file():
        return ModelInfo()
    try:
        return ModelInfo.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}") from None
    except (TypeError, ValueError) as error:
        raise ValueError(f"{str(path)!r}: {error}") from None


def write_model_info(folder: Path, info: ModelInfo | dict) -> ModelInfo:
    """Check `info` and write it as `folder/genlab.json`; returns the checked ModelInfo."""
    info = ModelInfo.of(info)
    (Path(folder) / FILENAME).write_text(json.dumps(info.to_dict(), indent=1))
    return info
