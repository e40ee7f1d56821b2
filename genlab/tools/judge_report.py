"""A generator's report under the stored emoji judge, with the real floors printed beside it.

    python -m genlab.eval emoji --judge weights/emoji-judge --model weights/ldm-emoji --data data/emoji
    python -m genlab.eval calibrate-judge --judge weights/emoji-judge --data data/emoji --card

Reference: every real held-out emoji (`64-holdout/`), each category weighted equally. Rows:
- real train: `per_class` real emoji per category from `64-train/` (all of a smaller category), the best a
  generator of the train split can do (the floor);
- blurred: the same emoji under a heavy Gaussian blur (the "blob" control);
- noised: the same emoji plus Gaussian noise;
- the generator: `per_class` samples per category at its default settings.
The controls degrade the train draw rather than the held-out reference, so a degraded image is never scored
against its own clean copy, and the degradation is the only difference from the floor row.

Columns: Fréchet distance and precision / recall (k = 3) in the judge's features (genlab.tools.judge_metrics),
and category accuracy: the share of images whose category (the judge's class probabilities summed per
category) is the requested one, or for real emoji their own.

Per category: precision (the share of the category's images inside the whole real manifold), recall within the
category (the share of the category's real held-out emoji inside the manifold of the category's images alone: a
category whose samples repeat one shape covers few of them, the mode-collapse check) and category accuracy.
`category_bars` compares each with the real floor's: every category drawn (precision at least half the floor's)
and no collapse (recall within the category at least half the floor's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..imaging.io import image_grid
from .judge import LabelledEmoji, category_probabilities, judge_outputs, load_judge, to_judge_size
from .judge_metrics import K_NEIGHBOURS, balanced_weights, frechet_distance, precision_recall

BLUR_SIGMA = 3.0  # pixels at 64 px: the drawing's lines and features are gone, its colours stay
NOISE_SIGMA = 0.3  # in [-1, 1] units (about 38 of 255)
SAMPLE_BATCH = 16  # the samplers' largest batch


@dataclass
class JudgedSet:
    """Images seen by the judge: features (N, D), category probabilities (N, C), each image's wanted category."""
    name: str
    features: torch.Tensor
    category_probs: torch.Tensor
    categories: list[str]


@dataclass
class Row:
    name: str
    count: int
    frechet: float
    precision: float
    recall: float
    accuracy: float
    per_category: dict[str, tuple[float, float, float]]  # category -> (precision, recall within it, accuracy)


class Judge:
    """The stored judge, its categories and the held-out reference, loaded once."""

    def __init__(self, folder: Path, data: Path):
        self.model, self.classes = load_judge(folder)
        self.categories = list(dict.fromkeys(self.classes.values()))
        for split in ("64-train", "64-holdout"):
            if not (Path(data) / split).is_dir():
                raise SystemExit(f"{data} has no {split}/: pass the emoji root, e.g. --data data/emoji")
        self.train = LabelledEmoji(Path(data) / "64-train")
        holdout = LabelledEmoji(Path(data) / "64-holdout")
        self.reference = self.judge("real held-out", holdout.images(), holdout.categories)
        self.reference_weights = balanced_weights(holdout.categories)

    def judge(self, name: str, images: torch.Tensor, categories: list[str]) -> JudgedSet:
        unknown = sorted(set(categories) - set(self.categories))
        if unknown:
            raise SystemExit(f"the judge knows the categories {self.categories}, not {unknown}")
        features, probs = judge_outputs(self.model, images)
        return JudgedSet(name, features, category_probabilities(probs, self.classes, self.categories), categories)

    def score(self, judged: JudgedSet) -> Row:
        weights = balanced_weights(judged.categories)
        pr = precision_recall(self.reference.features, judged.features, self.reference_weights, weights)
        wanted = torch.tensor([self.categories.index(c) for c in judged.categories])
        hit = (judged.category_probs.argmax(1) == wanted).numpy()
        per_category = {}
        for category in dict.fromkeys(judged.categories):
            mine = np.array([c == category for c in judged.categories])
            per_category[category] = (float(pr["inside"][mine].mean()), self.recall_within(judged, category, mine),
                                      float(hit[mine].mean()))
        return Row(judged.name, len(judged.categories),
                   frechet_distance(self.reference.features, judged.features, self.reference_weights, weights),
                   pr["precision"], pr["recall"], float(weights @ hit), per_category)


    def recall_within(self, judged: JudgedSet, category: str, mine: np.ndarray) -> float:
        """The share of `category`'s real held-out emoji inside the k-NN manifold of `judged`'s images of that
        category (NaN when either side has k or fewer)."""
        real = np.array([c == category for c in self.reference.categories])
        if min(real.sum(), mine.sum()) <= K_NEIGHBOURS:
            return float("nan")
        return precision_recall(self.reference.features[torch.from_numpy(real)],
                                judged.features[torch.from_numpy(mine)])["recall"]


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 3, H, W) blurred by a separable Gaussian, edges replicated (the white background stays white)."""
    radius = max(1, int(3 * sigma))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=images.dtype) ** 2 / (2 * sigma ** 2))
    taps = (taps / taps.sum()).repeat(3, 1)  # (3, 2r + 1)
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, taps[:, None, None, :], groups=3)  # along W
    return F.conv2d(x, taps[:, None, :, None], groups=3)  # along H


def add_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + sigma * noise).clamp(-1, 1)


def draw_per_category(categories: list[str], per_class: int, seed: int = 0) -> list[int]:
    """Indices of `per_class` items of each category (all of a smaller one), seeded, in index order."""
    rng = np.random.default_rng(seed)
    picked = []
    for category in dict.fromkeys(categories):
        members = np.flatnonzero(np.array([c == category for c in categories]))
        picked += rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()
    return sorted(picked)


def real_floors(judge: Judge, per_class: int, resolution: int | None = None) -> list[JudgedSet]:
    """Real train emoji drawn per category, and the same emoji blurred and noised; with `resolution` below the
    judge's side, also the same emoji at that resolution, resized back as a model's samples of that size are:
    the best such a model can score."""
    index = draw_per_category(judge.train.categories, per_class)
    images = judge.train.images(torch.tensor(index))
    categories = [judge.train.categories[i] for i in index]
    sets = [judge.judge("real train (floor)", images, categories),
            judge.judge(f"real train, Gaussian blur σ = {BLUR_SIGMA:g} px", gaussian_blur(images, BLUR_SIGMA),
                        categories),
            judge.judge(f"real train + Gaussian noise σ = {NOISE_SIGMA:g}", add_noise(images, NOISE_SIGMA),
                        categories)]
    side = images.shape[-1]
    if resolution is not None and resolution < side:
        smaller = to_judge_size(to_judge_size(images, resolution), side)  # (N, 3, side, side)
        sets.append(judge.judge(f"real train at {resolution} px, resized to {side} px", smaller, categories))
    return sets


def sample_generator(model: str, per_class: int, out: Path, sampling: dict | None = None,
                     side: int = 64) -> tuple[dict, str]:
    """{"images": (N, 3, side, side), "categories", "seconds", "side"} of `per_class` samples per category and
    their own side, and how they were sampled; writes the grid `out`/judge_samples.png. Category i is sampled in
    batches of at most SAMPLE_BATCH with seeds i, i + 1000, i + 2000, ..."""
    from .eval_emoji import emoji_sampler

    sampling = sampling or {}
    generator, sample, how = emoji_sampler(model, sampling.get("steps"), sampling.get("guidance"),
                                           sampling.get("refine", 0), sampling.get("choice_temperature"),
                                           sampling.get("guidance_interval"), sampling.get("autoguidance"))
    start = time.perf_counter()
    pixels, categories, rows = [], [], []
    for index, name in enumerate(generator.classes):
        shown = []
        for chunk, start_at in enumerate(range(0, per_class, SAMPLE_BATCH)):
            batch, images = sample(index + 1000 * chunk, name, min(SAMPLE_BATCH, per_class - start_at))
            pixels.append(batch.float())
            shown += images
        categories += [name] * per_class
        rows.append(image_grid(shown[:16], columns=16))
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    image_grid(rows, columns=1, gap=4).save(out / "judge_samples.png")
    own_side = pixels[0].shape[-1]
    guidance = sampling.get("guidance")
    how += f", guidance {guidance if guidance is not None else generator.default_guidance_scale}"
    return {"images": to_judge_size(torch.cat(pixels), side), "categories": categories, "seconds": seconds,
            "side": own_side}, how


def format_rows(rows: list[Row], categories: list[str]) -> str:
    """The summary table and a per-category table (precision / recall within the category / category accuracy
    per cell; "–" where a category has too few images for k-NN)."""
    table = ["| images | n | FD ↓ | precision ↑ | recall ↑ | category accuracy ↑ |", "|---|---|---|---|---|---|"]
    table += [f"| {r.name} | {r.count} | {r.frechet:.2f} | {r.precision:.3f} | {r.recall:.3f} | {r.accuracy:.1%} |"
              for r in rows]
    table += ["", "Per category: precision / recall within the category / category accuracy.", "",
              "| images | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
    for r in rows:
        cells = [_category_cell(*r.per_category[c]) if c in r.per_category else "–" for c in categories]
        table.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(table)


def _category_cell(precision: float, recall: float, accuracy: float) -> str:
    recall_text = "–" if np.isnan(recall) else f"{recall:.2f}"
    return f"{precision:.2f} / {recall_text} / {accuracy:.0%}"


def category_bars(floor: Row, model: Row) -> str:
    """Issue 33's per-category bars for `model` against the real floor: every category drawn (precision at least
    half the floor's) and no mode collapse (recall within the category at least half the floor's), naming the
    categories below with their figures; categories without a recall on either side are left out of that bar."""
    verdicts = []
    for index, bar in ((0, "every category drawn (precision ≥ half the real floor's)"),
                       (1, "no mode collapse (recall within each category ≥ half the real floor's)")):
        measured = [c for c in model.per_category if c in floor.per_category
                    and not np.isnan(model.per_category[c][index]) and not np.isnan(floor.per_category[c][index])]
        below = [f"{c} {model.per_category[c][index]:.2f} vs {floor.per_category[c][index]:.2f}" for c in measured
                 if model.per_category[c][index] < 0.5 * floor.per_category[c][index]]
        verdicts.append(f"{model.name}, {bar}: " + (f"yes, {len(measured)} categories" if not below
                                                    else f"NO ({'; '.join(below)})"))
    return "\n".join(f"- {v}" for v in verdicts)


def ranking(rows: list[Row]) -> str:
    """Whether the judge ranks real, the generator and the degraded controls as a judge should.

    FD, recall and category accuracy must order real > samples > every control. Precision must put real and
    samples above every control, but not real above samples: precision rewards samples in the dense part of the
    real manifold, so a guided sampler, which trades diversity for typical samples, may score above real data on
    it (Kynkäänniemi et al. 2019, the truncation trick), while recall pays for it."""
    real, model, controls = rows[0], rows[-1], rows[1:3]  # real_floors' order: real, blurred, noised, ...
    ordered = {"FD": lambda r: -r.frechet, "recall": lambda r: r.recall, "category accuracy": lambda r: r.accuracy}
    verdicts = []
    for name, goodness in ordered.items():
        ok = goodness(real) > goodness(model) > max(goodness(c) for c in controls)
        verdicts.append(f"{name}: {'yes' if ok else 'NO'}")
    above = min(real.precision, model.precision) > max(c.precision for c in controls)
    verdicts.insert(1, f"precision (real and samples above the controls): {'yes' if above else 'NO'}")
    return "Real train > samples > blurred and noised? " + "; ".join(verdicts) + "."


def judge_report(judge_folder: Path, data: Path, model: str, out: Path, per_class: int,
                 sampling: dict | None = None) -> tuple[str, list[Row]]:
    """The tables of `model` under the judge beside the real floors, and their rows."""
    judge = Judge(judge_folder, data)
    side = judge.model.config.image_size
    samples, how = sample_generator(model, per_class, out, sampling, side)
    sets = real_floors(judge, per_class, samples["side"])
    sets.append(judge.judge(f"{Path(model).name} samples", samples["images"], samples["categories"]))
    rows = [judge.score(s) for s in sets]
    resized = f"; {samples['side']} px samples resized to {side} px" if samples["side"] != side else ""
    notes = (f"Reference: the {len(judge.reference.categories)} real held-out emoji (`{data}/64-holdout`), every "
             f"category weighted equally; judge `{judge_folder}`; k = 3. {Path(model).name}: {per_class} samples per "
             f"category, {how}{resized}, sampled in {samples['seconds']:.0f} s on {torch.get_num_threads()} CPU "
             f"thread(s); grid in `{out}/judge_samples.png`.")
    return format_rows(rows, judge.categories) + "\n\n" + category_bars(rows[0], rows[-1]) + "\n\n" + notes, rows


def calibrate(judge_folder: Path, data: Path, model: str, out: Path, per_class: int, card: bool = False,
              command: str = "") -> str:
    """The calibration table (floors, controls, one generator) and its ranking verdict; `card` writes them into
    the judge's README.md under "## Calibration"."""
    text, rows = judge_report(judge_folder, data, model, out, per_class)
    text += "\n\n" + ranking(rows)
    if card:
        path = Path(judge_folder) / "README.md"
        head = path.read_text().partition("\n## Calibration")[0] if path.is_file() else "# emoji-judge\n"
        path.write_text(f"{head.rstrip()}\n\n## Calibration\n\nPrinted by `{command.replace(' --card', '')}`:\n\n"
                        f"{text}\n")
    return text
