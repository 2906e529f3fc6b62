"""A user's mistake, tried from the command line as a user types it: a non-zero exit, at most
3 lines on stderr naming the key or count to change, the traceback in the log file only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _train(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-W", "ignore", "-m", "src.train", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _one_error(done: subprocess.CompletedProcess, *expected: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0
    assert len(lines) <= 3, done.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0], lines[0]
    (log_line,) = [line for line in lines if line.startswith("full traceback: ")]
    log_file = Path(log_line.removeprefix("full traceback: "))
    assert "Traceback (most recent call last)" in log_file.read_text()
    assert "Traceback" not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def uwmgi_root(tmp_path_factory) -> Path:
    from src.synthetic.uwmgi import write_uwmgi_record

    return write_uwmgi_record(
        tmp_path_factory.mktemp("uwmgi") / "raw", n_cases=3, days_per_case=1, slices_per_day=4
    )


def _uwmgi(root: Path, tmp_path: Path) -> list[str]:
    return [
        "data=uwmgi",
        f"data.root={root}",
        "data.synthetic=null",
        f"data.cache_dir={tmp_path / 'prepared'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.fast_dev_run=true",
        "data.num_workers=0",
    ]


def test_a_single_label_loss_on_multi_label_data(uwmgi_root, tmp_path):
    done = _train(
        *_uwmgi(uwmgi_root, tmp_path),
        "data.n_folds=3",
        "model=attention_unet",
        "loss=dice",
        cwd=tmp_path,
    )
    _one_error(done, "data=uwmgi is multi-label", "loss=dice", "use loss=bce_dice")


def test_a_model_swap_that_keeps_another_models_key(uwmgi_root, tmp_path):
    done = _train(
        "+experiment=uwmgi_unet_effb7_2p5d",
        *_uwmgi(uwmgi_root, tmp_path),
        "data.n_folds=3",
        "model=attention_unet",
        cwd=tmp_path,
    )
    _one_error(done, "model=attention_unet", "takes no model.encoder_name", "~model.encoder_name")


def test_too_few_subjects_for_the_folds(uwmgi_root, tmp_path):
    done = _train(*_uwmgi(uwmgi_root, tmp_path), "loss=bce_dice", cwd=tmp_path)
    _one_error(done, "3 subject groups cannot fill data.n_folds=5 folds", "data.n_folds=3")


def test_a_missing_root(tmp_path):
    done = _train(
        "+experiment=unet_dice",
        f"data.root={tmp_path / 'nowhere'}",
        "data.synthetic=null",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    _one_error(done, "nowhere")


def test_a_gpu_trainer_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = _train("+experiment=unet_dice", "trainer=gpu", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    _one_error(done)


@pytest.mark.parametrize(
    "content, expected",
    [(b"not a checkpoint at all", "not a checkpoint"), (b"", "not a checkpoint")],
)
def test_a_file_that_is_not_a_checkpoint(tmp_path, content, expected):
    from src.inference.checkpoint import load_model

    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        load_model(path)
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert "weights_only" not in str(error.value)


def test_predict_without_its_mandatory_keys(tmp_path):
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "src.predict", f"out_dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: ckpt_path, input not given: python -m src.predict ckpt_path=<file.ckpt, "
        "[a.ckpt,b.ckpt] or a package folder> input=<image or folder> out_dir=<folder>"
    ]


def test_a_scalar_image_size(tmp_path):
    done = _train(
        "+experiment=unet_dice", "data.image_size=128", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    _one_error(done, "data.image_size must be [height, width], got 128")
