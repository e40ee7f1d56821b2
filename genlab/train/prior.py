"""Training a masked-token prior over a frozen VQ model's codes (a VQGAN's second stage).

MaskGIT (Chang et al., arXiv:2202.04200, sec. 3.1): mask a share r = cos(pi/2 u), u ~ U(0, 1), of
the tokens (the same cosine schedule sampling uses) and minimise the cross-entropy of the masked
tokens given the rest. A share of each batch (`raster_share`) instead masks every token from a
random raster position on: the masks an autoregressive reading of the grid meets (raster-order
sampling, and the chain-rule code length of `TokenPrior.bits_per_pixel`), which random masks
seldom look like. Class labels are dropped to the null class with probability `label_dropout`, so
one network also gives the unconditional prediction classifier-free guidance needs.

`train_prior` is the `prior` run of `python -m genlab.train` (a MaskedTokenTransformer or a MaskedTokenUNet,
`--backbone`), and `export_prior` writes its aMUSEd-like pipeline folder; with `--distill-from` the same loop
trains a guidance-distilled copy of a trained prior (`genlab.train.distill`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import VQModel
from tqdm.auto import tqdm

from ..autoencoders.vq import VQ, Background
from ..loading.checkpoints import read_config
from ..loading.hub import DISTILLED
from ..loading.schema import ModelInfo, read_model_info, write_model_info
from . import cards, common
from .config import PriorConfig
from .ddpm import drop_labels
from .latent import EncodedBank, images_to_tensor, save_autoencoder


def mask_for_training(tokens: torch.Tensor, mask_id: int, generator: torch.Generator,
                      raster_share: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, h, w) tokens -> (inputs with mask_id where masked, (B, h, w) bool mask); >= 1 token masked per sample."""
    batch, count = tokens.shape[0], tokens[0].numel()
    scores = torch.rand(batch, count, generator=generator)  # (B, N) a random order per sample
    ratio = torch.cos(math.pi / 2 * torch.rand(batch, generator=generator))  # (B,) MaskGIT's cosine
    masked_count = (ratio * count).ceil().clamp(1, count)  # (B,)
    masked = scores.argsort(dim=1).argsort(dim=1) < masked_count[:, None]  # the masked_count lowest scores
    raster = torch.rand(batch, generator=generator) < raster_share
    start = torch.randint(0, count, (batch,), generator=generator)
    suffix = torch.arange(count)[None] >= start[:, None]  # (B, N) from a raster position on
    masked = torch.where(raster[:, None], suffix, masked).view_as(tokens).to(tokens.device)
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked


def masked_token_loss(model, tokens: torch.Tensor, class_labels: torch.Tensor | None, generator: torch.Generator,
                      raster_share: float = 0.25) -> torch.Tensor:
    """Mean cross-entropy (nats) of the masked tokens of (B, h, w) `tokens` under `model` (a MaskedTokenTransformer)."""
    inputs, masked = mask_for_training(tokens, model.mask_token_id, generator, raster_share)
    logits = model(inputs, class_labels=class_labels)  # (B, K, h, w)
    per_token = F.cross_entropy(logits.float(), tokens, reduction="none")  # (B, h, w)
    return per_token[masked].mean()


SHIFTS = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)]  # (dx, dy) in tokens
SHIFT_FILL = 255  # what a shift uncovers: white, the emoji's background


def shift_images(images: list[np.ndarray], dx: int, dy: int, fill: int = SHIFT_FILL) -> list[np.ndarray]:
    """(H, W, 3) uint8 images moved by (dx, dy) pixels (right, down), the uncovered border filled, the far one cut."""
    shifted = []
    for image in images:
        out = np.full_like(image, fill)
        height, width = image.shape[:2]
        source_y, target_y = slice(max(0, -dy), height - max(0, dy)), slice(max(0, dy), height - max(0, -dy))
        source_x, target_x = slice(max(0, -dx), width - max(0, dx)), slice(max(0, dx), width - max(0, -dx))
        out[target_y, target_x] = image[source_y, source_x]
        shifted.append(out)
    return shifted


class TokenBank(EncodedBank):
    """The frozen VQ model's tokens of every image of a folder and of its mirror image, encoded once
    (see `EncodedBank` for how images are drawn; 64 px emoji -> 16 x 16 tokens).

    With `shift_share` > 0, also of each image moved by one token (f pixels) in the 8 directions of SHIFTS,
    white filling what the move uncovers: a draw takes one of those, picked uniformly, with probability
    `shift_share`, else the image itself (mirrored or not either way). More grids for the same drawings, in
    other places: the prior sees each motif at more positions than the few emoji that hold it.

    `background`: the VQ's reserved background code (genlab.json), applied as `VQ.encode` applies it."""

    def __init__(self, vq_model, data: common.ImageFolder, batch_size: int, seed: int, class_power: float = 1.0,
                 encode_batch: int = 64, shift_share: float = 0.0, background=None):
        super().__init__(data, batch_size, seed, class_power, "prior")
        if not 0 <= shift_share <= 1:
            raise ValueError(f"shift_share must be in [0, 1], got {shift_share}")
        self.shift_share = shift_share
        factor = 2 ** (len(vq_model.config.block_out_channels) - 1)  # pixels per token
        moves = SHIFTS if shift_share > 0 else SHIFTS[:1]
        chunks = [[] for _ in range(2 * len(moves))]  # variant 2 * move + flipped: its tokens, chunk by chunk
        vq_model.eval()
        tokenizer = VQ(vq_model, background=background)
        with torch.no_grad():
            for start in range(0, len(data), encode_batch):
                images = data.images[start:start + encode_batch]
                for move, (dx, dy) in enumerate(moves):
                    moved = shift_images(images, dx * factor, dy * factor) if (dx, dy) != (0, 0) else images
                    pixels = images_to_tensor(moved).to(vq_model.device)
                    for flipped in (0, 1):
                        indices = tokenizer.encode(pixels.flip(-1) if flipped else pixels)  # (B, h, w)
                        chunks[2 * move + flipped].append(indices.cpu())
        self.tokens = torch.stack([torch.cat(variant) for variant in chunks], dim=1)  # (N, 2 or 2 * len(SHIFTS), h, w)

    def distinct_codes(self) -> int:
        """How many codes the encoded images use."""
        return int(np.unique(self.tokens.numpy()).size)

    def __iter__(self):
        while True:
            index, flip = self.draw()
            if self.shift_share > 0:
                shift = torch.from_numpy(self.rng.integers(1, len(SHIFTS), size=self.batch_size))  # (B,) a move
                moved = torch.from_numpy(self.rng.random(self.batch_size) < self.shift_share)  # (B,) taken or not
                flip = torch.where(moved, 2 * shift + flip, flip)  # (B,) variant index
            yield self.tokens[index, flip], self.labels[index]


# ------------------------------------------------------------------------------ the networks
def prior_backbones() -> dict:
    """--backbone name -> the prior network class."""
    from ..priors.transformer import MaskedTokenTransformer
    from ..priors.unet import MaskedTokenUNet

    return {"transformer": MaskedTokenTransformer, "unet": MaskedTokenUNet}


def saved_prior_backbone(folder: Path) -> str | None:
    """The --backbone of the prior network saved in `folder`, None when it holds another kind of model
    (ModelLoadError when it has no readable config.json)."""
    backbones = {cls.__name__: name for name, cls in prior_backbones().items()}
    return backbones.get(read_config(folder).get("_class_name"))


def prior_network_class(folder: Path | None, backbone: str):
    """The class of the prior network saved in `folder` (a checkpoint, --init or the teacher), else the one
    `backbone` names; SystemExit when `folder` holds another kind of network than the backbone asked for."""
    saved = backbone if folder is None else saved_prior_backbone(folder)
    if saved is None:
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


def new_prior_network(config: PriorConfig, network_class, num_codes: int, grid: tuple[int, int], num_classes: int):
    """A MaskedTokenUNet or MaskedTokenTransformer of the config's layout over a `grid` of `num_codes` codes."""
    from ..priors.unet import MaskedTokenUNet

    if network_class is MaskedTokenUNet:
        return MaskedTokenUNet(codebook_size=num_codes, height=grid[0], width=grid[1], num_classes=num_classes,
                               block_out_channels=config.channels, attention=config.attention,
                               layers_per_block=config.layers_per_block, norm_num_groups=config.norm_groups,
                               embedding_size=config.channels[0])
    dropout = {} if config.dropout is None else {"dropout": config.dropout}
    return network_class(codebook_size=num_codes, height=grid[0], width=grid[1], num_classes=num_classes,
                         hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=config.num_heads,
                         conv_kernel=config.conv_kernel or 0, **dropout)


def load_prior_network(config: PriorConfig, network_class, checkpoint: Path, init: Path | None, resuming: bool,
                       teacher=None) -> tuple:
    """(network, the network its EMA starts from): the checkpoint's when resuming, else the teacher's student, else
    --init's (a transformer with --conv-kernel grown in), else (None, None): a new network. --dropout overrides the
    config of a transformer it starts from."""
    from ..priors.unet import MaskedTokenUNet
    from .distill import distillation_student  # distillation builds on this module's masks

    dropout = {} if config.dropout is None else {"dropout": config.dropout}  # a config override
    if resuming:
        return tuple(network_class.from_pretrained(checkpoint / name, **dropout) for name in ("model", "ema"))
    if teacher is not None:
        return tuple(distillation_student(teacher, config.guidance_max) for _ in range(2))
    if init is not None and network_class is MaskedTokenUNet:
        return tuple(MaskedTokenUNet.from_pretrained(init) for _ in range(2))
    if init is not None:
        return tuple(grown(network_class.from_pretrained(init, **dropout), config.conv_kernel) for _ in range(2))
    return None, None


# ------------------------------------------------------------------------------ the run
def train_prior(config: PriorConfig, accelerator: Accelerator, data: common.ImageFolder,
                state: common.RunState) -> None:
    """A MaskedTokenTransformer (or, `--backbone unet`, a MaskedTokenUNet) on the tokens of a frozen VQModel
    (`--vq`), with EMA, bf16, resume; with `--distill-from`, the guidance distillation of that prior's
    network, into a student of the same kind (genlab.train.distill)."""
    from diffusers import AmusedScheduler

    from . import distill  # distillation builds on this module's masks

    classes = data.classes if data.classes else []
    checkpoint = config.run_dir / "checkpoint"
    resuming = config.resume and (checkpoint / "model").exists()
    vq_source = checkpoint / "vqvae" if resuming else config.vq
    distill.check_resumed_teacher(config, checkpoint, resuming)
    init = config.init / "transformer" if config.init and (config.init / "transformer").is_dir() else config.init
    start = checkpoint / "model" if resuming else init  # the saved network training starts from, if any
    if start is not None and not config.distill_from and read_config(start).get("guidance_embedding"):
        raise SystemExit(f"{start} is a guidance-distillation student: train (or resume) it with --distill-from")
    network_class = prior_network_class(start, config.backbone)  # checked before the tokens are encoded
    teacher = distill.load_teacher(config, network_class, classes, accelerator.device) if config.distill_from else None
    vq_model = VQModel.from_pretrained(vq_source).to(accelerator.device).requires_grad_(False)
    num_codes = vq_model.config.num_vq_embeddings
    background = Background.from_info(read_model_info(vq_source).background, num_codes)
    seed = config.seed + state.step + accelerator.process_index
    bank = TokenBank(vq_model, data, config.batch_size, seed, class_power=config.class_power if classes else 1.0,
                     shift_share=config.shift_share, background=background)
    grid = tuple(bank.tokens.shape[-2:])
    accelerator.print(f"tokens: {len(bank.tokens)} images x {bank.tokens.shape[1]} (mirrored, moved), "
                      f"{grid[0]}x{grid[1]} each, {bank.distinct_codes()} of {num_codes} codes in use")
    model, ema_start = load_prior_network(config, network_class, checkpoint, init, resuming, teacher)
    model = model or new_prior_network(config, network_class, num_codes, grid, len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    model, optimizer, ema, schedule = common.prepare_ema_training(accelerator, model, ema_start, optimizer, config,
                                                                  state, checkpoint, resuming)
    scheduler = AmusedScheduler(mask_token_id=num_codes)
    null_class = len(classes) if classes else None
    generator = torch.Generator().manual_seed(config.seed + state.step)
    batches = iter(bank)
    timer = common.Timer(state.wall_seconds)
    progress = tqdm(total=config.steps, initial=state.step, disable=not accelerator.is_main_process,
                    desc="prior (distillation)" if teacher else "prior")
    running = None

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            checkpoint.mkdir(parents=True, exist_ok=True)
            accelerator.unwrap_model(model).save_pretrained(checkpoint / "model")
            ema_model = common.ema_copy(accelerator, model, ema)
            ema_model.save_pretrained(checkpoint / "ema")
            if not (checkpoint / "vqvae").exists() or (checkpoint / "vqvae").resolve() != Path(vq_source).resolve():
                save_autoencoder(vq_model, vq_source, checkpoint / "vqvae")
            common.save_optimizer(optimizer, checkpoint)
            state.save(checkpoint)
            if teacher is not None:
                distill.record_teacher(config, checkpoint)
            export_prior(config, ema_model, vq_model, vq_source, scheduler, classes, state, teacher)

    while common.keep_training(state, timer, config):
        tokens, labels = next(batches)
        tokens = tokens.to(accelerator.device)
        class_labels = None
        if classes:
            class_labels = drop_labels(labels, null_class, config.label_dropout, generator).to(accelerator.device)
        with accelerator.autocast():
            network = accelerator.unwrap_model(model)
            if teacher is not None:
                loss = distill.guidance_distillation_loss(network, teacher, tokens, class_labels, generator,
                                                          config.raster_share, network.config.guidance_max)
            else:
                loss = masked_token_loss(network, tokens, class_labels, generator, config.raster_share)
        running = common.ema_step(accelerator, model, loss, optimizer, schedule, ema, state, running)
        progress.update(1)
        if state.step % config.log_every == 0:
            progress.set_postfix(loss=round(running, 4), bits=round(running / math.log(2), 3),
                                 lr=f"{schedule.get_last_lr()[0]:.2e}", ema_decay=round(ema.cur_decay_value or 0.0, 5))
        if state.step % config.save_every == 0:
            save()
        if state.step % config.sample_every == 0 and accelerator.is_main_process:
            save_prior_samples(common.ema_copy(accelerator, model, ema), vq_model, scheduler, classes,
                               config.run_dir / "samples" / f"{state.step:06d}.png",
                               guidance_scale=config.guidance_scale, teacher=teacher)
    save()
    progress.close()


def save_prior_samples(model, vq_model: VQModel, scheduler, classes: list[str], path: Path, *, guidance_scale: float,
                       count: int = 16, steps: int = 12, teacher=None) -> None:
    """16 samples, 12 confidence-order steps, seed 0, classes in order (with a teacher: the prior of the
    teacher and `model`, its guidance-distilled copy, as `export_prior` writes it)."""
    from ..priors import MASKGIT_CHOICE_TEMPERATURE, TokenPrior

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


def export_prior(config: PriorConfig, model, vq_model: VQModel, vq_source: Path, scheduler, classes: list[str],
                 state: common.RunState, teacher=None) -> None:
    """The aMUSEd-like pipeline layout: vqvae/ (from `vq_source`) + transformer/ + scheduler/ + model_index.json,
    with genlab.json and the model card at its root. Distilling (`teacher`): transformer/ is the teacher, the
    prior itself, and transformer_distilled/ the student `model`."""
    import diffusers

    from ..priors import MASKGIT_CHOICE_TEMPERATURE

    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    network = model if teacher is None else teacher  # the prior
    common.save_network(network, out / "transformer", config.export_fp16)  # measured as stored
    if teacher is not None:
        common.save_network(model, out / DISTILLED, config.export_fp16)
    scheduler.save_pretrained(out / "scheduler")
    if (out / "vqvae").resolve() != Path(vq_source).resolve():
        save_autoencoder(vq_model, vq_source, out / "vqvae")
    index = {"_class_name": "GenLabTokenPriorPipeline", "_diffusers_version": diffusers.__version__,
             "vqvae": ["diffusers", "VQModel"], "transformer": ["genlab", type(network).__name__],
             "scheduler": ["diffusers", "AmusedScheduler"]}
    if teacher is not None:
        index[DISTILLED] = ["genlab", type(model).__name__]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    write_model_info(out, ModelInfo(kind="prior", title=out.name, classes=tuple(classes),
                                    default_guidance_scale=config.guidance_scale if classes else None,
                                    default_choice_temperature=MASKGIT_CHOICE_TEMPERATURE))
    state.save(out)
    save_prior_samples(model, vq_model, scheduler, classes, out / "samples.png",
                       guidance_scale=config.guidance_scale, teacher=teacher)
    cards.write_prior_card(config, network, model if teacher is not None else None, vq_model, classes, state)
