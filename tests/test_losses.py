import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from src.losses import DiceCELoss

LOSS_CONFIGS = sorted((Path(__file__).parents[1] / "conf" / "loss").glob("*.yaml"))

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
#   class 3 is absent from the target, so smp drops its term (loss 0) but still averages over 4.
EXPECTED_DICE = ((1 - 1.4 / 2.15) + (1 - 1.9 / 3.15) + (1 - 1.4 / 2.15) + 0) / 4


def _loss_from_config(path: Path) -> nn.Module:
    return instantiate(OmegaConf.load(path))


def test_dice_ce_is_the_weighted_sum_of_hand_computed_terms():
    loss = DiceCELoss(dice_weight=0.5, ce_weight=2.0)
    assert loss(LOGITS, TARGET).item() == pytest.approx(
        0.5 * EXPECTED_DICE + 2.0 * EXPECTED_CE, rel=1e-5
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [("dice", EXPECTED_DICE), ("ce", EXPECTED_CE), ("dice_ce", EXPECTED_DICE + EXPECTED_CE)],
)
def test_loss_configs_give_hand_computed_values(name, expected):
    loss = _loss_from_config(Path(__file__).parents[1] / "conf" / "loss" / f"{name}.yaml")
    assert loss(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-5)


def test_perfect_prediction_has_near_zero_dice_ce():
    target = torch.tensor([[[0, 1], [2, 3]]])
    logits = 50.0 * nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float()
    assert DiceCELoss()(logits, target).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("weights", [(-1.0, 1.0), (1.0, -0.5), (0.0, 0.0)])
def test_dice_ce_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="dice_weight"):
        DiceCELoss(*weights)


@pytest.mark.parametrize("config", LOSS_CONFIGS, ids=lambda path: path.stem)
def test_every_loss_config_trains_a_network(config):
    torch.manual_seed(0)
    net = nn.Conv2d(1, 4, kernel_size=3, padding=1)
    loss = _loss_from_config(config)
    image = torch.randn(1, 1, 64, 64)
    target = torch.randint(0, 4, (1, 64, 64))

    value = loss(net(image), target)
    value.backward()

    assert value.ndim == 0 and torch.isfinite(value)
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_loss_configs_exist():
    assert {path.stem for path in LOSS_CONFIGS} >= {"dice", "ce", "dice_ce"}
