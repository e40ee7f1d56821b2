"""Evaluation command: measured quality of GenLab's models, printed as markdown tables.

    python -m genlab.eval vq      --model weights/vqvae-photo --data data/photos/holdout [--card]
    python -m genlab.eval denoise --model weights/ddpm-photo  --data data/photos/holdout [--card]
    python -m genlab.eval emoji   --model weights/ddpm-emoji  --data data/emoji/32 --out artifacts/emoji [--card]
    python -m genlab.eval vae     --model weights/ldm-emoji   --data data/emoji/64-holdout [--card --section vae]
    python -m genlab.eval emoji   --model weights/ldm-emoji   --data data/emoji/32 --out artifacts/ldm [--card --section emoji]
    python -m genlab.eval emoji   --model weights/maskgit-emoji --data data/emoji/32 --out weights/maskgit-emoji [--card --section emoji]
    python -m genlab.eval prior   --model weights/maskgit-emoji --data data/emoji/64-holdout [--limit N] [--unconditional] [--card --section prior]
    python -m genlab.eval prior   --model runs/prior-out --data data/emoji/64-holdout --limit 300 --positions 16
    python -m genlab.eval train-judge --data data/emoji --out weights/emoji-judge
    python -m genlab.eval calibrate-judge --judge weights/emoji-judge --data data/emoji --model weights/ldm-emoji [--card]
    python -m genlab.eval emoji   --judge weights/emoji-judge --model weights/ldm-emoji --data data/emoji --out artifacts/ldm
    python -m genlab.eval sd      --judge weights/emoji-judge --model weights/sd-emoji --data data/emoji [--guidance W] [--steps 25] [--card]

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
    With `--judge weights/emoji-judge` (and `--data data/emoji`, the root of 64-train/ and 64-holdout/) the
    samples, 54 per category, are scored by the stored 64 px judge instead (genlab.tools.judge_report): Fréchet
    distance, precision and recall (k = 3) against the real held-out emoji, category accuracy and per-category
    precision, beside the real-train floor and the blurred and noised controls.
train-judge: train the stored judge once (genlab.tools.judge); calibrate-judge: its calibration table.
prior: a token prior's code length on held-out images: bits per pixel of each image's tokens under the
    prior, -sum log2 p(x_i | x_<i) / pixels (`TokenPrior.code_length`: a class-conditional prior first
    names a class, or none, in log2(C + 1) bits), against log2 K / f^2 of storing every index as it is
    (bar: at most 60% of it), the labels named, and its VQ model's PSNR and code usage on the same
    images; `--unconditional` adds the unconditional chain rule alone. `--positions P` estimates the
    unconditional chain rule instead, at P seeded random raster positions per image (the same positions of the
    same images for every prior over one VQ): runs compare in minutes, where the code length takes most of an hour.
sd: a text-to-image model (Stable Diffusion layout) on emoji (genlab.tools.eval_sd): whether it follows held-out
    emoji names (the judge's category and subcategory accuracy, beside ldm-emoji's), colour words (a sample's
    colour against the one named, for colour-shape pairs emoji have and colour-object pairs none has), image quality
    (Fréchet distance, precision, recall against the real held-out emoji beside the real floors and ldm-emoji), and
    copying (each sample's nearest training image, beside the real held-out emoji's). 25 DPM-Solver++ steps;
    `--words` held-out names (480), `--per-class` quality samples per category (54), `--seeds` per colour prompt (4).
vae: a KL autoencoder (or a pipeline's vae/) on held-out images: PSNR and SSIM of the posterior-mean
    decode, PSNR of a posterior-sample decode, and the rate (KL bits per pixel).
`--card` writes the printed section into the model card's "Measured quality".
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..autoencoders.vq import perplexity
from ..imaging import metrics
from ..imaging.io import open_image
from ..loading.loaders import load_autoencoder, load_diffusion, load_vq
from ..sampling import MAX_REFINE, check_choice_temperature, check_guidance_interval
from .data import list_images
from .eval_emoji import eval_emoji
from .eval_prior import estimate_prior, eval_prior
from .eval_sd import check_sd_options, eval_sd
from .judge_cli import add_judge_options, check_judge_options, run_judge_command


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
    tiling = f" Applied in {vq.tile}x{vq.tile} windows (genlab.json `tile`, see genlab/imaging/tiling.py)." if vq.tile else ""
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


def guidance_interval_arg(text: str) -> tuple[float, float]:
    """argparse type of --guidance-interval: "LOW,HIGH" noise levels, 0 <= LOW < HIGH (HIGH may be inf)."""
    try:
        pair = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--guidance-interval must be LOW,HIGH, got {text!r}") from None
    try:
        return check_guidance_interval(pair, "--guidance-interval")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genlab.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["vq", "vae", "denoise", "emoji", "sd", "prior", "train-judge",
                                         "calibrate-judge"])
    parser.add_argument("--model", default=None, help="required except for train-judge and calibrate-judge")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="default: artifacts/eval (train-judge: weights/emoji-judge)")
    parser.add_argument("--sigmas", type=int, nargs="+", default=[15, 25, 50])
    parser.add_argument("--steps", type=int, default=None,
                        help="denoise: 1; emoji: 50 DDIM steps (diffusion) or 12 MaskGIT steps (token prior); "
                        "sd: 25 DPM-Solver++ steps")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--guidance-interval", type=guidance_interval_arg, default=None, metavar="LOW,HIGH",
                        help="emoji (diffusion) and sd: guide only at noise levels LOW < sigma <= HIGH "
                        "(Kynkäänniemi et al. 2024; HIGH may be inf; default: the model's genlab.json, else "
                        "every step)")
    parser.add_argument("--autoguidance", type=float, default=None, metavar="W_AG",
                        help="emoji (diffusion) and sd: autoguidance scale against the model's unet_guide/ (Karras "
                        "et al. 2024; 1: off; default: the model's genlab.json, else 1)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="emoji: samples per category (default 16; with a judge 54); sd: quality samples per "
                        "category (default 54)")
    parser.add_argument("--words", type=int, default=None, help="sd: held-out names sampled (default 480)")
    parser.add_argument("--seeds", type=int, default=None, help="sd: seeds per colour prompt (default 4)")
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
    add_judge_options(parser)
    parser.add_argument("--card", action="store_true", help="write the result into the model card")
    parser.add_argument("--section", default=None, help="with --card: write only this subsection of the card")
    args = parser.parse_args(argv)
    if args.kind != "sd" and (args.words is not None or args.seeds is not None):
        parser.error(f"--words and --seeds are for sd, not {args.kind}")
    (check_sd_options if args.kind == "sd" else check_judge_options)(parser, args)
    if args.kind in ("train-judge", "calibrate-judge"):
        print(run_judge_command(args))
        return
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if args.positions is not None and (args.kind != "prior" or args.unconditional or args.positions < 1):
        parser.error(f"--positions is for prior, without --unconditional, and at least 1 (got {args.positions})")
    if args.guidance_interval is not None and args.kind not in ("emoji", "sd"):
        parser.error(f"--guidance-interval is for emoji and sd, not {args.kind}")
    if args.autoguidance is not None and args.kind not in ("emoji", "sd"):
        parser.error(f"--autoguidance is for emoji and sd, not {args.kind}")
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
    elif args.kind == "sd":
        text = eval_sd(args.judge, args.data, args.model, args.out, steps=args.steps, guidance=args.guidance,
                       words=args.words, per_class=args.per_class, seeds=args.seeds,
                       guidance_interval=args.guidance_interval, autoguidance=args.autoguidance)
    elif args.kind == "prior" and args.positions:
        text = estimate_prior(args.model, args.data, args.limit, args.positions)
    elif args.kind == "prior":
        text = eval_prior(args.model, args.data, args.limit, args.unconditional)
    elif args.judge is not None:
        from .judge_report import judge_report

        sampling = {"steps": args.steps, "guidance": args.guidance, "refine": args.refine,
                    "choice_temperature": args.choice_temperature, "guidance_interval": args.guidance_interval,
                    "autoguidance": args.autoguidance}
        text = judge_report(args.judge, args.data, args.model, args.out, args.per_class, sampling)[0]
    else:
        text = eval_emoji(args.model, args.data, args.out, per_class=args.per_class, steps=args.steps,
                          guidance=args.guidance, refine=args.refine, choice_temperature=args.choice_temperature,
                          guidance_interval=args.guidance_interval, autoguidance=args.autoguidance)
    print(text)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.card:
        write_card_section(args.model, text, args.section)


if __name__ == "__main__":
    main()
