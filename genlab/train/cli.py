"""The command line of `python -m genlab.train`: its options, and how they become one checked config.

A run's settings are the config's defaults (`genlab.train.config`), overridden by the preset (`--preset`, or the
kind's default preset), overridden by the options given. Options are only ever refused by name: a value a config
rejects, an option of another kind that would otherwise be silently ignored, or a token prior's option of the
backbone it does not have.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import (BACKBONES, BETA_SCHEDULES, CONV_KERNEL_SCOPE, DEFAULT_PRESET, DROPOUT_SCOPE, LR_SCHEDULES,
                     MIXED_PRECISION, NEEDS_BACKGROUND_MARGIN, PRESETS, TRANSFORMER_PRIOR_OPTIONS, UNET_PRIOR_OPTIONS,
                     TrainConfig, VQConfig, build_config, option)

DESCRIPTION = ("GenLab's training CLI: VQ-VAE, VQGAN, DDPM, KL autoencoders, latent diffusion and token priors on any "
               "folder of images.")


def build_parser() -> argparse.ArgumentParser:
    """Every option of every kind; an option left out is absent from the parsed namespace (so a preset or the
    config's default fills it)."""
    parser = argparse.ArgumentParser(prog="python -m genlab.train", description=DESCRIPTION,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("kind", choices=sorted(DEFAULT_PRESET))
    _add_run_options(parser)
    _add_vq_options(parser)
    _add_prior_options(parser)
    _add_diffusion_options(parser)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Data, output, schedule, hardware and the network's blocks: what every kind takes."""
    add = parser.add_argument
    add("--data", type=Path, required=True, help="a folder of images (labels.json makes it labelled)")
    add("--out", type=Path, required=True, help="exported weights folder, e.g. weights/NAME")
    add("--run-dir", type=Path, help="checkpoints and sample grids (default runs/NAME)")
    add("--preset", choices=sorted(PRESETS))
    add("--steps", type=int, help="total optimizer steps (counting resumed ones)")
    add("--max-minutes", type=float, help="stop (and export) after this wall time")
    add("--batch-size", type=int)
    add("--crop", type=int, help="training crop side in pixels")
    add("--lr", type=float, help="(peak) learning rate (also applied on --resume)")
    add("--lr-schedule", choices=list(LR_SCHEDULES),
        help="diffusers' learning-rate schedule (cosine and linear decay to 0 at --steps; "
        "a VQGAN's discriminator keeps a constant rate)")
    add("--warmup-steps", type=int, help="linear warmup steps of --lr-schedule")
    add("--seed", type=int)
    add("--class-power", type=float,
        help="draw class c with probability ~ n_c ** this (1: as in the data, 0: classes equally)")
    add("--resume", action="store_true", help="continue from --run-dir/checkpoint")
    add("--init", type=Path, help="start from an exported weights folder")
    add("--save-every", type=int)
    add("--sample-every", type=int)
    add("--log-every", type=int)
    add("--threads", type=int, help="torch CPU threads")
    add("--cpu", action="store_true", help="train on CPU even when CUDA is available")
    add("--mixed-precision", choices=list(MIXED_PRECISION))
    # architecture
    add("--channels", help="block_out_channels, comma separated")
    add("--layers-per-block", type=int)
    add("--norm-groups", type=int,
        help="GroupNorm groups (default: most groups with >= 4 channels each); with --init, overrides its config")


def _add_vq_options(parser: argparse.ArgumentParser) -> None:
    """vqvae and vqgan: the codebook, the GAN, the reserved background code."""
    add = parser.add_argument
    add("--codes", type=int, help="codebook size K")
    add("--code-dim", type=int, help="code vector dimension (vq_embed_dim)")
    add("--beta", type=float, help="commitment weight")
    add("--codebook-decay", type=float)
    add("--dead-threshold", type=float, help="EMA uses per batch below which a code restarts")
    add("--l1-weight", type=float, help="add an L1 term to the L2 reconstruction loss")
    add("--disc-start", type=int, help="VQGAN: step at which the discriminator switches on")
    add("--disc-weight", type=float, help="VQGAN: scale of the adaptive GAN weight")
    add("--disc-channels", type=int)
    add("--disc-layers", type=int)
    add("--freeze-encoder", action="store_true", help="VQGAN: keep encoder and codebook of --init")
    add("--background-margin", type=int,
        help="VQ: reserve one code for plain white background: every token whose patch and neighbours "
        "within this many tokens are white takes it (genlab.autoencoders.vq.Background; off by default)")
    add("--background-tolerance", type=int,
        help="VQ: levels (of 255) below white that still count as white for --background-margin")
    add("--background-code", type=int,
        help="VQ: the reserved code (default: the commonest nearest code on background tokens of the "
        "data under the starting model)")
    # KL autoencoder (vae) and latent diffusion (ldm)
    add("--latent-channels", type=int, help="vae: channels of the latent z")
    add("--kl-weight", type=float, help="vae: weight of KL(q(z|x) || N(0, I)) in nats per pixel value")
    add("--vae", type=Path, help="ldm, sd: the trained AutoencoderKL folder (kept frozen)")
    # text to image: the CLIP (clip) and the text-conditional UNet (sd)
    add("--clip", type=Path, help="sd: the trained CLIP folder (genlab.train.clip) whose text encoder conditions the UNet")
    add("--colour-share", type=float,
        help="sd: share of each batch drawn colour-balanced: a colour at random, an image whose drawing shows it "
        "(genlab.imaging.colour) and one of its captions that names it (default 0: every image as --class-power draws)")
    add("--vocab-size", type=int, help="clip: the tokenizer's vocabulary (byte symbols, merges, specials)")
    add("--max-tokens", type=int, help="clip: the text encoder's positions (prompts are cut there)")
    add("--patch-size", type=int, help="clip: the image tower's patch side in pixels")
    add("--projection-dim", type=int, help="clip: the shared embedding dimension")
    add("--export-fp16", action="store_true",
        help="ldm, prior: store the exported networks in fp16 (ldm: unet/ and vae/, prior: "
        "transformer/; GenLab upcasts them on CPU)")


def _add_prior_options(parser: argparse.ArgumentParser) -> None:
    """prior: the tokenizer, the backbone, the masks and data moves, guidance distillation."""
    add = parser.add_argument
    add("--vq", type=Path, help="prior: the trained VQModel folder whose tokens it models (kept frozen)")
    add("--backbone", choices=list(BACKBONES),
        help="prior: the network that predicts the masked tokens: GenLab's MaskedTokenTransformer "
        "(--hidden-size, --num-layers, --num-heads) or MaskedTokenUNet, diffusers' UNet2DModel over "
        "the embedded token grid (--channels, --layers-per-block, --attention); default transformer")
    add("--hidden-size", type=int, help="prior, clip: transformer width")
    add("--num-layers", type=int, help="prior, clip: transformer blocks (clip: of each tower)")
    add("--num-heads", type=int, help="prior, clip: attention heads")
    add("--raster-share", type=float, help="prior: share of masks that hide every token from a raster position on")
    add("--shift-share", type=float,
        help="prior: share of training grids taken from the image moved by one token in one of 8 "
        "directions (white fill; default 0)")
    add("--weight-decay", type=float, help="AdamW weight decay (prior, clip)")
    add("--dropout", type=float,
        help="prior: dropout on the transformer's attention and MLP outputs (default 0); with "
        "--init or --resume, overrides the config it starts from")
    add("--conv-kernel", type=int,
        help="prior: a residual depthwise k x k convolution over the token grid after each block "
        "(odd k; 0: none, the default); with --init, grows it into the starting transformer "
        "(zero-initialised, so it starts as that transformer)")
    add("--distill-from", type=Path,
        help="prior: guidance-distil this trained prior folder (its network, a transformer or a UNet, "
        "is the frozen teacher and the student's start; its vqvae/ is the default --vq)")
    add("--guidance-max", type=float, help="prior with --distill-from: distil guidance scales w in [1, this]")


def _add_diffusion_options(parser: argparse.ArgumentParser) -> None:
    """ddpm and ldm (and the EMA and guidance every generative kind shares)."""
    add = parser.add_argument
    add("--attention", help="per down block, 1 = attention block (e.g. 0,0,1)")
    add("--sample-size", type=int)
    add("--beta-schedule", choices=list(BETA_SCHEDULES))
    add("--min-snr-gamma", type=float)
    add("--label-dropout", type=float, help="share of labels (sd: captions) dropped for classifier-free guidance")
    add("--t-focus-max", type=int, help="focus part of the timesteps on [0, this)")
    add("--t-focus-share", type=float, help="share of each batch drawn from the focus range")
    add("--guidance-scale", type=float,
        help="classifier-free guidance for the sample grids, exported as the model's default")
    add("--ema-decay", type=float, help="upper bound of the warmed-up EMA decay")
    add("--guide", type=Path,
        help="ddpm, ldm, sd: a trained UNet of the same task (a folder with config.json, or a weights folder with "
        "unet/), e.g. an earlier export of this run, shipped as the export's unet_guide/ for autoguidance "
        "(Karras et al. 2024)")
    add("--autoguidance-scale", type=float,
        help="with --guide: the exported model's default autoguidance scale (1: off, the default)")


def parse_args(argv=None) -> TrainConfig:
    """The checked config of the run `argv` asks for; a bad option exits with argparse's usage error."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    kind = given.pop("kind")
    preset = dict(PRESETS[given.pop("preset", None) or DEFAULT_PRESET[kind]])
    refuse_other_kinds_options(parser, kind, given)
    if kind == "prior":
        preset = prior_preset(parser, given, preset)
    try:
        return build_config(kind, {**preset, **given})
    except ValueError as error:
        parser.error(str(error))


def refuse_other_kinds_options(parser: argparse.ArgumentParser, kind: str, given: dict) -> None:
    """Options that only one kind has, given to another (where they would have no effect)."""
    if kind not in VQConfig.KINDS:
        tolerance = given.get("background_tolerance", VQConfig.background_tolerance)
        if "background_margin" not in given and ("background_code" in given or tolerance != 8):
            parser.error(NEEDS_BACKGROUND_MARGIN)
        if "background_margin" in given:
            parser.error("--background-margin is for vqvae and vqgan (the tokenizer)")
    if kind not in ("ddpm", "ldm", "sd") and (given.get("guide") is not None
                                             or given.get("autoguidance_scale") is not None):
        parser.error("--guide and --autoguidance-scale are for ddpm, ldm and sd (diffusion UNets)")
    if kind == "prior":
        return
    scopes = {"backbone": "--backbone is for prior", "distill_from": "--distill-from is for prior",
              "dropout": DROPOUT_SCOPE, "conv_kernel": CONV_KERNEL_SCOPE}
    for name, message in scopes.items():
        if name in given:
            parser.error(message)
    if given.get("shift_share"):
        parser.error("--shift-share is for prior (the tokens of moved images)")
    if kind != "sd" and given.get("colour_share") is not None:
        parser.error("--colour-share is for sd (captions that name a colour)")


def prior_preset(parser: argparse.ArgumentParser, given: dict, preset: dict) -> dict:
    """The preset of a prior run with its backbone resolved: `--backbone`, else the teacher's kind of network
    when distilling, else the preset's. Options of the other backbone are an error, not ignored; the backbone's
    layout comes from the preset when it has one, else from the backbone's own preset."""
    backbone = given.get("backbone") or preset.get("backbone", "transformer")
    teacher = given.get("distill_from")
    if teacher is not None:
        if not (teacher / "transformer").is_dir():
            parser.error(f"--distill-from {teacher}: not a prior folder (no transformer/)")
        taught = teacher_backbone(parser, teacher)
        if given.get("backbone") not in (None, taught):
            parser.error(f"--backbone {given['backbone']}: the prior in {teacher} has a {taught} backbone, "
                         "and its distilled copy has the same")
        backbone = taught
    wrong = TRANSFORMER_PRIOR_OPTIONS if backbone == "unet" else UNET_PRIOR_OPTIONS
    named = [option(key) for key in wrong if key in given]
    if named:
        parser.error(f"{', '.join(named)}: not an option of the prior's {backbone} backbone")
    own = PRESETS["emoji-prior-unet" if backbone == "unet" else "emoji-prior"]
    layout = {key: value for key, value in own.items() if key in UNET_PRIOR_OPTIONS + TRANSFORMER_PRIOR_OPTIONS}
    return {**layout, **{key: value for key, value in preset.items() if key not in wrong}, "backbone": backbone}


def teacher_backbone(parser: argparse.ArgumentParser, teacher: Path) -> str:
    """The backbone of the prior network in `teacher`/transformer: the student is the teacher's kind of network."""
    from ..loading.checkpoints import ModelLoadError
    from .prior import prior_backbones, saved_prior_backbone

    try:
        taught = saved_prior_backbone(teacher / "transformer")
    except ModelLoadError as error:
        parser.error(f"--distill-from {teacher}: {error}")
    if taught is None:
        parser.error(f"--distill-from {teacher}: transformer/ holds no token prior network "
                     f"({', '.join(cls.__name__ for cls in prior_backbones().values())})")
    return taught
