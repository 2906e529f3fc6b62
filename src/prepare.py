"""Entry point: read a dataset's raw layout into a prepared dir with the data config's reader
(see src.data.prepared for the format, src.data.readers for the layouts)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

import src  # PROJECT_ROOT for the configs, CONF_DIR for Hydra


@hydra.main(config_path=src.CONF_DIR, config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    reader = hydra.utils.instantiate(cfg.data.reader)
    reader.prepare(Path(cfg.raw_dir), Path(cfg.out_dir), overwrite=cfg.overwrite)


if __name__ == "__main__":
    main()
