"""Shared training plumbing: image-folder datasets, pickle-free checkpoints, run timing and the step loop's
bookkeeping (the model cards are `genlab.train.cards`).

Checkpoints never use pickle: model weights go through diffusers' `save_pretrained`
(safetensors), optimizer state is flattened into a safetensors file plus a JSON file for its
non-tensor parts, and run metadata (step, wall time, command) is JSON.
"""

from __future__ import annotations

import json
import platform
import random
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from PIL import Image
from safetensors.torch import load_file, save_file

from ..tools.data import list_images
from ..imaging.io import image_grid, open_image, tensor_to_pil


# --------------------------------------------------------------------------------- data
class ImageFolder:
    """Every image under a folder, decoded once into memory as uint8 (H, W, 3).

    A `labels.json` ({file name: class name}) and optional `classes.json` (ordered class names)
    make the folder class-labelled.
    """

    def __init__(self, root: Path, scales=(1.0,)):
        self.root = Path(root)
        paths = list_images(self.root)
        if not paths:
            raise SystemExit(f"no images under {self.root}")
        label_file = self.root / "labels.json"
        labels = json.loads(label_file.read_text()) if label_file.exists() else None
        class_file = self.root / "classes.json"
        self.classes: list[str] = (
            json.loads(class_file.read_text()) if class_file.exists()
            else sorted(set(labels.values())) if labels else []
        )
        self.images: list[np.ndarray] = []
        self.labels: list[int] = []
        self.names: list[str] = []  # each image's file name (captions.json's keys)
        for path in paths:
            image = open_image(path)
            label = self.classes.index(labels[path.name]) if labels and path.name in labels else -1
            for scale in scales:
                scaled = image if scale == 1.0 else image.resize(
                    (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
                )
                self.images.append(np.asarray(scaled))
                self.labels.append(label)
                self.names.append(path.name)
        self.labels_array = np.array(self.labels)

    def __len__(self) -> int:
        return len(self.images)


class RandomCrops:
    """Endless batches of random (optionally flipped) crops, sampled in proportion to image area.

    `class_power` reweights a labelled folder so that class c is drawn with probability proportional
    to n_c ** class_power: 1 keeps the data's own mix, 0 draws every class equally often, 0.5 is
    square-root sampling (Mahajan et al., arXiv:1805.00932), which gives rare classes more steps
    without repeating a handful of images endlessly. Unlabelled images (-1) form one group.

    Images smaller than the crop are edge-padded. Returns (B, 3, S, S) in [-1, 1] and labels (B,).
    """

    def __init__(self, folder: ImageFolder, crop: int, batch_size: int, seed: int, flip: bool = True,
                 class_power: float = 1.0):
        self.folder, self.crop, self.batch_size, self.flip = folder, crop, batch_size, flip
        areas = np.array([max(1, (h - crop + 1) * (w - crop + 1)) for h, w, _ in (i.shape for i in folder.images)], float)
        weights = areas / areas.sum()
        if class_power != 1.0:
            _, group, counts = np.unique(folder.labels_array, return_inverse=True, return_counts=True)
            mass = np.bincount(group, weights=weights)  # (G,) each group's share of the draws so far
            target = counts.astype(float) ** class_power
            weights = weights * (target / target.sum() / mass)[group]
        self.weights = weights / weights.sum()
        self.rng = np.random.default_rng(seed)

    def _crop(self, image: np.ndarray) -> np.ndarray:
        size = self.crop
        h, w, _ = image.shape
        if h < size or w < size:
            pad_h, pad_w = max(0, size - h), max(0, size - w)
            image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)), mode="edge")
            h, w, _ = image.shape
        top, left = self.rng.integers(0, h - size + 1), self.rng.integers(0, w - size + 1)
        patch = image[top:top + size, left:left + size]
        if self.flip and self.rng.random() < 0.5:
            patch = patch[:, ::-1]
        return patch

    def __iter__(self):
        while True:
            index = self.rng.choice(len(self.folder.images), size=self.batch_size, p=self.weights)
            batch = np.stack([self._crop(self.folder.images[i]) for i in index])  # (B, S, S, 3)
            pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, S, S)
            yield pixels, torch.from_numpy(self.folder.labels_array[index])


# ---------------------------------------------------------------------------- checkpoints
def save_network(model, folder: Path, fp16: bool = False) -> None:
    """`save_pretrained` in safetensors; fp16 halves the bytes of an exported network (GenLab upcasts on CPU)
    and leaves the training model in its own dtype."""
    import copy

    (copy.deepcopy(model).half() if fp16 else model).save_pretrained(folder, safe_serialization=True)


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    state = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for param_id, values in state["state"].items():
        meta["state"][str(param_id)] = {}
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta["state"][str(param_id)][key] = value
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps(meta))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Restore moments, step counts and the saved learning rate (`lr_scheduler` then sets the rate of
    a resumed run from its --lr and step)."""
    meta = json.loads((folder / "optimizer.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state = {int(k): dict(v) for k, v in meta["state"].items()}
    for name, tensor in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def lr_scheduler(optimizer: torch.optim.Optimizer, name: str, lr: float, warmup: int, total: int, step: int):
    """diffusers' `get_scheduler` (e.g. linear warmup then cosine decay to 0 at `total`), placed at `step`.

    The schedule is a function of the step count alone, so nothing extra is checkpointed: a resumed
    run continues the same curve, with `lr` as its peak and `total` as its end (both may change on
    resume). Step it after each optimizer step.
    """
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total, last_epoch=step - 1)


def prepare_ema_training(accelerator, model: torch.nn.Module, ema_start, optimizer, config, state: "RunState",
                          checkpoint: Path, resuming: bool):
    """(model, optimizer, EMA, rate schedule) of a trainer that exports EMA weights (the DDPM, LDM and prior
    trainers): the EMA starts from `ema_start` (a resumed run's EMA, or the --init weights) or the model itself,
    at the run's step; a resumed optimizer gets its moments back; both go through accelerate."""
    from diffusers.training_utils import EMAModel

    ema = EMAModel((ema_start or model).parameters(), decay=config.ema_decay, use_ema_warmup=True, power=2 / 3,
                   model_cls=type(model), model_config=model.config)
    ema.optimization_step = state.step
    if resuming:
        load_optimizer(optimizer, checkpoint)
    schedule = lr_scheduler(optimizer, config.lr_schedule, config.lr, config.warmup_steps, config.steps, state.step)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    return model, optimizer, ema, schedule


def ema_copy(accelerator, model: torch.nn.Module, ema) -> torch.nn.Module:
    """A fresh copy of `model`'s network holding the EMA weights, in eval mode (what gets exported)."""
    unwrapped = accelerator.unwrap_model(model)
    ema_model = type(unwrapped).from_config(unwrapped.config)
    ema.copy_to(ema_model.parameters())
    return ema_model.eval()


def save_ema_checkpoint(accelerator, model: torch.nn.Module, ema, optimizer, state: "RunState", checkpoint: Path,
                        *savers) -> torch.nn.Module:
    """A resumable checkpoint of an EMA trainer: model/ and ema/ (save_pretrained), what each of `savers`
    (callables of the folder) adds, the optimizer, then run.json last; returns the EMA network (to export)."""
    checkpoint.mkdir(parents=True, exist_ok=True)
    accelerator.unwrap_model(model).save_pretrained(checkpoint / "model")
    ema_model = ema_copy(accelerator, model, ema)
    ema_model.save_pretrained(checkpoint / "ema")
    for save in savers:
        save(checkpoint)
    save_optimizer(optimizer, checkpoint)
    state.save(checkpoint)
    return ema_model


def ema_step(accelerator, model: torch.nn.Module, loss: torch.Tensor, optimizer, schedule, ema, state: "RunState",
             running: float | None) -> float:
    """One optimizer step of a model with EMA weights (the DDPM, LDM and prior trainers): backward, clip the
    gradient norm to 1, step optimizer, rate schedule and EMA, count the step; returns the running loss."""
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    ema.step(model.parameters())
    state.step += 1
    return loss.item() if running is None else 0.98 * running + 0.02 * loss.item()


def end_step(accelerator, progress, state: "RunState", config, running: float, schedule, ema, save, sample) -> None:
    """The bookkeeping after an EMA trainer's step: the progress bar (and every `log_every` steps its loss, rate
    and EMA decay), `save()` every `save_every` steps, `sample()` (main process) every `sample_every` steps."""
    progress.update(1)
    if state.step % config.log_every == 0:
        progress.set_postfix(loss=round(running, 4), lr=f"{schedule.get_last_lr()[0]:.2e}",
                             ema_decay=round(ema.cur_decay_value or 0.0, 5))
    if state.step % config.save_every == 0:
        save()
    if state.step % config.sample_every == 0 and accelerator.is_main_process:
        sample()


def save_modules(modules: dict[str, torch.nn.Module], folder: Path) -> None:
    """Plain (non-diffusers) modules, e.g. the discriminator, as safetensors state dicts."""
    for name, module in modules.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                  str(folder / f"{name}.safetensors"))


def load_modules(modules: dict[str, torch.nn.Module], folder: Path) -> None:
    for name, module in modules.items():
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))


@dataclass
class RunState:
    """What a resumed run needs besides weights: the step, the wall time spent, the commands run."""

    step: int = 0
    wall_seconds: float = 0.0
    commands: list[str] = field(default_factory=list)
    hardware: list[str] = field(default_factory=list)

    def save(self, folder: Path) -> None:
        (folder / "run.json").write_text(json.dumps(self.__dict__, indent=1))

    @classmethod
    def load(cls, folder: Path) -> "RunState":
        return cls(**json.loads((folder / "run.json").read_text()))


def describe_hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(device)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command_line(argv: list[str]) -> str:
    return "python -m genlab.train " + " ".join(shlex.quote(a) for a in argv)


class Timer:
    """Wall time of a run: `already` (the seconds of the runs it resumes) plus this process's."""

    def __init__(self, already: float = 0.0):
        self.start, self.already = time.monotonic(), already

    @property
    def total(self) -> float:
        return self.already + time.monotonic() - self.start


def keep_training(state: RunState, timer: Timer, config) -> bool:
    """Whether a run takes another step: below `config.steps`, and within `config.max_minutes` of this process."""
    return state.step < config.steps and timer.total - timer.already < config.max_seconds


@torch.no_grad()
def psnr(reconstruction: torch.Tensor, pixels: torch.Tensor) -> float:
    """PSNR in dB of a (B, 3, H, W) reconstruction in [-1, 1] (clamped) against `pixels`."""
    return (-10 * torch.log10(((reconstruction.float().clamp(-1, 1) - pixels) / 2).pow(2).mean())).item()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_grid(tensors: torch.Tensor, path: Path, columns: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid([tensor_to_pil(t) for t in tensors], columns=columns).save(path)
