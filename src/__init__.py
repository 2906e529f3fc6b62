"""sonoseg: fetal head ultrasound segmentation (Brain, CSP, LV) and biometry."""

import os
from pathlib import Path

# Configs place data/ and outputs/ under the repository root whatever the working
# directory (as lightning-hydra-template's rootutils does); a user may point it elsewhere.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))
# The entry points' Hydra config folder as an absolute path: a relative "../conf" would be
# read as a Python package when an entry point runs as a console script (sonoseg-train).
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
