"""The diffusion tab's text-to-image side on the shipped sd-emoji, in a real browser: the tab opens on an example
prompt already run with its word heat maps and nearest training image; a typed prompt streams to done with its
maps; the step slider scrubs the maps; an example prompt is one click; compare prompts and image to image run;
an empty prompt gets a message and the next sample still runs.

The app serves weights/sd-emoji alone (the other embedded models read as untrained, so the other tabs load
nothing), as a user's app would. Reuses test_browser.py's browser fixture and helpers, and skips (or, with
GENLAB_REQUIRE_BROWSER=1, fails) exactly when it does; skips when weights/sd-emoji is not trained.
"""

from __future__ import annotations

import re
import time

import pytest

import genlab.config
import genlab.loading.registry
from test_browser import (  # noqa: F401  (browser and shots are fixtures)
    served_app,
    REPO, block, browser, dismiss_toasts, expect, expect_image, expect_toast, open_tab, opened_page, screenshot,
    set_number, shots, upload,
)

TAB = "Diffusion, step by step"
SD_MS = 180_000  # per action: the first page load samples the example run (50 steps, with maps) on a busy CPU
LIVE_MAPS = "Where each word acts (live: over x̂0; done: the whole run, over the image)"
STEP_MAPS = "Word heat maps at this step (over x̂0)"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if genlab.embedded_status().get("sd-emoji") != "trained":
        pytest.skip("weights/sd-emoji is not trained")
    weights = tmp_path_factory.mktemp("sd-only-weights")
    (weights / "sd-emoji").symlink_to(REPO / "weights" / "sd-emoji", target_is_directory=True)
    with served_app(weights) as url:
        yield url


def gallery_words(page, label: str):
    """The captions (alt texts) of the images a gallery shows."""
    return block(page, label).locator("img")


def expect_words(page, label: str, words: list[str]) -> None:
    images = gallery_words(page, label)
    expect(images).to_have_count(len(words), timeout=SD_MS)
    for index, word in enumerate(words):
        expect(images.nth(index)).to_have_attribute("alt", word)
        expect(images.nth(index)).to_have_attribute("src", re.compile(r"/file=.+"))


def test_sd_emoji_first_view_then_a_typed_prompt_its_maps_and_scrubbing(browser, app_url, shots):  # noqa: F811
    with opened_page(browser, app_url, SD_MS) as page:
        started = time.perf_counter()
        open_tab(page, TAB)
        model = page.get_by_label("Model", exact=True).filter(visible=True)
        expect(model).to_have_value("sd-emoji (latent)")
        # the first view: the example prompt run, its maps over the image and at the scrubbed step, its nearest image
        expect(page.get_by_text(re.compile(r"^Example: the prompt 'red heart'"))).to_be_visible(timeout=SD_MS)
        prompt = page.get_by_label("Prompt", exact=True)
        expect(prompt).to_have_value("red heart", timeout=SD_MS)
        expect_words(page, LIVE_MAPS, ["red", "heart"])
        expect_words(page, STEP_MAPS, ["red", "heart"])
        expect_image(page, "Nearest training image")
        expect(page.get_by_text(re.compile(r"^Nearest of the [\d,]+ training images"))).to_be_visible()
        for label in ("x_t (live)", "x̂0 (live)", "x_t", "x̂0"):
            expect_image(page, label)
        print(f"\nsd-emoji first view (example run, maps, nearest image) in {time.perf_counter() - started:.1f} s")
        screenshot(page, shots, "30-sd-first-view")

        prompt.fill("thumbs up, dark skin tone")
        set_number(page, "Steps", 20, slider=True)
        page.get_by_role("button", name="Sample", exact=True).click()
        expect(page.get_by_text(re.compile(r"^done: 20 steps, seed 0"))).to_be_visible(timeout=SD_MS)
        expect_words(page, LIVE_MAPS, ["thumbs", "up", "dark", "skin", "tone"])
        expect_words(page, STEP_MAPS, ["thumbs", "up", "dark", "skin", "tone"])
        screenshot(page, shots, "31-sd-sample")

        first_map = gallery_words(page, STEP_MAPS).first
        before = first_map.get_attribute("src")
        set_number(page, "step (20 kept)", 15, slider=True)
        expect(first_map).not_to_have_attribute("src", before, timeout=SD_MS)  # step 15's maps over its x̂0
        expect_words(page, STEP_MAPS, ["thumbs", "up", "dark", "skin", "tone"])
        expect(page.locator(".toast-body")).to_have_count(0)
        screenshot(page, shots, "32-sd-scrubbed-maps")

        page.get_by_text("pizza", exact=True).click()  # an example prompt
        expect(prompt).to_have_value("pizza")
        expect_words(page, LIVE_MAPS, ["pizza"])
        expect(page.get_by_text(re.compile(r"^done: 20 steps, seed 0"))).to_be_visible(timeout=SD_MS)

        prompt.fill("   ")
        page.get_by_role("button", name="Sample", exact=True).click()
        expect_toast(page, "the prompt is empty (only spaces)")
        screenshot(page, shots, "33-sd-empty-prompt")
        dismiss_toasts(page)
        prompt.fill("blue heart")
        page.get_by_role("button", name="Sample", exact=True).click()
        expect_words(page, LIVE_MAPS, ["blue", "heart"])
        expect(page.get_by_text(re.compile(r"^done: 20 steps, seed 0"))).to_be_visible(timeout=SD_MS)


def test_sd_emoji_compares_prompts_and_redraws_an_upload(browser, app_url, shots):  # noqa: F811
    with opened_page(browser, app_url, SD_MS) as page:
        open_tab(page, TAB)
        expect(page.get_by_label("Prompt", exact=True)).to_have_value("red heart", timeout=SD_MS)
        open_tab(page, "Compare prompts")
        page.get_by_role("button", name="Compare prompts", exact=True).click()
        expect(page.get_by_text(re.compile(r"^done: 3 prompts from the same x_T"))).to_be_visible(timeout=SD_MS)
        for prompt in ("red heart", "blue heart", "purple apple"):  # each column labelled with its prompt
            expect_image(page, prompt)
            expect_words(page, f"{prompt}: where each word acts", prompt.split())
        screenshot(page, shots, "34-sd-compare-prompts")

        open_tab(page, "Image to image")
        upload(page, "Your picture", REPO / "genlab" / "assets" / "examples" / "rocket.png")
        page.get_by_role("button", name="Redraw with the prompt", exact=True).click()
        expect(page.get_by_text(re.compile(r"^Noised to t = 700 of 1000 \(strength 0.7\) and redrawn in 35 steps"))
               ).to_be_visible(timeout=SD_MS)
        expect_image(page, "your picture noised to the start")
        expect_image(page, "redrawn (live: x̂0)")
        expect_words(page, "where each word acts", ["red", "heart"])
        expect(page.locator(".toast-body")).to_have_count(0)
        screenshot(page, shots, "35-sd-image-to-image")
