"""GenLab's training CLI: VQ-VAE, VQGAN, DDPM, KL autoencoders, latent diffusion and token priors on any folder of images.

    python -m genlab.train vqvae --data data/photos/train --out weights/vqvae-photo
    python -m genlab.train vqgan --data data/photos/train --out weights/vqgan-photo --init weights/vqvae-photo
    python -m genlab.train ddpm  --data data/emoji/32     --out weights/ddpm-emoji --preset emoji
    python -m genlab.train ddpm  --data data/photos/train --out weights/ddpm-photo --preset photo-denoiser
    python -m genlab.train vae   --data data/emoji/64-train --out runs/emoji-vae --preset emoji-vae
    python -m genlab.train ldm   --data data/emoji/64-train --out weights/ldm-emoji --vae runs/emoji-vae
    python -m genlab.train vqgan --data data/emoji/64-train --out runs/emoji-vq --preset emoji-vq
    python -m genlab.train prior --data data/emoji/64-train --out weights/maskgit-emoji --vq runs/emoji-vq

Runs on CPU or CUDA (bf16 autocast on GPU) and across GPUs or nodes with `accelerate launch -m
genlab.train ...`. Checkpoints (safetensors + JSON, no pickle) go to `--run-dir`; `--resume`
continues from there, `--init` starts from an exported weights folder (e.g. committed weights).
Every `--save-every` steps and at the end, the model (EMA weights for diffusion and priors) is exported to
`--out` with `save_pretrained`, plus its scheduler config and a model card.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel, VQModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..diffusion.pipeline import make_scheduler, reverse_process
from . import common, ddpm, latent, vq
from . import prior as prior_training

PRESETS = {
    # small enough to train in hours on 2 CPU cores, and to reconstruct 256^2 in ~100 ms
    "vq-photo": dict(channels="16,32,64", layers_per_block=1, codes=1024, code_dim=4, crop=64, batch_size=16, lr=1e-3),
    # f = 4 VQGAN for 64 px emoji (64 -> 16 x 16 tokens of 1024 codes): the tokenizer of maskgit-emoji
    "emoji-vq": dict(channels="32,64,64", layers_per_block=1, codes=1024, code_dim=4, crop=64, batch_size=16,
                     lr=1e-3, lr_schedule="cosine", warmup_steps=200),
    "emoji": dict(channels="32,64,64", layers_per_block=1, attention="0,0,1", sample_size=32, crop=32, batch_size=32,
                  lr=1e-3, lr_schedule="cosine", warmup_steps=500, beta_schedule="squaredcos_cap_v2",
                  min_snr_gamma=5.0, label_dropout=0.1, class_power=0.5),
    "photo-denoiser": dict(channels="32,64,64", layers_per_block=1, attention="0,0,0", sample_size=64, crop=64,
                           batch_size=16, lr=1e-3, beta_schedule="linear", min_snr_gamma=0.0,
                           t_focus_max=200, t_focus_share=0.9, label_dropout=0.0),
    # f = 4 KL autoencoder for 64 px emoji (64 -> 16 x 16 x 4), and the class-conditional UNet on its latents
    "emoji-vae": dict(channels="32,64,64", layers_per_block=1, latent_channels=4, kl_weight=1e-4, crop=64,
                      batch_size=16, lr=1e-3, lr_schedule="cosine", warmup_steps=200),
    "emoji-ldm": dict(channels="64,128,128", layers_per_block=1, attention="0,0,1", crop=64, batch_size=32,
                      lr=1e-3, lr_schedule="cosine", warmup_steps=500, beta_schedule="squaredcos_cap_v2",
                      min_snr_gamma=5.0, label_dropout=0.1, class_power=0.5),
    # class-conditional masked-token transformer over emoji-vq's 16 x 16 tokens (maskgit-emoji)
    "emoji-prior": dict(hidden_size=128, num_layers=4, num_heads=4, batch_size=32, lr=1e-3, lr_schedule="cosine",
                        warmup_steps=300, label_dropout=0.1, class_power=0.5, raster_share=0.25, weight_decay=0.01),
    # the same task on a UNet (genlab.priors.unet, ldm-emoji's layout), images moved by a token half the time
    "emoji-prior-unet": dict(backbone="unet", channels="64,128,128", layers_per_block=1, attention="0,0,1",
                             batch_size=32, lr=1e-3, lr_schedule="cosine", warmup_steps=300, label_dropout=0.1,
                             class_power=0.5, raster_share=0.25, weight_decay=0.01, shift_share=0.5),
}
DEFAULT_PRESET = {"vqvae": "vq-photo", "vqgan": "vq-photo", "ddpm": "emoji", "vae": "emoji-vae", "ldm": "emoji-ldm",
                  "prior": "emoji-prior"}

# options a preset may leave out, and the value that switches each off
OFF = dict(kl_weight=0.0, min_snr_gamma=0.0, label_dropout=0.0, t_focus_max=0, t_focus_share=0.0, class_power=1.0,
           lr_schedule="constant", warmup_steps=0, raster_share=0.0, weight_decay=0.0, shift_share=0.0)
UNET_PRIOR_OPTIONS = ("channels", "layers_per_block", "attention")  # the rest are the transformer's
TRANSFORMER_PRIOR_OPTIONS = ("hidden_size", "num_layers", "num_heads", "dropout", "conv_kernel")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m genlab.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(DEFAULT_PRESET))
    parser.add_argument("--data", type=Path, required=True, help="a folder of images (labels.json makes it labelled)")
    parser.add_argument("--out", type=Path, required=True, help="exported weights folder, e.g. weights/NAME")
    parser.add_argument("--run-dir", type=Path, default=None, help="checkpoints and sample grids (default runs/NAME)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--steps", type=int, default=10_000, help="total optimizer steps (counting resumed ones)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (and export) after this wall time")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--crop", type=int, help="training crop side in pixels")
    parser.add_argument("--lr", type=float, help="(peak) learning rate (also applied on --resume)")
    parser.add_argument("--lr-schedule", choices=["constant", "constant_with_warmup", "linear", "cosine"],
                        help="diffusers' learning-rate schedule (cosine and linear decay to 0 at --steps; "
                        "a VQGAN's discriminator keeps a constant rate)")
    parser.add_argument("--warmup-steps", type=int, help="linear warmup steps of --lr-schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-power", type=float,
                        help="draw class c with probability ~ n_c ** this (1: as in the data, 0: classes equally)")
    parser.add_argument("--resume", action="store_true", help="continue from --run-dir/checkpoint")
    parser.add_argument("--init", type=Path, default=None, help="start from an exported weights folder")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even when CUDA is available")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None)
    # architecture
    parser.add_argument("--channels", help="block_out_channels, comma separated")
    parser.add_argument("--layers-per-block", type=int)
    parser.add_argument("--norm-groups", type=int, default=None,
                        help="GroupNorm groups (default: most groups with >= 4 channels each); with --init, overrides its config")
    # VQ
    parser.add_argument("--codes", type=int, help="codebook size K")
    parser.add_argument("--code-dim", type=int, help="code vector dimension (vq_embed_dim)")
    parser.add_argument("--beta", type=float, default=0.25, help="commitment weight")
    parser.add_argument("--codebook-decay", type=float, default=0.99)
    parser.add_argument("--dead-threshold", type=float, default=0.03, help="EMA uses per batch below which a code restarts")
    parser.add_argument("--l1-weight", type=float, default=0.0, help="add an L1 term to the L2 reconstruction loss")
    parser.add_argument("--disc-start", type=int, default=0, help="VQGAN: step at which the discriminator switches on")
    parser.add_argument("--disc-weight", type=float, default=0.1, help="VQGAN: scale of the adaptive GAN weight")
    parser.add_argument("--disc-channels", type=int, default=32)
    parser.add_argument("--disc-layers", type=int, default=3)
    parser.add_argument("--freeze-encoder", action="store_true", help="VQGAN: keep encoder and codebook of --init")
    parser.add_argument("--background-margin", type=int, default=None,
                        help="VQ: reserve one code for plain white background: every token whose patch and neighbours "
                        "within this many tokens are white takes it (genlab.autoencoders.vq.Background; off by default)")
    parser.add_argument("--background-tolerance", type=int, default=8,
                        help="VQ: levels (of 255) below white that still count as white for --background-margin")
    parser.add_argument("--background-code", type=int, default=None,
                        help="VQ: the reserved code (default: the commonest nearest code on background tokens of the "
                        "data under the starting model)")
    # KL autoencoder (vae) and latent diffusion (ldm)
    parser.add_argument("--latent-channels", type=int, help="vae: channels of the latent z")
    parser.add_argument("--kl-weight", type=float, help="vae: weight of KL(q(z|x) || N(0, I)) in nats per pixel value")
    parser.add_argument("--vae", type=Path, default=None, help="ldm: the trained AutoencoderKL folder (kept frozen)")
    parser.add_argument("--export-fp16", action="store_true",
                        help="ldm, prior: store the exported networks in fp16 (ldm: unet/ and vae/, prior: "
                        "transformer/; GenLab upcasts them on CPU)")
    # token prior
    parser.add_argument("--vq", type=Path, default=None, help="prior: the trained VQModel folder whose tokens it models (kept frozen)")
    parser.add_argument("--backbone", choices=["transformer", "unet"], default=None,
                        help="prior: the network that predicts the masked tokens: GenLab's MaskedTokenTransformer "
                        "(--hidden-size, --num-layers, --num-heads) or MaskedTokenUNet, diffusers' UNet2DModel over "
                        "the embedded token grid (--channels, --layers-per-block, --attention); default transformer")
    parser.add_argument("--hidden-size", type=int, help="prior: transformer width")
    parser.add_argument("--num-layers", type=int, help="prior: transformer blocks")
    parser.add_argument("--num-heads", type=int, help="prior: attention heads")
    parser.add_argument("--raster-share", type=float, help="prior: share of masks that hide every token from a raster position on")
    parser.add_argument("--shift-share", type=float, default=None,
                        help="prior: share of training grids taken from the image moved by one token in one of 8 "
                        "directions (white fill; default 0)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (prior)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="prior: dropout on the transformer's attention and MLP outputs (default 0); with "
                        "--init or --resume, overrides the config it starts from")
    parser.add_argument("--conv-kernel", type=int, default=None,
                        help="prior: a residual depthwise k x k convolution over the token grid after each block "
                        "(odd k; 0: none, the default); with --init, grows it into the starting transformer "
                        "(zero-initialised, so it starts as that transformer)")
    parser.add_argument("--distill-from", type=Path, default=None,
                        help="prior: guidance-distil this trained prior folder (its network, a transformer or a UNet, "
                        "is the frozen teacher and the student's start; its vqvae/ is the default --vq)")
    parser.add_argument("--guidance-max", type=float, default=8.0,
                        help="prior with --distill-from: distil guidance scales w in [1, this]")
    # diffusion
    parser.add_argument("--attention", help="per down block, 1 = attention block (e.g. 0,0,1)")
    parser.add_argument("--sample-size", type=int)
    parser.add_argument("--beta-schedule", choices=["linear", "scaled_linear", "squaredcos_cap_v2"])
    parser.add_argument("--min-snr-gamma", type=float)
    parser.add_argument("--label-dropout", type=float)
    parser.add_argument("--t-focus-max", type=int, help="focus part of the timesteps on [0, this)")
    parser.add_argument("--t-focus-share", type=float, help="share of each batch drawn from the focus range")
    parser.add_argument("--guidance-scale", type=float, default=3.0,
                        help="classifier-free guidance for the sample grids, exported as the model's default")
    parser.add_argument("--ema-decay", type=float, default=0.9999, help="upper bound of the warmed-up EMA decay")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset or DEFAULT_PRESET[args.kind]]
    if args.kind == "prior":  # options of the other backbone than the one asked for are an error, not ignored
        backbone = args.backbone or preset.get("backbone", "transformer")
        if args.distill_from is not None and (args.distill_from / "transformer").is_dir():
            from ..loading.loaders import ModelLoadError

            try:  # the student is the teacher's kind of network
                taught = saved_prior_backbone(args.distill_from / "transformer")
            except ModelLoadError as error:
                parser.error(f"--distill-from {args.distill_from}: {error}")
            if taught is None:
                parser.error(f"--distill-from {args.distill_from}: transformer/ holds no token prior network "
                             f"({', '.join(cls.__name__ for cls in prior_backbones().values())})")
            if args.backbone not in (None, taught):
                parser.error(f"--backbone {args.backbone}: the prior in {args.distill_from} has a {taught} backbone, "
                             "and its distilled copy has the same")
            backbone = taught
        wrong = TRANSFORMER_PRIOR_OPTIONS if backbone == "unet" else UNET_PRIOR_OPTIONS
        given = [f"--{key.replace('_', '-')}" for key in wrong if getattr(args, key) is not None]
        if given:
            parser.error(f"{', '.join(given)}: not an option of the prior's {backbone} backbone")
        # the backbone's layout from the preset when it has one, else from the backbone's own preset
        own = PRESETS["emoji-prior-unet" if backbone == "unet" else "emoji-prior"]
        layout = {key: value for key, value in own.items() if key in UNET_PRIOR_OPTIONS + TRANSFORMER_PRIOR_OPTIONS}
        preset = {**layout, **{key: value for key, value in preset.items() if key not in wrong}}
        args.backbone = backbone
    elif args.backbone is not None:
        parser.error("--backbone is for prior")
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key, off in OFF.items():
        if getattr(args, key, None) is None:
            setattr(args, key, off)
    args.channels = tuple(int(c) for c in str(args.channels).split(",")) if args.channels is not None else None
    if args.attention is not None:
        args.attention = tuple(bool(int(a)) for a in str(args.attention).split(","))
        if len(args.attention) != len(args.channels):
            parser.error(f"--attention has {len(args.attention)} entries but --channels has {len(args.channels)}")
    if args.kind == "prior" and args.backbone == "unet" and args.distill_from is None:  # a student copies its teacher
        from ..priors.unet import check_unet_layout  # the rule the UNet's config is checked by

        args.attention = args.attention or (False,) * len(args.channels)
        try:
            args.norm_groups = args.norm_groups or norm_groups(args.channels)
            check_unet_layout(args.channels, args.attention, args.norm_groups)
        except ValueError as error:  # before the tokens are encoded, not after
            parser.error(str(error))
    background_options = (args.background_code is not None or args.background_tolerance != 8)
    if args.background_margin is None and background_options:
        parser.error("--background-code and --background-tolerance need --background-margin")
    if args.background_margin is not None:
        if args.kind not in ("vqvae", "vqgan"):
            parser.error("--background-margin is for vqvae and vqgan (the tokenizer)")
        if args.background_margin < 0:
            parser.error(f"--background-margin must be >= 0 tokens, got {args.background_margin}")
        if not 0 <= args.background_tolerance < 255:
            parser.error(f"--background-tolerance must be in [0, 254] levels, got {args.background_tolerance}")
        if args.background_code is not None and not 0 <= args.background_code < (args.codes or 1 << 30):
            parser.error(f"--background-code must be in [0, codes), got {args.background_code}")
    if args.kind == "vqgan" and args.freeze_encoder and args.init is None:
        parser.error("--freeze-encoder needs --init (the encoder and codebook to keep)")
    if args.kind == "ldm" and args.vae is None and not args.resume:
        parser.error("ldm needs --vae: the trained AutoencoderKL whose latents it models")
    if args.distill_from is not None:
        if args.kind != "prior":
            parser.error("--distill-from is for prior")
        if not (args.distill_from / "transformer").is_dir():
            parser.error(f"--distill-from {args.distill_from}: not a prior folder (no transformer/)")
        if not args.guidance_max > 1:
            parser.error(f"--guidance-max must be above 1, got {args.guidance_max}")
        if args.init is not None:
            parser.error("--distill-from starts from the teacher's transformer: leave out --init")
        args.vq = args.vq or args.distill_from / "vqvae"
    if args.dropout is not None and (args.kind != "prior" or args.distill_from is not None):
        parser.error("--dropout is for prior (the masked-token transformer), not with --distill-from")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.conv_kernel is not None:
        if args.kind != "prior" or args.distill_from is not None or args.resume:
            parser.error("--conv-kernel is for a new prior or one grown from --init (not with --distill-from or "
                         "--resume: those keep their transformer's layout)")
        from ..priors.transformer import check_conv_kernel  # the rule the transformer's config is checked by

        try:
            check_conv_kernel(args.conv_kernel)
        except ValueError as error:  # before the tokens are encoded, not after
            parser.error(f"--{error}".replace("conv_kernel", "conv-kernel", 1))
    if args.shift_share and args.kind != "prior":
        parser.error("--shift-share is for prior (the tokens of moved images)")
    if not 0 <= args.shift_share <= 1:
        parser.error(f"--shift-share must be in [0, 1], got {args.shift_share}")
    if args.kind == "prior" and args.vq is None and not args.resume:
        parser.error("prior needs --vq: the trained VQModel whose tokens it models")
    args.run_dir = args.run_dir or Path("runs") / args.out.name
    return args


def norm_groups(channels) -> int:
    """The most GroupNorm groups (<= 32) that divide every width while keeping >= 4 channels per group.

    One channel per group is InstanceNorm: it removes each channel's mean over the image, i.e. the
    absolute colour a small network needs to carry (seen as colour shifts with 16 groups of 16).
    """
    return max(g for g in range(1, 33) if all(c % g == 0 for c in channels) and min(channels) // g >= 4)


def lr_text(args) -> str:
    """The learning-rate schedule in words, for model cards."""
    if args.lr_schedule == "constant":
        return f"learning rate {args.lr:g} (constant)"
    warmup = f", {args.warmup_steps} warmup steps" if args.warmup_steps else ""
    return f"learning rate {args.lr:g} ({args.lr_schedule}{warmup} over {args.steps} steps)"


def init_overrides(args) -> dict:
    """Config overrides applied when starting from --init (e.g. a corrected norm_num_groups)."""
    return {"norm_num_groups": args.norm_groups} if args.norm_groups else {}


# ------------------------------------------------------------------------------------ VQ
def build_vq(args) -> VQModel:
    count = len(args.channels)
    return VQModel(
        down_block_types=("DownEncoderBlock2D",) * count, up_block_types=("UpDecoderBlock2D",) * count,
        block_out_channels=args.channels, layers_per_block=args.layers_per_block, latent_channels=args.code_dim,
        vq_embed_dim=args.code_dim, num_vq_embeddings=args.codes,
        norm_num_groups=args.norm_groups or norm_groups(args.channels),
        mid_block_add_attention=False, sample_size=args.crop,
    )


def train_vq(args, accelerator: Accelerator, data: common.ImageFolder, state: common.RunState) -> None:
    model = VQModel.from_pretrained(args.init, **init_overrides(args)) if args.init else build_vq(args)
    checkpoint = args.run_dir / "checkpoint"
    if args.resume and (checkpoint / "model").exists():
        model = VQModel.from_pretrained(checkpoint / "model")
    background = vq_background(args, model, data, checkpoint)
    trainer = vq.VQAutoencoderForTraining(model, args.codebook_decay, args.dead_threshold, background)
    if args.init or (args.resume and (checkpoint / "model").exists()):
        trainer.quantizer.initialized.fill_(True)
        trainer.quantizer.embed_sum.copy_(model.quantize.embedding.weight.detach())
    if args.freeze_encoder:
        for module in (model.encoder, model.quant_conv):
            module.requires_grad_(False)
    params = [p for p in trainer.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.9) if args.kind == "vqgan" else (0.9, 0.99))
    discriminator = disc_optimizer = None
    if args.kind == "vqgan":
        discriminator = vq.PatchDiscriminator(args.disc_channels, args.disc_layers)
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.9))
    if args.resume and (checkpoint / "model").exists():
        common.load_optimizer(optimizer, checkpoint)
        common.load_modules({"quantizer": trainer.quantizer}, checkpoint)
        if discriminator is not None and (checkpoint / "discriminator.safetensors").exists():
            common.load_modules({"discriminator": discriminator}, checkpoint)
            common.load_optimizer(disc_optimizer, checkpoint / "disc")
    schedule = common.lr_scheduler(optimizer, args.lr_schedule, args.lr, args.warmup_steps, args.steps, state.step)
    trainer, optimizer = accelerator.prepare(trainer, optimizer)
    if discriminator is not None:
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    unwrapped = accelerator.unwrap_model(trainer)
    if args.freeze_encoder:
        unwrapped.quantizer.eval()  # no EMA codebook updates: tokens stay those of --init
    last_layer = unwrapped.vq.decoder.conv_out.weight
    batches = iter(common.RandomCrops(data, args.crop, args.batch_size, args.seed + state.step + accelerator.process_index))
    fixed, _ = next(iter(common.RandomCrops(data, args.crop, 8, seed=1234)))
    timer = common.Timer(state.wall_seconds)
    usage = torch.zeros(args.codes, device=accelerator.device)
    progress = tqdm(total=args.steps, initial=state.step, disable=not accelerator.is_main_process, desc=args.kind)

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            checkpoint.mkdir(parents=True, exist_ok=True)
            unwrapped.vq.save_pretrained(checkpoint / "model")
            common.save_optimizer(optimizer, checkpoint)
            common.save_modules({"quantizer": unwrapped.quantizer}, checkpoint)
            if discriminator is not None:
                common.save_modules({"discriminator": accelerator.unwrap_model(discriminator)}, checkpoint)
                (checkpoint / "disc").mkdir(exist_ok=True)
                common.save_optimizer(disc_optimizer, checkpoint / "disc")
            state.save(checkpoint)
            if background is not None:
                (checkpoint / "background.json").write_text(json.dumps(background.as_info()))
            export_vq(args, unwrapped.vq, state, fixed, background)

    while state.step < args.steps and (args.max_minutes is None or timer.total - timer.already < args.max_minutes * 60):
        pixels, _ = next(batches)
        pixels = pixels.to(accelerator.device)
        trainer.train()
        if args.freeze_encoder:
            unwrapped.quantizer.eval()
        with accelerator.autocast():
            reconstruction, indices, commitment = trainer(pixels)
            rec_loss = torch.nn.functional.mse_loss(reconstruction.float(), pixels)
            if args.l1_weight:
                rec_loss = rec_loss + args.l1_weight * (reconstruction.float() - pixels).abs().mean()
            loss = rec_loss + args.beta * commitment
            logs = {"rec": rec_loss.item(), "commit": commitment.item()}
            use_gan = discriminator is not None and state.step >= args.disc_start
            if use_gan:
                gan_loss = -discriminator(reconstruction).mean()
                weight = vq.adaptive_weight(rec_loss, gan_loss, last_layer) * args.disc_weight
                loss = loss + weight * gan_loss
                logs.update(gan=gan_loss.item(), w=weight.item())
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        if use_gan:
            with accelerator.autocast():
                d_loss = vq.hinge_d_loss(discriminator(pixels), discriminator(reconstruction.detach()))
            disc_optimizer.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            disc_optimizer.step()
            logs["disc"] = d_loss.item()
        usage += torch.bincount(indices.flatten(), minlength=args.codes)
        state.step += 1
        progress.update(1)
        if state.step % args.log_every == 0:
            with torch.no_grad():
                psnr = (-10 * torch.log10(((reconstruction.float().clamp(-1, 1) - pixels) / 2).pow(2).mean())).item()
            logs.update(psnr=psnr, used=f"{int((usage > 0).sum())}/{args.codes}",
                        ppl=vq.perplexity(indices, args.codes))
            progress.set_postfix({k: (round(v, 4) if isinstance(v, float) else v) for k, v in logs.items()})
            usage.zero_()
        if state.step % args.save_every == 0:
            save()
        if state.step % args.sample_every == 0 and accelerator.is_main_process:
            save_vq_samples(unwrapped.vq, fixed, args.run_dir / "samples" / f"{state.step:06d}.png")
    save()
    progress.close()


@torch.no_grad()
def save_vq_samples(model: VQModel, pixels: torch.Tensor, path: Path) -> None:
    model.eval()
    reconstruction = model(pixels.to(model.device)).sample.clamp(-1, 1).cpu()
    model.train()
    common.save_grid(torch.cat([pixels, reconstruction]), path, columns=len(pixels))


def vq_background(args, model: VQModel, data: common.ImageFolder, checkpoint: Path):
    """The `genlab.autoencoders.vq.Background` of --background-margin (None without it): the code of a resumed run, else
    --background-code, else the commonest nearest code on the background tokens of 256 training crops."""
    from ..autoencoders.vq import VQ, Background

    if args.background_margin is None:
        return None
    num_codes = model.config.num_vq_embeddings
    if args.resume and (checkpoint / "background.json").is_file():
        return Background.from_info(json.loads((checkpoint / "background.json").read_text()), num_codes)
    options = {"margin": args.background_margin, "tolerance": args.background_tolerance}
    if args.background_code is not None:
        if args.background_code >= num_codes:
            raise SystemExit(f"--background-code {args.background_code}: the model has {num_codes} codes")
        return Background(code=args.background_code, **options)
    probe, nearest = Background(code=0, **options), VQ(model)  # nearest: the encoder's own codes, no override
    counts = torch.zeros(num_codes, dtype=torch.long)
    crops = iter(common.RandomCrops(data, args.crop, 64, seed=4321))
    for _ in range(4):
        pixels = next(crops)[0].to(model.device)  # (64, 3, crop, crop)
        indices = nearest.encode(pixels)  # (64, h, w)
        quiet = probe.mask(pixels, nearest.downsample_factor).to(indices.device)  # (64, h, w)
        counts += torch.bincount(indices[quiet].cpu(), minlength=num_codes)
    if counts.sum() == 0:
        raise SystemExit(f"--background-margin {args.background_margin}: no token of {args.data} has a white "
                         f"neighbourhood that wide (within {args.background_tolerance} levels); pass --background-code "
                         "or a smaller margin")
    return Background(code=int(counts.argmax()), **options)


def export_vq(args, model: VQModel, state: common.RunState, fixed: torch.Tensor, background=None) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    info = {"kind": "vq", "title": args.out.name, "tile": args.crop}  # tile: see genlab.imaging.tiling
    if background is not None:
        info["background"] = background.as_info()  # genlab.autoencoders.vq.Background: VQ.encode applies it
    (args.out / "genlab.json").write_text(json.dumps(info, indent=1))
    state.save(args.out)
    save_vq_samples(model, fixed, args.out / "samples.png")
    kind = "VQGAN" if args.kind == "vqgan" else "VQ-VAE"
    factor = 2 ** (len(model.config.block_out_channels) - 1)
    common.write_model_card(
        args.out, f"GenLab {args.out.name}",
        f"A {kind} (diffusers `VQModel`, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters): "
        f"downsampling {factor}, {model.config.num_vq_embeddings} codes of dimension {model.config.vq_embed_dim}, "
        f"{math.log2(model.config.num_vq_embeddings) / factor ** 2:.3f} bits per pixel. Losses: L2 reconstruction, "
        f"commitment (beta {args.beta}), EMA codebook with dead-code restarts"
        + (f", PatchGAN hinge loss with the adaptive weight (scale {args.disc_weight}); no perceptual (LPIPS) term, "
           "since no pretrained network can be downloaded here" if args.kind == "vqgan" else "") + "."
        + (f" Code {background.code} is reserved for plain background (`genlab.autoencoders.vq.Background`, genlab.json): every "
           f"token whose {factor}x{factor} patch and neighbours within {background.margin} tokens are white (within "
           f"{background.tolerance} levels) takes it, in training and in `VQ.encode`." if background else ""),
        f"`{args.data}`, random {args.crop}x{args.crop} crops, batch {args.batch_size}, {lr_text(args)}.",
        state, "`samples.png`: top row training crops, bottom row their reconstructions.\n\n",
    )


# ------------------------------------------------------------------------- KL autoencoder
def build_vae(args) -> AutoencoderKL:
    count = len(args.channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * count, up_block_types=("UpDecoderBlock2D",) * count,
        block_out_channels=args.channels, layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels or 4, norm_num_groups=args.norm_groups or norm_groups(args.channels),
        mid_block_add_attention=False, sample_size=args.crop, scaling_factor=1.0,
    )


def train_vae(args, accelerator: Accelerator, data: common.ImageFolder, state: common.RunState) -> None:
    checkpoint = args.run_dir / "checkpoint"
    resuming = args.resume and (checkpoint / "model").exists()
    if resuming:
        model = AutoencoderKL.from_pretrained(checkpoint / "model")
    elif args.init:
        model = AutoencoderKL.from_pretrained(args.init, **init_overrides(args))
    else:
        model = build_vae(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    if resuming:
        common.load_optimizer(optimizer, checkpoint)
    schedule = common.lr_scheduler(optimizer, args.lr_schedule, args.lr, args.warmup_steps, args.steps, state.step)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    batches = iter(common.RandomCrops(data, args.crop, args.batch_size, args.seed + state.step + accelerator.process_index))
    fixed, _ = next(iter(common.RandomCrops(data, args.crop, 8, seed=1234)))
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed + state.step)
    timer = common.Timer(state.wall_seconds)
    progress = tqdm(total=args.steps, initial=state.step, disable=not accelerator.is_main_process, desc="vae")

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            checkpoint.mkdir(parents=True, exist_ok=True)
            unwrapped.save_pretrained(checkpoint / "model")
            common.save_optimizer(optimizer, checkpoint)
            state.save(checkpoint)
            export_vae(args, unwrapped, data, state, fixed)
            unwrapped.train()

    while state.step < args.steps and (args.max_minutes is None or timer.total - timer.already < args.max_minutes * 60):
        pixels, _ = next(batches)
        pixels = pixels.to(accelerator.device)
        model.train()
        with accelerator.autocast():
            loss, reconstruction, logs = latent.vae_loss(unwrapped, pixels, args.kl_weight, args.l1_weight, generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        state.step += 1
        progress.update(1)
        if state.step % args.log_every == 0:
            with torch.no_grad():
                psnr = (-10 * torch.log10(((reconstruction.clamp(-1, 1) - pixels) / 2).pow(2).mean())).item()
            progress.set_postfix({**{k: round(v, 5) for k, v in logs.items()}, "psnr": round(psnr, 2),
                                  "lr": f"{schedule.get_last_lr()[0]:.2e}"})
        if state.step % args.save_every == 0:
            save()
        if state.step % args.sample_every == 0 and accelerator.is_main_process:
            save_vae_samples(unwrapped, fixed, args.run_dir / "samples" / f"{state.step:06d}.png")
    save()
    progress.close()


@torch.no_grad()
def save_vae_samples(model: AutoencoderKL, pixels: torch.Tensor, path: Path) -> None:
    """Top row: inputs; bottom row: decodes of the posterior mean."""
    model.eval()
    reconstruction = model.decode(model.encode(pixels.to(model.device)).latent_dist.mode()).sample.float().clamp(-1, 1)
    model.train()
    common.save_grid(torch.cat([pixels, reconstruction.cpu()]), path, columns=len(pixels))


def export_vae(args, model: AutoencoderKL, data: common.ImageFolder, state: common.RunState, fixed: torch.Tensor) -> None:
    """save_pretrained with `scaling_factor` = 1 / std of the posterior samples over the training data."""
    statistics = latent.latent_statistics(model, data)
    model.register_to_config(scaling_factor=1.0 / statistics["std"])
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    (args.out / "genlab.json").write_text(json.dumps({"kind": "autoencoder", "title": args.out.name,
                                                      "latent_statistics": statistics}, indent=1))
    state.save(args.out)
    save_vae_samples(model, fixed, args.out / "samples.png")
    factor = 2 ** (len(model.config.block_out_channels) - 1)
    common.write_model_card(
        args.out, f"GenLab {args.out.name}",
        f"A KL autoencoder (diffusers `AutoencoderKL`, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"parameters): downsampling {factor}, {model.config.latent_channels} latent channels, so a "
        f"{args.crop}x{args.crop} image becomes a {model.config.latent_channels}x{args.crop // factor}x{args.crop // factor} "
        f"latent. Losses: L2 reconstruction{f' + {args.l1_weight:g} L1' if args.l1_weight else ''} and KL weight "
        f"{args.kl_weight:g} (nats per pixel value), no adversarial or perceptual term. `scaling_factor` "
        f"{model.config.scaling_factor:.4f} = 1 / std of the posterior samples over the training images.",
        f"`{args.data}`, random {args.crop}x{args.crop} crops, batch {args.batch_size}, {lr_text(args)}.",
        state, "`samples.png`: top row training images, bottom row decodes of their posterior means.\n\n",
    )


# ---------------------------------------------------------------------------------- DDPM
def build_unet(args, num_classes: int, in_channels: int = 3, sample_size: int | None = None) -> UNet2DModel:
    attention = args.attention or (False,) * len(args.channels)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(
        sample_size=sample_size or args.sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=args.channels, layers_per_block=args.layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=args.norm_groups or norm_groups(args.channels),
        add_attention=any(attention), attention_head_dim=32,
        num_class_embeds=num_classes + 1 if num_classes else None,  # the last class is "no label" (CFG)
    )


def build_scheduler(args) -> DDPMScheduler:
    """Pixels are clipped to [-1, 1] on the way; latents are unbounded, so latent models never clip."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=args.beta_schedule, prediction_type="epsilon",
                              clip_sample=True, timestep_spacing="trailing")
    return latent_sampling(scheduler) if args.kind == "ldm" else scheduler


def latent_sampling(scheduler: DDPMScheduler) -> DDPMScheduler:
    """The sampling settings of a latent model's scheduler: no clipping to [-1, 1], and "leading" timesteps
    (50 DDIM steps: 980, 960, ..., 0). The cosine schedule caps its last beta at 0.999, so abar_999 is
    2.4e-9: an eps model's x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar) there magnifies its error
    20,000-fold, which pixel models survive by clipping x0_hat to [-1, 1] and latent models do not
    (their samples at 4k steps: colour blobs from t = 999, faces from t = 980). Training is unaffected."""
    scheduler.register_to_config(clip_sample=False, timestep_spacing="leading", steps_offset=0)
    return scheduler


def train_ddpm(args, accelerator: Accelerator, data: common.ImageFolder, state: common.RunState) -> None:
    """DDPM on pixels (kind ddpm) or on a frozen KL autoencoder's scaled latents (kind ldm): one loop."""
    classes = data.classes if args.label_dropout > 0 and data.classes else []
    null_class = len(classes) if classes else None
    checkpoint = args.run_dir / "checkpoint"
    resuming = args.resume and (checkpoint / "model").exists()
    vae = None
    if args.kind == "ldm":
        args.vae = checkpoint / "vae" if resuming else args.vae
        vae = AutoencoderKL.from_pretrained(args.vae).to(accelerator.device)
        vae.requires_grad_(False)
    init = args.init / "unet" if args.init and (args.init / "unet").is_dir() else args.init  # a pipeline folder
    if resuming:
        unet, ema_start = UNet2DModel.from_pretrained(checkpoint / "model"), UNet2DModel.from_pretrained(checkpoint / "ema")
    elif args.init:
        unet = UNet2DModel.from_pretrained(init, **init_overrides(args))
        ema_start = UNet2DModel.from_pretrained(init, **init_overrides(args))
    elif vae is not None:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        unet = build_unet(args, len(classes), vae.config.latent_channels, args.crop // factor)
        ema_start = None
    else:
        unet = build_unet(args, len(classes))
        ema_start = None
    scheduler_folder = args.init / "scheduler" if args.init and (args.init / "scheduler").is_dir() else args.init
    scheduler = DDPMScheduler.from_pretrained(scheduler_folder) if args.init and not resuming else build_scheduler(args)
    if resuming:
        scheduler = DDPMScheduler.from_pretrained(checkpoint / "model")
    if vae is not None:
        scheduler = latent_sampling(scheduler)
    ema = EMAModel((ema_start or unet).parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3,
                   model_cls=UNet2DModel, model_config=unet.config)
    ema.optimization_step = state.step
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    if resuming:
        common.load_optimizer(optimizer, checkpoint)
    schedule = common.lr_scheduler(optimizer, args.lr_schedule, args.lr, args.warmup_steps, args.steps, state.step)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    ema.to(accelerator.device)
    class_power = args.class_power if classes else 1.0
    seed = args.seed + state.step + accelerator.process_index
    latent_range = None
    if vae is not None:  # x_0 is the scaled latent of an image, drawn from the autoencoder's posterior
        bank = latent.LatentBank(vae, data, args.batch_size, seed, class_power=class_power)
        latent_range = round(bank.value_range(), 2)
        batches = iter(bank)
    else:
        batches = iter(common.RandomCrops(data, args.crop, args.batch_size, seed, class_power=class_power))
    generator = torch.Generator().manual_seed(args.seed + state.step)
    timer = common.Timer(state.wall_seconds)
    progress = tqdm(total=args.steps, initial=state.step, disable=not accelerator.is_main_process, desc="ddpm")
    running = None

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            checkpoint.mkdir(parents=True, exist_ok=True)
            model = accelerator.unwrap_model(unet)
            model.save_pretrained(checkpoint / "model")
            scheduler.save_pretrained(checkpoint / "model")
            ema_model = UNet2DModel.from_config(model.config)
            ema.copy_to(ema_model.parameters())
            ema_model.save_pretrained(checkpoint / "ema")
            if vae is not None:
                latent.save_autoencoder(vae, args.vae, checkpoint / "vae")
            common.save_optimizer(optimizer, checkpoint)
            state.save(checkpoint)
            export_ddpm(args, ema_model, scheduler, classes, state, vae, latent_range)

    while state.step < args.steps and (args.max_minutes is None or timer.total - timer.already < args.max_minutes * 60):
        clean, labels = next(batches)
        clean = clean.to(accelerator.device)
        timesteps = ddpm.sample_timesteps(len(clean), scheduler.config.num_train_timesteps, args.t_focus_max,
                                          args.t_focus_share, generator).to(accelerator.device)
        class_labels = None
        if classes:
            class_labels = ddpm.drop_labels(labels, null_class, args.label_dropout, generator).to(accelerator.device)
        with accelerator.autocast():
            loss = ddpm.diffusion_loss(unet, scheduler, clean, timesteps, class_labels, args.min_snr_gamma)
        running = common.ema_step(accelerator, unet, loss, optimizer, schedule, ema, state, running)
        progress.update(1)
        if state.step % args.log_every == 0:
            progress.set_postfix(loss=round(running, 4), lr=f"{schedule.get_last_lr()[0]:.2e}",
                                 ema_decay=round(ema.cur_decay_value or 0.0, 5))
        if state.step % args.save_every == 0:
            save()
        if state.step % args.sample_every == 0 and accelerator.is_main_process:
            ema_model = UNet2DModel.from_config(accelerator.unwrap_model(unet).config)
            ema.copy_to(ema_model.parameters())
            save_ddpm_samples(ema_model, scheduler, classes, args.run_dir / "samples" / f"{state.step:06d}.png",
                              guidance_scale=args.guidance_scale, vae=vae, latent_range=latent_range)
    save()
    progress.close()


def save_ddpm_samples(unet: UNet2DModel, scheduler, classes: list[str], path: Path, *, guidance_scale: float,
                      count: int = 16, vae: AutoencoderKL | None = None, latent_range: float | None = None) -> None:
    """16 samples at 50 DDIM steps, seed 0, classes in order; latents are decoded by `vae`."""
    generator = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    noise = torch.randn((count, unet.config.in_channels, size, size), generator=generator)
    sampler = make_scheduler(scheduler.config, "ddim")
    sampler.set_timesteps(50)
    labels = torch.arange(count) % len(classes) if classes else None
    unet.eval()
    run = reverse_process(unet, sampler, noise, class_labels=labels, null_class=len(classes) if classes else None,
                          guidance_scale=guidance_scale, record=False,
                          **({} if vae is None else dict(clip_x0=latent_range, enforce_clip=latent_range is not None)))
    images = run.final
    if vae is not None:
        with torch.no_grad():
            images = vae.decode(run.final.to(vae.device) / vae.config.scaling_factor).sample.float().clamp(-1, 1).cpu()
    common.save_grid(images, path, columns=4)


def export_ddpm(args, unet: UNet2DModel, scheduler, classes: list[str], state: common.RunState,
                vae: AutoencoderKL | None = None, latent_range: float | None = None) -> None:
    """A pixel model: one folder. A latent model: diffusers' pipeline layout, unet/ + vae/ + scheduler/
    + model_index.json, with genlab.json and the model card at its root."""
    args.out.mkdir(parents=True, exist_ok=True)
    if vae is None:
        unet.save_pretrained(args.out, safe_serialization=True)
        scheduler.save_pretrained(args.out)
    else:  # the cards' measurements are of these files, fp16 with --export-fp16
        common.save_network(unet, args.out / "unet", args.export_fp16)
        scheduler.save_pretrained(args.out / "scheduler")
        latent.save_autoencoder(vae, args.vae, args.out / "vae", args.export_fp16)
        latent.write_pipeline_index(args.out)
    info = {"kind": "diffusion", "title": args.out.name}
    if latent_range is not None:
        info["clip_sample_range"] = latent_range  # sampling clips x0_hat to the training latents' range
    if classes:
        info.update(classes=classes, null_class=len(classes), default_guidance_scale=args.guidance_scale)
    (args.out / "genlab.json").write_text(json.dumps(info, indent=1))
    state.save(args.out)
    save_ddpm_samples(unet, scheduler, classes, args.out / "samples.png", guidance_scale=args.guidance_scale, vae=vae,
                      latent_range=latent_range)
    size = unet.config.sample_size
    space = (f"{size}x{size} samples" if vae is None else
             f"{unet.config.in_channels}x{size}x{size} latents of the KL autoencoder in `vae/` (from `{args.vae}`, "
             f"frozen; `scaling_factor` {vae.config.scaling_factor:.4f}), decoded to {args.crop}x{args.crop} pixels")
    conditional = (f"Class-conditional on {len(classes)} classes ({', '.join(classes)}) with label dropout "
                   f"{args.label_dropout}, so classifier-free guidance works (class {len(classes)} = no label). "
                   if classes else "")
    focus = (f"{args.t_focus_share:.0%} of training timesteps are drawn from t < {args.t_focus_max}, where photo "
             "denoising happens; the rest uniformly. " if args.t_focus_share else "")
    autoencoder_card = first_stage_card(args.out, "vae", "The autoencoder") if vae is not None else ""
    common.write_model_card(
        args.out, f"GenLab {args.out.name}",
        f"A noise-prediction DDPM (diffusers `UNet2DModel`, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M "
        f"parameters, {space}, fully convolutional) with a {args.beta_schedule} "
        f"beta schedule over 1000 steps. {conditional}{focus}Min-SNR-gamma weighting: {args.min_snr_gamma or 'off'}. "
        "Exported weights are the EMA weights.",
        f"`{args.data}`, random {args.crop}x{args.crop} crops, batch {args.batch_size}, {lr_text(args)}"
        + (f"; class c drawn with probability proportional to n_c^{args.class_power:g}" if classes and args.class_power != 1 else "")
        + ".",
        state, "`samples.png`: 16 samples, 50 DDIM steps, seed 0" + (f", guidance {args.guidance_scale:g}, classes in order" if classes else "")
        + ".\n\n" + autoencoder_card,
    )


# ------------------------------------------------------------------------------ token prior
def train_prior(args, accelerator: Accelerator, data: common.ImageFolder, state: common.RunState) -> None:
    """A MaskedTokenTransformer (or, `--backbone unet`, a MaskedTokenUNet) on the tokens of a frozen VQModel
    (`--vq`), with EMA, bf16, resume; with `--distill-from`, the guidance distillation of that prior's
    network, into a student of the same kind (genlab.train.prior)."""
    from diffusers import AmusedScheduler

    from ..loading.loaders import genlab_info, read_config
    from ..priors.transformer import MaskedTokenTransformer
    from ..priors.unet import MaskedTokenUNet
    from ..autoencoders.vq import Background

    classes = data.classes if data.classes else []
    checkpoint = args.run_dir / "checkpoint"
    resuming = args.resume and (checkpoint / "model").exists()
    args.vq = checkpoint / "vqvae" if resuming else args.vq
    teacher = None
    record = checkpoint / "teacher.json"  # the teacher a distillation run started from
    if resuming and record.is_file() and args.distill_from:
        started = json.loads(record.read_text())["distill_from"]
        if Path(started).resolve() != args.distill_from.resolve():
            raise SystemExit(f"this run distils {started}; resume it with --distill-from {started}")
    init = args.init / "transformer" if args.init and (args.init / "transformer").is_dir() else args.init
    start = checkpoint / "model" if resuming else init  # the saved network training starts from, if any
    if start is not None and not args.distill_from and read_config(start).get("guidance_embedding"):
        raise SystemExit(f"{start} is a guidance-distillation student: train (or resume) it with --distill-from")
    network_class = prior_network_class(start, args.backbone)  # checked before the tokens are encoded
    if args.distill_from:  # parse_args took --backbone from the teacher's config
        teacher = network_class.from_pretrained(args.distill_from / "transformer").float()
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
        if teacher.config.num_classes != len(classes) or not classes:
            raise SystemExit(f"--distill-from: the teacher has {teacher.config.num_classes} classes, "
                             f"{args.data} has {len(classes)}; distillation needs the teacher's labelled data")
    vq_model = VQModel.from_pretrained(args.vq).to(accelerator.device).requires_grad_(False)
    background = Background.from_info(genlab_info(Path(args.vq)).get("background"), vq_model.config.num_vq_embeddings)
    seed = args.seed + state.step + accelerator.process_index
    bank = prior_training.TokenBank(vq_model, data, args.batch_size, seed,
                                    class_power=args.class_power if classes else 1.0, shift_share=args.shift_share,
                                    background=background)
    grid = tuple(bank.tokens.shape[-2:])
    accelerator.print(f"tokens: {len(bank.tokens)} images x {bank.tokens.shape[1]} (mirrored, moved), "
                      f"{grid[0]}x{grid[1]} each, "
                      f"{bank.distinct_codes()} of {vq_model.config.num_vq_embeddings} codes in use")
    dropout = {} if args.dropout is None else {"dropout": args.dropout}  # a config override
    if resuming:
        model = network_class.from_pretrained(checkpoint / "model", **dropout)
        ema_start = network_class.from_pretrained(checkpoint / "ema", **dropout)
    elif teacher is not None:
        model, ema_start = (distillation_student(teacher, args.guidance_max) for _ in range(2))
    elif args.init and network_class is MaskedTokenUNet:
        model, ema_start = (MaskedTokenUNet.from_pretrained(init) for _ in range(2))
    elif args.init:
        model, ema_start = (grown(MaskedTokenTransformer.from_pretrained(init, **dropout), args.conv_kernel)
                            for _ in range(2))
    elif network_class is MaskedTokenUNet:
        model = MaskedTokenUNet(codebook_size=vq_model.config.num_vq_embeddings, height=grid[0], width=grid[1],
                                num_classes=len(classes), block_out_channels=args.channels, attention=args.attention,
                                layers_per_block=args.layers_per_block, norm_num_groups=args.norm_groups,
                                embedding_size=args.channels[0])
        ema_start = None
    else:
        model = MaskedTokenTransformer(codebook_size=vq_model.config.num_vq_embeddings, height=grid[0], width=grid[1],
                                       num_classes=len(classes), hidden_size=args.hidden_size,
                                       num_layers=args.num_layers, num_heads=args.num_heads,
                                       conv_kernel=args.conv_kernel or 0, **dropout)
        ema_start = None
    ema = EMAModel((ema_start or model).parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3,
                   model_cls=network_class, model_config=model.config)
    ema.optimization_step = state.step
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    if resuming:
        common.load_optimizer(optimizer, checkpoint)
    schedule = common.lr_scheduler(optimizer, args.lr_schedule, args.lr, args.warmup_steps, args.steps, state.step)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    scheduler = AmusedScheduler(mask_token_id=vq_model.config.num_vq_embeddings)
    null_class = len(classes) if classes else None
    generator = torch.Generator().manual_seed(args.seed + state.step)
    batches = iter(bank)
    timer = common.Timer(state.wall_seconds)
    progress = tqdm(total=args.steps, initial=state.step, disable=not accelerator.is_main_process,
                    desc="prior (distillation)" if teacher else "prior")
    running = None

    def ema_copy():
        ema_model = network_class.from_config(accelerator.unwrap_model(model).config)
        ema.copy_to(ema_model.parameters())
        return ema_model.eval()

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            checkpoint.mkdir(parents=True, exist_ok=True)
            accelerator.unwrap_model(model).save_pretrained(checkpoint / "model")
            ema_model = ema_copy()
            ema_model.save_pretrained(checkpoint / "ema")
            if not (checkpoint / "vqvae").exists() or (checkpoint / "vqvae").resolve() != Path(args.vq).resolve():
                latent.save_autoencoder(vq_model, args.vq, checkpoint / "vqvae")
            common.save_optimizer(optimizer, checkpoint)
            state.save(checkpoint)
            if teacher is not None:
                record.write_text(json.dumps({"distill_from": str(args.distill_from)}))
            export_prior(args, ema_model, vq_model, scheduler, classes, state, teacher)

    while state.step < args.steps and (args.max_minutes is None or timer.total - timer.already < args.max_minutes * 60):
        tokens, labels = next(batches)
        tokens = tokens.to(accelerator.device)
        class_labels = None
        if classes:
            class_labels = ddpm.drop_labels(labels, null_class, args.label_dropout, generator).to(accelerator.device)
        with accelerator.autocast():
            if teacher is not None:
                student = accelerator.unwrap_model(model)
                loss = prior_training.guidance_distillation_loss(student, teacher, tokens, class_labels, generator,
                                                                 args.raster_share, student.config.guidance_max)
            else:
                loss = prior_training.masked_token_loss(accelerator.unwrap_model(model), tokens, class_labels,
                                                        generator, args.raster_share)
        running = common.ema_step(accelerator, model, loss, optimizer, schedule, ema, state, running)
        progress.update(1)
        if state.step % args.log_every == 0:
            progress.set_postfix(loss=round(running, 4), bits=round(running / math.log(2), 3),
                                 lr=f"{schedule.get_last_lr()[0]:.2e}", ema_decay=round(ema.cur_decay_value or 0.0, 5))
        if state.step % args.save_every == 0:
            save()
        if state.step % args.sample_every == 0 and accelerator.is_main_process:
            save_prior_samples(ema_copy(), vq_model, scheduler, classes, args.run_dir / "samples" / f"{state.step:06d}.png",
                               guidance_scale=args.guidance_scale, teacher=teacher)
    save()
    progress.close()


def prior_backbones() -> dict:
    """--backbone name -> the prior network class."""
    from ..priors.transformer import MaskedTokenTransformer
    from ..priors.unet import MaskedTokenUNet

    return {"transformer": MaskedTokenTransformer, "unet": MaskedTokenUNet}


def saved_prior_backbone(folder: Path) -> str | None:
    """The --backbone of the prior network saved in `folder`, None when it holds another kind of model
    (ModelLoadError when it has no readable config.json)."""
    from ..loading.loaders import read_config

    backbones = {cls.__name__: name for name, cls in prior_backbones().items()}
    return backbones.get(read_config(folder).get("_class_name"))


def prior_network_class(folder: Path | None, backbone: str):
    """The class of the prior network saved in `folder` (a checkpoint, --init or the teacher), else the one
    `backbone` names; SystemExit when `folder` holds another kind of network than the backbone asked for."""
    saved = backbone if folder is None else saved_prior_backbone(folder)
    if saved is None:
        from ..loading.loaders import read_config

        names = ", ".join(cls.__name__ for cls in prior_backbones().values())
        raise SystemExit(f"{folder} holds a {read_config(folder).get('_class_name')}, not a token prior network ({names})")
    if saved != backbone:
        raise SystemExit(f"{folder} holds a {prior_backbones()[saved].__name__}; it trains as --backbone {saved}, "
                         f"not {backbone}")
    return prior_backbones()[backbone]


def grown(model, conv_kernel: int | None):
    """`model` (a MaskedTokenTransformer) with `--conv-kernel` convolutions grown in (zero-initialised, so it computes
    what `model` does); unchanged when the option is left out or matches its config."""
    from ..priors.transformer import MaskedTokenTransformer

    if conv_kernel is None or conv_kernel == model.config.conv_kernel:
        return model
    if model.config.conv_kernel:
        k = model.config.conv_kernel
        raise SystemExit(f"--conv-kernel {conv_kernel}: the --init transformer has {k} x {k} convolutions already; "
                         "leave the option out to keep them")
    bigger = MaskedTokenTransformer.from_config(model.config, conv_kernel=conv_kernel)
    missing, unexpected = bigger.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("convs.") for key in missing), (missing, unexpected)
    return bigger


def distillation_student(teacher, guidance_max: float):
    """A CPU copy of the teacher (a MaskedTokenTransformer or MaskedTokenUNet) with a zero-initialised guidance
    embedding: at the start it is the teacher."""
    if getattr(teacher.config, "guidance_embedding", False):
        raise SystemExit(f"--distill-from: that {type(teacher).__name__} is already guidance-distilled")
    student = type(teacher).from_config(teacher.config, guidance_embedding=True, guidance_max=guidance_max)
    missing, unexpected = student.load_state_dict(teacher.teacher_state_dict(), strict=False)
    if unexpected or not all(key.startswith("guidance_") for key in missing):
        raise SystemExit(f"--distill-from: the teacher's weights do not fit its config "
                         f"(missing {missing}, unexpected {unexpected})")
    return student


def save_prior_samples(model, vq_model: VQModel, scheduler, classes: list[str], path: Path, *, guidance_scale: float,
                       count: int = 16, steps: int = 12, teacher=None) -> None:
    """16 samples, 12 confidence-order steps, seed 0, classes in order (with a teacher: the prior of the
    teacher and `model`, its guidance-distilled copy, as `export_prior` writes it)."""
    from ..priors.pipeline import MASKGIT_CHOICE_TEMPERATURE, TokenPrior
    from ..autoencoders.vq import VQ

    network, distilled = (model, None) if teacher is None else (teacher, model.to(teacher.device).eval())
    prior = TokenPrior(VQ(vq_model.eval()), network.eval(), dict(scheduler.config),
                       {"classes": classes, "default_guidance_scale": guidance_scale,
                        "default_choice_temperature": MASKGIT_CHOICE_TEMPERATURE}, distilled=distilled)
    if classes:
        images = [prior.sample(seed=0, steps=steps, batch=1 + (count - 1 - c) // len(classes), class_label=c).pixels
                  for c in range(min(count, len(classes)))]
        pixels = torch.stack([images[i % len(classes)][i // len(classes)] for i in range(count)])
    else:
        pixels = prior.sample(seed=0, steps=steps, batch=count).pixels
    common.save_grid(pixels, path, columns=4)


def export_prior(args, model, vq_model: VQModel, scheduler, classes: list[str], state: common.RunState,
                 teacher=None) -> None:
    """The aMUSEd-like pipeline layout: vqvae/ + transformer/ + scheduler/ + model_index.json, with
    genlab.json and the model card at its root. Distilling (`teacher`): transformer/ is the teacher, the
    prior itself, and transformer_distilled/ the student `model`."""
    import diffusers

    from ..loading.loaders import DISTILLED
    from ..priors.pipeline import MASKGIT_CHOICE_TEMPERATURE
    from ..priors.unet import MaskedTokenUNet

    args.out.mkdir(parents=True, exist_ok=True)
    network = model if teacher is None else teacher  # the prior
    common.save_network(network, args.out / "transformer", args.export_fp16)  # measured as stored
    if teacher is not None:
        common.save_network(model, args.out / DISTILLED, args.export_fp16)
    scheduler.save_pretrained(args.out / "scheduler")
    if (args.out / "vqvae").resolve() != Path(args.vq).resolve():
        latent.save_autoencoder(vq_model, args.vq, args.out / "vqvae")
    index = {"_class_name": "GenLabTokenPriorPipeline", "_diffusers_version": diffusers.__version__,
             "vqvae": ["diffusers", "VQModel"], "transformer": ["genlab", type(network).__name__],
             "scheduler": ["diffusers", "AmusedScheduler"]}
    if teacher is not None:
        index[DISTILLED] = ["genlab", type(model).__name__]
    (args.out / "model_index.json").write_text(json.dumps(index, indent=2))
    info = {"kind": "prior", "title": args.out.name, "default_choice_temperature": MASKGIT_CHOICE_TEMPERATURE}
    if classes:
        info.update(classes=classes, default_guidance_scale=args.guidance_scale)
    (args.out / "genlab.json").write_text(json.dumps(info, indent=1))
    state.save(args.out)
    save_prior_samples(model, vq_model, scheduler, classes, args.out / "samples.png",
                       guidance_scale=args.guidance_scale, teacher=teacher)
    config = network.config
    factor = 2 ** (len(vq_model.config.block_out_channels) - 1)
    conditional = (f"Class-conditional on {len(classes)} classes ({', '.join(classes)}) by "
                   + ("the UNet's class embedding" if isinstance(network, MaskedTokenUNet) else "a prepended class token") + ", "
                   f"with label dropout {args.label_dropout}, so classifier-free guidance works (class {len(classes)} "
                   "= no label). " if classes else "")
    stage_cards = first_stage_card(args.out, "vqvae", "The tokenizer")
    if teacher is not None:  # the distillation's own run is this card's; the teacher's comes from its folder
        stage_cards = trained_first_card(args.distill_from, "The teacher (`transformer/`)",
                                         f"`{args.distill_from / 'README.md'}`") + stage_cards
    common.write_model_card(
        args.out, f"GenLab {args.out.name}",
        network_text(network)
        + f" over the {config.height}x{config.width} tokens of the "
        f"{vq_model.config.num_vq_embeddings}-code VQGAN in `vqvae/` (f = {factor}, frozen), MaskGIT-style "
        f"(arXiv:2202.04200): cosine-schedule masks, and {args.raster_share:.0%} of masks hide every token from a "
        f"random raster position on. {conditional}{distilled_text(args, model.config)}Sampling: MaskGIT's "
        "confidence order (diffusers' `AmusedScheduler` schedule and masking; GenLab draws codes for the masked cells "
        "only), or raster / random order. Exported weights are the EMA weights.",
        f"`{args.data}`: every image and its mirror image, encoded once"
        + (f" (and both moved by one token in each of 8 directions, white fill, drawn instead of the image "
           f"{args.shift_share:.0%} of the time)" if args.shift_share else "")
        + f"; batch {args.batch_size}, {lr_text(args)}"
        + (f", AdamW weight decay {args.weight_decay:g}" if args.weight_decay else "")
        + (f"; class c drawn with probability proportional to n_c^{args.class_power:g}" if classes and args.class_power != 1 else "")
        + ".",
        state, f"`samples.png`: 16 samples, 12 confidence-order steps (choice temperature {MASKGIT_CHOICE_TEMPERATURE:g}), seed 0"
        + (f", guidance {args.guidance_scale:g}, classes in order" if classes else "") + ".\n\n" + stage_cards,
    )


def network_text(network) -> str:
    """The prior network in words, for the model card."""
    from ..priors.unet import MaskedTokenUNet

    config, millions = network.config, sum(p.numel() for p in network.parameters()) / 1e6
    if isinstance(network, MaskedTokenUNet):
        levels = ", ".join(f"{c}{' + attention' if a else ''}" for c, a in zip(config.block_out_channels, config.attention))
        return (f"A masked-token UNet (GenLab's `MaskedTokenUNet`, {millions:.2f}M parameters: diffusers' `UNet2DModel` "
                f"with levels {levels}, {config.layers_per_block} layer(s) per block, over a {config.embedding_size}-"
                "channel embedding of the token ids, the masked share as its timestep (absorbing-state diffusion, "
                "arXiv:2107.03006), a 1x1 convolution to the code logits)")
    return (f"A bidirectional masked-token transformer (GenLab's `MaskedTokenTransformer`, {millions:.2f}M parameters: "
            f"{config.num_layers} blocks, width {config.hidden_size}, {config.num_heads} heads"
            + (f", a {config.conv_kernel}x{config.conv_kernel} depthwise convolution over the token grid after each "
               "block" if config.conv_kernel else "")
            + (f", dropout {config.dropout:g}" if config.dropout else "") + ")")


def distilled_text(args, config) -> str:
    if not getattr(config, "guidance_embedding", False):
        return ""
    return (f"`transformer/` is the network of `{args.distill_from}` (the prior: code length, unguided sampling); "
            "`transformer_distilled/` is its guidance-distilled copy (Meng et al., arXiv:2210.03142): told the scale "
            f"w, one call gives the prior's classifier-free guided logits for w in [1, {config.guidance_max:g}] "
            "(trained on KL to its guided distribution at the masked tokens; dropped labels match its "
            "unconditional logits), so guided sampling at those scales costs one call a step instead of two. ")


def first_stage_card(out: Path, part: str, title: str) -> str:
    """A pipeline card's section on its frozen first stage (`out/part`, with its run.json): steps, wall
    time, hardware and the commands that trained it; "" when it has no run record."""
    return trained_first_card(out / part, f"{title} (`{part}/`)", f"`{part}/README.md`")


def trained_first_card(folder: Path, heading: str, card: str) -> str:
    """A card section on a model trained before this one and kept frozen (its run.json in `folder`): steps,
    wall time, hardware and the commands that trained it; "" when it has no run record."""
    if not (folder / "run.json").is_file():
        return ""
    run = common.RunState.load(folder)
    commands = "\n".join(run.commands)
    return (f"## {heading}\nTrained first, by GenLab's CLI ({run.step} steps, {run.wall_seconds / 60:.1f} min "
            f"on {', '.join(sorted(set(run.hardware)))}); its own card is {card}:\n\n```\n{commands}\n```\n\n")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mixed = args.mixed_precision or ("bf16" if torch.cuda.is_available() and not args.cpu else "no")
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=mixed)
    common.seed_everything(args.seed)
    state = common.RunState()
    if args.resume and (args.run_dir / "checkpoint" / "run.json").exists():
        state = common.RunState.load(args.run_dir / "checkpoint")
    elif args.init and (args.init / "run.json").exists() and args.init.resolve() == args.out.resolve():
        state = common.RunState.load(args.init)  # continuing the committed weights: keep counting
    state.commands.append(common.command_line(argv))
    state.hardware.append(common.describe_hardware(accelerator.device))
    data = common.ImageFolder(args.data)
    accelerator.print(f"{len(data)} images from {args.data}" + (f", classes {data.classes}" if data.classes else ""))
    trainers = {"vqvae": train_vq, "vqgan": train_vq, "ddpm": train_ddpm, "vae": train_vae, "ldm": train_ddpm,
                "prior": train_prior}
    trainers[args.kind](args, accelerator, data, state)


if __name__ == "__main__":
    sys.exit(main())
