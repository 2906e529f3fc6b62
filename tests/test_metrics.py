import math

import pytest
import torch
from torch import nn

from src.data.classes import FETAL_HEAD
from src.metrics import SegmentationMetrics, per_image_scores, summarize

NAN = math.nan

# Labels: 0 background, 1 brain, 2 csp, 3 lv.
TARGET_A = [[0, 1, 1, 0], [0, 1, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0]]  # brain 4, csp 2, no lv
PRED_A = [[0, 1, 1, 1], [0, 1, 1, 0], [0, 2, 0, 0], [3, 0, 0, 0]]  # brain 5, csp 1, lv 1
TARGET_B = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]  # brain 4, no csp, lv 1
PRED_B = [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 3, 3], [0, 0, 0, 0]]  # brain 3, no csp, lv 2
TARGETS = torch.tensor([TARGET_A, TARGET_B])
PREDS = torch.tensor([PRED_A, PRED_B])

# Per image (rows A, B) and class (brain, csp, lv), by hand:
#   A brain: |P∩T| 4, |P| 5, |T| 4 -> Dice 8/9, IoU 4/5; csp: 1, 1, 2 -> 2/3, 1/2;
#     lv predicted but absent -> 0, 0.
#   B brain: 3, 3, 4 -> 6/7, 3/4; csp absent from both -> NaN; lv: 1, 2, 1 -> 2/3, 1/2.
EXPECTED_DICE = torch.tensor([[8 / 9, 2 / 3, 0.0], [6 / 7, NAN, 2 / 3]])
EXPECTED_IOU = torch.tensor([[4 / 5, 1 / 2, 0.0], [3 / 4, NAN, 1 / 2]])


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(actual.float(), expected.float(), atol=1e-6, equal_nan=True)


def test_per_image_scores_follow_hand_computation_and_empty_rule():
    dice, iou = per_image_scores(PREDS, TARGETS, num_classes=4)
    assert _close(dice, EXPECTED_DICE)
    assert _close(iou, EXPECTED_IOU)


def test_class_present_but_missed_scores_zero():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 2
    dice, iou = per_image_scores(torch.zeros_like(target), target, num_classes=4)
    assert _close(dice, torch.tensor([[NAN, 0.0, NAN]]))
    assert _close(iou, torch.tensor([[NAN, 0.0, NAN]]))


def test_compute_takes_nanmean_over_images_then_mean_over_classes():
    metrics = SegmentationMetrics(FETAL_HEAD.names)
    metrics.update(PREDS, TARGETS)
    result = metrics.compute()

    dice_brain, dice_csp, dice_lv = (8 / 9 + 6 / 7) / 2, 2 / 3, (0 + 2 / 3) / 2
    iou_brain, iou_csp, iou_lv = (4 / 5 + 3 / 4) / 2, 1 / 2, (0 + 1 / 2) / 2
    expected = {
        "dice_brain": dice_brain,
        "dice_csp": dice_csp,  # image B (csp in neither map) left out of the mean
        "dice_lv": dice_lv,  # image A (lv predicted, absent) counts as 0
        "dice_mean": (dice_brain + dice_csp + dice_lv) / 3,
        "iou_brain": iou_brain,
        "iou_csp": iou_csp,
        "iou_lv": iou_lv,
        "iou_mean": (iou_brain + iou_csp + iou_lv) / 3,
    }
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert float(result[key]) == pytest.approx(value, abs=1e-6), key


def test_class_absent_from_every_image_is_nan_and_left_out_of_mean():
    metrics = SegmentationMetrics(FETAL_HEAD.names)
    metrics.update(PREDS[1:], TARGETS[1:])  # image B only: no csp anywhere
    result = metrics.compute()

    assert math.isnan(float(result["dice_csp"]))
    assert float(result["dice_mean"]) == pytest.approx((6 / 7 + 2 / 3) / 2, abs=1e-6)
    assert float(result["iou_mean"]) == pytest.approx((3 / 4 + 1 / 2) / 2, abs=1e-6)


def test_logits_give_the_same_scores_as_their_argmax():
    logits = 10.0 * nn.functional.one_hot(PREDS, 4).permute(0, 3, 1, 2).float()
    logits += 0.1 * torch.randn_like(logits)
    for from_logits, from_labels in zip(
        per_image_scores(logits, TARGETS, 4), per_image_scores(PREDS, TARGETS, 4), strict=True
    ):
        assert _close(from_logits, from_labels)


def test_update_in_batches_equals_update_on_the_concatenation():
    generator = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 4, (6, 8, 8), generator=generator)
    targets = torch.randint(0, 4, (6, 8, 8), generator=generator)
    targets[2] = 0  # no foreground; only brain predicted: brain 0, csp and lv NaN
    preds[2] = (preds[2] == 1).long()
    batched, whole = SegmentationMetrics(FETAL_HEAD.names), SegmentationMetrics(FETAL_HEAD.names)
    batched.update(preds[:2], targets[:2])
    batched.update(preds[2:], targets[2:])
    whole.update(preds, targets)

    batched_result, whole_result = batched.compute(), whole.compute()
    assert batched_result.keys() == whole_result.keys()
    for key in whole_result:
        assert _close(batched_result[key], whole_result[key]), key
    assert len(batched.per_image()) == 6
    for batched_row, whole_row in zip(batched.per_image(), whole.per_image(), strict=True):
        assert _close(
            torch.tensor(list(batched_row.values())), torch.tensor(list(whole_row.values()))
        )


def test_per_image_keeps_nan_and_names_every_foreground_class():
    metrics = SegmentationMetrics(FETAL_HEAD.names)
    metrics.update(PREDS, TARGETS)
    rows = metrics.per_image()

    assert [list(row) for row in rows] == [
        ["dice_brain", "dice_csp", "dice_lv", "iou_brain", "iou_csp", "iou_lv"]
    ] * 2
    assert rows[0]["dice_brain"] == pytest.approx(8 / 9)
    assert rows[0]["iou_lv"] == 0.0
    assert math.isnan(rows[1]["dice_csp"]) and math.isnan(rows[1]["iou_csp"])
    assert all(isinstance(value, float) for row in rows for value in row.values())


def test_reset_forgets_images():
    metrics = SegmentationMetrics(FETAL_HEAD.names)
    metrics.update(PREDS, TARGETS)
    metrics.reset()
    metrics.update(PREDS[:1], TARGETS[:1])
    assert len(metrics.per_image()) == 1
    assert float(metrics.compute()["dice_brain"]) == pytest.approx(8 / 9)


def test_summarize_of_no_images_is_nan():
    result = summarize(torch.empty(0, 3), torch.empty(0, 3), FETAL_HEAD.foreground)
    assert all(math.isnan(float(value)) for value in result.values())


@pytest.mark.parametrize(
    ("preds", "target", "message"),
    [
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), "same"),
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4), "integer label map"),
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "must be integer"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), "4 channels"),
        (torch.full((1, 4, 4), 4), torch.zeros(1, 4, 4, dtype=torch.long), "outside"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), -1), "outside"),
    ],
)
def test_bad_inputs_get_clear_errors(preds, target, message):
    with pytest.raises(ValueError, match=message):
        per_image_scores(preds, target, num_classes=4)


def test_background_only_class_names_are_rejected():
    with pytest.raises(ValueError, match="foreground"):
        SegmentationMetrics(["background"])
