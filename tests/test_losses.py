import functools
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss
from torch import nn

from src.losses import CombinedLoss, LovaszSoftmaxLoss, with_class_options

CONF_DIR = Path(__file__).parents[1] / "conf"
LOSS_NAMES = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))
WEIGHTED_LOSSES = ["ce", "dice", "focal", "tversky"]  # the single losses with class weights
BACKGROUND_SWITCH_LOSSES = ["dice", "lovasz", "tversky"]

# One 2x2 image, four classes; logits = log(probabilities) so softmax gives them back exactly.
PROBABILITIES = torch.tensor(
    [
        [0.70, 0.10, 0.10, 0.25],  # class 0 at pixels (0,0) (0,1) (1,0) (1,1)
        [0.10, 0.70, 0.10, 0.25],  # class 1
        [0.10, 0.10, 0.70, 0.25],  # class 2
        [0.10, 0.10, 0.10, 0.25],  # class 3
    ]
).reshape(1, 4, 2, 2)
LOGITS = PROBABILITIES.log()
TARGET = torch.tensor([[[0, 1], [2, 1]]])

# Cross-entropy: mean over pixels of -log p(true class) = three pixels at 0.7, one at 0.25.
EXPECTED_CE = (3 * -math.log(0.7) - math.log(0.25)) / 4
# Soft Dice per class, 2*sum(p*t) / (sum p + sum t):
#   class 0: 2*0.7 / (1.15 + 1); class 1: 2*(0.7+0.25) / (1.15 + 2); class 2: 2*0.7 / (1.15 + 1);
#   class 3 is absent from the target, so smp drops its term (loss 0) but still averages over it.
DICE_TERMS = [1 - 1.4 / 2.15, 1 - 1.9 / 3.15, 1 - 1.4 / 2.15, 0.0]
EXPECTED_DICE = sum(DICE_TERMS) / 4
EXPECTED_FOREGROUND_DICE = sum(DICE_TERMS[1:]) / 3
# Tversky (alpha 0.3 on FP, beta 0.7 on FN), TP / (TP + 0.3 FP + 0.7 FN) per class:
#   class 0: TP 0.7, FP 1.15-0.7, FN 1-0.7; class 1: TP 0.95, FP 0.2, FN 1.05; class 2 as class 0.
EXPECTED_TVERSKY = (
    2 * (1 - 0.7 / (0.7 + 0.3 * 0.45 + 0.7 * 0.3)) + (1 - 0.95 / (0.95 + 0.3 * 0.2 + 0.7 * 1.05))
) / 4


@functools.cache
def _loss_config(name: str, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # Through the training config, so ${data.num_classes} resolves.
        cfg = compose("train", overrides=[f"loss={name}", "paths.output_dir=unused", *overrides])
    return OmegaConf.to_container(cfg.loss, resolve=True)


def _compose_loss(name: str, *overrides: str, **changes) -> nn.Module:
    """The loss config ``name`` with command-line ``overrides``, then top-level ``changes``.

    Composing takes about 0.3 s, so each composed config is kept and ``changes`` (cheap) are
    for the many variants of one test.
    """
    config = OmegaConf.create(_loss_config(name, *overrides))
    config.update(changes)
    return instantiate(config)


def _is_multilabel(name: str) -> bool:
    """Whether loss config ``name`` is for sigmoid multi-label data (targets (B, K, H, W))."""
    return "multilabel" in str(_loss_config(name))


def _target_for(name: str, labels: torch.Tensor, num_classes: int = 4) -> torch.Tensor:
    """The target loss ``name`` takes for a label map: the map itself (softmax losses) or one
    0/1 channel per class (multi-label losses)."""
    if not _is_multilabel(name):
        return labels
    return nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def _confident_logits(target: torch.Tensor, num_classes: int = 4) -> torch.Tensor:
    """+50 for the true class, -50 elsewhere: right under softmax and under per-class sigmoid."""
    one_hot = nn.functional.one_hot(target, num_classes).permute(0, 3, 1, 2).float()
    return 50.0 * (2 * one_hot - 1)


def test_loss_configs_exist():
    expected = {"ce", "dice", "dice_ce", "dice_focal", "focal", "lovasz", "tversky"}
    assert set(LOSS_NAMES) >= expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dice", EXPECTED_DICE),
        ("ce", EXPECTED_CE),
        ("tversky", EXPECTED_TVERSKY),
        ("dice_ce", EXPECTED_DICE + EXPECTED_CE),
    ],
)
def test_loss_configs_give_hand_computed_values(name, expected):
    assert _compose_loss(name)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-5)


def test_bce_dice_config_gives_hand_computed_values_on_overlapping_classes():
    # One pixel in both classes (an overlap), logits (ln 3, 0): sigmoid 3/4 and 1/2.
    # BCE: mean of -ln(3/4) and -ln(1/2). Soft Dice per class: 2p / (p + 1), loss 1 - that,
    # mean over the two classes.
    logits = torch.tensor([math.log(3), 0.0]).reshape(1, 2, 1, 1)
    target = torch.ones(1, 2, 1, 1)
    bce = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    dice = ((1 - 1.5 / 1.75) + (1 - 1.0 / 1.5)) / 2
    assert _compose_loss("bce_dice")(logits, target).item() == pytest.approx(bce + dice, rel=1e-5)


def test_focal_config_is_a_per_class_binary_focal_loss():
    # One pixel of class 0, logits (ln 3, 0, 0, 0): sigmoid gives 3/4 for the true class 0 and
    # 1/2 for each of classes 1..3 (true negatives). Binary focal, gamma 2: (1 - p_t)^2 * -ln p_t.
    logits = torch.tensor([math.log(3), 0.0, 0.0, 0.0]).reshape(1, 4, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    expected = ((1 / 4) ** 2 * math.log(4 / 3) + 3 * (1 / 2) ** 2 * math.log(2)) / 4
    assert _compose_loss("focal")(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_dice_focal_config_is_the_sum_of_its_terms():
    dice_focal = _compose_loss("dice_focal")(LOGITS, TARGET)
    focal = _compose_loss("focal")(LOGITS, TARGET)
    assert dice_focal.item() == pytest.approx(EXPECTED_DICE + focal.item(), rel=1e-5)


# Two pixels, classes 0 and 1 with softmax (0.8, 0.2) on the class-0 pixel A and (0.4, 0.6) on
# the class-1 pixel B. Lovasz: errors |t - p| sorted down, each times the rise in the Jaccard
# loss when its pixel joins the wrongly predicted set.
#   class 0: errors B 0.4, A 0.2; {B} wrong: 1 - 1/2, {B, A}: 1 - 0/2 -> 0.4*0.5 + 0.2*0.5 = 0.3
#   class 1: errors B 0.4, A 0.2; {B} wrong: 1 - 0/1, {B, A}: 1 - 0/2 -> 0.4*1 + 0.2*0 = 0.4
LOVASZ_LOGITS = torch.tensor([[0.8, 0.4], [0.2, 0.6]]).log().reshape(1, 2, 1, 2)
LOVASZ_TARGET = torch.tensor([[[0, 1]]])


@pytest.mark.parametrize(("classes", "expected"), [(None, (0.3 + 0.4) / 2), ([1], 0.4)])
def test_lovasz_gives_hand_computed_values(classes, expected):
    loss = LovaszSoftmaxLoss(classes=classes)
    assert loss(LOVASZ_LOGITS, LOVASZ_TARGET).item() == pytest.approx(expected, rel=1e-5)


def test_lovasz_over_all_classes_is_smps_multiclass_lovasz():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 16, 16), torch.randint(0, 3, (2, 16, 16))
    expected = LovaszLoss(mode="multiclass")(logits, target)
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_lovasz_without_any_chosen_class_present_is_zero_and_differentiable():
    logits = torch.randn(1, 4, 8, 8, requires_grad=True)
    value = LovaszSoftmaxLoss(classes=[1, 2, 3])(logits, torch.zeros(1, 8, 8, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and logits.grad is not None


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_perfect_prediction_gives_near_zero_loss(name):
    labels = torch.tensor([[[0, 1], [2, 3]]])
    target = _target_for(name, labels)
    assert _compose_loss(name)(_confident_logits(labels), target).item() == pytest.approx(
        0.0, abs=1e-5
    )


@pytest.mark.parametrize("name", BACKGROUND_SWITCH_LOSSES)
def test_background_switch_changes_the_value(name):
    with_background = _compose_loss(name)(LOGITS, TARGET)
    without = _compose_loss(name, "loss.include_background=false")(LOGITS, TARGET)
    assert without.item() != pytest.approx(with_background.item(), rel=1e-3)


def test_dice_without_background_averages_the_foreground_terms():
    loss = _compose_loss("dice", "loss.include_background=false")
    assert loss(LOGITS, TARGET).item() == pytest.approx(EXPECTED_FOREGROUND_DICE, rel=1e-5)


def test_dice_class_weights_give_the_weighted_mean_of_class_terms():
    weights = [0.5, 1.0, 2.0, 4.0]
    loss = _compose_loss("dice", f"loss.class_weights={weights}")
    expected = sum(w * term for w, term in zip(weights, DICE_TERMS, strict=True)) / sum(weights)
    assert loss(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", WEIGHTED_LOSSES)
@pytest.mark.parametrize("label", [0, 1, 2])
def test_weighting_a_class_up_moves_the_value_towards_that_class_alone(name, label):
    # A weighted mean: weight 10 on one class lies strictly between the unweighted value and
    # the value with that class alone (weight 1 on it, 0 elsewhere).
    def value(weights: list[float]) -> float:
        return _compose_loss(name, class_weights=weights)(LOGITS, TARGET).item()

    alone = value([float(c == label) for c in range(4)])
    up = value([10.0 if c == label else 1.0 for c in range(4)])
    uniform = _compose_loss(name)(LOGITS, TARGET).item()
    assert alone != pytest.approx(uniform, rel=1e-3)
    assert min(alone, uniform) < up < max(alone, uniform)


@pytest.mark.parametrize("name", WEIGHTED_LOSSES)
def test_class_weights_of_the_wrong_length_name_the_key(name):
    with pytest.raises(InstantiationException, match=r"class_weights has 3 values.*expected.*4"):
        _compose_loss(name, "loss.class_weights=[1,2,3]")


def test_class_weights_inside_a_combined_loss_name_the_term():
    with pytest.raises(
        InstantiationException, match=r"class_weights has 2 values(.|\n)*full_key: terms\.dice"
    ):
        _compose_loss("dice_ce", "loss.terms.dice.class_weights=[1,2]")


@pytest.mark.parametrize("weights", [[-1.0, 1.0, 1.0, 1.0], [0.0] * 4, [math.nan, 1, 1, 1]])
def test_bad_class_weights_are_rejected(weights):
    with pytest.raises(ValueError, match="class_weights must be finite"):
        with_class_options(partial(DiceLoss, mode="multiclass"), 4, class_weights=weights)


def test_a_loss_without_a_choice_of_classes_rejects_the_background_switch():
    with pytest.raises(ValueError, match="FocalLoss has no choice of classes"):
        with_class_options(partial(FocalLoss, mode="multiclass"), 4, include_background=False)


def test_a_loss_without_class_weights_rejects_them():
    with pytest.raises(ValueError, match="LovaszSoftmaxLoss takes no class weights"):
        with_class_options(LovaszSoftmaxLoss, 4, class_weights=[1, 1, 1, 1])


def test_combined_loss_is_the_weighted_sum_of_its_terms():
    loss = CombinedLoss(
        {"dice": DiceLoss("multiclass"), "ce": nn.CrossEntropyLoss()}, {"dice": 0.5, "ce": 2.0}
    )
    assert loss(LOGITS, TARGET).item() == pytest.approx(
        0.5 * EXPECTED_DICE + 2.0 * EXPECTED_CE, rel=1e-5
    )


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"dice": 1.0}, "must name exactly the terms"),
        ({"dice": 1.0, "ce": 1.0, "focal": 1.0}, "must name exactly the terms"),
        ({"dice": -1.0, "ce": 1.0}, "must be finite, >= 0 and not all 0"),
        ({"dice": 0.0, "ce": 0.0}, "must be finite, >= 0 and not all 0"),
    ],
)
def test_combined_loss_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        CombinedLoss({"dice": DiceLoss("multiclass"), "ce": nn.CrossEntropyLoss()}, weights)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_config_trains_a_network(name):
    torch.manual_seed(0)
    net = nn.Conv2d(1, 4, kernel_size=3, padding=1)
    image = torch.randn(1, 1, 64, 64)
    target = _target_for(name, torch.randint(0, 4, (1, 64, 64)))

    value = _compose_loss(name)(net(image), target)
    value.backward()

    assert value.ndim == 0 and torch.isfinite(value)
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


# bf16 keeps 8 significant bits: each rounding (of the logits, and of the loss itself, which
# Dice and Tversky return in bf16) is off by up to 2^-8 = 0.4% relative. 2% allows a few such
# roundings and is still far below what separates a good prediction from a bad one.
AMP_RELATIVE_TOLERANCE = 2e-2


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_config_is_safe_under_bf16_autocast(name):
    torch.manual_seed(0)
    net = nn.Conv2d(8, 4, kernel_size=1)  # a conv: autocast runs it in bf16
    image = 3 * torch.randn(2, 8, 64, 64)
    target = _target_for(name, torch.randint(0, 4, (2, 64, 64)))
    loss = _compose_loss(name)

    full_precision = loss(net(image), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(image)
        mixed = loss(logits, target)

    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(mixed)
    assert mixed.float().item() == pytest.approx(full_precision.item(), rel=AMP_RELATIVE_TOLERANCE)
