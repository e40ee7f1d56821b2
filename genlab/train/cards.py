"""The model cards (README.md) the training CLI writes beside every exported weights folder.

One layout for every kind (`write_model_card`): a Hub front matter, what the model is, its data, its training
(steps, hardware, wall time and every command of the run, resumes included), the frozen models it builds on, and
the "Measured quality" section that `python -m genlab.eval ... --card` fills in and a re-export keeps. Each
family's card text (`write_vq_card`, `write_vae_card`, `write_diffusion_card`, `write_prior_card`) says what its
model is in words, from the exported network and the run's config.
"""

from __future__ import annotations

import math
from pathlib import Path

from .common import RunState


def write_model_card(out: Path, title: str, summary: str, data: str, run: RunState, extra: str = "") -> None:
    """README.md for a weights folder. The 'Measured quality' section is kept when it exists:
    `python -m genlab.eval ... --card` writes it."""
    card = out / "README.md"
    quality = "Not measured yet: run the evaluation command below.\n"
    if card.exists() and "## Measured quality" in card.read_text():
        quality = card.read_text().split("## Measured quality\n", 1)[1]
    hours = run.wall_seconds / 3600
    commands = "\n".join(run.commands)
    hardware = ", ".join(sorted(set(run.hardware)))
    card.write_text(
        f"---\nlibrary_name: diffusers\nlicense: apache-2.0\ntags: [genlab]\n---\n# {title}\n\n{summary}\n\n"
        f"## Data\n{data}\n\n## Training\n"
        f"- steps: {run.step}\n- hardware: {hardware}\n- wall time: {run.wall_seconds / 60:.1f} min ({hours:.2f} h)\n"
        f"- commands (in order; each resumed the previous run):\n\n```\n{commands}\n```\n\n{extra}"
        f"## Measured quality\n{quality}"
    )


def first_stage_section(out: Path, part: str, title: str) -> str:
    """A pipeline card's section on its frozen first stage (`out/part`, with its run.json): steps, wall
    time, hardware and the commands that trained it; "" when it has no run record."""
    return trained_first_section(out / part, f"{title} (`{part}/`)", f"`{part}/README.md`")


def trained_first_section(folder: Path, heading: str, card: str) -> str:
    """A card section on a model trained before this one and kept frozen (its run.json in `folder`): steps,
    wall time, hardware and the commands that trained it; "" when it has no run record."""
    if not (folder / "run.json").is_file():
        return ""
    run = RunState.load(folder)
    commands = "\n".join(run.commands)
    return (f"## {heading}\nTrained first, by GenLab's CLI ({run.step} steps, {run.wall_seconds / 60:.1f} min "
            f"on {', '.join(sorted(set(run.hardware)))}); its own card is {card}:\n\n```\n{commands}\n```\n\n")


def millions(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"


def downsampling(model) -> int:
    """Pixels per latent cell of a diffusers autoencoder."""
    return 2 ** (len(model.config.block_out_channels) - 1)


def class_sampling(config, classes: list[str]) -> str:
    return (f"; class c drawn with probability proportional to n_c^{config.class_power:g}"
            if classes and config.class_power != 1 else "")


def sample_grid(text: str, config, classes: list[str]) -> str:
    """The card's line on samples.png."""
    return f"`samples.png`: {text}" + (f", guidance {config.guidance_scale:g}, classes in order" if classes else "") + "."


# ---------------------------------------------------------------------------- each family
def write_vq_card(config, model, state: RunState, background=None) -> None:
    """A VQ-VAE's or VQGAN's card (`config`: a VQConfig; `background`: its reserved code, if any)."""
    kind = "VQGAN" if config.kind == "vqgan" else "VQ-VAE"
    factor, codes = downsampling(model), model.config.num_vq_embeddings
    summary = (
        f"A {kind} (diffusers `VQModel`, {millions(model)} parameters): "
        f"downsampling {factor}, {codes} codes of dimension {model.config.vq_embed_dim}, "
        f"{math.log2(codes) / factor ** 2:.3f} bits per pixel. Losses: L2 reconstruction, "
        f"commitment (beta {config.beta}), EMA codebook with dead-code restarts"
        + (f", PatchGAN hinge loss with the adaptive weight (scale {config.disc_weight}); no perceptual (LPIPS) term, "
           "since no pretrained network can be downloaded here" if config.kind == "vqgan" else "") + "."
        + (f" Code {background.code} is reserved for plain background (`genlab.autoencoders.vq.Background`, "
           f"genlab.json): every token whose {factor}x{factor} patch and neighbours within {background.margin} tokens "
           f"are white (within {background.tolerance} levels) takes it, in training and in `VQ.encode`."
           if background else ""))
    data = f"`{config.data}`, random {config.crop}x{config.crop} crops, batch {config.batch_size}, {config.lr_text()}."
    write_model_card(config.out, f"GenLab {config.out.name}", summary, data, state,
                     "`samples.png`: top row training crops, bottom row their reconstructions.\n\n")


def write_vae_card(config, model, state: RunState) -> None:
    """A KL autoencoder's card (`config`: a VAEConfig)."""
    factor, channels, crop = downsampling(model), model.config.latent_channels, config.crop
    summary = (
        f"A KL autoencoder (diffusers `AutoencoderKL`, {millions(model)} parameters): downsampling {factor}, "
        f"{channels} latent channels, so a {crop}x{crop} image becomes a {channels}x{crop // factor}x{crop // factor} "
        f"latent. Losses: L2 reconstruction{f' + {config.l1_weight:g} L1' if config.l1_weight else ''} and KL weight "
        f"{config.kl_weight:g} (nats per pixel value), no adversarial or perceptual term. `scaling_factor` "
        f"{model.config.scaling_factor:.4f} = 1 / std of the posterior samples over the training images.")
    data = f"`{config.data}`, random {crop}x{crop} crops, batch {config.batch_size}, {config.lr_text()}."
    write_model_card(config.out, f"GenLab {config.out.name}", summary, data, state,
                     "`samples.png`: top row training images, bottom row decodes of their posterior means.\n\n")


def guide_text(config) -> str:
    """The card's sentence on the autoguidance network shipped with --guide (empty without one)."""
    if getattr(config, "guide", None) is None:
        return ""
    scale = (f", sampled by default at autoguidance scale {config.autoguidance_scale:g}"
             if config.autoguidance_scale != 1.0 else " (autoguidance off by default)")
    return (f" `unet_guide/` is the UNet of `{config.guide}`, the weaker network that autoguidance (Karras et al. "
            f"2024, arXiv:2406.02507) guides away from{scale}.")


def write_diffusion_card(config, unet, classes: list[str], state: RunState, vae=None, vae_source=None) -> None:
    """A pixel DDPM's or a latent diffusion pipeline's card (`config`: a DiffusionConfig; `vae`: the frozen
    autoencoder, from `vae_source`)."""
    size = unet.config.sample_size
    space = (f"{size}x{size} samples" if vae is None else
             f"{unet.config.in_channels}x{size}x{size} latents of the KL autoencoder in `vae/` (from `{vae_source}`, "
             f"frozen; `scaling_factor` {vae.config.scaling_factor:.4f}), decoded to {config.crop}x{config.crop} pixels")
    conditional = (f"Class-conditional on {len(classes)} classes ({', '.join(classes)}) with label dropout "
                   f"{config.label_dropout}, so classifier-free guidance works (class {len(classes)} = no label). "
                   if classes else "")
    focus = (f"{config.t_focus_share:.0%} of training timesteps are drawn from t < {config.t_focus_max}, where photo "
             "denoising happens; the rest uniformly. " if config.t_focus_share else "")
    summary = (f"A noise-prediction DDPM (diffusers `UNet2DModel`, {millions(unet)} parameters, {space}, fully "
               f"convolutional) with a {config.beta_schedule} beta schedule over 1000 steps. {conditional}{focus}"
               f"Min-SNR-gamma weighting: {config.min_snr_gamma or 'off'}. Exported weights are the EMA weights."
               f"{guide_text(config)}")
    data = (f"`{config.data}`, random {config.crop}x{config.crop} crops, batch {config.batch_size}, "
            f"{config.lr_text()}{class_sampling(config, classes)}.")
    autoencoder = first_stage_section(config.out, "vae", "The autoencoder") if vae is not None else ""
    write_model_card(config.out, f"GenLab {config.out.name}", summary, data, state,
                     sample_grid("16 samples, 50 DDIM steps, seed 0", config, classes) + "\n\n" + autoencoder)


def write_prior_card(config, network, student, vq_model, classes: list[str], state: RunState) -> None:
    """A token prior's card (`config`: a PriorConfig; `network`: the prior, `student`: its guidance-distilled
    copy when the run distilled one, else None)."""
    from ..priors import MASKGIT_CHOICE_TEMPERATURE
    from ..priors.unet import MaskedTokenUNet

    grid = network.config
    embedding = "the UNet's class embedding" if isinstance(network, MaskedTokenUNet) else "a prepended class token"
    conditional = (f"Class-conditional on {len(classes)} classes ({', '.join(classes)}) by {embedding}, with label "
                   f"dropout {config.label_dropout}, so classifier-free guidance works (class {len(classes)} = no "
                   "label). " if classes else "")
    summary = (
        network_text(network) + f" over the {grid.height}x{grid.width} tokens of the "
        f"{vq_model.config.num_vq_embeddings}-code VQGAN in `vqvae/` (f = {downsampling(vq_model)}, frozen), "
        f"MaskGIT-style (arXiv:2202.04200): cosine-schedule masks, and {config.raster_share:.0%} of masks hide every "
        f"token from a random raster position on. {conditional}{distilled_text(config, student)}Sampling: MaskGIT's "
        "confidence order (diffusers' `AmusedScheduler` schedule and masking; GenLab draws codes for the masked cells "
        "only), or raster / random order. Exported weights are the EMA weights.")
    data = (f"`{config.data}`: every image and its mirror image, encoded once"
            + (f" (and both moved by one token in each of 8 directions, white fill, drawn instead of the image "
               f"{config.shift_share:.0%} of the time)" if config.shift_share else "")
            + f"; batch {config.batch_size}, {config.lr_text()}"
            + (f", AdamW weight decay {config.weight_decay:g}" if config.weight_decay else "")
            + class_sampling(config, classes) + ".")
    stages = first_stage_section(config.out, "vqvae", "The tokenizer")
    if student is not None:  # the distillation's own run is this card's; the teacher's comes from its folder
        stages = trained_first_section(config.distill_from, "The teacher (`transformer/`)",
                                       f"`{config.distill_from / 'README.md'}`") + stages
    grid_text = f"16 samples, 12 confidence-order steps (choice temperature {MASKGIT_CHOICE_TEMPERATURE:g}), seed 0"
    write_model_card(config.out, f"GenLab {config.out.name}", summary, data, state,
                     sample_grid(grid_text, config, classes) + "\n\n" + stages)


def network_text(network) -> str:
    """The prior network in words."""
    from ..priors.unet import MaskedTokenUNet

    config = network.config
    if isinstance(network, MaskedTokenUNet):
        levels = ", ".join(f"{c}{' + attention' if a else ''}" for c, a in zip(config.block_out_channels, config.attention))
        return (f"A masked-token UNet (GenLab's `MaskedTokenUNet`, {millions(network)} parameters: diffusers' "
                f"`UNet2DModel` with levels {levels}, {config.layers_per_block} layer(s) per block, over a "
                f"{config.embedding_size}-channel embedding of the token ids, the masked share as its timestep "
                "(absorbing-state diffusion, arXiv:2107.03006), a 1x1 convolution to the code logits)")
    return (f"A bidirectional masked-token transformer (GenLab's `MaskedTokenTransformer`, {millions(network)} "
            f"parameters: {config.num_layers} blocks, width {config.hidden_size}, {config.num_heads} heads"
            + (f", a {config.conv_kernel}x{config.conv_kernel} depthwise convolution over the token grid after each "
               "block" if config.conv_kernel else "")
            + (f", dropout {config.dropout:g}" if config.dropout else "") + ")")


def distilled_text(config, student) -> str:
    """What transformer/ and transformer_distilled/ are, when the run distilled the prior (`student`)."""
    if student is None or not getattr(student.config, "guidance_embedding", False):
        return ""
    return (f"`transformer/` is the network of `{config.distill_from}` (the prior: code length, unguided sampling); "
            "`transformer_distilled/` is its guidance-distilled copy (Meng et al., arXiv:2210.03142): told the scale "
            f"w, one call gives the prior's classifier-free guided logits for w in [1, {student.config.guidance_max:g}] "
            "(trained on KL to its guided distribution at the masked tokens; dropped labels match its "
            "unconditional logits), so guided sampling at those scales costs one call a step instead of two. ")
