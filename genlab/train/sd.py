"""Train GenLab's own Stable Diffusion (Rombach et al., arXiv:2112.10752, sec. 3.3): a diffusers
`UNet2DConditionModel` on a frozen KL autoencoder's latents, cross-attending to a frozen CLIP text encoder.

    eps_theta(z_t, t, tau(y)):   L = w(t) * ||eps - eps_theta(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, t, tau(y))||^2

- tau(y) is the CLIP text tower's last hidden states (B, L, D) of a caption drawn at random among the image's
  (`captions.json`), padded to the tokenizer's length, exactly as `StableDiffusionPipeline` encodes prompts. The
  text tower is frozen, so every caption is encoded once (`CaptionBank`).
- Caption dropout (`label_dropout`, ~10%) trains on the empty prompt instead, the unconditional branch of
  classifier-free guidance (arXiv:2207.12598). w(t) is Min-SNR-gamma (arXiv:2303.09556), as for the other UNets.
- `--colour-share` s: a share s of each batch is drawn colour-balanced (`ColourDraws`), class-balanced sampling over
  the colour a drawing shows: rare colours (brown, black) are as common there as red, each row captioned by a
  caption that names its colour.
- `--init` may name a class-conditional latent model (`ldm-emoji`): its UNet2DModel's convolutions, resnets and
  time embedding are copied where the layout matches (`warm_start`), with the null class's embedding folded into
  the time embedding and every new cross-attention transformer starting as the identity (zero output projection),
  so training begins from the unconditional model and learns the text. An SD pipeline folder continues as is.
- The exported folder is Stable Diffusion's own pipeline layout: model_index.json naming `StableDiffusionPipeline`,
  unet/, vae/, text_encoder/, tokenizer/, scheduler/ (safety_checker and feature_extractor empty), plus genlab.json,
  run.json, samples.png, the card and training_images/ (`genlab.imaging.nearest`). It loads through `genlab.load_diffusion` and diffusers alike.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from ..imaging.colour import COLOUR_WORDS, colour_name
from ..loading.schema import ModelInfo, write_model_info
from . import cards, common, ddpm, latent
from .clip import read_captions
from .config import TextDiffusionConfig
from .ddpm import build_scheduler, latent_sampling, min_snr_weights, sample_timesteps

SAMPLE_PROMPTS = ("red heart", "blue heart", "green circle", "orange book", "grinning face", "thumbs up",
                  "cat face", "pizza", "rocket", "sun", "flag germany", "red apple", "purple apple", "ghost",
                  "thumbs up, dark skin tone", "watermelon")


# ------------------------------------------------------------------------------ the networks
def build_sd_unet(config: TextDiffusionConfig, latent_channels: int, sample_size: int,
                  text_dim: int) -> UNet2DConditionModel:
    """SD's UNet at GenLab's size: cross-attention transformers in the down blocks flagged by --attention (and
    the mirrored up blocks and the middle), linear projections, heads of 32 channels."""
    attention = config.attention or (False,) + (True,) * (len(config.channels) - 1)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    heads = tuple(max(1, c // 32) for c in config.channels)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=config.channels, layers_per_block=config.layers_per_block, down_block_types=down,
        up_block_types=up, norm_num_groups=config.groups(), cross_attention_dim=text_dim,
        attention_head_dim=heads, use_linear_projection=True)


@torch.no_grad()
def warm_start(unet: UNet2DConditionModel, source: UNet2DModel) -> int:
    """Copy `source`'s tensors into `unet` wherever name and shape agree; fold the null class's embedding (if the
    source is class-conditional) into the time embedding's output bias, and zero every cross-attention
    transformer's output projection so it starts as the identity. Returns the number of tensors copied."""
    own, theirs = unet.state_dict(), source.state_dict()
    copied = {name: tensor for name, tensor in theirs.items() if name in own and own[name].shape == tensor.shape}
    unet.load_state_dict(copied, strict=False)
    embedding = getattr(source, "class_embedding", None)
    if embedding is not None:  # temb = linear_2(...) + class_embedding[null]: the unconditional branch
        null = source.config.num_class_embeds - 1
        unet.time_embedding.linear_2.bias += embedding.weight[null]
    for module in unet.modules():
        if type(module).__name__ == "Transformer2DModel":
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
    return len(copied)


class CaptionBank:
    """Every caption of the folder (and the empty prompt, id 0) through the frozen text encoder once: (N, L, D)."""

    def __init__(self, captions: list[list[str]], tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel,
                 batch: int = 256):
        self.texts = [""] + sorted({c for group in captions for c in group})
        lookup = {text: i for i, text in enumerate(self.texts)}
        self.ids = [[lookup[c] for c in group] for group in captions]  # image -> its caption ids
        device = text_encoder.device
        states = []
        with torch.no_grad():
            for start in range(0, len(self.texts), batch):
                tokens = tokenizer(self.texts[start:start + batch], padding="max_length", truncation=True,
                                   max_length=tokenizer.model_max_length, return_tensors="pt")
                states.append(text_encoder(tokens.input_ids.to(device))[0].float().cpu())
        self.states = torch.cat(states)  # (N, L, D)

    def draw(self, index, dropout: float, rng: np.random.Generator) -> torch.Tensor:
        """(B, L, D): a random caption of each image, the empty prompt with probability `dropout`."""
        chosen = [0 if rng.random() < dropout else self.ids[i][rng.integers(len(self.ids[i]))] for i in index]
        return self.states[chosen]


class ColourDraws:
    """Colour-balanced draws: a colour uniformly at random, then an image whose drawing shows it (`colour_name`, the
    rule `eval sd` measures samples with) and has a caption naming it as a word ("large brown circle", "brown
    hankey"), captioned by one of those. Images whose captions name another colour than they show ("black heart
    suit" is red) are drawn with their true colour's captions or not at all."""

    def __init__(self, data: common.ImageFolder, bank: CaptionBank):
        self.pools: dict[str, list[tuple[int, list[int]]]] = {}  # colour -> [(image index, its caption ids naming it)]
        for index, (image, ids) in enumerate(zip(data.images, bank.ids)):
            colour = colour_name(image[..., :3])
            naming = [i for i in ids if colour in bank.texts[i].replace(",", " ").split()] if colour else []
            if naming:
                self.pools.setdefault(colour, []).append((index, naming))
        self.colours = [colour for colour in COLOUR_WORDS if colour in self.pools]

    def draw(self, count: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """(image indices, caption ids), `count` of each."""
        drawn = []
        for _ in range(count):
            pool = self.pools[self.colours[rng.integers(len(self.colours))]]
            index, ids = pool[rng.integers(len(pool))]
            drawn.append((index, ids[rng.integers(len(ids))]))
        return [index for index, _ in drawn], [caption for _, caption in drawn]

    def describe(self) -> str:
        return ", ".join(f"{colour} {len(self.pools[colour])}" for colour in self.colours)


def load_parts(config: TextDiffusionConfig, checkpoint: Path, resuming: bool, device):
    """(vae, its source folder, tokenizer, text encoder, its source folder): from the checkpoint when resuming."""
    vae_source = checkpoint / "vae" if resuming else config.vae
    clip_source = checkpoint if resuming else config.clip
    vae = AutoencoderKL.from_pretrained(vae_source).to(device).requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(clip_source / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(clip_source / "text_encoder", dtype=torch.float32)  # fp32, as sampling
    text_encoder = text_encoder.to(device).requires_grad_(False).eval()
    return vae, vae_source, tokenizer, text_encoder, clip_source


def sd_sampling(scheduler: DDPMScheduler) -> DDPMScheduler:
    """A latent model's sampling settings (`ddpm.latent_sampling`: no clipping, "leading" timesteps) with
    `steps_offset` 1, as `StableDiffusionPipeline` rewrites any other offset to (25 steps: 961, 921, ..., 1):
    GenLab's loop and diffusers' pipeline then step through the same timesteps."""
    latent_sampling(scheduler).register_to_config(steps_offset=1)
    return scheduler


def load_sd_unet(config: TextDiffusionConfig, checkpoint: Path, resuming: bool, vae: AutoencoderKL,
                 text_dim: int, print_fn=print):
    """(UNet, the network its EMA starts from when not the UNet itself, scheduler)."""
    init_unet = config.init / "unet" if config.init and (config.init / "unet").is_dir() else config.init
    if resuming:
        return (UNet2DConditionModel.from_pretrained(checkpoint / "model"),
                UNet2DConditionModel.from_pretrained(checkpoint / "ema"),
                sd_sampling(DDPMScheduler.from_pretrained(checkpoint / "model")))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    scheduler = sd_sampling(build_scheduler(config))
    if config.init is None:
        return build_sd_unet(config, vae.config.latent_channels, config.crop // factor, text_dim), None, scheduler
    kind = json.loads((init_unet / "config.json").read_text()).get("_class_name")
    if kind == "UNet2DConditionModel":  # an SD pipeline: continue it
        unet = UNet2DConditionModel.from_pretrained(init_unet)
        if (config.init / "scheduler").is_dir():
            scheduler = sd_sampling(DDPMScheduler.from_pretrained(config.init / "scheduler"))
        return unet, UNet2DConditionModel.from_pretrained(init_unet), scheduler
    unet = build_sd_unet(config, vae.config.latent_channels, config.crop // factor, text_dim)
    copied = warm_start(unet, UNet2DModel.from_pretrained(init_unet))
    print_fn(f"warm start from {init_unet}: {copied} of {len(unet.state_dict())} tensors copied")
    if (config.init / "scheduler").is_dir():
        scheduler = sd_sampling(DDPMScheduler.from_pretrained(config.init / "scheduler"))
    return unet, None, scheduler


# ------------------------------------------------------------------------------ the run
def train_sd(config: TextDiffusionConfig, accelerator: Accelerator, data: common.ImageFolder,
             state: common.RunState) -> None:
    captions = read_captions(data)
    checkpoint = config.run_dir / "checkpoint"
    resuming = config.resume and (checkpoint / "model").exists()
    vae, vae_source, tokenizer, text_encoder, clip_source = load_parts(config, checkpoint, resuming, accelerator.device)
    unet, ema_start, scheduler = load_sd_unet(config, checkpoint, resuming, vae, text_encoder.config.hidden_size,
                                              accelerator.print)
    guide = ddpm.load_guide(config, unet)
    bank = CaptionBank(captions, tokenizer, text_encoder)
    accelerator.print(f"{len(bank.texts)} distinct captions, {tuple(bank.states.shape[1:])} hidden states each")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    unet, optimizer, ema, schedule = common.prepare_ema_training(accelerator, unet, ema_start, optimizer, config, state,
                                                                 checkpoint, resuming)
    seed = config.seed + state.step + accelerator.process_index
    latents = latent.LatentBank(vae, data, config.batch_size, seed, class_power=config.class_power, mirrored=False)
    latent_range = round(latents.value_range(), 2)
    colours = ColourDraws(data, bank) if config.colour_share > 0 else None
    colour_rows = round(config.colour_share * config.batch_size)
    if colours is not None:
        if not colours.colours:
            raise SystemExit(f"--colour-share: no image of {config.data} has a caption naming the colour it shows")
        accelerator.print(f"colour-balanced rows per batch: {colour_rows} (images per colour: {colours.describe()})")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    timer = common.Timer(state.wall_seconds)
    progress = tqdm(total=config.steps, initial=state.step, disable=not accelerator.is_main_process, desc="sd")
    running = None

    def save():
        state.wall_seconds = timer.total
        if accelerator.is_main_process:
            savers = [lambda folder: scheduler.save_pretrained(folder / "model"),
                      lambda folder: latent.save_autoencoder(vae, vae_source, folder / "vae")]
            if Path(clip_source).resolve() != checkpoint.resolve():
                savers.append(lambda folder: save_text_parts(tokenizer, text_encoder, clip_source, folder))
            ema_model = common.save_ema_checkpoint(accelerator, unet, ema, optimizer, state, checkpoint, *savers)
            export_sd(config, ema_model, scheduler, vae, vae_source, tokenizer, text_encoder, clip_source, state,
                      latent_range, data, guide)

    while common.keep_training(state, timer, config):
        index, _ = latents.draw()  # no mirror images (the bank holds none): captions name directions ("facing right")
        hidden = bank.draw(index.tolist(), config.label_dropout, rng)  # (B, L, D)
        if colours is not None and colour_rows:
            coloured, caption_ids = colours.draw(colour_rows, rng)
            index[:colour_rows] = torch.tensor(coloured)
            hidden[:colour_rows] = bank.states[caption_ids]
        hidden = hidden.to(accelerator.device)
        mean, std = latents.mean[index, 0], latents.std[index, 0]
        clean = (latents.scaling_factor * (mean + std * torch.randn(mean.shape, generator=generator))).to(accelerator.device)
        timesteps = sample_timesteps(len(clean), scheduler.config.num_train_timesteps, config.t_focus_max,
                                     config.t_focus_share, generator).to(accelerator.device)
        with accelerator.autocast():
            noise = torch.randn_like(clean)
            prediction = unet(scheduler.add_noise(clean, noise, timesteps), timesteps,
                              encoder_hidden_states=hidden).sample
            per_sample = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
            loss = (per_sample * min_snr_weights(scheduler.alphas_cumprod, timesteps, config.min_snr_gamma)).mean()
        running = common.ema_step(accelerator, unet, loss, optimizer, schedule, ema, state, running)
        common.end_step(accelerator, progress, state, config, running, schedule, ema, save, lambda: save_sd_samples(
            common.ema_copy(accelerator, unet, ema), scheduler, vae, tokenizer, text_encoder,
            config.run_dir / "samples" / f"{state.step:06d}.png", config.guidance_scale))
    save()
    progress.close()


def save_text_parts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, source: Path, target: Path,
                    fp16: bool = False) -> None:
    """tokenizer/ and text_encoder/ (and the CLIP's card and run record, for the pipeline's card)."""
    tokenizer.save_pretrained(target / "tokenizer")
    common.save_network(text_encoder, target / "text_encoder", fp16)
    for name in ("README.md", "run.json"):
        if (Path(source) / name).is_file() and Path(source).resolve() != Path(target).resolve():
            shutil.copy(Path(source) / name, target / "text_encoder" / name)
        elif (Path(source) / "text_encoder" / name).is_file():
            shutil.copy(Path(source) / "text_encoder" / name, target / "text_encoder" / name)


@torch.no_grad()
def save_sd_samples(unet: UNet2DConditionModel, scheduler, vae: AutoencoderKL, tokenizer: CLIPTokenizer,
                    text_encoder: CLIPTextModel, path: Path, guidance_scale: float,
                    prompts=SAMPLE_PROMPTS) -> None:
    """One sample per prompt of `prompts` at 25 DPM-Solver++ steps, seed 0, through GenLab's one reverse loop."""
    from ..conditioning.guidance import Conditioning
    from ..diffusion import iterate_reverse, make_scheduler
    from ..sampling import SamplingSettings

    unet.eval()
    tokens = tokenizer(list(prompts) + [""] * len(prompts), padding="max_length", truncation=True,
                       return_tensors="pt")
    states = text_encoder(tokens.input_ids.to(text_encoder.device))[0].float().cpu()  # (2P, L, D)
    conditioning = Conditioning({"encoder_hidden_states": states[:len(prompts)]},
                                {"encoder_hidden_states": states[len(prompts):]})
    size = unet.config.sample_size
    noise = torch.randn((len(prompts), unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(0))
    sampler = make_scheduler(scheduler.config, "dpm++")
    sampler.set_timesteps(25)
    sample = noise * sampler.init_noise_sigma
    for _, sample in iterate_reverse(unet, sampler, sample, SamplingSettings(steps=25, guidance_scale=guidance_scale),
                                     conditioning=conditioning, clip_x0=None):
        pass
    images = vae.decode(sample.to(vae.device) / vae.config.scaling_factor).sample.float().clamp(-1, 1).cpu()
    common.save_grid(images, path, columns=4)


def write_sd_index(out: Path) -> None:
    """Stable Diffusion's model_index.json: the pipeline class and each component's library and class."""
    import diffusers

    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
             "safety_checker": [None, None], "scheduler": ["diffusers", "DDPMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


def export_sd(config: TextDiffusionConfig, unet: UNet2DConditionModel, scheduler, vae: AutoencoderKL,
              vae_source: Path, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, clip_source: Path,
              state: common.RunState, latent_range: float | None, data: common.ImageFolder,
              guide: UNet2DConditionModel | None = None) -> None:
    """The pipeline folder (see the module docstring), with training_images/: the training set at 32 px, what
    the app's nearest-training-image panel and the copy check of `python -m genlab.eval sd` search."""
    from ..imaging.nearest import write_training_index

    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    common.save_network(unet, out / "unet", config.export_fp16)
    scheduler.save_pretrained(out / "scheduler")
    latent.save_autoencoder(vae, vae_source, out / "vae", config.export_fp16)
    save_text_parts(tokenizer, text_encoder, clip_source, out, config.export_fp16)
    write_sd_index(out)
    if not (out / "training_images").is_dir():  # written once: the training set does not change within a run
        write_training_index(data.images, data.names, out / "training_images")
    autoguidance = ddpm.export_guide(config, guide, out)
    write_model_info(out, ModelInfo(kind="diffusion", title=out.name, default_guidance_scale=config.guidance_scale,
                                    default_autoguidance_scale=autoguidance))
    state.save(out)
    save_sd_samples(unet, scheduler, vae, tokenizer, text_encoder, out / "samples.png", config.guidance_scale)
    write_sd_card(config, unet, vae, vae_source, tokenizer, text_encoder, state, latent_range)


def write_sd_card(config: TextDiffusionConfig, unet, vae, vae_source, tokenizer, text_encoder, state,
                  latent_range) -> None:
    size = unet.config.sample_size
    text = text_encoder.config
    summary = (
        f"GenLab's own Stable Diffusion: a noise-prediction diffusers `UNet2DConditionModel` ({cards.millions(unet)} "
        f"parameters: blocks of {', '.join(map(str, unet.config.block_out_channels))} channels, cross-attention in "
        f"{', '.join(b for b in unet.config.down_block_types if b.startswith('CrossAttn'))} and the middle) over the "
        f"{unet.config.in_channels}x{size}x{size} latents of the KL autoencoder in `vae/` (from `{vae_source}`, "
        f"frozen), conditioned on the last hidden states ({text.max_position_embeddings} x {text.hidden_size}) of "
        f"the CLIP text encoder in `text_encoder/` ({cards.millions(text_encoder)} parameters, trained here, frozen) "
        f"through its `tokenizer/` ({len(tokenizer)} byte-level BPE entries). A {config.beta_schedule} beta schedule "
        f"over 1000 steps, caption dropout {config.label_dropout} for classifier-free guidance (default guidance "
        f"{config.guidance_scale:g}); Min-SNR-gamma {config.min_snr_gamma or 'off'}. Exported weights are the EMA "
        "weights. Loads with diffusers' `StableDiffusionPipeline.from_pretrained` as well as with GenLab."
        + cards.guide_text(config))
    colours = (f"; a share {config.colour_share:g} of each batch drawn colour-balanced (`--colour-share`)"
               if config.colour_share else "")
    data = (f"`{config.data}` and its captions.json (a random caption per image and step), whole images, batch "
            f"{config.batch_size}, {config.lr_text()}{colours}; the latents' training range is +-{latent_range}.")
    extra = (f"`samples.png`: one sample for each of {len(SAMPLE_PROMPTS)} prompts ({'; '.join(SAMPLE_PROMPTS)}), "
             f"25 DPM-Solver++ steps, seed 0, guidance {config.guidance_scale:g}.\n\n"
             + cards.first_stage_section(config.out, "vae", "The autoencoder")
             + cards.first_stage_section(config.out, "text_encoder", "The CLIP text encoder"))
    cards.write_model_card(config.out, f"GenLab {config.out.name}", summary, data, state, extra)
