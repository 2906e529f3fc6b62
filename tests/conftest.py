"""Shared fixtures: a tiny phantom record in the raw layout, and its prepared dir.

Both are session-scoped and shared by every test module: treat them as read-only (copy
them to tmp_path before altering anything).
"""

from pathlib import Path

import pytest
import torch

from src.data.readers.fetal_head import prepare_dataset
from src.synthetic.record import write_phantom_record

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


@pytest.fixture(scope="session")
def tiny_data(phantom_raw, tmp_path_factory) -> list[str]:
    """Train overrides for the session phantom at 64 px, no worker processes, nothing drawn on
    a terminal; tests add what they vary (later overrides of a key win)."""
    return [
        f"data.root={phantom_raw}",
        "data.synthetic=null",
        f"data.cache_dir={tmp_path_factory.getbasetemp() / 'train-prepared'}",
        "data.image_size=[64,64]",
        "data.batch_size=4",
        "data.num_workers=0",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]


@pytest.fixture(scope="session")
def tiny_run(tiny_data) -> list[str]:
    """``tiny_data`` plus a one-epoch, one-batch run of a UNet of base width 8."""
    return [
        "+experiment=unet_dice",
        *tiny_data,
        "model.base_channels=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
    ]


@pytest.fixture(scope="session")
def tiny_trained_run(tiny_run, tmp_path_factory) -> Path:
    """A ``tiny_run`` trained once (test=false): its folder holds checkpoints/epoch_000.ckpt.
    Read-only: copy what a test changes."""
    from hydra import compose, initialize_config_dir

    from src.train import train

    run_dir = tmp_path_factory.mktemp("tiny-run")
    conf = Path(__file__).resolve().parents[1] / "conf"
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with initialize_config_dir(str(conf), version_base="1.3"):
        train(compose("train", [*tiny_run, "test=false", f"paths.output_dir={run_dir}"]))
    torch.use_deterministic_algorithms(was_deterministic)  # as restore_torch_determinism does
    return run_dir


@pytest.fixture(autouse=True)
def restore_torch_determinism():
    """A Trainer with ``deterministic=True`` switches torch's deterministic algorithms on for
    the whole process; switch it back so no test depends on which tests ran before it."""
    was_enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(was_enabled)
