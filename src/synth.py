"""Entry point: write a phantom record in the raw layout (see src.synthetic.record)."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

import src  # CONF_DIR for Hydra
from src.synthetic.record import write_phantom_record


@hydra.main(config_path=src.CONF_DIR, config_name="synth", version_base="1.3")
def main(cfg: DictConfig) -> None:
    write_phantom_record(
        Path(cfg.out_dir),
        n_subjects=cfg.n_subjects,
        size=tuple(cfg.size),
        seed=cfg.seed,
        workers=cfg.workers,
    )


if __name__ == "__main__":
    main()
