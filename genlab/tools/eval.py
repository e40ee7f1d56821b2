"""Evaluation command: measured quality of GenLab's models, printed as markdown tables.

    python -m genlab.eval vq      --model weights/vqvae-photo --data data/photos/holdout [--card]
    python -m genlab.eval denoise --model weights/ddpm-photo  --data data/photos/holdout [--card]
    python -m genlab.eval emoji   --model weights/ddpm-emoji  --data data/emoji/32 --out artifacts/emoji [--card]
    python -m genlab.eval vae     --model weights/ldm-emoji   --data data/emoji/64-holdout [--card --section vae]
    python -m genlab.eval emoji   --model weights/ldm-emoji   --data data/emoji/32 --out artifacts/ldm [--card --section emoji]
    python -m genlab.eval emoji   --model weights/maskgit-emoji --data data/emoji/32 --out weights/maskgit-emoji [--card --section emoji]
    python -m genlab.eval prior   --model weights/maskgit-emoji --data data/emoji/64-holdout [--limit N] [--unconditional] [--card --section prior]
    python -m genlab.eval prior   --model runs/prior-out --data data/emoji/64-holdout --limit 300 --positions 16

vq: PSNR / SSIM per image and mean, code usage and perplexity over the folder, JPEG PSNR at no
    more than the same bits per pixel, and sharpness = mean |grad recon|^2 / mean |grad original|^2
    (1.0 = as sharp as the input; a blurry reconstruction has less gradient energy).
denoise: PSNR at sigma = 15, 25, 50 (0-255 units, seeded Gaussian noise) for GenLab's one-step
    x0 estimate beside scikit-image's non-local means on the same noisy inputs.
emoji: a grid of samples per category; background lightness, centre colourfulness and sample
    diversity beside the same statistics of real emoji; and the share of samples that a small
    classifier trained on real emoji assigns to the requested category. Samples larger than the
    real emoji of `--data` (a 64 px latent model judged on 32 px emoji) are downsampled to their size
    (area average) before they are scored. A token-prior pipeline folder (model_index.json with
    transformer/ and an AmusedScheduler in scheduler/) is sampled by `TokenPrior.sample` in
    confidence order (MaskGIT), 12 steps unless `--steps` says otherwise (diffusion: 50 DDIM steps).
prior: a token prior's code length on held-out images: bits per pixel of each image's tokens under the
    prior, -sum log2 p(x_i | x_<i) / pixels (`TokenPrior.code_length`: a class-conditional prior first
    names a class, or none, in log2(C + 1) bits), against log2 K / f^2 of storing every index as it is
    (bar: at most 60% of it), the labels named, and its VQ model's PSNR and code usage on the same
    images; `--unconditional` adds the unconditional chain rule alone. `--positions P` estimates the
    unconditional chain rule instead, at P seeded random raster positions per image (the same positions of the
    same images for every prior over one VQ): runs compare in minutes, where the code length takes most of an hour.
vae: a KL autoencoder (or a pipeline's vae/) on held-out images: PSNR and SSIM of the posterior-mean
    decode, PSNR of a posterior-sample decode, and the rate (KL bits per pixel).
`--card` writes the printed section into the model card's "Measured quality".
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..imaging import metrics
from .data import list_images
from ..imaging.io import image_grid, open_image, pil_to_tensor
from ..loading.loaders import load_autoencoder, load_diffusion, load_prior, load_vq
from ..priors.pipeline import MAX_REFINE, PROBE_MASKS, check_choice_temperature
from ..autoencoders.vq import perplexity


DIFFUSION_STEPS, PRIOR_STEPS = 50, 12  # emoji samples: DDIM steps, MaskGIT steps
PRIOR_BAR = 0.60  # a prior should code its tokens in at most 60% of log2 K / f^2
FLAT_RANGE = 8  # a patch is flat when all its pixel values (every channel) lie within this many levels (0-255)


def is_token_prior(model) -> bool:
    """A local token-prior pipeline folder: model_index.json, transformer/ and an AmusedScheduler."""
    folder = Path(model)
    config = folder / "scheduler" / "scheduler_config.json"
    if not ((folder / "model_index.json").is_file() and (folder / "transformer").is_dir() and config.is_file()):
        return False
    return json.loads(config.read_text()).get("_class_name") == "AmusedScheduler"


def gradient_energy(image) -> float:
    array = np.asarray(image, dtype=np.float64).mean(axis=-1)
    return float((np.diff(array, axis=0) ** 2).mean() + (np.diff(array, axis=1) ** 2).mean())


def eval_vq(model: str, folder: Path) -> str:
    vq = load_vq(model, device="cpu")
    rows, usage = [], np.zeros(vq.num_codes, np.int64)
    for path in list_images(folder):
        image = open_image(path)
        result = vq.reconstruct(image, max_side=None)
        usage += np.bincount(result.indices.ravel(), minlength=vq.num_codes)
        jpeg = metrics.jpeg_at_bpp(image, result.bits_per_pixel)
        rows.append((path.stem, result.psnr, result.ssim, jpeg.psnr, jpeg.bits_per_pixel,
                     gradient_energy(result.image), gradient_energy(image)))
    table = ["| image | PSNR dB | SSIM | JPEG PSNR dB | JPEG bpp | sharpness |", "|---|---|---|---|---|---|"]
    table += [f"| {name} | {p:.2f} | {s:.4f} | {jp:.2f} | {jb:.3f} | {g / go:.3f} |" if go > 1.0 else
              f"| {name} | {p:.2f} | {s:.4f} | {jp:.2f} | {jb:.3f} | (flat) |" for name, p, s, jp, jb, g, go in rows]
    means = np.array([r[1:5] for r in rows]).mean(axis=0)
    sharpness = sum(r[5] for r in rows) / max(sum(r[6] for r in rows), 1e-9)  # pooled: flat images cannot dominate
    means = np.append(means, sharpness)
    active = int((usage > 0).sum())
    table.append(f"| **mean of {len(rows)}** | **{means[0]:.2f}** | **{means[1]:.4f}** | {means[2]:.2f} | "
                 f"{means[3]:.3f} | {means[4]:.3f} (pooled) |")
    tiling = f" Applied in {vq.tile}x{vq.tile} windows (genlab.json `tile`, see genlab/tiling.py)." if vq.tile else ""
    summary = (f"\n{vq.name}: {vq.num_codes} codes, f = {vq.downsample_factor}, "
               f"{np.log2(vq.num_codes) / vq.downsample_factor ** 2:.3f} bits per pixel. Codes used over the folder: "
               f"**{active} of {vq.num_codes} ({active / vq.num_codes:.1%})**, perplexity {perplexity(usage):.1f}. "
               f"Mean PSNR **{means[0]:.2f} dB**, SSIM {means[1]:.4f}; JPEG at no more than the same bpp: "
               f"{means[2]:.2f} dB. Sharpness (gradient energy of reconstruction / original): {means[4]:.3f}.{tiling}")
    return "\n".join(table) + "\n" + summary


def eval_autoencoder(model: str, folder: Path) -> str:
    """Held-out reconstruction of a KL autoencoder (VQ models: `eval_vq`)."""
    autoencoder = load_autoencoder(model, device="cpu")
    if autoencoder.kind != "kl":
        return eval_vq(model, folder)
    rows = []
    for path in list_images(folder):
        result = autoencoder.reconstruct(open_image(path), max_side=None, seed=0)
        rows.append((result.psnr, result.ssim, result.sample_psnr, result.bits_per_pixel))
    if not rows:
        raise SystemExit(f"no images under {folder}")
    values = np.array(rows)
    psnrs = values[:, 0]
    means = values.mean(axis=0)
    return "\n".join([
        "| statistic | value |", "|---|---|",
        f"| images | {len(rows)} |",
        f"| PSNR of the posterior-mean decode (dB) | **{means[0]:.2f}** (median {np.median(psnrs):.2f}, "
        f"10th percentile {np.percentile(psnrs, 10):.2f}) |",
        f"| SSIM | {means[1]:.4f} |",
        f"| PSNR of a posterior-sample decode (dB) | {means[2]:.2f} |",
        f"| rate: KL bits per pixel | {means[3]:.3f} |",
        f"| latent | {autoencoder.latent_channels} channels, f = {autoencoder.downsample_factor} |",
    ]) + f"\n\nHeld-out images: `{folder}`."


def eval_denoise(model: str, folder: Path, sigmas=(15, 25, 50), steps: int = 1) -> str:
    dm = load_diffusion(model, device="cpu")
    results = {s: {"noisy": [], "nlm": [], "genlab": []} for s in sigmas}
    paths = list_images(folder)
    for index, path in enumerate(paths):
        clean = np.asarray(open_image(path), dtype=np.float64) / 255.0
        for sigma in sigmas:
            rng = np.random.default_rng(1000 * index + sigma)
            noisy = clean + rng.normal(0, sigma / 255.0, clean.shape)  # unclipped Gaussian noise
            tensor = torch.from_numpy(noisy * 2 - 1).float().permute(2, 0, 1)[None]
            run = dm.denoise(tensor, sigma=sigma / 255.0, steps=steps, record=False)
            ours = (run.trajectory.final[0].permute(1, 2, 0).numpy() + 1) / 2
            scores = results[sigma]
            scores["noisy"].append(psnr_float(clean, noisy))
            scores["nlm"].append(psnr_float(clean, metrics.non_local_means(np.clip(noisy, 0, 1), sigma / 255.0)))
            scores["genlab"].append(psnr_float(clean, ours))
    table = ["| sigma (0-255) | noisy PSNR | non-local means | GenLab | GenLab - NLM |", "|---|---|---|---|---|"]
    for sigma in sigmas:
        n, m, g = (np.mean(results[sigma][k]) for k in ("noisy", "nlm", "genlab"))
        table.append(f"| {sigma} | {n:.2f} | {m:.2f} | **{g:.2f}** | **{g - m:+.2f} dB** |")
    return "\n".join(table) + (f"\n\nMean over {len(paths)} held-out photos; GenLab = {steps}-step reverse process "
                               f"(the x0 estimate at the matching timestep). Noise: seeded, unclipped Gaussian.")


def psnr_float(clean: np.ndarray, test: np.ndarray) -> float:
    mse = np.mean((clean - np.clip(test, 0, 1)) ** 2)
    return float(10 * np.log10(1.0 / mse))


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


def emoji_sampler(model: str, steps: int | None, guidance: float | None, refine: int = 0,
                  choice_temperature: float | None = None):
    """(model, sample, how it samples): `sample(seed, class_name, batch)` -> ((B, 3, H, W) in [-1, 1], PIL
    images) from a diffusion model (DDIM) or a token prior (MaskGIT, confidence order at `choice_temperature`,
    default the prior's own, then `refine` rounds)."""
    if is_token_prior(model):
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

    def sample(seed: int, class_name: str, batch: int):
        run = dm.sample(seed=seed, steps=steps, scheduler="ddim", batch=batch, class_label=class_name,
                        guidance_scale=guidance, record=False)
        return run.final_pixels, run.images

    return dm, sample, f"{steps} DDIM steps"


def eval_emoji(model: str, data: Path, out: Path, per_class: int = 16, steps: int | None = None,
               guidance: float | None = None, refine: int = 0, choice_temperature: float | None = None) -> str:
    """Samples per category of a class-conditional diffusion model or token prior, judged against `data`.
    `steps` defaults to 50 DDIM steps (diffusion) or 12 MaskGIT steps (token prior)."""
    from ..train.common import ImageFolder

    generator, sample, how = emoji_sampler(model, steps, guidance, refine, choice_temperature)
    classes = generator.classes
    real = ImageFolder(data)
    real_images = torch.stack([pil_to_tensor(Image.fromarray(a))[0] for a in real.images])
    real_labels = torch.as_tensor(real.labels_array)
    out.mkdir(parents=True, exist_ok=True)
    rows, samples, requested = [], [], []
    for index, name in enumerate(classes):
        pixels, images = sample(index, name, per_class)
        sample_side = pixels.shape[-1]
        samples.append(to_size(pixels, real_images.shape[-1]))
        requested += [index] * per_class
        rows.append(image_grid(images, columns=per_class))
    grid = image_grid(rows, columns=1, gap=4)
    grid.save(out / "samples_per_category.png")
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


# ------------------------------------------------------------------------------- prior
def held_out_subset(folder: Path, limit: int | None) -> list[Path]:
    """The images of `folder`, or `limit` of them drawn at random (seed 0), in name order (names sort
    by code point, so the first N would all be keycaps and symbols)."""
    paths = list_images(folder)
    if limit is not None and limit < len(paths):
        pick = np.random.default_rng(0).choice(len(paths), size=limit, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    return paths


def flat_patches(image: Image.Image, factor: int, value_range: int = FLAT_RANGE) -> np.ndarray:
    """(H/f, W/f) bool: the f x f patches of an RGB image whose pixel values all lie within `value_range`
    (a plain background, one flat colour): what a tokenizer could give one code whatever surrounds it."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)  # (H, W, 3)
    rows, cols = pixels.shape[0] // factor, pixels.shape[1] // factor
    patches = pixels[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor, 3).swapaxes(1, 2)
    patches = patches.reshape(rows, cols, -1)  # (h, w, f*f*3)
    return patches.max(axis=-1) - patches.min(axis=-1) <= value_range


def eval_prior(model: str, folder: Path, limit: int | None = None, unconditional: bool = False) -> str:
    """Code length of held-out images under a token prior (`TokenPrior.code_length`: a two-part code for a
    class-conditional prior), beside log2 K / f^2 and the prior's VQ model on the same images (PSNR, code
    usage); where the bits go (tokens of flat patches, `flat_patches`, against the rest: a tokenizer that gives a
    plain background many codes makes the prior pay for them); with `unconditional`, also the unconditional chain
    rule alone (twice the time)."""
    prior = load_prior(model, device="cpu")
    vq = prior.vq
    paths = held_out_subset(folder, limit)
    if not paths:
        raise SystemExit(f"no images under {folder}")
    bits, no_label, labels, psnrs, usage = [], [], [], [], np.zeros(vq.num_codes, np.int64)
    flat_bits, other_bits, flat_codes = [], [], set()  # token bits on flat patches and on the rest; codes of flat ones
    background_bits = []  # token bits where the VQ's background rule writes its code (genlab.autoencoders.vq.Background), if any
    for path in paths:
        image = prior.fit(open_image(path))  # the crop and size the prior codes
        code = prior.code_length(image)
        bits.append(code.bits_per_pixel)
        flat = flat_patches(image, vq.downsample_factor)  # (h, w)
        flat_bits.append(code.token_bits[flat])
        other_bits.append(code.token_bits[~flat])
        if code.label_bits:  # a two-part code: the label it named, and (asked) the chain rule without one
            labels.append(code.label)
            if unconditional:
                plain = code.token_bits if code.label == "no class" else prior.token_bits(image)
                no_label.append(plain.sum() / code.pixels)
        result = vq.reconstruct(image, max_side=None)  # result.indices: the tokens the code length coded
        flat_codes.update(result.indices[flat].tolist())
        if vq.background is not None:  # the tokens the rule wrote, not the few the encoder maps to the code itself
            written = vq.background.mask(pil_to_tensor(image), vq.downsample_factor)[0].numpy()  # (h, w) bool
            background_bits.append(code.token_bits[written])
        psnrs.append(result.psnr)
        usage += np.bincount(result.indices.ravel(), minlength=vq.num_codes)
    bits = np.array(bits)
    index_bpp = prior.index_bits_per_pixel
    ratio = bits.mean() / index_bpp
    active = int((usage > 0).sum())
    height, width = prior.image_size
    verdict = "meets" if ratio <= PRIOR_BAR else "misses"
    table = [
        "| statistic | value |", "|---|---|",
        f"| images | {len(paths)} ({width}x{height} px, {prior.grid[0]}x{prior.grid[1]} tokens) |",
        f"| bits per pixel under the prior | **{bits.mean():.3f}** (median {np.median(bits):.3f}, "
        f"90th percentile {np.percentile(bits, 90):.3f}) |",
        f"| log2 K / f² (each index stored as it is) | {index_bpp:.3f} (K = {prior.num_codes}, "
        f"f = {vq.downsample_factor}) |",
        f"| prior / log2 K / f² (bar: ≤ {PRIOR_BAR:.0%}) | **{ratio:.1%}** ({verdict} the bar) |",
    ]
    if labels:
        named = ", ".join(f"{label} {count}" for label, count in Counter(labels).most_common())
        table.append(f"| labels the two-part code named (log2 {len(prior.classes) + 1} bits each) | {named} |")
    if no_label:
        table.append(f"| unconditional chain rule alone (no label) | {np.mean(no_label):.3f} bits per pixel, "
                     f"{np.mean(no_label) / index_bpp:.1%} of log2 K / f² |")
    flat_bits, other_bits = np.concatenate(flat_bits), np.concatenate(other_bits)
    tokens, token_bits = flat_bits.size + other_bits.size, flat_bits.sum() + other_bits.sum()
    if flat_bits.size:
        table.append(f"| flat patches (one colour within {FLAT_RANGE} levels) | {flat_bits.size / tokens:.1%} of the "
                     f"tokens, {flat_bits.mean():.2f} bits each, {flat_bits.sum() / token_bits:.1%} of the token bits; "
                     f"{len(flat_codes)} distinct codes |")
    if other_bits.size:
        table.append(f"| other tokens | {other_bits.mean():.2f} bits each |")
    if background_bits:
        background = np.concatenate(background_bits)
        reserved = vq.background
        table.append(f"| the reserved background code ({reserved.code}: patches white within {reserved.margin} "
                     f"token{'s' * (reserved.margin != 1)}) | {background.size / tokens:.1%} of the tokens, "
                     f"{background.mean() if background.size else 0.0:.2f} bits each, "
                     f"{background.sum() / token_bits:.1%} of the token bits |")
    table += [
        f"| VQ PSNR on these images (dB) | {np.mean(psnrs):.2f} (median {np.median(psnrs):.2f}) |",
        f"| codes used on these images | {active} of {vq.num_codes} ({active / vq.num_codes:.1%}), "
        f"perplexity {perplexity(usage):.1f} |",
    ]
    chosen = f"{len(paths)} drawn at random (seed 0) from `{folder}`" if limit is not None else f"`{folder}`"
    how = ("a two-part code: a label (one of the classes, or none) in log2(C + 1) bits, chosen as the likeliest "
           f"under {PROBE_MASKS} seeded half-masks, then " if labels else "")
    return "\n".join(table) + (f"\n\nHeld-out images: {chosen}. Code length: {how}-sum log2 p(x_i | x_<i) over the "
                               "tokens in raster order (every later token masked), per pixel.")


def estimate_prior(model: str, folder: Path, limit: int | None, positions: int) -> str:
    """The unconditional chain rule's mean bits per token, estimated at `positions` random raster positions per
    image (`TokenPrior.sampled_token_bits`, image i's positions seeded by i), against log2 K."""
    prior = load_prior(model, device="cpu")
    paths = held_out_subset(folder, limit)
    if not paths:
        raise SystemExit(f"no images under {folder}")
    try:
        bits = np.concatenate([prior.sampled_token_bits(prior.fit(open_image(path)), positions, seed=index)
                               for index, path in enumerate(paths)])  # (images * positions,)
    except ValueError as error:  # more positions than tokens
        raise SystemExit(f"--positions: {error}") from None
    log2_k = math.log2(prior.num_codes)
    error = bits.std(ddof=1) / math.sqrt(bits.size) if bits.size > 1 else float("nan")
    return "\n".join([
        "| statistic | value |", "|---|---|",
        f"| images | {len(paths)}, {positions} random raster positions each (image i's seeded by i) |",
        f"| unconditional chain rule, estimated | {bits.mean():.3f} ± {error:.3f} bits per token (standard error) |",
        f"| estimate / log2 K (= bits per pixel / log2 K / f²) | **{bits.mean() / log2_k:.2%}** (K = {prior.num_codes}; "
        f"an estimate of the unconditional chain rule, not the two-part code of the bar) |",
    ])


def write_card_section(model: str, text: str, section: str | None = None) -> None:
    """Write `text` as the card's "Measured quality"; with `section`, as its "### section" only, keeping
    the other sections (a pipeline card measures its autoencoder and its samples apart)."""
    card = Path(model) / "README.md"
    if not card.exists():
        raise SystemExit(f"no model card at {card}")
    head, _, measured = card.read_text().partition("## Measured quality")
    command = "python -m genlab.eval " + " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--card")
    body = f"Measured on {time.strftime('%Y-%m-%d')} with `{command}`:\n\n{text}\n"
    if section is None:
        card.write_text(f"{head}## Measured quality\n{body}")
        return
    parts = {}
    for chunk in measured.split("\n### ")[1:]:
        name, _, content = chunk.partition("\n")
        parts[name.strip()] = content.strip() + "\n"
    parts[section] = body
    sections = "".join(f"\n### {name}\n{content}" for name, content in parts.items())
    card.write_text(f"{head}## Measured quality\n{sections}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genlab.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["vq", "vae", "denoise", "emoji", "prior"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("artifacts/eval"))
    parser.add_argument("--sigmas", type=int, nargs="+", default=[15, 25, 50])
    parser.add_argument("--steps", type=int, default=None,
                        help="denoise: 1; emoji: 50 DDIM steps (diffusion) or 12 MaskGIT steps (token prior)")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--per-class", type=int, default=16, help="emoji: samples per category")
    parser.add_argument("--refine", type=int, default=0, help="emoji, token prior: refine rounds after sampling (0-8)")
    parser.add_argument("--choice-temperature", type=float, default=None,
                        help="emoji, token prior: start of the confidence order's Gumbel noise (0-20; default: the "
                        "prior's own)")
    parser.add_argument("--limit", type=int, default=None, help="prior: this many images, drawn at random (seed 0)")
    parser.add_argument("--unconditional", action="store_true",
                        help="prior: also the unconditional chain rule alone (no class named; twice the time)")
    parser.add_argument("--positions", type=int, default=None,
                        help="prior: estimate the unconditional chain rule at this many random raster positions per "
                        "image instead of the full code length")
    parser.add_argument("--card", action="store_true", help="write the result into the model card")
    parser.add_argument("--section", default=None, help="with --card: write only this subsection of the card")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if args.positions is not None and (args.kind != "prior" or args.unconditional or args.positions < 1):
        parser.error(f"--positions is for prior, without --unconditional, and at least 1 (got {args.positions})")
    if args.refine and args.kind != "emoji":
        parser.error("--refine is for emoji (samples of a token prior)")
    if not 0 <= args.refine <= MAX_REFINE:
        parser.error(f"--refine must be in [0, {MAX_REFINE}], got {args.refine}")
    if args.choice_temperature is not None:
        if args.kind != "emoji":
            parser.error("--choice-temperature is for emoji (samples of a token prior)")
        try:
            check_choice_temperature(args.choice_temperature, "--choice-temperature")
        except ValueError as error:
            parser.error(str(error))
    torch.manual_seed(0)
    start = time.perf_counter()
    if args.kind == "vq":
        text = eval_vq(args.model, args.data)
    elif args.kind == "vae":
        text = eval_autoencoder(args.model, args.data)
    elif args.kind == "denoise":
        text = eval_denoise(args.model, args.data, tuple(args.sigmas), args.steps or 1)
    elif args.kind == "prior" and args.positions:
        text = estimate_prior(args.model, args.data, args.limit, args.positions)
    elif args.kind == "prior":
        text = eval_prior(args.model, args.data, args.limit, args.unconditional)
    else:
        text = eval_emoji(args.model, args.data, args.out, per_class=args.per_class, steps=args.steps,
                          guidance=args.guidance, refine=args.refine, choice_temperature=args.choice_temperature)
    print(text)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.card:
        write_card_section(args.model, text, args.section)


if __name__ == "__main__":
    main()
