"""Typed, checked settings of a training run: one frozen dataclass per kind, and the named presets.

`python -m genlab.train KIND ...` fills one of these (`genlab.train.cli`): the dataclass defaults, then the
preset, then the options given. Every value is checked when the config is built (nanoGPT's `GPTConfig`,
diffusers' `ConfigMixin`): a bad one is a ValueError naming the CLI option and the value, and a setting the run
cannot start from is refused before any data is read.

    TrainConfig                 what every kind shares: data, output, steps, optimizer, logging
    ├── VQConfig                vqvae, vqgan     (genlab.train.vq)
    ├── VAEConfig               vae              (genlab.train.latent)
    ├── ClipConfig              clip             (genlab.train.clip)
    └── GenerativeConfig        EMA, class labels and guidance of a generative model
        ├── DiffusionConfig     ddpm, ldm        (genlab.train.ddpm)
        │   └── TextDiffusionConfig  sd          (genlab.train.sd)
        └── PriorConfig         prior            (genlab.train.prior, genlab.train.distill)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType

LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
BACKBONES = ("transformer", "unet")
UNET_PRIOR_OPTIONS = ("channels", "layers_per_block", "attention")  # the rest are the transformer's
TRANSFORMER_PRIOR_OPTIONS = ("hidden_size", "num_layers", "num_heads", "dropout", "conv_kernel")

# refusals the CLI also gives when the option is passed to a kind without it
NEEDS_BACKGROUND_MARGIN = "--background-code and --background-tolerance need --background-margin"
DROPOUT_SCOPE = "--dropout is for prior (the masked-token transformer), not with --distill-from"
CONV_KERNEL_SCOPE = ("--conv-kernel is for a new prior or one grown from --init (not with --distill-from or "
                     "--resume: those keep their transformer's layout)")


def option(name: str) -> str:
    """A config field's CLI option: `shift_share` -> `--shift-share`."""
    return "--" + name.replace("_", "-")


def norm_groups(channels) -> int:
    """The most GroupNorm groups (<= 32) that divide every width while keeping >= 4 channels per group.

    One channel per group is InstanceNorm: it removes each channel's mean over the image, i.e. the
    absolute colour a small network needs to carry (seen as colour shifts with 16 groups of 16).
    """
    return max(g for g in range(1, 33) if all(c % g == 0 for c in channels) and min(channels) // g >= 4)


def check_attention(channels, attention) -> None:
    """One attention flag per down block."""
    if attention is not None and channels is not None and len(attention) != len(channels):
        raise ValueError(f"--attention has {len(attention)} entries but --channels has {len(channels)}")


# value rules: (predicate, what the message says the value must be)
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, float) and math.isfinite(value)


POSITIVE_INT = (lambda v: _is_int(v) and v > 0, "an integer > 0")
COUNT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
POSITIVE = (lambda v: _is_number(v) and v > 0, "a number > 0")
NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0, "a number >= 0")
SHARE = (lambda v: _is_number(v) and 0 <= v <= 1, "in [0, 1]")
AT_LEAST_ONE = (lambda v: _is_number(v) and v >= 1, "at least 1")
FRACTION = (lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)")
PATH = (lambda v: isinstance(v, Path), "a path")
FLAG = (lambda v: isinstance(v, bool), "True or False")
WIDTHS = (lambda v: isinstance(v, tuple) and len(v) > 0 and all(_is_int(c) and c > 0 for c in v),
          "positive integers, one per block")
FLAGS = (lambda v: isinstance(v, tuple) and all(isinstance(a, bool) for a in v), "0/1 flags, one per block")


def one_of(choices) -> tuple:
    return (lambda v: v in choices, f"one of {list(choices)}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What every kind shares. None means "not given" (checked only when given)."""

    kind: str  # vqvae, vqgan, vae, ddpm, ldm or prior
    data: Path  # a folder of images (labels.json makes it labelled)
    out: Path  # the exported weights folder
    run_dir: Path | None = None  # checkpoints and sample grids; default runs/<out's name>
    steps: int = 10_000  # total optimizer steps, counting resumed ones
    max_minutes: float | None = None  # stop (and export) after this wall time
    batch_size: int | None = None
    lr: float | None = None  # the (peak) learning rate, also applied on --resume
    lr_schedule: str = "constant"  # diffusers' get_scheduler name
    warmup_steps: int = 0
    seed: int = 0
    resume: bool = False  # continue from run_dir/checkpoint
    init: Path | None = None  # start from an exported weights folder
    save_every: int = 250
    sample_every: int = 1000
    log_every: int = 10
    threads: int | None = None  # torch CPU threads
    cpu: bool = False  # train on CPU even when CUDA is available
    mixed_precision: str | None = None  # default: bf16 on CUDA, else no
    channels: tuple[int, ...] | None = None  # block_out_channels of the network's blocks
    layers_per_block: int | None = None
    norm_groups: int | None = None  # GroupNorm groups; default norm_groups(channels); overrides --init's config

    KINDS = ()  # the kinds this config is for (a class attribute, not a field)
    REQUIRED = ("batch_size", "lr")  # fields a run of this kind cannot do without

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"{type(self).__name__} is for {' and '.join(self.KINDS)}, not kind {self.kind!r}")
        if self.run_dir is None and isinstance(self.out, Path):
            object.__setattr__(self, "run_dir", Path("runs") / self.out.name)
        for name, (valid, requirement) in self.rules().items():
            value = getattr(self, name)
            if value is not None and not valid(value):
                raise ValueError(f"{option(name)} must be {requirement}, got {value!r}")
        for name in self.REQUIRED:
            if getattr(self, name) is None:
                raise ValueError(f"{self.kind} needs {option(name)} (no preset gave it)")
        self.check()

    def rules(self) -> dict:
        """field -> (predicate, requirement) for each value given."""
        return dict(data=PATH, out=PATH, run_dir=PATH, steps=COUNT, max_minutes=NON_NEGATIVE, batch_size=POSITIVE_INT,
                    lr=POSITIVE, lr_schedule=one_of(LR_SCHEDULES), warmup_steps=COUNT, seed=COUNT, resume=FLAG,
                    init=PATH, save_every=POSITIVE_INT, sample_every=POSITIVE_INT, log_every=POSITIVE_INT,
                    threads=POSITIVE_INT, cpu=FLAG, mixed_precision=one_of(MIXED_PRECISION), channels=WIDTHS,
                    layers_per_block=POSITIVE_INT, norm_groups=POSITIVE_INT)

    def check(self) -> None:
        """Rules between fields (after each value passed its own)."""

    @property
    def max_seconds(self) -> float:
        return math.inf if self.max_minutes is None else self.max_minutes * 60

    def lr_text(self) -> str:
        """The learning-rate schedule in words, for model cards."""
        if self.lr_schedule == "constant":
            return f"learning rate {self.lr:g} (constant)"
        warmup = f", {self.warmup_steps} warmup steps" if self.warmup_steps else ""
        return f"learning rate {self.lr:g} ({self.lr_schedule}{warmup} over {self.steps} steps)"

    def init_overrides(self) -> dict:
        """Config overrides applied when starting from --init (e.g. a corrected norm_num_groups)."""
        return {"norm_num_groups": self.norm_groups} if self.norm_groups else {}

    def groups(self) -> int:
        """GroupNorm groups of a network built from scratch."""
        return self.norm_groups or norm_groups(self.channels)


@dataclass(frozen=True, kw_only=True)
class VQConfig(TrainConfig):
    """A diffusers VQModel trained as a VQ-VAE (vqvae) or, with a PatchGAN, as a VQGAN (vqgan)."""

    crop: int | None = None  # training crop side in pixels (the exported `tile`)
    codes: int | None = None  # codebook size K
    code_dim: int | None = None  # code vector dimension (vq_embed_dim)
    beta: float = 0.25  # commitment weight
    codebook_decay: float = 0.99  # EMA decay of the codebook statistics
    dead_threshold: float = 0.03  # EMA uses per batch below which a code restarts
    l1_weight: float = 0.0  # an L1 term beside the L2 reconstruction loss
    disc_start: int = 0  # vqgan: the step the discriminator switches on at
    disc_weight: float = 0.1  # vqgan: scale of the adaptive GAN weight
    disc_channels: int = 32
    disc_layers: int = 3
    freeze_encoder: bool = False  # vqgan: keep the encoder and codebook of --init
    background_margin: int | None = None  # reserve a code for tokens this many tokens deep in white
    background_tolerance: int = 8  # levels (of 255) below white that still count as white
    background_code: int | None = None  # the reserved code; default the commonest on background tokens

    KINDS = ("vqvae", "vqgan")
    REQUIRED = TrainConfig.REQUIRED + ("channels", "layers_per_block", "crop", "codes", "code_dim")

    def rules(self) -> dict:
        return {**super().rules(), "crop": POSITIVE_INT, "codes": POSITIVE_INT, "code_dim": POSITIVE_INT,
                "beta": NON_NEGATIVE, "codebook_decay": FRACTION, "dead_threshold": NON_NEGATIVE,
                "l1_weight": NON_NEGATIVE, "disc_start": COUNT, "disc_weight": NON_NEGATIVE,
                "disc_channels": POSITIVE_INT, "disc_layers": POSITIVE_INT, "freeze_encoder": FLAG,
                "background_margin": (lambda v: _is_int(v) and v >= 0, ">= 0 tokens"),
                "background_tolerance": (lambda v: _is_int(v) and 0 <= v < 255, "in [0, 254] levels"),
                "background_code": (lambda v: _is_int(v) and 0 <= v < (self.codes or 1 << 30), "in [0, codes)")}

    def check(self) -> None:
        if self.background_margin is None and (self.background_code is not None or self.background_tolerance != 8):
            raise ValueError(NEEDS_BACKGROUND_MARGIN)
        if self.kind == "vqgan" and self.freeze_encoder and self.init is None:
            raise ValueError("--freeze-encoder needs --init (the encoder and codebook to keep)")


@dataclass(frozen=True, kw_only=True)
class VAEConfig(TrainConfig):
    """A diffusers AutoencoderKL, the first stage of latent diffusion."""

    crop: int | None = None  # training crop side in pixels
    latent_channels: int = 4  # channels of the latent z
    kl_weight: float = 0.0  # weight of KL(q(z|x) || N(0, I)) in nats per pixel value
    l1_weight: float = 0.0  # an L1 term beside the L2 reconstruction loss

    KINDS = ("vae",)
    REQUIRED = TrainConfig.REQUIRED + ("channels", "layers_per_block", "crop")

    def rules(self) -> dict:
        return {**super().rules(), "crop": POSITIVE_INT, "latent_channels": POSITIVE_INT, "kl_weight": NON_NEGATIVE,
                "l1_weight": NON_NEGATIVE}


@dataclass(frozen=True, kw_only=True)
class ClipConfig(TrainConfig):
    """A small CLIP (transformers `CLIPModel`: a text and an image transformer) trained contrastively on a captioned
    folder (`captions.json`), with its byte-level BPE tokenizer learned from the captions first."""

    vocab_size: int = 4096  # the tokenizer's entries: 512 byte symbols, the merges, 2 specials
    max_tokens: int = 32  # the text encoder's positions (prompts are cut there)
    hidden_size: int | None = None  # width of both towers
    num_layers: int | None = None  # transformer blocks of each tower
    num_heads: int | None = None
    patch_size: int = 8  # the image tower's patch side in pixels
    projection_dim: int = 128  # the shared embedding space
    weight_decay: float = 0.1

    KINDS = ("clip",)
    REQUIRED = TrainConfig.REQUIRED + ("hidden_size", "num_layers", "num_heads")

    def rules(self) -> dict:
        return {**super().rules(), "vocab_size": (lambda v: _is_int(v) and v > 514, "an integer > 514"),
                "max_tokens": (lambda v: _is_int(v) and v >= 4, "an integer >= 4"), "hidden_size": POSITIVE_INT,
                "num_layers": POSITIVE_INT, "num_heads": POSITIVE_INT, "patch_size": POSITIVE_INT,
                "projection_dim": POSITIVE_INT, "weight_decay": NON_NEGATIVE}

    def check(self) -> None:
        if self.hidden_size and self.num_heads and self.hidden_size % self.num_heads:
            raise ValueError(f"--hidden-size {self.hidden_size} must be a multiple of --num-heads {self.num_heads}")


@dataclass(frozen=True, kw_only=True)
class GenerativeConfig(TrainConfig):
    """A generative model trained with EMA weights, optionally class-conditional with classifier-free guidance."""

    attention: tuple[bool, ...] | None = None  # per down block: an attention block or not
    class_power: float = 1.0  # draw class c with probability ~ n_c ** this (1: as in the data, 0: equally)
    label_dropout: float = 0.0  # share of labels dropped to the null class (0: an unconditional model)
    guidance_scale: float = 3.0  # guidance of the sample grids, exported as the model's default
    ema_decay: float = 0.9999  # upper bound of the warmed-up EMA decay
    export_fp16: bool = False  # store the exported networks in fp16 (GenLab upcasts them on CPU)

    def rules(self) -> dict:
        return {**super().rules(), "attention": FLAGS, "class_power": NON_NEGATIVE, "label_dropout": SHARE,
                "guidance_scale": NON_NEGATIVE, "ema_decay": SHARE, "export_fp16": FLAG}

    def check(self) -> None:
        check_attention(self.channels, self.attention)


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig(GenerativeConfig):
    """A noise-prediction UNet2DModel on pixels (ddpm) or on a frozen KL autoencoder's latents (ldm)."""

    crop: int | None = None  # training crop side in pixels
    sample_size: int | None = None  # ddpm: the UNet's sample size (ldm: crop / the autoencoder's factor)
    beta_schedule: str | None = None
    min_snr_gamma: float = 0.0  # Min-SNR-gamma loss weighting; 0: off
    t_focus_max: int = 0  # focus part of the timesteps on [0, this)
    t_focus_share: float = 0.0  # share of each batch drawn from the focus range
    vae: Path | None = None  # ldm: the trained AutoencoderKL folder (kept frozen)
    guide: Path | None = None  # a trained UNet of the same task, shipped as unet_guide/ for autoguidance
    autoguidance_scale: float = 1.0  # exported as the model's default autoguidance (needs guide; 1: off)

    KINDS = ("ddpm", "ldm")
    REQUIRED = TrainConfig.REQUIRED + ("channels", "layers_per_block", "crop", "beta_schedule")

    def rules(self) -> dict:
        return {**super().rules(), "crop": POSITIVE_INT, "sample_size": POSITIVE_INT,
                "beta_schedule": one_of(BETA_SCHEDULES), "min_snr_gamma": NON_NEGATIVE, "t_focus_max": COUNT,
                "t_focus_share": SHARE, "vae": PATH, "guide": PATH, "autoguidance_scale": AT_LEAST_ONE}

    def check(self) -> None:
        super().check()
        if self.autoguidance_scale != 1.0 and self.guide is None:
            raise ValueError("--autoguidance-scale needs --guide: the trained UNet that autoguidance guides away from")
        if self.kind == "ldm" and self.vae is None and not self.resume:
            raise ValueError("ldm needs --vae: the trained AutoencoderKL whose latents it models")
        if self.kind == "ddpm" and self.sample_size is None:
            raise ValueError("ddpm needs --sample-size (no preset gave it)")


@dataclass(frozen=True, kw_only=True)
class TextDiffusionConfig(DiffusionConfig):
    """Stable Diffusion's recipe: a `UNet2DConditionModel` on a frozen KL autoencoder's latents, cross-attending to
    a frozen CLIP text encoder's last hidden states; `label_dropout` is the caption dropout (empty prompt)."""

    clip: Path | None = None  # the trained CLIP folder (genlab.train.clip): text_encoder/ + tokenizer/
    colour_share: float = 0.0  # share of each batch drawn colour-balanced (genlab.train.sd.ColourDraws)

    KINDS = ("sd",)

    def rules(self) -> dict:
        return {**super().rules(), "clip": PATH, "colour_share": SHARE}

    def check(self) -> None:
        check_attention(self.channels, self.attention)
        if not self.resume and self.vae is None:
            raise ValueError("sd needs --vae: the trained AutoencoderKL whose latents it models")
        if not self.resume and self.clip is None:
            raise ValueError("sd needs --clip: the trained CLIP whose text encoder conditions the UNet")
        if self.attention is not None and not any(self.attention):
            raise ValueError("--attention must give sd at least one cross-attention block")


@dataclass(frozen=True, kw_only=True)
class PriorConfig(GenerativeConfig):
    """A masked-token prior over a frozen VQModel's tokens, or (distill_from) the guidance distillation of one."""

    vq: Path | None = None  # the trained VQModel folder whose tokens it models (kept frozen)
    backbone: str = "transformer"  # MaskedTokenTransformer or MaskedTokenUNet
    hidden_size: int | None = None  # transformer width
    num_layers: int | None = None  # transformer blocks
    num_heads: int | None = None  # transformer attention heads
    dropout: float | None = None  # transformer dropout; None keeps the config it starts from (0 when new)
    conv_kernel: int | None = None  # a k x k depthwise convolution after each block (grown into --init)
    raster_share: float = 0.0  # share of masks that hide every token from a raster position on
    shift_share: float = 0.0  # share of grids taken from the image moved by one token
    weight_decay: float = 0.0  # AdamW weight decay
    distill_from: Path | None = None  # a trained prior folder: its network is the frozen teacher
    guidance_max: float = 8.0  # distil guidance scales w in [1, this]

    KINDS = ("prior",)

    def rules(self) -> dict:
        from ..priors.transformer import check_conv_kernel  # the rule the transformer's config is checked by

        def odd_kernel(value) -> bool:
            try:
                return check_conv_kernel(value) == value
            except ValueError:
                return False

        return {**super().rules(), "vq": PATH, "backbone": one_of(BACKBONES), "hidden_size": POSITIVE_INT,
                "num_layers": POSITIVE_INT, "num_heads": POSITIVE_INT, "dropout": FRACTION,
                "conv_kernel": (odd_kernel, "0 or an odd number of tokens"), "raster_share": SHARE,
                "shift_share": SHARE, "weight_decay": NON_NEGATIVE, "distill_from": PATH,
                "guidance_max": (lambda v: _is_number(v) and v > 1, "above 1")}

    def __post_init__(self):
        if self.vq is None and self.distill_from is not None:  # the teacher's tokenizer
            object.__setattr__(self, "vq", self.distill_from / "vqvae")
        if self.backbone == "unet" and self.distill_from is None and self.channels:  # a student copies its teacher
            object.__setattr__(self, "attention", self.attention or (False,) * len(self.channels))
            object.__setattr__(self, "norm_groups", self.norm_groups or norm_groups(self.channels))
        super().__post_init__()

    def check(self) -> None:
        super().check()
        if self.distill_from is not None and self.init is not None:
            raise ValueError("--distill-from starts from the teacher's transformer: leave out --init")
        if self.dropout is not None and self.distill_from is not None:
            raise ValueError(DROPOUT_SCOPE)
        if self.conv_kernel is not None and (self.distill_from is not None or self.resume):
            raise ValueError(CONV_KERNEL_SCOPE)
        if self.vq is None and not self.resume:
            raise ValueError("prior needs --vq: the trained VQModel whose tokens it models")
        if self.distill_from is not None:
            return  # the student is the teacher's network: its layout comes from there
        layout = UNET_PRIOR_OPTIONS[:2] if self.backbone == "unet" else TRANSFORMER_PRIOR_OPTIONS[:3]
        for name in layout:
            if getattr(self, name) is None:
                raise ValueError(f"the prior's {self.backbone} backbone needs {option(name)} (no preset gave it)")
        if self.backbone == "unet":
            from ..priors.unet import check_unet_layout  # the rule the UNet's config is checked by

            check_unet_layout(self.channels, self.attention, self.norm_groups)


CONFIGS = {"vqvae": VQConfig, "vqgan": VQConfig, "vae": VAEConfig, "ddpm": DiffusionConfig, "ldm": DiffusionConfig,
           "prior": PriorConfig, "clip": ClipConfig, "sd": TextDiffusionConfig}


def config_fields(kind: str) -> set[str]:
    """The settings a run of `kind` has."""
    return {field.name for field in fields(CONFIGS[kind])}


# Presets: the options of a recipe, as the CLI spells their values (`channels="32,64,64"`); each is checked by
# building the config of the kinds it is for (below), so a bad value fails at import, not hours into a run.
PRESETS = {
    # small enough to train in hours on CPU cores, and to reconstruct 256^2 interactively
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
    # the CLIP of sd-emoji (64 px emoji and their captions), and its text-conditional UNet on ldm-emoji's latents:
    # cross-attention at 8 x 8 and 4 x 4, caption dropout 0.1 for classifier-free guidance
    "emoji-clip": dict(hidden_size=128, num_layers=4, num_heads=4, batch_size=128, lr=1e-3, lr_schedule="cosine",
                       warmup_steps=200),
    "emoji-sd": dict(channels="64,128,128", layers_per_block=1, attention="0,1,1", crop=64, batch_size=32, lr=1e-3,
                     lr_schedule="cosine", warmup_steps=500, beta_schedule="squaredcos_cap_v2", min_snr_gamma=5.0,
                     label_dropout=0.1, class_power=0.5, guidance_scale=3.0),
    # class-conditional masked-token transformer over emoji-vq's 16 x 16 tokens (maskgit-emoji)
    "emoji-prior": dict(hidden_size=128, num_layers=4, num_heads=4, batch_size=32, lr=1e-3, lr_schedule="cosine",
                        warmup_steps=300, label_dropout=0.1, class_power=0.5, raster_share=0.25, weight_decay=0.01),
    # the same task on a UNet (genlab.priors.unet, ldm-emoji's layout), images moved by a token half the time
    "emoji-prior-unet": dict(backbone="unet", channels="64,128,128", layers_per_block=1, attention="0,0,1",
                             batch_size=32, lr=1e-3, lr_schedule="cosine", warmup_steps=300, label_dropout=0.1,
                             class_power=0.5, raster_share=0.25, weight_decay=0.01, shift_share=0.5),
}
PRESET_KINDS = {"vq-photo": ("vqvae", "vqgan"), "emoji-vq": ("vqvae", "vqgan"), "emoji": ("ddpm",),
                "photo-denoiser": ("ddpm",), "emoji-vae": ("vae",), "emoji-ldm": ("ldm",), "emoji-prior": ("prior",),
                "emoji-prior-unet": ("prior",), "emoji-clip": ("clip",), "emoji-sd": ("sd",)}
DEFAULT_PRESET = {"vqvae": "vq-photo", "vqgan": "vq-photo", "ddpm": "emoji", "vae": "emoji-vae", "ldm": "emoji-ldm",
                  "prior": "emoji-prior", "clip": "emoji-clip", "sd": "emoji-sd"}


def parse_list(name: str, value, item=int) -> tuple | None:
    """A comma-separated option ("0,0,1") as a tuple of `item`; flags (item=bool) are written 0 or 1."""
    if value is None or isinstance(value, tuple):
        return value
    try:
        numbers = tuple(int(part) for part in str(value).split(","))
    except ValueError:
        raise ValueError(f"{option(name)} must be comma-separated integers, got {value!r}") from None
    return tuple(bool(n) for n in numbers) if item is bool else numbers


def build_config(kind: str, values: dict) -> TrainConfig:
    """The config of a `kind` run from option values as the CLI spells them (lists as "32,64"); the values no
    setting of that kind takes are left out."""
    config_class, known = CONFIGS[kind], config_fields(kind)
    values = {key: value for key, value in values.items() if key in known}
    for name, item in (("channels", int), ("attention", bool)):
        if name in values:
            values[name] = parse_list(name, values[name], item)
    return config_class(kind=kind, **values)


def _check_presets() -> None:
    placeholders = dict(data=Path("data"), out=Path("out"), vae=Path("vae"), vq=Path("vq"), clip=Path("clip"))
    for name, kinds in PRESET_KINDS.items():
        for kind in kinds:
            try:
                build_config(kind, {**placeholders, **PRESETS[name]})
            except ValueError as error:
                raise ValueError(f"preset {name!r} ({kind}): {error}") from None


_check_presets()
PRESETS = MappingProxyType({name: MappingProxyType(values) for name, values in PRESETS.items()})
