"""`python -m genlab.data emoji` (genlab.tools.data) on a fake npm cache: the emoji's captions, colour captions
named from each image by the same rule `python -m genlab.eval sd` measures samples with, and none for skin tones."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image, ImageDraw

from genlab.tools.data import build_emoji

ENTRIES = [  # emoji.json's fields that the recipe reads
    {"unified": "1F34E", "name": "RED APPLE", "short_names": ["apple"], "category": "Food & Drink",
     "subcategory": "food-fruit", "sort_order": 1, "image": "1f34e.png", "fill": (220, 30, 30)},
    {"unified": "1F499", "name": "BLUE HEART", "short_names": ["blue_heart"], "category": "Smileys & Emotion",
     "subcategory": "heart", "sort_order": 0, "image": "1f499.png", "fill": (30, 90, 220)},
    {"unified": "1F44D", "name": "THUMBS UP SIGN", "short_names": ["+1", "thumbsup"], "category": "People & Body",
     "subcategory": "hand-fingers-closed", "sort_order": 2, "image": "1f44d.png", "fill": (250, 220, 30),
     "skin_variations": {"1F3FF": {"image": "1f44d-1f3ff.png", "fill": (90, 60, 40)}}},
    {"unified": "1F47B", "name": "GHOST", "short_names": ["ghost"], "category": "Smileys & Emotion",
     "subcategory": "face-costume", "sort_order": 3, "image": "1f47b.png", "fill": (128, 128, 128)},
]


def fake_cache(root):
    """The two npm packages as `fetch_npm_package` leaves them unpacked, so nothing is fetched."""
    package = root / "emoji-datasource-google" / "package"
    pngs = package / "img" / "google" / "64"
    pngs.mkdir(parents=True)
    entries = []
    for entry in ENTRIES:
        drawn = [(entry["image"], entry["fill"])] + [(v["image"], v["fill"]) for v in
                                                     entry.get("skin_variations", {}).values()]
        for name, fill in drawn:
            image = Image.new("RGB", (64, 64), "white")
            ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill=fill)
            image.save(pngs / name)
        clean = {k: v for k, v in entry.items() if k != "fill"}
        if "skin_variations" in clean:
            clean["skin_variations"] = {k: {"image": v["image"]} for k, v in clean["skin_variations"].items()}
        entries.append(clean)
    (package / "emoji.json").write_text(json.dumps(entries))
    keywords = root / "emojilib" / "package" / "dist"
    keywords.mkdir(parents=True)
    (keywords / "emoji-en-US.json").write_text(json.dumps({"\U0001F34E": ["red_apple", "fruit"]}))
    return root


def test_emoji_captions_name_each_image_colour_except_skin_tones(tmp_path):
    build_emoji(tmp_path / "emoji", fake_cache(tmp_path / "cache"))
    captions = json.loads((tmp_path / "emoji" / "64" / "captions.json").read_text())
    assert captions["1f34e.png"] == ["red apple", "apple", "food fruit", "red apple, fruit"]  # its colour caption
    assert captions["1f499.png"] == ["blue heart", "heart"]  # the short name says a colour: no colour caption
    assert captions["1f44d.png"][-1] == "yellow +1"  # the first short name, in the colour of the drawing
    assert captions["1f44d-1f3ff.png"] == [  # a skin tone: its tone captions, no colour caption
        "thumbs up sign, dark skin tone", "+1, dark skin tone", "thumbsup, dark skin tone",
        "hand fingers closed, dark skin tone"]
    assert captions["1f47b.png"] == ["ghost", "face costume"]  # grey: no colour named
    train, holdout = (json.loads((tmp_path / "emoji" / split / "captions.json").read_text())
                      for split in ("64-train", "64-holdout"))
    assert sorted({**train, **holdout}) == sorted(captions) and not set(train) & set(holdout)
    assert np.asarray(Image.open(tmp_path / "emoji" / "32" / "1f34e.png")).shape == (32, 32, 3)
