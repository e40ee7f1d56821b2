"""The stored emoji judge: a small 64 px CNN over emoji.json's subcategories, trained once and kept in weights/.

    python -m genlab.eval train-judge --data data/emoji --out weights/emoji-judge

A generator is measured in the penultimate feature space of a fixed network (Heusel et al. 2017,
arXiv:1706.08500; Kynkäänniemi et al. 2019, arXiv:1904.06991). Inception features do not know emoji, and a
judge retrained by every evaluation moves every figure by its own noise, so GenLab trains one on the real
emoji's train split (`data/emoji/64-train`) and stores it beside the generators.

Classes: emoji.json's subcategories (`face-smiling`, `animal-mammal`, ...). Those with fewer than
`MIN_CLASS_IMAGES` training images are merged into one "<category>-other" class per category, kept even when
it stays small (Component holds only the five skin-tone swatches). `classes.json` maps every class to its
category, in the order of the logits, so the category of a prediction is the sum of its classes' probabilities.

Training: class-balanced draws (each class equally often), random shifts and scales of a few pixels on
the white background, horizontal flips except for Symbols and Flags (a mirrored letter, arrow sign or
flag is no longer that emoji), colour untouched (a red and a green apple are different emoji), AdamW
with a cosine learning rate to zero.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.nn import functional as F

MIN_CLASS_IMAGES = 8  # a subcategory with fewer training images joins "<category>-other"
NO_FLIP_CATEGORIES = ("Symbols", "Flags")
JUDGE_SIDE = 64


class EmojiJudge(ModelMixin, ConfigMixin):
    """Conv stages (two 3x3 conv + BatchNorm + ReLU each, 2x max-pool between), a stride-2 stem, global
    average pooling to the feature vector, and a linear head over `num_classes` subcategory classes."""

    @register_to_config
    def __init__(self, num_classes: int = 64, block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
                 image_size: int = JUDGE_SIDE, dropout: float = 0.2):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"the judge needs at least 2 classes, got {num_classes}")
        if image_size % 2 ** len(block_out_channels):
            raise ValueError(f"image_size {image_size} must be divisible by 2 ** {len(block_out_channels)} stages")
        layers: list[nn.Module] = [nn.Conv2d(3, block_out_channels[0], 3, stride=2, padding=1),
                                   nn.BatchNorm2d(block_out_channels[0]), nn.ReLU()]
        width = block_out_channels[0]
        for index, out in enumerate(block_out_channels):
            if index:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                width = out
        self.body = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def check_images(self, images: torch.Tensor) -> None:
        side = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the judge reads (B, 3, {side}, {side}) images, got shape {tuple(images.shape)}")
        if images.shape[-2:] != (side, side):
            raise ValueError(f"the judge reads {side}x{side} images, got {images.shape[-1]}x{images.shape[-2]}: "
                             f"resize them first (genlab.tools.judge.to_judge_size)")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, D) penultimate features."""
        self.check_images(images)
        return self.body(images).mean(dim=(2, 3))  # (B, C, S/16, S/16) -> (B, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(images)))  # (B, num_classes) logits


def to_judge_size(images: torch.Tensor, side: int = JUDGE_SIDE) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, side, side): area average when larger, bilinear when smaller (32 px samples)."""
    if images.shape[-1] == side and images.shape[-2] == side:
        return images
    mode = "area" if images.shape[-1] > side else "bilinear"
    return F.interpolate(images, size=(side, side), mode=mode, **({} if mode == "area" else {"align_corners": False}))


# ----------------------------------------------------------------------------------- data
class LabelledEmoji:
    """A data/emoji split in memory: (N, 3, 64, 64) uint8 pixels, each file's category and subcategory."""

    def __init__(self, folder: Path):
        from ..imaging.io import open_image

        folder = Path(folder)
        files = [folder / name for name in ("labels.json", "subcategories.json")]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise SystemExit(f"{folder} is not an emoji split with subcategories (missing {', '.join(missing)}); "
                             f"build it with `python -m genlab.data emoji --out data/emoji`")
        labels, subcategories = (json.loads(f.read_text()) for f in files)
        self.names = sorted(labels)
        if not self.names:
            raise SystemExit(f"no labelled images in {folder}")
        self.categories = [labels[name] for name in self.names]
        self.subcategories = [subcategories[name] for name in self.names]
        arrays = [np.asarray(open_image(folder / name)) for name in self.names]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise SystemExit(f"images in {folder} differ in size: {sorted(shapes)}")
        self.pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8

    def __len__(self) -> int:
        return len(self.names)

    def images(self, index=None) -> torch.Tensor:
        """(N, 3, H, W) float in [-1, 1]."""
        pixels = self.pixels if index is None else self.pixels[index]
        return pixels.float() / 127.5 - 1.0


def merge_subcategories(subcategories: list[str], categories: list[str],
                        min_images: int = MIN_CLASS_IMAGES) -> dict[str, str]:
    """{class: category} in a stable order (category order of first appearance, then by name): subcategories
    with at least `min_images` images keep their name, the rest of a category share "<category>-other"."""
    counts = Counter(zip(categories, subcategories))
    order = list(dict.fromkeys(categories))
    classes: dict[str, str] = {}
    for category in order:
        kept = sorted(s for (c, s), n in counts.items() if c == category and n >= min_images)
        classes.update({name: category for name in kept})
        if any(c == category and n < min_images for (c, s), n in counts.items()):
            classes[f"{category}-other"] = category
    return classes


def class_index(subcategory: str, category: str, classes: list[str]) -> int:
    """The judge's class of an emoji (its subcategory, or its category's merged class); -1 when neither exists."""
    for name in (subcategory, f"{category}-other"):
        if name in classes:
            return classes.index(name)
    return -1


# --------------------------------------------------------------------------------- training
def augment(images: torch.Tensor, flippable: torch.Tensor, generator: torch.Generator,
            shift: float = 4 / 32, scale: float = 0.1) -> torch.Tensor:
    """Random scale (1 ± `scale`), shift (± `shift` of the half-width) and, where `flippable`, a mirror;
    the uncovered border is white, like the emoji's own background. (B, 3, S, S) in [-1, 1]."""
    count = len(images)
    zoom = 1 + (torch.rand(count, generator=generator) * 2 - 1) * scale
    flip = torch.where(flippable & (torch.rand(count, generator=generator) < 0.5), -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = flip / zoom, 1 / zoom
    theta[:, :, 2] = (torch.rand(count, 2, generator=generator) * 2 - 1) * shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images - 1, grid, padding_mode="zeros", align_corners=False) + 1  # zeros -> white


def train_judge(train: LabelledEmoji, steps: int = 1500, batch: int = 64, lr: float = 3e-3, seed: int = 0,
                config: dict | None = None, log_every: int = 100) -> tuple[EmojiJudge, dict[str, str]]:
    """Train a judge on `train`; returns (judge in eval mode, {class: category})."""
    classes = merge_subcategories(train.subcategories, train.categories)
    names = list(classes)
    labels = torch.tensor([class_index(s, c, names) for s, c in zip(train.subcategories, train.categories)])
    flippable = torch.tensor([c not in NO_FLIP_CATEGORIES for c in train.categories])
    counts = torch.bincount(labels, minlength=len(names)).float()
    draw_weights = (1.0 / counts)[labels]  # (N,): every class drawn equally often
    torch.manual_seed(seed)
    judge = EmojiJudge(num_classes=len(names), image_size=train.pixels.shape[-1], **(config or {}))
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05,
                                                   anneal_strategy="cos")  # short warm-up, cosine to ~0
    generator = torch.Generator().manual_seed(seed)
    judge.train()
    start, running = time.perf_counter(), 0.0
    for step in range(steps):
        index = torch.multinomial(draw_weights, batch, replacement=True, generator=generator)
        x = augment(train.images(index), flippable[index], generator)
        loss = F.cross_entropy(judge(x), labels[index], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps}  loss {running / log_every:.3f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            running = 0.0
    return judge.eval(), classes


@torch.no_grad()
def judge_outputs(judge: EmojiJudge, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D), class probabilities (N, K)) of (N, 3, S, S) images in [-1, 1]."""
    judge.check_images(images)
    features, probs = [], []
    for chunk in images.split(batch):
        feature = judge.features(chunk)
        features.append(feature)
        probs.append(judge.head(feature).softmax(dim=1))
    return torch.cat(features).double(), torch.cat(probs)


def category_probabilities(probs: torch.Tensor, classes: dict[str, str], categories: list[str]) -> torch.Tensor:
    """(N, K) class probabilities -> (N, C) category probabilities, columns in the order of `categories`."""
    owner = torch.tensor([categories.index(c) for c in classes.values()])
    return torch.zeros(len(probs), len(categories), dtype=probs.dtype).index_add_(1, owner, probs)


def held_out_accuracy(judge: EmojiJudge, classes: dict[str, str], holdout: LabelledEmoji) -> dict[str, float]:
    """Top-1 class accuracy and category accuracy (plain and balanced over categories) on held-out emoji."""
    names = list(classes)
    categories = list(dict.fromkeys(classes.values()))
    _, probs = judge_outputs(judge, holdout.images())
    labels = torch.tensor([class_index(s, c, names) for s, c in zip(holdout.subcategories, holdout.categories)])
    known = labels >= 0
    class_accuracy = (probs.argmax(1)[known] == labels[known]).float().mean().item()
    wanted = torch.tensor([categories.index(c) for c in holdout.categories])
    hit = (category_probabilities(probs, classes, categories).argmax(1) == wanted).float()
    per_category = [hit[wanted == c].mean().item() for c in range(len(categories)) if (wanted == c).any()]
    return {"class": class_accuracy, "category": hit.mean().item(), "category_balanced": float(np.mean(per_category)),
            "images": len(holdout), "with_known_class": int(known.sum())}


# ------------------------------------------------------------------------------ save / load
def save_judge(judge: EmojiJudge, classes: dict[str, str], out: Path, half: bool = True) -> None:
    """config.json + diffusion_pytorch_model.safetensors (fp16 when `half`) + classes.json ({class: category})."""
    out = Path(out)
    if len(classes) != judge.config.num_classes:
        raise ValueError(f"{len(classes)} class names for a judge with {judge.config.num_classes} classes")
    copy = EmojiJudge.from_config(judge.config)
    copy.load_state_dict(judge.state_dict())
    (copy.half() if half else copy).save_pretrained(out, safe_serialization=True)
    (out / "classes.json").write_text(json.dumps(classes, indent=1, ensure_ascii=False))


def load_judge(folder: Path) -> tuple[EmojiJudge, dict[str, str]]:
    """(judge in float32 eval mode, {class: category}) from a folder `save_judge` wrote."""
    folder = Path(folder)
    needed = [folder / "config.json", folder / "classes.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if not folder.is_dir() or missing:
        raise SystemExit(f"no emoji judge at {folder} (missing {', '.join(missing) or folder}); train one with "
                         f"`python -m genlab.eval train-judge --data data/emoji --out {folder}`")
    judge, info = EmojiJudge.from_pretrained(folder, output_loading_info=True, use_safetensors=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise SystemExit(f"the judge at {folder} does not match its config: {problems}")
    classes = json.loads((folder / "classes.json").read_text())
    if len(classes) != judge.config.num_classes:
        raise SystemExit(f"{folder}/classes.json names {len(classes)} classes, the judge has "
                         f"{judge.config.num_classes}")
    return judge.float().eval(), classes


# ---------------------------------------------------------------------------------- command
def train_and_store(data: Path, out: Path, steps: int = 1500, command: str = "", config: dict | None = None) -> str:
    """Train on `data`/64-train, measure on `data`/64-holdout, store in `out` with its model card; the summary."""
    data, out = Path(data), Path(out)
    start = time.perf_counter()
    train = LabelledEmoji(data / "64-train")
    holdout = LabelledEmoji(data / "64-holdout")
    judge, classes = train_judge(train, steps=steps, config=config)
    wall = time.perf_counter() - start
    full = held_out_accuracy(judge, classes, holdout)
    save_judge(judge, classes, out, half=True)
    stored, _ = load_judge(out)
    half = held_out_accuracy(stored, classes, holdout)
    weights = out / "diffusion_pytorch_model.safetensors"
    merged = {name: category for name, category in classes.items() if name.endswith("-other")}
    summary = "\n".join([
        "| statistic | value |", "|---|---|",
        f"| training images (64-train) | {len(train)} in {len(set(train.subcategories))} subcategories |",
        f"| classes | {len(classes)}: subcategories with ≥ {MIN_CLASS_IMAGES} training images, the rest merged into "
        f"{len(merged)} \"<category>-other\" classes |",
        f"| parameters | {sum(p.numel() for p in judge.parameters()):,} ({weights.stat().st_size / 1e6:.2f} MB fp16) |",
        f"| steps | {steps} of batch 64 (class-balanced) |",
        f"| wall time (loading, training) | {wall:.0f} s on {hardware()} |",
        f"| held-out images (64-holdout) | {holdout_count(full)} |",
        f"| held-out class accuracy (top-1) | {full['class']:.1%} (fp32) / **{half['class']:.1%}** (stored fp16) |",
        f"| held-out category accuracy | {full['category']:.1%} / **{half['category']:.1%}**; balanced over "
        f"categories {full['category_balanced']:.1%} / **{half['category_balanced']:.1%}** |",
    ])
    write_card(out, summary, command)
    return summary


def hardware() -> str:
    """The device the judge trains on, in words: the CPU model and torch's thread count."""
    import platform

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {torch.get_num_threads()} thread(s)"


def holdout_count(accuracy: dict) -> str:
    return (f"{accuracy['images']} ({accuracy['with_known_class']} of a subcategory or merged class the judge "
            f"knows; the class accuracy counts those)")


def write_card(out: Path, summary: str, command: str) -> None:
    """The model card; a "## Calibration" section written earlier is kept."""
    card = Path(out) / "README.md"
    calibration = ""
    if card.is_file():
        _, found, rest = card.read_text().partition("\n## Calibration")
        calibration = found + rest if found else ""
    card.write_text(f"""# emoji-judge

GenLab's stored judge of emoji generators (`genlab/tools/judge.py`): a {summary_params(out)} CNN classifier of
64x64 emoji over emoji.json's subcategories. Its penultimate features (global average pool, 128 values) give
the Fréchet distance, precision and recall (k = 3) of `python -m genlab.eval emoji --judge weights/emoji-judge`,
and its class probabilities, summed per category, give category accuracy.

- Data: `python -m genlab.data emoji --out data/emoji` (Noto Emoji from the npm package
  emoji-datasource-google): trained on `64-train/`, measured on `64-holdout/` (split by a hash of each
  emoji's code point; skin-tone variants stay on one side).
- Classes: `classes.json` maps each class (in logit order) to its category. Subcategories with fewer than
  {MIN_CLASS_IMAGES} training images are merged into "<category>-other".
- Training: class-balanced batches, random shifts (±4 px) and scales (±10%) on white, horizontal flips except
  Symbols and Flags, colour untouched, AdamW with a cosine learning rate, label smoothing 0.1.
- Stored as fp16 safetensors; `load_judge` runs it in float32.

Command: `{command}`

## Training and held-out accuracy
{summary}
{calibration}""")


def summary_params(out: Path) -> str:
    config = json.loads((Path(out) / "config.json").read_text())
    return f"{len(config['block_out_channels'])}-stage ({', '.join(map(str, config['block_out_channels']))} channels)"
