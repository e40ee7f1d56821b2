"""`python -m genlab.eval sd`: a text-to-image emoji model (a Stable Diffusion layout) measured four ways.

    python -m genlab.eval sd --judge weights/emoji-judge --model weights/sd-emoji --data data/emoji [--card]
                             [--guidance W] [--steps 25] [--words 480] [--per-class 54] [--seeds 4] [--out DIR]

Every sample: 25 DPM-Solver++ steps at the model's default guidance (genlab.json) unless told, drawn in batches of
different prompts, sample i from `DiffusionModel.initial_noise(seed_i)`, so that
`dm.sample(prompt=p_i, seed=seed_i, steps=25, scheduler="dpm++")` redraws it (`sample_prompts`).

1. Follows the words: one sample for each of `--words` held-out emoji names (the first caption of
   `64-holdout/captions.json`; the distinct names ordered by category, then file, and drawn evenly, so the draw keeps
   the held-out set's category mix). The stored judge (genlab.tools.judge) names each sample's category (its class
   probabilities summed per category) and class (a subcategory, or its category's merged "-other" class). Category
   accuracy is given balanced over categories, as ldm-emoji's class-conditioned figure from its card is (84.4% at
   n = 540, guidance 2, `LDM_EMOJI`), and plain; beside them the judge on the real held-out emoji of the same names.
   The model never saw these names, only the words in them.
2. Colour words: prompts naming a colour and a shape that emoji have ("blue heart", "red circle", ...; each is a
   caption of some emoji, `KNOWN_COLOUR_PROMPTS`) and colour-object pairs that no emoji has ("purple apple",
   `NOVEL_COLOUR_PROMPTS`), `--seeds` seeds each (the same seeds for every prompt). `colour_name` names a sample's
   colour; a prompt passes when its colour comes out at least `COLOUR_BAR` of the time. The rule is checked on the
   real emoji of the known prompts (the first line of its table).
3. Image quality: `--per-class` samples per judge category (54, so n = 540 as ldm-emoji's figure), in the judge's
   Fréchet distance, precision and recall (k = 3) against every real held-out emoji, every category weighted
   equally (genlab.tools.judge_report), beside the real-train floor, its blurred and noised controls and
   ldm-emoji's row. Prompts: a category's samples of part 1 (held-out names, up to `--per-class`, drawn evenly),
   then training names of the category drawn evenly until it has `--per-class`. The judge weights categories
   equally on both sides, so the real set's category mix as scored is one equal share each; this draw gives each
   category its share, mixes names the model learned with names it did not, and samples no name twice.
4. Does not just copy: each sample's nearest training image in pixels (genlab.imaging.nearest, the model's
   `training_images/` index, or one built from `64-train/`): the share of samples nearer to it than the typical
   distance between training emoji and the share that look copied by Carlini et al.'s relative test, beside the
   same shares for the real held-out emoji (emoji the model never saw: what "not copied" looks like).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..conditioning.guidance import Conditioning
from ..diffusion import iterate_reverse
from ..imaging.colour import colour_name, describe_rule
from ..imaging.io import image_grid, open_image, tensor_to_pil, tensor_to_uint8
from ..imaging.nearest import COPY_RATIO, TrainingIndex, write_training_index
from ..loading.loaders import load_diffusion
from ..sampling import MAX_BATCH, last
from .eval_emoji import autoguidance_note, checked_settings
from .judge import LabelledEmoji, category_probabilities, class_index, judge_outputs, to_judge_size
from .judge_metrics import balanced_weights
from .judge_report import Judge, Row, category_bars, format_rows, real_floors

DEFAULT_STEPS = 25
SCHEDULER = "dpm++"
WORD_SAMPLES = 480  # held-out names sampled for "follows the words"
PER_CATEGORY = 54  # quality samples per category: 10 x 54 = 540, ldm-emoji's n
COLOUR_SEEDS = 4
COLOUR_BAR = 0.8  # a colour prompt passes when at least this share of its samples shows the colour
WORD_SEED, TRAIN_SEED = 0, 100_000  # sample i of part 1 uses seed WORD_SEED + i; training-name samples TRAIN_SEED + i

# ldm-emoji, class-conditioned, under the same judge: weights/ldm-emoji/README.md, the row "after 9000 more steps
# (shipped)" (54 samples per category, 50 DDIM steps, guidance 2.0, against the 901 held-out emoji).
LDM_EMOJI = Row("ldm-emoji samples (its card; class-conditioned, guidance 2, 50 DDIM steps)", 540, 7.96, 0.804,
                0.828, 0.844, {})

# Colour + shape pairs that emoji have: each is a caption of an emoji in data/emoji (the first, or another one:
# "red circle" is a caption of "large red circle").
KNOWN_COLOUR_PROMPTS = (
    "red heart", "orange heart", "yellow heart", "green heart", "blue heart", "purple heart", "brown heart",
    "black heart", "white heart",
    "red circle", "orange circle", "yellow circle", "green circle", "blue circle", "purple circle", "brown circle",
    "black circle", "white circle",
    "red square", "orange square", "yellow square", "green square", "blue square", "purple square", "brown square",
    "green book", "blue book", "orange book", "red apple", "green apple",
)
# Colour + object pairs that no emoji has (no caption holds them): the colour word must carry over to a new object.
NOVEL_COLOUR_PROMPTS = (
    "purple apple", "blue apple", "blue banana", "red banana", "green strawberry", "purple tomato", "blue carrot",
    "yellow eggplant", "orange grapes", "green cat",
)


def named_colour(prompt: str) -> str:
    return prompt.split()[0]


# ---------------------------------------------------------------------------------------- sampling
def require_text_model(dm) -> None:
    if not dm.is_text_conditional:
        raise SystemExit(f"{dm.name} is not text-conditioned: `python -m genlab.eval sd` needs a Stable Diffusion "
                         f"layout (text_encoder/, tokenizer/); measure class-conditional models with `eval emoji`")


def sample_prompts(dm, prompts: list[str], seeds: list[int], steps: int, guidance: float | None,
                   batch: int = MAX_BATCH, guidance_interval: tuple[float, float] | None = None,
                   autoguidance: float | None = None) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1]: sample i under prompts[i] from `dm.initial_noise(seeds[i])`, `batch` at a time.

    The batch mixes prompts, which `DiffusionModel.sample` (one prompt a run) cannot; it runs the same loop with
    the same start, conditioning (the prompt; the empty prompt for guidance) and clipping, so sample i is the image
    `dm.sample(prompt=prompts[i], seed=seeds[i], steps=steps, scheduler="dpm++", guidance_scale=guidance,
    guidance_interval=guidance_interval, autoguidance_scale=autoguidance)` gives (None: the model's defaults)."""
    require_text_model(dm)
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    chunks = []
    for start in range(0, len(prompts), batch):
        chunk_prompts, chunk_seeds = prompts[start:start + batch], seeds[start:start + batch]
        settings = dm._settings(chunk_seeds[0], steps, SCHEDULER, len(chunk_prompts), guidance,
                                guidance_interval=guidance_interval,
                                autoguidance_scale=autoguidance)  # the model's defaults where None
        cond, _ = dm.text.encode(list(chunk_prompts))
        uncond, _ = dm.text.encode([""] * len(chunk_prompts))
        noise = torch.cat([dm.initial_noise(seed=seed) for seed in chunk_seeds])  # (B, C, h, w)
        sampler = dm.scheduler(SCHEDULER)
        sampler.set_timesteps(steps)
        steps_run = iterate_reverse(dm.unet, sampler, noise * sampler.init_noise_sigma, settings,
                                    conditioning=Conditioning(cond, uncond),
                                    clip_x0=dm.latent_clip if dm.is_latent else 1.0,
                                    enforce_clip=dm.latent_clip is not None, guide=dm.guide)
        final = last(sample for _, sample in steps_run)  # (B, C, h, w) x_0 in the sample space
        chunks.append(dm.codec.decode(final.float().cpu()).clamp(-1, 1))
    return torch.cat(chunks)


# ------------------------------------------------------------------------------------------ prompts
@dataclass
class NamedEmoji:
    """A data/emoji split with names: LabelledEmoji plus each file's name (its first caption)."""

    emoji: LabelledEmoji
    names: list[str]

    @classmethod
    def load(cls, folder: Path, emoji: LabelledEmoji | None = None) -> NamedEmoji:
        """The split at `folder` (`emoji`: the same split already in memory)."""
        emoji = emoji or LabelledEmoji(folder)
        path = Path(folder) / "captions.json"
        if not path.is_file():
            raise SystemExit(f"{folder} has no captions.json: build the emoji data with "
                             f"`python -m genlab.data emoji --out data/emoji`")
        captions = json.loads(path.read_text())
        missing = [f for f in emoji.names if not captions.get(f)]
        if missing:
            raise SystemExit(f"{path} has no caption for {len(missing)} images, e.g. {missing[:3]}")
        return cls(emoji, [captions[f][0].strip().lower() for f in emoji.names])

    def distinct(self, categories: list[str], category: str | None = None) -> list[int]:
        """Indices of the first image of each distinct name, ordered by category (in `categories`' order), then
        file; only `category`'s when given."""
        first: dict[str, int] = {}
        for index, name in enumerate(self.names):
            first.setdefault(name, index)
        order = sorted(first.values(), key=lambda i: (categories.index(self.emoji.categories[i]), self.emoji.names[i]))
        return [i for i in order if category is None or self.emoji.categories[i] == category]


def evenly(items: list, count: int) -> list:
    """`count` items spread evenly over `items` (all of them, in order, when count >= len; repeats when more)."""
    return [items[int(i)] for i in np.floor(np.linspace(0, len(items), count, endpoint=False))]


@dataclass
class SampleSet:
    """Samples with their prompts, seeds and the category each one's name belongs to."""

    prompts: list[str]
    seeds: list[int]
    categories: list[str]
    subcategories: list[str]
    source: list[str]  # "held-out" or "train": whose name prompted it
    files: list[str]  # the emoji file the prompt names
    pixels: torch.Tensor | None = None  # (N, 3, H, W) in [-1, 1]

    LISTS = ("prompts", "seeds", "categories", "subcategories", "source", "files")  # one entry per sample

    def take(self, index: list[int]) -> SampleSet:
        return SampleSet(*([getattr(self, f)[i] for i in index] for f in self.LISTS),
                         pixels=None if self.pixels is None else self.pixels[index])

    @classmethod
    def concat(cls, sets: list[SampleSet]) -> SampleSet:
        sampled = [s.pixels is not None for s in sets]
        if any(sampled) and not all(sampled):
            raise ValueError("join sample sets before sampling them, or after sampling all of them")
        return cls(*([item for s in sets for item in getattr(s, f)] for f in cls.LISTS),
                   pixels=torch.cat([s.pixels for s in sets]) if sets and all(sampled) else None)


def named_set(split: NamedEmoji, index: list[int], source: str, first_seed: int) -> SampleSet:
    emoji = split.emoji
    return SampleSet([split.names[i] for i in index], list(range(first_seed, first_seed + len(index))),
                     [emoji.categories[i] for i in index], [emoji.subcategories[i] for i in index],
                     [source] * len(index), [emoji.names[i] for i in index])


# ------------------------------------------------------------------------------------------ sections
def judged_accuracies(judge: Judge, images: torch.Tensor, categories: list[str],
                      subcategories: list[str]) -> tuple[float, float, float, int]:
    """(category accuracy balanced over categories as `Judge.score` weighs it, plain category accuracy, class
    accuracy over the images whose class the judge knows, how many those are) of (N, 3, H, W) images."""
    _, probs = judge_outputs(judge.model, to_judge_size(images, judge.model.config.image_size))
    wanted = torch.tensor([judge.categories.index(c) for c in categories])
    hit = (category_probabilities(probs, judge.classes, judge.categories).argmax(1) == wanted).numpy()
    names = list(judge.classes)
    wanted_class = torch.tensor([class_index(s, c, names) for s, c in zip(subcategories, categories)])
    known = wanted_class >= 0
    classes = (probs.argmax(1)[known] == wanted_class[known]).float().mean().item() if known.any() else float("nan")
    return float(balanced_weights(categories) @ hit), float(hit.mean()), classes, int(known.sum())


def follows_words(judge: Judge, words: SampleSet, real_images: torch.Tensor, distinct: int) -> str:
    """Category and subcategory accuracy of the samples of held-out names, beside the judge on the real emoji of
    those names and ldm-emoji's figure."""
    rows = []
    for label, images in (("samples from the held-out names", words.pixels),
                          ("real held-out emoji of the same names (the judge's ceiling)", real_images)):
        balanced, plain, classes, known = judged_accuracies(judge, images, words.categories, words.subcategories)
        rows.append(f"| {label} | {len(images)} | **{balanced:.1%}** | {plain:.1%} | {classes:.1%} |")
    rows.append(f"| {LDM_EMOJI.name} | {LDM_EMOJI.count} | {LDM_EMOJI.accuracy:.1%} | – | – |")
    mix = ", ".join(f"{c} {words.categories.count(c)}" for c in judge.categories if c in words.categories)
    header = ("| images | n | category accuracy (balanced over categories) ↑ | category accuracy (plain) ↑ | "
              "subcategory accuracy ↑ |")
    return "\n".join([header, "|---|---|---|---|---|", *rows]) + (
        f"\n\nOne sample per held-out name: {len(words.prompts)} of the {distinct} distinct names of `64-holdout`, "
        f"drawn evenly by category ({mix}). Subcategory accuracy counts the {known} whose subcategory (or its "
        f"category's merged class) the judge knows. ldm-emoji's figure is for class-conditioned samples, 54 per "
        f"category: it is told the category, these samples only a name they never saw in training.")


def colour_words(colours: SampleSet, real: dict[str, list[np.ndarray]], seeds: int,
                 taught: dict[str, list[tuple[str, str | None]]]) -> str:
    """Per prompt: the colours named for its samples, whether the named colour comes out often enough, and what
    the training captions say the prompt's words look like (`taught`, from `training_phrases`)."""
    lines = [("| prompt | an emoji has it | samples showing the colour | colours seen | real emoji of the name | "
              "training emoji whose captions hold the words (their colour) |"), "|---|---|---|---|---|---|"]
    passed = {True: [], False: []}
    lessons: dict[str, list[bool]] = {}  # what the training captions teach a known prompt -> its passes
    for start in range(0, len(colours.prompts), seeds):
        prompt = colours.prompts[start]
        wanted = named_colour(prompt)
        seen = [colour_name(tensor_to_uint8(p)) for p in colours.pixels[start:start + seeds]]
        share = np.mean([c == wanted for c in seen])
        known = colours.source[start] == "known"
        passed[known].append(share >= COLOUR_BAR)
        reals = [colour_name(image) for image in real.get(prompt, [])]
        real_cell = (f"{sum(c == wanted for c in reals)}/{len(reals)} ({', '.join(sorted(set(map(str, reals))))})"
                     if reals else "–")
        holders = taught.get(prompt, [])
        taught_cell = (f"{len(holders)}: " + ", ".join(f"{name} ({colour})" for name, colour in holders[:3])
                       + (", ..." if len(holders) > 3 else "")) if holders else "none"
        if known:
            lessons.setdefault(lesson(wanted, holders), []).append(share >= COLOUR_BAR)
        lines.append(f"| {prompt} | {'yes' if known else 'no'} | {share:.0%} | "
                     f"{', '.join(f'{c}' for c in seen)} | {real_cell} | {taught_cell} |")
    real_total = [colour_name(image) == named_colour(p) for p, images in real.items() for image in images]
    summary = (f"\n\nPrompts passing (the named colour in ≥ {COLOUR_BAR:.0%} of {seeds} samples): "
               f"**{sum(passed[True])}/{len(passed[True])}** of the colour-shape pairs that emoji have, "
               f"**{sum(passed[False])}/{len(passed[False])}** of the colour-object pairs that none has. "
               f"The colour rule names the real emoji of the known pairs right {sum(real_total)}/{len(real_total)}. "
               f"Seeds 0-{seeds - 1} for every prompt. Colour of a sample: " + describe_rule())
    summary += (" By what the training captions teach (the words as a phrase in a training emoji's captions, "
                "that emoji's colour by the same rule), the known pairs pass: " + "; ".join(
                    f"{name} {sum(lessons[name])}/{len(lessons[name])}" for name in LESSONS if name in lessons)
                + ".")
    return "\n".join(lines) + summary


LESSONS = ("taught the colour", "taught another colour", "never in training")


def lesson(wanted: str, holders: list[tuple[str, str | None]]) -> str:
    """What the training captions teach of a colour prompt: some training emoji holding its words has the colour,
    all of them have others (Unicode's old names: "heavy black heart" is the red heart), or none holds the words."""
    if not holders:
        return LESSONS[2]
    return LESSONS[0] if any(colour == wanted for _, colour in holders) else LESSONS[1]


def training_phrases(prompts, data: Path) -> dict[str, list[tuple[str, str | None]]]:
    """{prompt: [(name, colour)] of the training emoji with a caption holding the prompt's words as a phrase
    (between word boundaries: "black heart" is in "heavy black heart"), in file order}."""
    folder = Path(data) / "64-train"
    captions = json.loads((folder / "captions.json").read_text())
    patterns = {p: re.compile(rf"(?<![\w]){re.escape(p)}(?![\w])") for p in prompts}
    found: dict[str, list[tuple[str, str | None]]] = {}
    for file, names in sorted(captions.items()):
        text = [c.strip().lower() for c in names]
        for prompt, pattern in patterns.items():
            if any(pattern.search(c) for c in text):
                colour = colour_name(np.asarray(open_image(folder / file)))
                found.setdefault(prompt, []).append((text[0], colour))
    return found


def image_quality(judge: Judge, quality: SampleSet, per_class: int) -> str:
    side = judge.model.config.image_size
    sets = real_floors(judge, per_class)
    sets.append(judge.judge("sd samples", to_judge_size(quality.pixels, side), quality.categories))
    rows = [judge.score(s) for s in sets] + [LDM_EMOJI]
    held_out = sum(s == "held-out" for s in quality.source)
    return format_rows(rows, judge.categories) + "\n\n" + category_bars(rows[0], rows[-2]) + (
        f"\n\nReference: the {len(judge.reference.categories)} real held-out emoji, every category weighted equally; "
        f"k = 3. sd samples: {per_class} per category, {held_out} prompted by held-out names (the samples of "
        f"\"follows the words\"), {len(quality.prompts) - held_out} by training names.")


def copying(index: TrainingIndex, where: str, sets: dict[str, SampleSet], holdout: NamedEmoji,
            out: Path) -> str:
    """Nearest training images of the samples and of the real held-out emoji; a grid of the nearest pairs."""
    real = index.nearest_batch(list(holdout.emoji.pixels.permute(0, 2, 3, 1).numpy()))
    typical = index.typical_distance
    header = (f"| images | n | nearer than the typical training pair | look copied (relative distance < "
              f"{COPY_RATIO:g}) | median distance | nearest is the named emoji |")
    floor = (f"| real held-out emoji (never trained on) | {len(real.names)} | {(real.distances < typical).mean():.1%} "
             f"| {real.looks_copied.mean():.1%} | {np.median(real.distances):.3f} | – |")
    lines = [header, "|---|---|---|---|---|---|", floor]
    pairs = []
    for label, samples in sets.items():
        arrays = [tensor_to_uint8(p) for p in samples.pixels]
        found = index.nearest_batch(arrays)
        named = np.mean([n == f for n, f in zip(found.names, samples.files)]) if samples.source[0] == "train" else None
        lines.append(f"| {label} | {len(arrays)} | **{(found.distances < typical).mean():.1%}** | "
                     f"**{found.looks_copied.mean():.1%}** | {np.median(found.distances):.3f} | "
                     f"{'–' if named is None else f'{named:.1%}'} |")
        pairs += [(r, samples.prompts[i], found.names[i], found.distances[i], arrays[i])
                  for i, r in enumerate(found.relative)]
    pairs.sort(key=lambda p: p[0])
    closest = pairs[:8]
    grid = [tensor for _, _, name, _, array in closest
            for tensor in (tensor_to_pil(torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1),
                           index.thumbnail(name, display=array.shape[0]))]
    if grid:
        image_grid(grid, columns=4).save(out / "sd_nearest.png")
    listed = "; ".join(f"\"{prompt}\" → `{name}` ({distance:.3f}, relative {ratio:.2f})"
                       for ratio, prompt, name, distance, _ in closest[:5])
    return "\n".join(lines) + (
        f"\n\nDistance: RMS difference of RGB in [0, 1] at {index.side} px to the nearest of the {len(index)} "
        f"training emoji ({where}); typical training pair: {typical:.3f} (median distance from a training emoji to "
        f"its nearest other one, skin-tone twins left out). Relative distance: to the nearest over the mean to the "
        f"next 10 (Carlini et al. 2023). Most copy-like samples: {listed}; pairs (sample, nearest) in "
        f"`{out}/sd_nearest.png`.")


def training_index(model: str, train: LabelledEmoji, data: Path, out: Path) -> tuple[TrainingIndex, str]:
    """The model's `training_images/` index, or one written to `out` from the training split `train`."""
    stored = Path(model) / "training_images"
    if stored.is_dir():
        return TrainingIndex.load(stored), f"`{stored}`"
    folder = write_training_index(list(train.pixels.permute(0, 2, 3, 1).numpy()), train.names, out / "training_images")
    return TrainingIndex.load(folder), (f"built from `{data}/64-train` into `{folder}`: the model has no "
                                        f"training_images/")


# ------------------------------------------------------------------------------------------ command
def quality_prompts(words: SampleSet, train: NamedEmoji, categories: list[str],
                    per_class: int) -> tuple[list[int], SampleSet | None]:
    """Per category, up to `per_class` of its samples in `words` (drawn evenly: their indices), and the samples of
    training names (not drawn yet) that fill each category to `per_class`, or None when none is needed."""
    reused, fill = [], []
    for category in categories:
        mine = [i for i, c in enumerate(words.categories) if c == category]
        reused += evenly(mine, min(per_class, len(mine))) if mine else []
        names = train.distinct(categories, category)
        missing = per_class - min(per_class, len(mine))
        if missing and names:
            first_seed = TRAIN_SEED + sum(len(f.prompts) for f in fill)
            fill.append(named_set(train, evenly(names, missing), "train", first_seed))
    return reused, SampleSet.concat(fill) if fill else None


def colour_set(seeds: int) -> SampleSet:
    """Every colour prompt with seeds 0 .. seeds - 1; `source` says whether an emoji has the pair."""
    prompts = [p for p in KNOWN_COLOUR_PROMPTS + NOVEL_COLOUR_PROMPTS for _ in range(seeds)]
    blank = [""] * len(prompts)
    return SampleSet(prompts, list(range(seeds)) * (len(prompts) // seeds), blank, blank,
                     ["known" if p in KNOWN_COLOUR_PROMPTS else "novel" for p in prompts], blank)


def save_category_grid(samples: SampleSet, categories: list[str], path: Path, per_row: int = 16) -> None:
    rows = []
    for category in dict.fromkeys(c for c in categories if c in samples.categories):
        shown = [tensor_to_pil(p) for p, c in zip(samples.pixels, samples.categories) if c == category][:per_row]
        rows.append(image_grid(shown, columns=per_row))
    image_grid(rows, columns=1, gap=4).save(path)


def eval_sd(judge_folder: Path, data: Path, model: str, out: Path, steps: int = DEFAULT_STEPS,
            guidance: float | None = None, words: int = WORD_SAMPLES, per_class: int = PER_CATEGORY,
            seeds: int = COLOUR_SEEDS, guidance_interval: tuple[float, float] | None = None,
            autoguidance: float | None = None) -> str:
    """The four sections as markdown; sample grids under `out`."""
    dm = load_diffusion(model, device="cpu")
    require_text_model(dm)
    settings = checked_settings(dm, model, steps, SCHEDULER, guidance_scale=guidance,
                                guidance_interval=guidance_interval, autoguidance_scale=autoguidance)
    guidance, interval = settings.guidance_scale, settings.guidance_interval  # the model's defaults where None
    judge = Judge(judge_folder, data)
    train = NamedEmoji.load(Path(data) / "64-train", judge.train)
    holdout = NamedEmoji.load(Path(data) / "64-holdout")
    out.mkdir(parents=True, exist_ok=True)
    timings = []  # (samples, wall seconds, CPU seconds)

    def draw(samples: SampleSet) -> SampleSet:
        start, cpu = time.perf_counter(), time.process_time()
        samples.pixels = sample_prompts(dm, samples.prompts, samples.seeds, steps, guidance,
                                        guidance_interval=interval, autoguidance=autoguidance)
        timings.append((len(samples.prompts), time.perf_counter() - start, time.process_time() - cpu))
        return samples

    distinct = holdout.distinct(judge.categories)
    chosen = evenly(distinct, min(words, len(distinct)))
    word_set = draw(named_set(holdout, chosen, "held-out", WORD_SEED))
    reused, train_set = quality_prompts(word_set, train, judge.categories, per_class)
    quality = SampleSet.concat([word_set.take(reused)] + ([draw(train_set)] if train_set else []))
    colours = draw(colour_set(seeds))
    save_category_grid(word_set, judge.categories, out / "sd_words.png")
    save_category_grid(quality, judge.categories, out / "sd_quality.png")
    image_grid([tensor_to_pil(p) for p in colours.pixels], columns=seeds * 4).save(out / "sd_colours.png")
    index, where = training_index(model, judge.train, data, out)
    copy_sets = {"samples, held-out names": word_set, **({"samples, training names": train_set} if train_set else {})}
    sampled, seconds, cpu = (sum(values) for values in zip(*timings))
    guided_at = f" where {interval[0]:g} < sigma <= {interval[1]:g}" if interval else ""
    guided_at += autoguidance_note(settings)
    how = (f"{Path(model).name}: {steps} DPM-Solver++ steps, guidance {guidance:g}{guided_at}, negative prompt empty; "
           f"{sampled} samples in {seconds:.0f} s ({1000 * seconds / max(sampled, 1):.0f} ms each; CPU time "
           f"{cpu:.0f} s: wall time grows where other jobs share the CPU), batches of {MAX_BATCH}, on "
           f"{torch.get_num_threads()} CPU thread(s); judge `{judge_folder}`; grids in `{out}/` (sd_words.png and "
           f"sd_quality.png: a row per category; sd_colours.png: a row is 4 prompts x {seeds} seeds).")
    return "\n\n".join([
        how,
        "#### Follows the words (held-out emoji names)\n\n"
        + follows_words(judge, word_set, holdout.emoji.images(torch.tensor(chosen)), len(distinct)),
        "#### Colour words\n\n" + colour_words(colours, real_emoji_of(KNOWN_COLOUR_PROMPTS, data), seeds,
                                               training_phrases(KNOWN_COLOUR_PROMPTS + NOVEL_COLOUR_PROMPTS, data)),
        "#### Image quality against the real held-out emoji\n\n" + image_quality(judge, quality, per_class),
        "#### Does not just copy (nearest training image)\n\n" + copying(index, where, copy_sets, holdout, out),
    ])


def real_emoji_of(prompts, data: Path) -> dict[str, list[np.ndarray]]:
    """{prompt: uint8 (H, W, 3) images of the real emoji (train or held-out) that have the prompt as a caption}."""
    found: dict[str, list[np.ndarray]] = {}
    for split in ("64-train", "64-holdout"):
        folder = Path(data) / split
        captions = json.loads((folder / "captions.json").read_text())
        for file, names in captions.items():
            for prompt in set(prompts) & {c.strip().lower() for c in names}:
                found.setdefault(prompt, []).append(np.asarray(open_image(folder / file)))
    return found


def check_sd_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse `sd` options that mean nothing, with the offending value; fill its defaults."""
    if args.model is None:
        parser.error("--model is required for sd")
    if args.judge_steps is not None:
        parser.error("--judge-steps is for train-judge")
    if args.limit is not None or args.unconditional:
        parser.error("--limit and --unconditional are for prior; sd takes --words, --per-class and --seeds")
    for option, value, low in (("--per-class", args.per_class, 4), ("--words", args.words, 1),
                               ("--seeds", args.seeds, 1), ("--steps", args.steps, 1)):
        if value is not None and value < low:
            parser.error(f"{option} must be at least {low} for sd, got {value}"
                         + (" (precision and recall take k = 3 neighbours)" if option == "--per-class" else ""))
    if args.guidance is not None and args.guidance < 0:
        parser.error(f"--guidance must be at least 0, got {args.guidance}")
    args.judge = args.judge or Path("weights/emoji-judge")
    args.per_class = args.per_class or PER_CATEGORY
    args.words = args.words or WORD_SAMPLES
    args.seeds = args.seeds or COLOUR_SEEDS
    args.steps = args.steps or DEFAULT_STEPS
    args.out = args.out or Path("artifacts/sd-eval")
