"""The reconstruction and codebook tabs with a KL autoencoder beside a VQ model, through gradio_client.

One app serves the tiny AutoencoderKL of conftest.py's latent pipeline (its vae/, f = 2, 4 latent
channels) and the tiny VQModel (f = 2, K = 32) as `--model vq=...` entries, so no trained weights
are needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from genlab.tools.bench import free_port  # noqa: E402
from genlab.config import parse_args  # noqa: E402
from genlab.imaging.io import open_image  # noqa: E402
from genlab.loading.loaders import load_autoencoder  # noqa: E402
from genlab.ui import build_app  # noqa: E402
from genlab.ui.common import OUTPUT_DIR  # noqa: E402
from genlab.ui.reconstruct_tab import COMPARE_LABELS, METRIC_ROWS, PANEL_LABELS, std_image  # noqa: E402

BITS, CODES = METRIC_ROWS[2], METRIC_ROWS[4]
SIZE = (44, 30)  # the photo fixture's (width, height)


@pytest.fixture(scope="module")
def app(tiny_kl_ldm_dir, tiny_vq_dir, tiny_vq_sibling_dir):
    """(client, KL label, VQ label) for an app serving both autoencoders (and the VQ's sibling decoder)."""
    port = free_port()
    config = parse_args(["--model", f"vq={tiny_kl_ldm_dir}#vae", "--model", f"vq={tiny_vq_dir}",
                         "--model", f"vq={tiny_vq_sibling_dir}", "--port", str(port)], environ={})
    demo = build_app(config)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(OUTPUT_DIR)])
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, f"{tiny_kl_ldm_dir}#vae", str(tiny_vq_dir)
    client.close() if hasattr(client, "close") else None
    demo.close()


@pytest.fixture(scope="module")
def expected_kl(tiny_kl_ldm_dir, photo_path):
    """The KL autoencoder's own reconstruction of the photo, outside the app."""
    kl = load_autoencoder(tiny_kl_ldm_dir, "vae", device="cpu")
    return kl.reconstruct(open_image(photo_path), max_side=512)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def same_up_to_rounding(panel, expected) -> bool:
    """With a compare model the app runs each model on one core (genlab.ui.common.run_pair); its float sums
    then round in another order than on the test's threads, which can move a pixel by one level."""
    difference = np.abs(pixels(panel).astype(int) - np.asarray(expected).astype(int))
    return difference.max() <= 1 and difference.mean() < 0.05


def rows_of(table) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in table["data"]}


def labels(client, model, compare="") -> list[str]:
    """The panel labels after choosing `model` and `compare` in the dropdowns; each choice empties its row."""
    updates = [*client.predict(model, api_name="/reconstruct_labels"),
               *client.predict(compare, api_name="/reconstruct_compare_labels")]
    assert all(update["value"] is None for update in updates)
    return [update["label"] for update in updates]


def test_kl_row_shows_mean_decode_posterior_sample_and_std(app, photo_path, expected_kl):
    client, kl_label, _ = app
    result = client.predict(handle_file(str(photo_path)), kl_label, "", 512, api_name="/reconstruct")
    original, mean, sample, std, *compare, jpeg, table, note, downloads = result
    assert compare == [None, None, None]
    for panel in (original, mean, sample, std, jpeg):
        assert Image.open(panel).size == SIZE
    assert np.array_equal(pixels(mean), np.asarray(expected_kl.image))
    assert np.array_equal(pixels(sample), np.asarray(expected_kl.sample))
    assert not np.array_equal(pixels(sample), pixels(mean))  # a draw from q(z|x), not its mean
    assert np.array_equal(pixels(std), np.asarray(std_image(expected_kl.std_map, 2, SIZE)))
    rows = rows_of(table)
    assert float(rows[BITS][0]) == pytest.approx(expected_kl.bits_per_pixel, abs=5e-5)  # the KL rate
    assert float(rows["PSNR (dB)"][0]) == pytest.approx(expected_kl.psnr, abs=0.005)
    assert rows[CODES][0].startswith("none: a 4x15x22 latent")  # no codebook: (C, h, w) at f = 2
    jpeg_bpp = float(rows[BITS][1])
    assert jpeg_bpp <= expected_kl.bits_per_pixel if table["headers"][-1] == "JPEG at <= the same bpp" else jpeg_bpp > 0
    assert "4x15x22 latent" in note
    png, code = downloads
    assert Path(png).name.startswith("reconstruction_") and Path(code).name.startswith("posterior-std_")
    assert np.allclose(np.load(code, allow_pickle=False), expected_kl.std_map, atol=1e-6)
    assert labels(client, kl_label) == [*PANEL_LABELS["kl"], *COMPARE_LABELS["vq"]]


def test_vq_row_keeps_error_and_token_panels(app, photo_path):
    client, _, vq_label = app
    original, reconstruction, error, tokens, *_, table, note, downloads = client.predict(
        handle_file(str(photo_path)), vq_label, "", 512, api_name="/reconstruct")
    assert Image.open(reconstruction).size == Image.open(error).size == SIZE
    rows = rows_of(table)
    assert float(rows[BITS][0]) == pytest.approx(15 * 22 * 5 / (44 * 30), rel=1e-3)  # log2(32) / 2^2, padded
    assert rows[CODES][0].endswith("of 32 codes") and rows[CODES][-1].startswith("quality ")
    assert np.load(downloads[1], allow_pickle=False).shape == (15, 22)
    assert labels(client, vq_label) == ["reconstruction", "absolute error", "token indices (codes as colours)",  # as before
                                        "reconstruction (compare)", "absolute error (compare)",
                                        "token indices (compare)"]


def test_compare_vq_with_kl_both_ways(app, photo_path, expected_kl):
    client, kl_label, vq_label = app
    result = client.predict(handle_file(str(photo_path)), vq_label, kl_label, 512, api_name="/reconstruct")
    compare_mean, compare_sample, compare_std = result[4:7]
    assert same_up_to_rounding(compare_mean, expected_kl.image)
    assert same_up_to_rounding(compare_sample, expected_kl.sample)
    assert Image.open(compare_std).size == SIZE
    table = result[8]
    assert table["headers"][:3] == ["metric", vq_label, kl_label]
    rows = rows_of(table)
    assert float(rows[BITS][1]) == pytest.approx(expected_kl.bits_per_pixel, abs=5e-5)
    original = pixels(result[0])  # SsimReference reuses the input's statistics: each SSIM is still skimage's
    for column, panel in enumerate((result[1], compare_mean, result[7])):  # model, compare model, JPEG
        expected = structural_similarity(original, pixels(panel), data_range=255, channel_axis=-1)
        assert float(rows["SSIM"][column]) == pytest.approx(expected, abs=5e-5)  # the table rounds to 4 decimals
    assert labels(client, vq_label, kl_label) == [*PANEL_LABELS["vq"], *COMPARE_LABELS["kl"]]
    reverse = client.predict(handle_file(str(photo_path)), kl_label, vq_label, 512, api_name="/reconstruct")
    assert same_up_to_rounding(reverse[1], expected_kl.image)
    assert rows_of(reverse[8])[CODES][1].endswith("of 32 codes")
    assert labels(client, kl_label, vq_label) == [*PANEL_LABELS["kl"], *COMPARE_LABELS["vq"]]


def test_compare_a_sibling_decoder_on_the_same_tokens(app, photo_path, tiny_vq_sibling_dir, monkeypatch):
    """A compare model with the first's encoder and codebook decodes the first's tokens, encoded once, and its
    row and the JPEG column are what each model alone gives (the lanes run on one core each, so floats may round
    otherwise than on the handler's threads: see same_up_to_rounding)."""
    from genlab.autoencoders.vq import VQ

    client, _, vq_label = app
    sibling = str(tiny_vq_sibling_dir)
    encodings, encode_image = [], VQ.encode_image

    def counted(self, *args, **kwargs):
        encodings.append(self.name)
        return encode_image(self, *args, **kwargs)

    monkeypatch.setattr(VQ, "encode_image", counted)
    both = client.predict(handle_file(str(photo_path)), vq_label, sibling, 512, api_name="/reconstruct")
    assert len(encodings) == 1  # the first model's lane only
    alone = client.predict(handle_file(str(photo_path)), vq_label, "", 512, api_name="/reconstruct")
    sibling_alone = client.predict(handle_file(str(photo_path)), sibling, "", 512, api_name="/reconstruct")
    assert "the same tokens, encoded once, decoded by two decoders" in both[9]
    assert "encoded once" not in alone[9] and "encoded once" not in sibling_alone[9]
    assert np.array_equal(pixels(both[3]), pixels(both[6]))  # one token map twice
    assert same_up_to_rounding(both[4], pixels(sibling_alone[1]))
    assert same_up_to_rounding(both[1], pixels(alone[1]))
    assert not np.array_equal(pixels(both[1]), pixels(both[4]))  # two decoders

    def column(result, index):  # a table column, without the latency row
        return [row[index] for row in result[8]["data"] if row[0] != METRIC_ROWS[-1]]

    both_psnr, alone_psnr = (float(column(result, 1)[0]) for result in (both, alone))
    assert both_psnr == pytest.approx(alone_psnr, abs=0.05)
    assert column(both, -1) == column(alone, -1)  # the JPEG's, which the compare lane made while it waited
    assert np.array_equal(pixels(both[7]), pixels(alone[7])) and np.array_equal(pixels(both[0]), pixels(alone[0]))
    assert np.mean(np.load(both[10][1]) == np.load(alone[10][1])) >= 0.97  # the token grid download


def test_codebook_tab_refuses_a_kl_autoencoder_and_keeps_serving(app, photo_path):
    client, kl_label, vq_label = app
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict(handle_file(str(photo_path)), kl_label, 0, api_name="/codebook")
    atlas, *_, stats, _, grid, _ = client.predict(handle_file(str(photo_path)), vq_label, 0, api_name="/codebook")
    assert Image.open(atlas).width > 0 and "perplexity" in stats
