"""Start the Streamlit viewer (``src/viewer_app``) on localhost.

    python -m src.viewer ckpt_path=<file.ckpt> [run_dir=<evaluated run>] [compare=[a,b]]
        [data=... data.root=...] [port=8501] [data_images=false]

Hydra composes ``conf/viewer.yaml``; the data config's prepared copy (made as for training
when missing) gives the Scan page the dataset's images and a run's images their true outline.
The settings go to the app as JSON in ``SONOSEG_VIEWER``. The process then becomes
``streamlit run`` (exec), so stopping it stops the server. Streamlit is the optional
dependency ``viewer`` (``pip install -e '.[viewer]'``; ``make viewer`` installs it).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import src  # PROJECT_ROOT for the configs, CONF_DIR for Hydra
from src.viewer_app.settings import SETTINGS_ENV, Inference, ViewerSettings

log = logging.getLogger(__name__)
APP = Path(__file__).resolve().parent / "viewer_app" / "app.py"


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def viewer_settings(cfg: DictConfig) -> ViewerSettings:
    """The app's settings from the composed config: absolute paths (the server's working
    folder may differ), and the data config's prepared copy (unless ``data_images=false``),
    prepared as for training when it does not exist yet; an existing copy is used as it is."""
    ckpt = cfg.ckpt_path
    paths = [ckpt] if isinstance(ckpt, str) else list(ckpt)
    prepared_dir = class_names = None
    if cfg.data_images:
        datamodule = hydra.utils.instantiate(cfg.data)
        if not (datamodule.prepared_dir / "index.csv").is_file():
            datamodule.prepare_record()  # the viewer reads originals: no cache
        prepared_dir, class_names = str(datamodule.prepared_dir), datamodule.class_names
    return ViewerSettings(
        model=Inference(
            ckpt_paths=tuple(_absolute(p) for p in paths),
            tta_flip=bool(cfg.tta_flip),
            rules=OmegaConf.to_container(cfg.postprocess) if cfg.postprocess else {},
            robust_biometry=bool(cfg.robust_biometry),
        ),
        run_dir=_absolute(cfg.run_dir),
        compare_dirs=tuple(_absolute(d) for d in cfg.compare),
        prepared_dir=prepared_dir,
        data_class_names=class_names,
    )


def streamlit_command(port: int, address: str) -> list[str]:
    """``streamlit run`` of the app, headless (no browser opened on the server), without
    usage statistics, a file watcher or developer menus."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        f"--server.port={port}",
        f"--server.address={address}",
        "--server.headless=true",
        "--server.fileWatcherType=none",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=minimal",  # no "Deploy" button: this app runs locally
    ]


@hydra.main(config_path=src.CONF_DIR, config_name="viewer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if importlib.util.find_spec("streamlit") is None:
        raise SystemExit(
            "Streamlit is not installed: `pip install -e '.[viewer]'` (make viewer installs it)"
        )
    settings = viewer_settings(cfg)
    command = streamlit_command(cfg.port, cfg.address)
    log.info("viewer on http://%s:%d (Ctrl+C stops it)", cfg.address, cfg.port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, {**os.environ, SETTINGS_ENV: settings.to_json()})


if __name__ == "__main__":
    main()
