"""Entry point: read the raw fetal head record into a prepared dir (see src.data.fetal_head)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from src.data.fetal_head import prepare_dataset


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    prepare_dataset(
        Path(cfg.raw_dir),
        Path(cfg.out_dir),
        overwrite=cfg.overwrite,
        colour_tolerance=cfg.colour_tolerance,
    )


if __name__ == "__main__":
    main()
