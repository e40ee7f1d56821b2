"""The evaluation command's scores (genlab.eval): the pieces that judge the embedded models."""

from __future__ import annotations

import pytest
import torch

from genlab.eval import balanced_accuracy, emoji_stats, psnr_float


def test_balanced_accuracy_does_not_reward_the_majority_class():
    labels = torch.tensor([0] * 8 + [1, 2])
    majority_only = torch.zeros(10, dtype=torch.long)
    assert (majority_only == labels).float().mean().item() == pytest.approx(0.8)  # plain accuracy looks good
    assert balanced_accuracy(majority_only, labels, classes=4) == pytest.approx(1 / 3)  # class 3 absent: not counted
    assert balanced_accuracy(labels.clone(), labels, classes=4) == pytest.approx(1.0)


def test_emoji_stats_see_a_white_border_a_coloured_centre_and_diversity():
    images = torch.ones(4, 3, 32, 32)  # white, in [-1, 1]
    images[:, 0, 8:24, 8:24] = -1.0  # a cyan square in the middle (red channel off)
    lightness, colour, diversity = emoji_stats(images)
    assert lightness == pytest.approx(1.0) and colour == pytest.approx(1.0)
    assert diversity == pytest.approx(0.0)  # four identical images
    images[1:, :, 8:24, 8:24] = -1.0  # three of them now black in the middle
    assert emoji_stats(images)[2] > 0.1


def test_psnr_float_clips_the_test_image():
    clean = torch.full((8, 8, 3), 0.5).numpy()
    assert psnr_float(clean, clean + 1.0) == pytest.approx(psnr_float(clean, clean + 0.5))  # both clip to 1
