"""The views behind test-time augmentation and the quality score, and the score itself."""

import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from src.data.classes import FETAL_HEAD
from src.inference.predictor import predict_logits, predict_views
from src.inference.quality import QUALITY_VIEWS, calibrate_threshold, hc_spread, is_flagged
from src.inference.views import FLIP, IDENTITY, View

NAMES = list(FETAL_HEAD.names)


class Brightness(nn.Module):
    """A 'network' whose logits are the input itself (class 1) against 0.5 (class 0): the
    label map is the thresholded image, so a view's labels show where it looked."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.num_classes, *x.shape[2:])
        logits[:, 0] = 0.5
        logits[:, 1] = x[:, 0]
        return logits


def ellipse_image(shape=(60, 90), axes=(30, 20), centre=(40, 30)) -> np.ndarray:
    image = np.zeros(shape, np.uint8)
    cv2.ellipse(image, centre, axes, 0, 0, 360, 255, -1)
    return image


def test_views_come_back_in_the_image_frame():
    image = ellipse_image()
    image[:, :10] = 255  # an asymmetric band: a flip that is not undone would move it
    logits = predict_views(Brightness(), image, (60, 90), [IDENTITY, FLIP, View(zoom=0.8)])
    assert logits.shape == (3, 2, 60, 90)
    labels = logits.argmax(1).numpy()
    assert (labels[0] == (image > 127)).all()
    assert (labels[1] == labels[0]).all()
    # Zoomed out and back: the same picture up to interpolation at the edges.
    assert (labels[2] != labels[0]).mean() < 0.03


def test_predict_logits_is_the_mean_of_the_test_time_views():
    image = (np.random.default_rng(0).random((40, 64)) * 255).astype(np.uint8)
    net = nn.Conv2d(1, 2, 3, padding=1)
    views = predict_views(net, image, (32, 48), [IDENTITY, FLIP])
    torch.testing.assert_close(predict_logits(net, image, (32, 48)), views[0])
    torch.testing.assert_close(predict_logits(net, image, (32, 48), tta_flip=True), views.mean(0))


def test_hc_spread_is_the_range_of_the_views_circumferences():
    small, large = ellipse_image(axes=(20, 14)), ellipse_image(axes=(30, 20))
    to_labels = [(m > 127).astype(np.uint8) * NAMES.index("brain") for m in (small, large)]
    spread = hc_spread(to_labels, NAMES, 0.5)
    # Ramanujan's circumferences of the two outlines, 0.5 mm per pixel: about 27 mm apart.
    assert 20 < spread < 35
    assert hc_spread([to_labels[1], to_labels[1]], NAMES, 0.5) == pytest.approx(0, abs=1e-6)
    assert hc_spread([to_labels[1], np.zeros_like(to_labels[1])], NAMES) == math.inf
    assert math.isnan(hc_spread([np.zeros_like(to_labels[1])] * 2, NAMES))


def test_threshold_flags_the_chosen_share_of_validation_scores():
    scores = [*range(1, 101), math.nan]
    threshold = calibrate_threshold(scores, share=0.1)
    assert sum(s > threshold for s in scores[:-1]) == 10
    assert calibrate_threshold([math.nan]) is None
    assert calibrate_threshold([1.0, math.inf], share=0.5) == 1.0  # inf counts as the worst
    assert is_flagged(5.0, 2.0) is True and is_flagged(1.0, 2.0) is False
    assert is_flagged(5.0, None) is None and is_flagged(math.nan, 2.0) is None


def test_quality_views_start_with_the_test_time_views():
    assert QUALITY_VIEWS[:2] == (IDENTITY, FLIP)
