"""Shared fixtures: a tiny phantom record in the raw layout, and its prepared dir.

Both are session-scoped and shared by every test module: treat them as read-only (copy
them to tmp_path before altering anything).
"""

from pathlib import Path

import pytest

from src.data.fetal_head import prepare_dataset
from src.data.phantom_record import write_phantom_record

PHANTOM_SUBJECTS = 8  # 6 patients over the three Trans-* planes, 2 HC18 subjects: 19 images
PHANTOM_SIZE = (96, 66)  # width, height: the record's 959x661 aspect, ten times smaller


@pytest.fixture(scope="session")
def phantom_raw(tmp_path_factory) -> Path:
    """A phantom record (zips, nested zip, extracted plane, VOC-only plane) plus phantom_truth/."""
    out = tmp_path_factory.mktemp("phantom") / "raw"
    return write_phantom_record(out, n_subjects=PHANTOM_SUBJECTS, size=PHANTOM_SIZE, seed=0)


@pytest.fixture(scope="session")
def prepared_dir(phantom_raw, tmp_path_factory) -> Path:
    """``phantom_raw`` read by ``prepare_dataset``: index.csv, images/, masks/, report."""
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare_dataset(phantom_raw, out)
    return out


@pytest.fixture(autouse=True)
def restore_torch_determinism():
    """A Trainer with ``deterministic=True`` switches torch's deterministic algorithms on for
    the whole process; switch it back so no test depends on which tests ran before it."""
    import torch

    was_enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(was_enabled)
