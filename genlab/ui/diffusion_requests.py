"""The diffusion tab's requests (each event's API parameters, in order) and the work cap every request passes.

A handler takes one request dataclass whose fields are its event's inputs (`common.positional`); `check_work`
refuses a request whose UNet work would hold the one model thread for too long, before any step runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..diffusion import DiffusionModel
from ..imaging.io import InputError

# One request's work: UNet evaluations x positions of the sample (latent or pixel), guidance counted twice (a
# model's default autoguidance once more: its guide network runs at every step too). ddpm-emoji at 1000 steps x
# batch 16 x guidance (32.8M) and every default pass; a 512^2 photo denoised in 1000 steps (262M) does not.
MAX_WORK = 40_000_000


def check_work(dm: DiffusionModel, runs: list[tuple[int, int, bool]], side: tuple[int, int]) -> int:
    """Refuse requests over MAX_WORK; `runs` holds (UNet calls, batch, guided) per run, `side` the pixel
    (height, width). Returns the work units."""
    f = dm.codec.factor
    positions = -(-side[0] // f) * -(-side[1] // f)
    guide = 1 if dm.default_autoguidance_scale != 1.0 else 0  # the app samples at the model's default autoguidance
    work = sum(steps * batch * ((2 if guided else 1) + guide) * positions for steps, batch, guided in runs)
    if work > MAX_WORK:
        raise InputError(
            f"This request asks for {work / 1e6:.0f}M units of work (UNet calls x batch x sample positions, "
            f"guidance counted twice), over the {MAX_WORK / 1e6:.0f}M a request may use so the model stays "
            "free for other visitors. Lower the steps, the batch, the image size or set guidance to 1.")
    return work


def is_guided(dm: DiffusionModel, class_name, guidance) -> bool:
    guidance = dm.default_guidance_scale if guidance is None else float(guidance)
    return guidance != 1.0 and (dm.is_text_conditional or (dm.is_conditional and bool(class_name)))


@dataclass
class SampleRequest:
    label: str
    scheduler: str
    steps: float
    seed: float
    batch: float
    class_name: str | None
    guidance: float | None
    eta: float
    prompt: str = ""
    negative_prompt: str = ""


@dataclass
class DenoiseRequest:
    label: str
    image_path: str | None
    mode: str  # "clean": noise the upload to t; "noisy": it already holds noise of sigma_255
    t: float
    sigma_255: float
    steps: float | None  # 0 or None: the default
    seed: float
    scheduler: str
    class_name: str | None
    guidance: float | None
    prompt: str = ""
    negative_prompt: str = ""


@dataclass
class InpaintRequest:
    label: str
    editor: dict | None
    steps: float
    seed: float
    scheduler: str
    class_name: str | None
    guidance: float | None
    prompt: str = ""
    negative_prompt: str = ""


@dataclass
class CompareRequest:
    label: str
    settings: list[str] | None  # 2 to 4 of COMPARE_CHOICES
    seed: float
    class_name: str | None
    guidance: float | None
    prompt: str = ""
    negative_prompt: str = ""


@dataclass
class PreviewRequest:
    label: str
    image_path: str | None
    mode: str
    t: float
    sigma_255: float
    seed: float


@dataclass
class PromptsRequest:
    """Compare prompts: 2 to MAX_PROMPTS prompts, one a line, on the same seed (the same x_T) and settings."""

    label: str
    prompts: str
    steps: float
    seed: float
    scheduler: str
    guidance: float | None
    negative_prompt: str = ""


@dataclass
class Img2ImgRequest:
    """SDEdit with a prompt: the upload noised to `strength` of the schedule, then redrawn under the prompt."""

    label: str
    image_path: str | None
    strength: float  # in (0, 1]: 1 starts from pure noise
    steps: float
    seed: float
    scheduler: str
    guidance: float | None
    prompt: str = ""
    negative_prompt: str = ""


def conditions(request, dm: DiffusionModel) -> dict:
    """A request's conditioning as keyword arguments of `dm`'s calls. A text model gets the prompt as typed, so an
    empty or blank box is refused by its check; another model reads an empty box as no prompt."""
    prompt = request.prompt if dm.is_text_conditional else request.prompt or None
    return dict(class_label=request.class_name or None, guidance_scale=request.guidance, prompt=prompt,
                negative_prompt=request.negative_prompt or None)
