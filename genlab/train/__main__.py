"""GenLab's training CLI: VQ-VAE, VQGAN, DDPM, KL autoencoders, latent diffusion and token priors on any folder of images.

    python -m genlab.train vqvae --data data/photos/train --out weights/vqvae-photo
    python -m genlab.train vqgan --data data/photos/train --out weights/vqgan-photo --init weights/vqvae-photo
    python -m genlab.train ddpm  --data data/emoji/32     --out weights/ddpm-emoji --preset emoji
    python -m genlab.train ddpm  --data data/photos/train --out weights/ddpm-photo --preset photo-denoiser
    python -m genlab.train vae   --data data/emoji/64-train --out runs/emoji-vae --preset emoji-vae
    python -m genlab.train ldm   --data data/emoji/64-train --out weights/ldm-emoji --vae runs/emoji-vae
    python -m genlab.train vqgan --data data/emoji/64-train --out runs/emoji-vq --preset emoji-vq
    python -m genlab.train prior --data data/emoji/64-train --out weights/maskgit-emoji --vq runs/emoji-vq
    python -m genlab.train clip  --data data/emoji/64-train --out runs/emoji-clip
    python -m genlab.train sd    --data data/emoji/64-train --out weights/sd-emoji --vae weights/ldm-emoji/vae \
                                 --clip runs/emoji-clip

Runs on CPU or CUDA (bf16 autocast on GPU) and across GPUs or nodes with `accelerate launch -m
genlab.train ...`. Checkpoints (safetensors + JSON, no pickle) go to `--run-dir`; `--resume`
continues from there, `--init` starts from an exported weights folder (e.g. committed weights).
Every `--save-every` steps and at the end, the model (EMA weights for diffusion and priors) is exported to
`--out` with `save_pretrained`, plus its scheduler config and a model card.

This module only dispatches: the options and presets are `genlab.train.cli` and `genlab.train.config`, each
family's loop, losses and export live together (`vq`, `latent`, `ddpm`, `prior`, `distill`), and the model
cards are `genlab.train.cards`.
"""

from __future__ import annotations

import sys

import torch
from accelerate import Accelerator

from . import common
from .cli import parse_args
from .clip import train_clip
from .config import TrainConfig
from .ddpm import train_ddpm
from .latent import train_vae
from .prior import train_prior
from .sd import train_sd
from .vq import train_vq

TRAINERS = {"vqvae": train_vq, "vqgan": train_vq, "vae": train_vae, "ddpm": train_ddpm, "ldm": train_ddpm,
            "prior": train_prior, "clip": train_clip, "sd": train_sd}

__all__ = ["TRAINERS", "main", "start_run"]


def start_run(config: TrainConfig, argv: list[str]) -> tuple[Accelerator, common.RunState]:
    """The accelerator (CPU or CUDA, mixed precision) and the run's record: a resumed run's, or committed weights'
    when `--init` continues them in place, else a new one; this command is appended to it."""
    if config.threads:
        torch.set_num_threads(config.threads)
    mixed = config.mixed_precision or ("bf16" if torch.cuda.is_available() and not config.cpu else "no")
    accelerator = Accelerator(cpu=config.cpu, mixed_precision=mixed)
    common.seed_everything(config.seed)
    state = common.RunState()
    if config.resume and (config.run_dir / "checkpoint" / "run.json").exists():
        state = common.RunState.load(config.run_dir / "checkpoint")
    elif config.init and (config.init / "run.json").exists() and config.init.resolve() == config.out.resolve():
        state = common.RunState.load(config.init)  # continuing the committed weights: keep counting
    state.commands.append(common.command_line(argv))
    state.hardware.append(common.describe_hardware(accelerator.device))
    return accelerator, state


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    config = parse_args(argv)
    accelerator, state = start_run(config, argv)
    data = common.ImageFolder(config.data)
    accelerator.print(f"{len(data)} images from {config.data}" + (f", classes {data.classes}" if data.classes else ""))
    TRAINERS[config.kind](config, accelerator, data, state)


if __name__ == "__main__":
    sys.exit(main())
