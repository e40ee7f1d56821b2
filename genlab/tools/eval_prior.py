"""`python -m genlab.eval prior`: a token prior's code length on held-out images.

Bits per pixel of each image's tokens under the prior, -sum log2 p(x_i | x_<i) / pixels (the chain rule in
raster order; a class-conditional prior first names a class, or none, in log2(C + 1) bits: a two-part code,
Grünwald 2007), against log2 K / f² of storing every index as it is.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ..autoencoders.vq import perplexity
from ..imaging.io import open_image, pil_to_tensor
from ..loading.loaders import load_prior
from ..priors.pipeline import PROBE_MASKS
from .data import list_images

PRIOR_BAR = 0.60  # a prior should code its tokens in at most 60% of log2 K / f^2
FLAT_RANGE = 8  # a patch is flat when all its pixel values (every channel) lie within this many levels (0-255)


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
