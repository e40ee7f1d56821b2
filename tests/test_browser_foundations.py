"""The Foundations (2D) tab in a real browser: the first view (and that the next visitor gets it unchanged),
clicking points onto the canvas, training a family on them live, a readable error, and "All four" side by side.

Reuses test_browser.py's browser fixture and helpers, and skips (or, with GENLAB_REQUIRE_BROWSER=1,
fails) exactly when it does. Screenshots go where test_browser.py puts them.
"""

from __future__ import annotations

import re

import pytest

from test_browser import (  # noqa: F401  (browser and shots are fixtures)
    served_app,
    block, browser, choose, dismiss_toasts, expect, expect_image, expect_toast, open_tab, opened_page, screenshot,
    set_number, shots,
)

TAB = "Foundations (2D)"
CANVAS = "Canvas: click to add points"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    # The other tabs load their default model when the page opens; with no weights they load none.
    with served_app(tmp_path_factory.mktemp("no-weights")) as url:
        yield url


def test_foundations_tab_trains_on_clicked_points_and_all_four(browser, app_url, shots):  # noqa: F811
    with opened_page(browser, app_url) as page:
        open_tab(page, TAB)
        # The first view is a result, not empty panels.
        expect(page.get_by_text(re.compile(r"^Trained for 500 steps when the app started"))).to_be_visible()
        for label in ("Data and samples", "The family's own view", "Losses and energy distance", CANVAS):
            expect_image(page, label)
        screenshot(page, shots, "20-foundations-first-view")

        canvas = block(page, CANVAS).locator("img").first
        for x, y in ((90, 120), (260, 230)):
            before = canvas.get_attribute("src")
            canvas.click(position={"x": x, "y": y})
            expect(canvas).not_to_have_attribute("src", before)  # redrawn with the new points
        expect(page.get_by_label("Dataset", exact=True)).to_have_value("my points (click the canvas)")
        # picking "my points" showed them (with the VAE still chosen), whichever click it followed
        expect(page.get_by_text(re.compile(r"VAE on your (20|40) points · step 0 "))).to_be_visible()

        page.get_by_label("Diffusion", exact=True).check()
        # switching family shows the new family's untrained model (on the clicked points)
        expect(page.get_by_text(re.compile(r"^A fresh, untrained model.*Diffusion on your 40 points · step 0 "))
               ).to_be_visible()
        expect(page.get_by_label("range slider for Diffusion steps T", exact=True)).to_be_visible()  # its own setting
        set_number(page, "Steps per Train press", 300, slider=True)
        page.get_by_role("button", name="Train", exact=True).click()
        expect(page.get_by_text(re.compile(r"^Done: 300 steps this request"))).to_be_visible()
        expect(page.get_by_text(re.compile(r"Diffusion on your 40 points · step 300"))).to_be_visible()
        expect(page.locator(".toast-body")).to_have_count(0)
        screenshot(page, shots, "21-foundations-my-points")

        page.get_by_role("button", name="Clear my points").click()
        expect(canvas).to_have_attribute("src", re.compile(r"/file="))
        page.get_by_role("button", name="Train", exact=True).click()
        expect_toast(page, "need at least 16 points")
        screenshot(page, shots, "22-foundations-too-few-points")
        dismiss_toasts(page)

        choose(page, "Dataset", "gaussians")
        open_tab(page, "All four")
        set_number(page, "Steps per family", 200, slider=True)
        page.get_by_role("button", name="Train all four").click()
        expect(page.get_by_text(re.compile(r"^Done: 200 steps each"))).to_be_visible()
        expect_image(page, "Data (grey) and samples (red), side by side")
        table = block(page, "All four: energy distance and time")
        for family in ("VAE", "GAN", "Flow", "Diffusion"):
            expect(table.get_by_text(family, exact=True).filter(visible=True).first).to_be_visible()
        expect(page.locator(".toast-body")).to_have_count(0)
        screenshot(page, shots, "23-foundations-all-four")

    # The first view is trained once, on a worker while the server starts, and each page gets its own copy:
    # the clicks and training above changed the first visitor's lab, not what the next visitor opens on.
    with opened_page(browser, app_url) as page:
        open_tab(page, TAB)
        expect(page.get_by_text(re.compile(r"^Trained for 500 steps when the app started"))).to_be_visible()
        expect(page.get_by_text(re.compile(r"VAE on moons \(2000 points\) · step 500 "))).to_be_visible()
        expect(page.get_by_label("Dataset", exact=True)).to_have_value("moons")
        page.get_by_role("button", name="Step (+100)").click()  # goes on from the first view's own model
        expect(page.get_by_text(re.compile(r"VAE on moons \(2000 points\) · step 600 "))).to_be_visible()
        expect(page.get_by_text("fresh model")).to_have_count(0)
