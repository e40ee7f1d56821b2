"""Data recipes: rebuild GenLab's training and held-out sets from the package registries.

    python -m genlab.data emoji  --out data/emoji     # Noto Emoji (npm: emoji-datasource-google)
    python -m genlab.data photos --out data/photos    # scikit-image photos + Debian wallpaper packages

Every folder written here is a plain folder of PNGs, so the training CLI reads it exactly like
any folder of images a user brings. A `labels.json` ({file name: class name}) beside the images
makes a folder class-labelled. Nothing here is committed; this module is the recipe.

Held-out split: a photo is held out when the SHA-1 of its source path falls in the first
quarter of the hash space (`is_held_out`). Held-out photos are written only as 256x256 centre
crops under `holdout/` and never reach `train/`.

Emoji: `32/` and `64/` hold every emoji (the pixel DDPM and the judge of `genlab.tools.eval emoji` use
them); `64-train/` and `64-holdout/` split the 64 px emoji by the same hash of the emoji's
`unified` code point, so all skin-tone variants of one emoji fall on the same side. The latent
models (`vae`, `ldm`) train on `64-train/` and are measured on `64-holdout/`. Beside every emoji folder's
`labels.json` (file -> category), `subcategories.json` holds each file's subcategory in emoji.json
(`face-smiling`, `animal-mammal`, ...): the stored 64 px judge (`genlab.tools.judge`) learns those.
`captions.json` holds each file's captions (text to image, `genlab.train.sd`): the emoji's name, short names
and subcategory from emoji.json, its keywords from emojilib (npm, MIT), a variation's skin tones, and for an emoji
without skin tones its colour by `genlab.imaging.colour` ("yellow banana"): the names seldom say a colour, so without
it a colour word means little more than "heart", "circle" or "square" to the text model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..imaging.colour import COLOUR_WORDS, colour_name
from ..imaging.io import open_image

EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"
KEYWORD_PACKAGE = "emojilib@4.0.3"  # MIT: CLDR-style keywords per emoji character (text only)
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
PHOTO_DEBS = ("plasma-workspace-wallpapers", "gnome-backgrounds", "tuxpaint-stamps-default", "desktop-base")
SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "color.png",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
HOLDOUT_SIZE = 256
TRAIN_MAX_SHORT_SIDE = 512  # wallpapers are 2-5k wide; 512 keeps photo-scale detail and memory low


def is_held_out(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) < 2**32 // 4


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


# ----------------------------------------------------------------------------------- emoji
def fetch_npm_package(spec: str, cache: Path, marker: str) -> Path:
    """`npm pack` an npm package into `cache/<name>` and unpack it; returns its `package` folder."""
    name = spec.rsplit("@", 1)[0]
    folder = cache / name
    package = folder / "package"
    if not (package / marker).exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", spec, "--silent"], cwd=folder, check=True, stdout=subprocess.DEVNULL)
        tarball = next(folder.glob(f"{name}-*.tgz"))
        with tarfile.open(tarball) as archive:
            archive.extractall(folder, filter="data")
    return package


def fetch_emoji_package(cache: Path) -> Path:
    return fetch_npm_package(EMOJI_PACKAGE, cache, "emoji.json")


def emoji_character(unified: str) -> str:
    return "".join(chr(int(code, 16)) for code in unified.split("-"))


def words(text: str) -> str:
    """An emoji.json or emojilib identifier as words: `flag-eg` / `thumbs_up` -> `flag eg` / `thumbs up`."""
    return " ".join(re.sub(r"[_\-]+", " ", text).lower().split())


def emoji_captions(entry: dict, keywords: dict[str, list[str]], skin_key: str | None = None,
                   colour: str | None = None) -> list[str]:
    """Several captions of one emoji image: its name, short names, subcategory, and (from emojilib) its keywords;
    a skin-tone variation adds its tones to each ("thumbs up, medium skin tone"); an emoji without skin tones, its
    drawing's `colour` (`colour_caption`)."""
    character = emoji_character(entry["unified"])
    found = keywords.get(character) or keywords.get(character.replace("\ufe0f", "")) or []
    captions = [words(entry["name"]), *(words(name) for name in entry.get("short_names", [])), words(entry["subcategory"])]
    if found:
        captions += [words(found[0]), ", ".join(words(k) for k in found[:4])]
    if skin_key:
        tones = ", ".join(f"{SKIN_TONES[code]} skin tone" for code in skin_key.upper().split("-") if code in SKIN_TONES)
        captions = [f"{caption}, {tones}" for caption in captions] if tones else captions
    else:
        captions.append(colour_caption(entry, colour))
    return list(dict.fromkeys(c for c in captions if c))


def colour_caption(entry: dict, colour: str | None) -> str | None:
    """"<colour> <short name>" ("yellow banana", "red heart" for Unicode's "heavy black heart"), `colour` named from the
    image by `genlab.imaging.colour.colour_name`; None when the image names no colour or the short name already has
    a colour word ("blue heart")."""
    if colour is None:
        return None
    base = words((entry.get("short_names") or [entry["name"]])[0])
    return None if set(base.split()) & set(COLOUR_WORDS) else f"{colour} {base}"


def build_emoji(out: Path, cache: Path, sizes=(32, 64)) -> None:
    package = fetch_emoji_package(cache)
    entries = json.loads((package / "emoji.json").read_text())
    keywords = json.loads((fetch_npm_package(KEYWORD_PACKAGE, cache, "dist/emoji-en-US.json")
                           / "dist" / "emoji-en-US.json").read_text())
    entries.sort(key=lambda entry: entry["sort_order"])
    categories: list[str] = []
    items: list[tuple[str, str, str, bool]] = []  # (png name, category, subcategory, held out)
    captions: dict[str, list[str]] = {}  # png name -> its captions
    source = package / "img" / "google" / "64"
    for entry in entries:
        if entry["category"] not in categories:
            categories.append(entry["category"])
        variants = [(entry, None)] + [(v, key) for key, v in entry.get("skin_variations", {}).items()]
        held_out = is_held_out(entry["unified"])
        for variant, skin_key in variants:
            if variant.get("has_img_google", True):
                items.append((variant["image"], entry["category"], entry["subcategory"], held_out))
                path = source / variant["image"]
                colour = colour_name(np.asarray(open_image(path))) if skin_key is None and path.exists() else None
                captions[variant["image"]] = emoji_captions(entry, keywords, skin_key, colour)
    splits = [(f"{size}", size, None) for size in sizes] + [("64-train", 64, False), ("64-holdout", 64, True)]
    for folder_name, size, split in splits:
        folder = out / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        labels, subcategories = {}, {}
        for name, category, subcategory, held_out in items:
            if split is not None and held_out != split:
                continue
            path = source / name
            if not path.exists():
                continue
            image = open_image(path)  # alpha composited on white
            if size != image.width:
                image = image.resize((size, size), Image.Resampling.LANCZOS)
            image.save(folder / name)
            labels[name] = category
            subcategories[name] = subcategory
        (folder / "labels.json").write_text(json.dumps(labels, indent=0))
        (folder / "captions.json").write_text(json.dumps({name: captions[name] for name in labels}, indent=0))
        (folder / "subcategories.json").write_text(json.dumps(subcategories, indent=0))
        (folder / "classes.json").write_text(json.dumps(categories))
        print(f"emoji {folder_name}: {len(labels)} images in {len(categories)} categories -> {folder}")


# ---------------------------------------------------------------------------------- photos
def fetch_debs(cache: Path) -> Path:
    """`apt-get download` the wallpaper packages and unpack them with `dpkg -x`."""
    root = cache / "root"
    if not root.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", *PHOTO_DEBS], cwd=cache, check=True)
        for deb in cache.glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def photo_sources(deb_root: Path) -> list[tuple[str, Path]]:
    """(stable key, path) for every usable photo; one file per plasma wallpaper (its largest)."""
    import skimage.data

    sources = [(f"skimage/{name}", Path(skimage.data.data_dir) / name) for name in SKIMAGE_PHOTOS]
    share = deb_root / "usr" / "share"
    for wallpaper in sorted((share / "wallpapers").glob("*/contents")):
        for variant in ("images", "images_dark"):
            files = list_images(wallpaper / variant)
            if files:
                largest = max(files, key=lambda p: Image.open(p).size[0] * Image.open(p).size[1])
                sources.append((f"plasma/{wallpaper.parent.name}/{variant}", largest))
    for folder in ("backgrounds", "desktop-base", "plymouth", "tuxpaint"):
        for path in list_images(share / folder):
            if "screenshot" in path.name or "logo" in path.name:
                continue
            sources.append((f"{folder}/{path.relative_to(share / folder)}", path))
    return sources


def build_photos(out: Path, cache: Path, extra: list[Path] = ()) -> None:
    deb_root = fetch_debs(cache)
    sources = photo_sources(deb_root) + [(f"extra/{p}", p) for folder in extra for p in list_images(folder)]
    train, holdout = out / "train", out / "holdout"
    for folder in (train, holdout):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    counts = {"train": 0, "holdout": 0, "skipped": 0}
    manifest = {}
    for key, path in sources:
        try:
            image = open_image(path, max_bytes=2**30)
        except Exception as error:  # a broken file in a package must not stop the recipe
            print(f"skip {key}: {error}")
            counts["skipped"] += 1
            continue
        name = key.replace("/", "__").rsplit(".", 1)[0] + ".png"
        # tuxpaint stamps are small objects on white: training only, never in the photo test set
        if is_held_out(key) and min(image.size) >= HOLDOUT_SIZE and not key.startswith("tuxpaint/"):
            scale = HOLDOUT_SIZE / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
            left, top = (image.width - HOLDOUT_SIZE) // 2, (image.height - HOLDOUT_SIZE) // 2
            image.crop((left, top, left + HOLDOUT_SIZE, top + HOLDOUT_SIZE)).save(holdout / name)
            counts["holdout"] += 1
            manifest[name] = {"source": key, "split": "holdout"}
        elif not is_held_out(key):
            if min(image.size) > TRAIN_MAX_SHORT_SIDE:
                scale = TRAIN_MAX_SHORT_SIDE / min(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
            image.save(train / name)
            counts["train"] += 1
            manifest[name] = {"source": key, "split": "train"}
        else:
            counts["skipped"] += 1  # held out but too small for a 256x256 crop: used nowhere
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"photos: {counts} -> {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m genlab.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", choices=["emoji", "photos"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=None, help="where downloads are kept (default: a temp dir)")
    parser.add_argument("--extra", type=Path, action="append", default=[], help="photos: more image folders")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temp:
        cache = args.cache or Path(temp)
        if args.recipe == "emoji":
            build_emoji(args.out, cache)
        else:
            build_photos(args.out, cache, args.extra)


if __name__ == "__main__":
    main()
