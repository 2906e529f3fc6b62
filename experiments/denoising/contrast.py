"""The grey-level contrasts a classical denoiser leaves between the brain and the small fluid
structures (CSP, LV), on the cached training images of the denoising study's data.

    python experiments/denoising/contrast.py [overrides ...]

For each filter of the study (none, median, NLM, SRAD) the study's data (``unet_dice_cpu`` at
64 x 96, fold 0) is cached with that filter applied, as training sees it (``data.denoise``);
contrast = mean grey level (0-255) of the brain pixels minus that of the CSP (or LV) pixels,
pooled over the training split's images that have the structure. Prints a table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FILTERS = ("none", "median", "nlm", "srad")
STUDY = [
    "+experiment=unet_dice_cpu",
    "data.image_size=[64,96]",
    "data.fold=0",
    "data.splits_out=null",
]


def contrasts(overrides: list[str]) -> dict[str, float]:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [*STUDY, *overrides])
    denoise = OmegaConf.select(cfg, "denoiser.filter")
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data["denoise"] = OmegaConf.to_container(denoise, resolve=True) if denoise else None
    data.update(train_transform=None, num_workers=0)
    datamodule = hydra.utils.instantiate(data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.dataset("train")
    grey = {name: [] for name in ("brain", "csp", "lv")}
    for i in range(len(dataset)):
        sample = dataset[i]
        image = sample["image"][0].numpy() * 255.0
        mask = sample["mask"].numpy()
        for label, name in enumerate(("brain", "csp", "lv"), start=1):
            grey[name].append(image[mask == label])
    means = {name: float(np.concatenate(values).mean()) for name, values in grey.items()}
    return {
        "brain - CSP": means["brain"] - means["csp"],
        "brain - LV": means["brain"] - means["lv"],
    }


def main() -> None:
    rows = {name: contrasts([f"denoiser={name}", *sys.argv[1:]]) for name in FILTERS}
    table = pd.DataFrame(rows).T.round(1)
    table.index.name = "filter"
    print(table.to_string())


if __name__ == "__main__":
    main()
