"""`python -m genlab.eval emoji`: class-conditional emoji generators judged against real emoji.

A grid of samples per category; background lightness, centre colourfulness and sample diversity beside the
same statistics of real emoji; and the share of samples that a small classifier trained on real emoji assigns
to the requested category (classifier-based follow rate, as in the class-conditional evaluations of
Dhariwal & Nichol 2021, arXiv:2105.05233, with a judge trained on the data itself).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..imaging.io import image_grid, pil_to_tensor
from ..loading.loaders import load_diffusion, load_prior

DIFFUSION_STEPS, PRIOR_STEPS = 50, 12  # emoji samples: DDIM steps, MaskGIT steps


def is_token_prior(model) -> bool:
    """A local token-prior pipeline folder: model_index.json, transformer/ and an AmusedScheduler."""
    folder = Path(model)
    config = folder / "scheduler" / "scheduler_config.json"
    if not ((folder / "model_index.json").is_file() and (folder / "transformer").is_dir() and config.is_file()):
        return False
    return json.loads(config.read_text()).get("_class_name") == "AmusedScheduler"


# ------------------------------------------------------------------------------- emoji
def emoji_stats(images: torch.Tensor) -> tuple[float, float, float]:
    """(border lightness 0..1, centre saturation minus border saturation, mean pairwise distance)."""
    pixels = (images.float() + 1) / 2  # (N, 3, H, W) in [0, 1]
    size = pixels.shape[-1]
    border = torch.ones(size, size, dtype=torch.bool)
    margin = max(1, size // 8)
    border[margin:-margin, margin:-margin] = False
    centre = torch.zeros_like(border)
    centre[size // 4:-size // 4, size // 4:-size // 4] = True
    saturation = pixels.amax(dim=1) - pixels.amin(dim=1)  # (N, H, W)
    lightness = pixels.mean(dim=1)[:, border].mean().item()
    colour = (saturation[:, centre].mean() - saturation[:, border].mean()).item()
    flat = pixels.flatten(1)
    diversity = torch.cdist(flat, flat).sum().item() / max(1, len(flat) * (len(flat) - 1)) / flat.shape[1] ** 0.5
    return lightness, colour, diversity



class EmojiClassifier(torch.nn.Module):
    """A small CNN trained here on real 32x32 emoji, used only to score samples' categories."""

    def __init__(self, classes: int):
        super().__init__()
        layers, width = [], 3
        for out in (32, 64, 128):
            layers += [torch.nn.Conv2d(width, out, 3, padding=1), torch.nn.BatchNorm2d(out), torch.nn.ReLU(),
                       torch.nn.MaxPool2d(2)]
            width = out
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))



def train_classifier(images: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 1500, seed: int = 0):
    """Returns (classifier, balanced accuracy on held-out real emoji, i.e. the mean per-class recall).

    The categories are very unequal (People & Body holds 60% of the emoji, Component 5 images), so
    training batches are drawn class-balanced and the score is the balanced accuracy: a judge that
    only learned the majority class would score 1/classes, not 60%. The learning rate decays to 0
    (cosine), so the judge does not hinge on its last few noisy updates."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    test, train = order[: len(order) // 10], order[len(order) // 10:]
    counts = torch.bincount(labels[train], minlength=classes).float()
    weights = (1.0 / counts.clamp(min=1))[labels[train]]  # (N_train,) class-balanced draws
    model = EmojiClassifier(classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for step in range(steps):
        batch = train[torch.multinomial(weights, 64, replacement=True, generator=generator)]
        x = images[batch]
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = torch.nn.functional.cross_entropy(model(x), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        predicted = model(images[test]).argmax(1)
    return model, balanced_accuracy(predicted, labels[test], classes)



def per_class_recall(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> list[float | None]:
    """For each class, the share of its items predicted as it (None where `labels` has none)."""
    return [(predicted[labels == c] == c).float().mean().item() if (labels == c).any() else None
            for c in range(classes)]



def balanced_accuracy(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """Mean over the classes present in `labels` of the share predicted correctly."""
    return float(np.mean([r for r in per_class_recall(predicted, labels, classes) if r is not None]))



def to_size(images: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, side, side) by area averaging when larger (a 64 px sample judged at 32 px)."""
    if images.shape[-1] == side:
        return images
    return torch.nn.functional.interpolate(images, size=(side, side), mode="area")



def checked_settings(dm, model: str, steps: int, scheduler: str, **sampling):
    """The run settings `dm` resolves for these options (its defaults where None), checked before any sampling: a
    bad value or autoguidance without a guide network exits with the model's name and the reason."""
    try:
        return dm._settings(0, steps, scheduler, **sampling)
    except ValueError as error:
        raise SystemExit(f"{model}: {error}") from None


def autoguidance_note(settings) -> str:
    """The report's words for a run's autoguidance (empty when off)."""
    scale = settings.autoguidance_scale
    return f", autoguidance {scale:g} against unet_guide/" if scale != 1.0 else ""


def emoji_sampler(model: str, steps: int | None, guidance: float | None, refine: int = 0,
                  choice_temperature: float | None = None, guidance_interval: tuple[float, float] | None = None,
                  autoguidance: float | None = None):
    """(model, sample, how it samples): `sample(seed, class_name, batch)` -> ((B, 3, H, W) in [-1, 1], PIL
    images) from a diffusion model (DDIM; guidance in `guidance_interval` of noise levels and autoguidance at
    `autoguidance`, default the model's own) or a token prior (MaskGIT, confidence order at `choice_temperature`,
    default the prior's own, then `refine` rounds)."""
    if is_token_prior(model):
        if guidance_interval is not None or autoguidance is not None:
            raise SystemExit("--guidance-interval and --autoguidance are for diffusion models; a token prior has "
                             "neither")
        prior = load_prior(model, device="cpu")
        steps = steps or PRIOR_STEPS
        choice = prior.default_choice_temperature if choice_temperature is None else choice_temperature

        def sample(seed: int, class_name: str, batch: int):
            run = prior.sample(seed=seed, steps=steps, order="confidence", batch=batch, class_label=class_name,
                               guidance_scale=guidance, refine=refine, choice_temperature=choice)
            return run.pixels, run.images

        rounds = f", then {refine} refine rounds" if refine else ""
        return prior, sample, f"{steps} MaskGIT steps (confidence order, choice temperature {choice:g}){rounds}"
    if refine or choice_temperature is not None:
        raise SystemExit("--refine and --choice-temperature are for token priors (MaskGIT's unmasking)")
    dm = load_diffusion(model, device="cpu")
    steps = steps or DIFFUSION_STEPS
    settings = checked_settings(dm, model, steps, "ddim", guidance_scale=guidance,
                                guidance_interval=guidance_interval, autoguidance_scale=autoguidance)

    def sample(seed: int, class_name: str, batch: int):
        run = dm.sample(seed=seed, steps=steps, scheduler="ddim", batch=batch, class_label=class_name,
                        guidance_scale=guidance, guidance_interval=guidance_interval,
                        autoguidance_scale=autoguidance, record=False)
        return run.final_pixels, run.images

    interval = settings.guidance_interval
    where = f" (guidance where {interval[0]:g} < sigma <= {interval[1]:g})" if interval else ""
    where += autoguidance_note(settings)
    return dm, sample, f"{steps} DDIM steps{where}"



def eval_emoji(model: str, data: Path, out: Path, per_class: int = 16, steps: int | None = None,
               guidance: float | None = None, refine: int = 0, choice_temperature: float | None = None,
               guidance_interval: tuple[float, float] | None = None, autoguidance: float | None = None) -> str:
    """Samples per category of a class-conditional diffusion model or token prior, judged against `data`.
    `steps` defaults to 50 DDIM steps (diffusion) or 12 MaskGIT steps (token prior)."""
    from ..train.common import ImageFolder

    generator, sample, how = emoji_sampler(model, steps, guidance, refine, choice_temperature, guidance_interval,
                                           autoguidance)
    classes = generator.classes
    real = ImageFolder(data)
    real_images = torch.stack([pil_to_tensor(Image.fromarray(a))[0] for a in real.images])
    real_labels = torch.as_tensor(real.labels_array)
    out.mkdir(parents=True, exist_ok=True)
    rows, samples, requested = [], [], []
    sixteen = None  # the first category's grid of 16, from its own row when that holds 16
    for index, name in enumerate(classes):
        pixels, images = sample(index, name, per_class)
        if index == 0 and per_class >= 16:
            sixteen = images[:16]
        sample_side = pixels.shape[-1]
        samples.append(to_size(pixels, real_images.shape[-1]))
        requested += [index] * per_class
        rows.append(image_grid(images, columns=per_class))
    grid = image_grid(rows, columns=1, gap=4)
    grid.save(out / "samples_per_category.png")
    if sixteen is None:
        _, sixteen = sample(0, classes[0], 16)
    image_grid(sixteen, columns=4).save(out / "sixteen_smileys.png")
    samples = torch.cat(samples)
    classifier, accuracy = train_classifier(real_images, real_labels, len(real.classes))
    with torch.no_grad():
        predicted = classifier(samples).argmax(1)
    requested = torch.as_tensor(requested)
    follows = (predicted == requested).float().mean().item()
    follows_each = per_class_recall(predicted, requested, len(classes))  # every class is requested
    s_light, s_colour, s_div = emoji_stats(samples)
    pick = torch.randperm(len(real_images), generator=torch.Generator().manual_seed(0))[: len(samples)]
    r_light, r_colour, r_div = emoji_stats(real_images[pick])
    table = ["| statistic | samples | real emoji |", "|---|---|---|",
             f"| border lightness (0-1) | {s_light:.3f} | {r_light:.3f} |",
             f"| centre minus border saturation | {s_colour:.3f} | {r_colour:.3f} |",
             f"| mean pairwise distance (RMS, 0-1) | {s_div:.3f} | {r_div:.3f} |",
             f"| classified as the requested category (chance: {1 / len(classes):.0%}) | **{follows:.1%}** | "
             f"classifier's balanced accuracy on held-out real emoji: {accuracy:.1%} |",
             "", "| category | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|",
             "| samples classified as it | " + " | ".join(f"{share:.0%}" for share in follows_each) + " |"]
    side = real_images.shape[-1]
    scaled = f", {sample_side} px samples area-averaged to {side} px" if sample_side != side else ""
    return "\n".join(table) + (f"\n\n{per_class} samples per category ({len(classes)} categories), {how}, "
                               f"guidance {guidance if guidance is not None else generator.default_guidance_scale}"
                               f"{scaled}; grids in `{out}/samples_per_category.png` (one row per category, in order: "
                               f"{', '.join(classes)}) and `{out}/sixteen_smileys.png`.")
