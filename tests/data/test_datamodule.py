"""SegmentationDataModule on the fetal head reader: where data comes from, what a batch is,
splits, augmentation configs."""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import shutil
from pathlib import Path

import cv2
import hydra
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from test_cache import write_prepared_dir
from torch.utils.data import RandomSampler, SequentialSampler

from src.data.classes import FETAL_HEAD
from src.data.datamodule import CachedSegmentationDataset, SegmentationDataModule
from src.data.prepared import read_index, source_record, write_source_record
from src.data.readers.fetal_head import FetalHeadReader
from src.synthetic.record import write_phantom_record

ROOT = Path(__file__).resolve().parents[2]
# The albumentations presets (gpu.yaml batches torch transforms: tests/data/test_gpu_augment.py).
AUGMENTATIONS = sorted(
    path
    for path in (ROOT / "conf" / "augmentation").glob("*.yaml")
    if OmegaConf.load(path)["_target_"] == "albumentations.Compose"
)
# 9 subjects, each with one TT and one TC image: 3 folds of 3 subjects (6 images) each.
ROWS = [(f"P{i}", plane) for i in range(9) for plane in ("tt", "tc")]


def fetal_head_data(**args) -> SegmentationDataModule:
    """The DataModule as conf/data/fetal_head.yaml wires it, without augmentation, loader
    processes or a split written."""
    wiring = dict(reader=FetalHeadReader(), num_classes=4, stratify_column="plane")
    plain = dict(train_transform=None, splits_out=None, num_workers=0)
    return SegmentationDataModule(**(wiring | plain | args))


def fake_datamodule(tmp_path: Path, **overrides) -> SegmentationDataModule:
    """A datamodule whose prepared dir is a fake one, already in its keyed place and up to
    date with its (empty) root."""
    root = tmp_path / "raw"
    root.mkdir(exist_ok=True)
    args = dict(root=root, cache_dir=tmp_path / "prepared", image_size=(32, 24), batch_size=4)
    dm = fetal_head_data(**(args | dict(n_folds=3, fold=0, seed=0) | overrides))
    if not dm.prepared_dir.exists():
        write_prepared_dir(dm.prepared_dir, ROWS)
        write_source_record(dm.prepared_dir, source_record(root, dm.reader.name, dm.reader.version))
    return dm


def ready(dm: SegmentationDataModule) -> SegmentationDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def augmentation(name: str):
    return hydra.utils.instantiate(OmegaConf.load(ROOT / "conf" / "augmentation" / f"{name}.yaml"))


def test_a_missing_root_without_synthetic_is_an_error_naming_it(tmp_path):
    dm = fetal_head_data(root=tmp_path / "no-such-record", cache_dir=tmp_path / "prepared")
    with pytest.raises(FileNotFoundError, match=r"data root .*no-such-record does not exist"):
        dm.prepare_data()
    assert not (tmp_path / "no-such-record").exists()
    assert not (tmp_path / "prepared").exists()


def test_an_incomplete_synthetic_setting_is_named(tmp_path):
    with pytest.raises(ValueError, match="data.synthetic must have the keys root, generate"):
        fetal_head_data(root=tmp_path, cache_dir=tmp_path, synthetic={"n_subjects": 3})


def tiny_phantom(root: Path) -> dict:
    """A data.synthetic setting: 6 subjects at 64x48, generated only at ``root``."""
    return {"root": str(root), "generate": phantom_generator(n_subjects=6, size=[64, 48])}


def phantom_generator(**args):
    """What conf/data/phantom.yaml's ``synthetic.generate`` instantiates to."""
    return functools.partial(write_phantom_record, seed=0, **args)


def test_a_missing_root_other_than_the_phantoms_own_is_an_error_not_a_phantom(tmp_path, caplog):
    typo = tmp_path / "some" / "typo"
    dm = fetal_head_data(
        root=typo, cache_dir=tmp_path / "prepared", synthetic=tiny_phantom(tmp_path / "phantom")
    )
    with pytest.raises(FileNotFoundError, match=rf"data root {typo} does not exist.*only at"):
        dm.prepare_data()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no phantom anywhere
    assert "SYNTHETIC" not in caplog.text


def test_the_default_data_config_refuses_a_mistyped_root(tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"data.root={tmp_path / 'typo'}", f"paths.output_dir={tmp_path}"],
        )
    assert cfg.data.synthetic.root == f"{cfg.paths.data_dir}/phantom"
    dm = hydra.utils.instantiate(cfg.data)
    assert not dm.is_synthetic
    with pytest.raises(FileNotFoundError, match=r"typo does not exist"):
        dm.prepare_data()
    assert not (tmp_path / "typo").exists()


def test_a_synthetic_root_is_generated_on_first_use_only(tmp_path, monkeypatch, caplog):
    calls = {"phantom": 0, "prepare": 0}
    synthetic = tiny_phantom(tmp_path / "phantom")
    generate, reader = synthetic["generate"], FetalHeadReader()
    prepare = reader.prepare

    def counted(key, real):
        def call(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)

        return call

    synthetic["generate"] = counted("phantom", generate)
    monkeypatch.setattr(reader, "prepare", counted("prepare", prepare))
    args = dict(
        root=tmp_path / "phantom",
        cache_dir=tmp_path / "prepared",
        image_size=(32, 32),
        n_folds=3,
        synthetic=synthetic,
        reader=reader,
    )
    with caplog.at_level("WARNING"):
        ready(fetal_head_data(**args))
    assert "SYNTHETIC" in caplog.text
    assert calls == {"phantom": 1, "prepare": 1}
    index = pd.read_csv(fetal_head_data(**args).prepared_dir / "index.csv")
    assert (index["orig_width"] == 64).all() and (index["orig_height"] == 48).all()

    again = ready(fetal_head_data(**args))
    assert calls == {"phantom": 1, "prepare": 1}  # neither regenerated nor re-prepared
    assert sum(len(again.splits[s]) for s in ("train", "val", "test")) == len(index)


def test_the_prepared_copy_is_keyed_by_the_resolved_root(tmp_path):
    (tmp_path / "a" / "record").mkdir(parents=True)
    (tmp_path / "b" / "record").mkdir(parents=True)
    first = fetal_head_data(root=tmp_path / "a" / "record", cache_dir=tmp_path / "p")
    second = fetal_head_data(root=tmp_path / "b" / "record", cache_dir=tmp_path / "p")
    same = fetal_head_data(root=tmp_path / "a" / ".." / "a" / "record", cache_dir=tmp_path / "p")
    assert first.prepared_dir.parent == tmp_path / "p"
    assert first.prepared_dir.name.startswith("record-")
    assert first.prepared_dir != second.prepared_dir
    assert first.prepared_dir == same.prepared_dir


def test_a_batch_has_the_documented_shapes_and_integer_masks_after_augmentation(tmp_path):
    dm = ready(fake_datamodule(tmp_path, train_transform=augmentation("strong")))
    assert dm.num_classes == FETAL_HEAD.num_classes == 4
    assert dm.class_names == FETAL_HEAD.names
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 24) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert batch["mask"].shape == (4, 32, 24) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3}
    assert len(batch["id"]) == 4 and set(batch["id"]) <= set(dm.splits.train)


def test_val_and_test_batches_are_the_cached_arrays_unchanged(tmp_path):
    dm = ready(fake_datamodule(tmp_path, train_transform=augmentation("strong")))
    batch = next(iter(dm.test_dataloader()))
    first = batch["id"][0]
    image = cv2.imread(str(dm.prepared_dir / first), cv2.IMREAD_GRAYSCALE)
    expected = cv2.resize(image, (24, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal((batch["image"][0, 0] * 255).round().byte().numpy(), expected)
    assert list(batch["id"]) == list(dm.splits.test[:4])  # not shuffled


class RGBReader(FetalHeadReader):
    """The fetal head reader's classes with RGB images: a 3-channel dataset's shape."""

    in_channels = 3


def test_rgb_images_come_out_as_channels_first_batches_through_augmentation(tmp_path):
    dm = fetal_head_data(
        root=tmp_path / "raw",
        cache_dir=tmp_path / "prepared",
        reader=RGBReader(),
        in_channels=3,
        image_size=(32, 24),
        batch_size=4,
        n_folds=3,
        train_transform=augmentation("strong"),
    )
    (tmp_path / "raw").mkdir()
    write_prepared_dir(dm.prepared_dir, ROWS, channels=3)
    write_source_record(dm.prepared_dir, source_record(dm.root, dm.reader.name, dm.reader.version))
    ready(dm)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 24) and batch["mask"].shape == (4, 32, 24)
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    test = next(iter(dm.test_dataloader()))  # unaugmented: the RGB PNG, channel by channel
    rgb = cv2.cvtColor(cv2.imread(str(dm.prepared_dir / test["id"][0])), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(rgb, (24, 32), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    np.testing.assert_array_equal((test["image"][0] * 255).round().byte().numpy(), expected)


def test_in_channels_other_than_the_readers_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"data.in_channels=3.*has 1 input channel"):
        fetal_head_data(root=tmp_path, cache_dir=tmp_path, in_channels=3)


def test_loaders_shuffle_only_training_and_drop_last_only_when_it_leaves_a_batch(tmp_path):
    dm = ready(fake_datamodule(tmp_path, batch_size=4))
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert isinstance(train.sampler, RandomSampler) and train.drop_last
    assert len(dm.splits.train) == 6
    for loader in (val, test):
        assert isinstance(loader.sampler, SequentialSampler) and not loader.drop_last
    big_batches = ready(fake_datamodule(tmp_path, batch_size=6))
    assert not big_batches.train_dataloader().drop_last  # 6 training images, batch of 6


def test_the_same_torch_seed_repeats_the_augmentation(tmp_path):
    def first_batch() -> torch.Tensor:
        torch.manual_seed(123)
        dm = ready(fake_datamodule(tmp_path, train_transform=augmentation("strong")))
        return next(iter(dm.train_dataloader()))["image"]

    torch.testing.assert_close(first_batch(), first_batch())


def test_transforms_with_the_same_probability_are_drawn_independently(tmp_path):
    """One random stream for the whole pipeline: albumentations' per-transform seeding would
    give both flips the same seed, so they would always switch on together."""
    import albumentations as A

    flips = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    torch.manual_seed(0)
    dm = ready(fake_datamodule(tmp_path, train_transform=flips))
    dataset = dm.train_dataloader().dataset
    original = CachedSegmentationDataset(dataset.cache_dir, dataset.rows, dataset.ids)
    outcomes = set()
    for _ in range(6):
        for i in range(len(dataset)):
            image, plain = dataset[i]["image"][0], original[i]["image"][0]
            outcomes.add(
                (
                    torch.equal(image, plain.flip(1)) or torch.equal(image, plain.flip(0).flip(1)),
                    torch.equal(image, plain.flip(0)) or torch.equal(image, plain.flip(0).flip(1)),
                )
            )
    assert {(True, False), (False, True)} & outcomes, outcomes


def test_the_used_split_is_written_and_a_given_one_reproduced(tmp_path):
    out = tmp_path / "run" / "splits.json"
    first = ready(fake_datamodule(tmp_path, fold=1, seed=5, splits_out=out))
    record = json.loads(out.read_text())
    assert (record["n_folds"], record["fold"], record["seed"]) == (3, 1, 5)
    assert record["test"] == list(first.splits.test)

    replay_out = tmp_path / "replay" / "splits.json"
    replay = ready(
        fake_datamodule(tmp_path, fold=2, seed=9, splits_file=out, splits_out=replay_out)
    )
    assert replay.splits == first.splits
    assert replay_out.read_text() == out.read_text()
    assert [b["id"] for b in replay.test_dataloader()] == [b["id"] for b in first.test_dataloader()]


def test_setup_twice_keeps_the_split_and_a_different_split_is_not_written_over(tmp_path):
    out = tmp_path / "splits.json"
    dm = ready(fake_datamodule(tmp_path, splits_out=out))
    before, written = dm.splits, out.read_text()
    dm.setup("test")  # Trainer.test after Trainer.fit
    assert dm.splits is before and out.read_text() == written
    with pytest.raises(FileExistsError, match="already holds a different split"):
        ready(fake_datamodule(tmp_path, fold=2, splits_out=out))
    assert out.read_text() == written


def test_a_splits_file_with_unknown_images_is_named(tmp_path):
    bad = tmp_path / "splits.json"
    record = {"n_folds": 3, "fold": 0, "seed": 0, "val": [], "test": []}
    bad.write_text(json.dumps(record | {"train": ["images/x/ghost.png"]}))
    with pytest.raises(ValueError, match=r"splits.json names 1 images .*ghost.png"):
        ready(fake_datamodule(tmp_path, splits_file=bad))


def test_planes_keep_only_those_rows_and_unknown_planes_are_named(tmp_path):
    dm = ready(fake_datamodule(tmp_path, select={"plane": ["tc"]}))
    for split in ("train", "val", "test"):
        assert set(dm.split_rows(split)["plane"]) == {"tc"}
    with pytest.raises(
        ValueError,
        match=r"data.select.plane names unknown values \['xx'\]; the data has \['tc', 'tt'\]",
    ):
        ready(fake_datamodule(tmp_path, select={"plane": ["tc", "xx"]}))


def test_the_split_and_its_rows_need_no_array_cache(tmp_path):
    dm = fake_datamodule(tmp_path)
    dm.prepare_record()
    source = dm.split_source()
    assert not (dm.prepared_dir / "cache").exists()
    assert source.split_rows("test")["image"].tolist() == list(source.splits.test)
    assert ready(dm).splits is source.splits  # the loaders serve the same split


def test_test_rows_carry_what_evaluation_reports(tmp_path):
    dm = ready(fake_datamodule(tmp_path))
    rows = dm.split_rows("test")
    assert rows["image"].tolist() == list(dm.splits.test)
    info = dm.test_image_info()
    assert list(info) == list(dm.splits.test)
    index = pd.read_csv(dm.prepared_dir / "index.csv").set_index("image")
    for image, fields in info.items():
        assert fields["subject"] == index.at[image, "subject"]
        assert fields["orig_width"] == 48 and fields["orig_height"] == 40
        expected_size = index.at[image, "pixel_size_mm"]
        assert fields["pixel_size_mm"] == (None if np.isnan(expected_size) else expected_size)
    json.dumps(info)  # JSON-ready: no NaN, no numpy scalars


@pytest.mark.parametrize("path", AUGMENTATIONS, ids=[p.stem for p in AUGMENTATIONS])
def test_every_augmentation_config_runs_and_keeps_masks_as_label_maps(path):
    """A disk of label 3 on 0: any interpolation but nearest would create labels 1 and 2."""
    transform = hydra.utils.instantiate(OmegaConf.load(path))
    transform.set_random_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    cv2.circle(mask, (32, 24), 15, 3, thickness=-1)
    for _ in range(20):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (48, 64) and out["image"].dtype == np.uint8
        assert out["mask"].shape == (48, 64) and out["mask"].dtype == np.uint8
        assert set(np.unique(out["mask"]).tolist()) <= {0, 3}


@pytest.mark.parametrize("data", ["phantom", "fetal_head"])
def test_the_data_configs_compose(data, tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={data}", f"paths.output_dir={tmp_path}"])
    if data == "fetal_head":
        with pytest.raises(MissingMandatoryValue, match="root"):
            _ = cfg.data.root
        assert cfg.data.synthetic is None
        return
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, SegmentationDataModule)
    assert dm.root == Path(cfg.paths.data_dir) / "phantom" and dm.is_synthetic
    assert dm.splits_out == tmp_path / "splits.json"
    assert type(dm.train_transform).__name__ == "Compose"


def test_the_phantom_record_end_to_end(phantom_raw, prepared_dir, tmp_path):
    """The raw phantom through the reader, the cache and the split: the cached masks are the
    phantom's own truth resized, and no patient crosses splits over planes."""
    dm = ready(
        fetal_head_data(
            root=phantom_raw, cache_dir=tmp_path, image_size=(32, 48), n_folds=3, batch_size=4
        )
    )
    assert (dm.prepared_dir / "index.csv").read_text() == (prepared_dir / "index.csv").read_text()
    rows = pd.read_csv(prepared_dir / "index.csv", dtype={"subject": str})
    subjects = {
        s: set(rows.set_index("image").loc[list(dm.splits[s]), "subject"])
        for s in ("train", "val", "test")
    }
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"])
    assert not subjects["val"] & subjects["test"]
    for batch in dm.test_dataloader():
        for image_id, mask in zip(batch["id"], batch["mask"], strict=True):
            truth = cv2.imread(
                str(phantom_raw / "phantom_truth" / "labels" / Path(image_id).name),
                cv2.IMREAD_UNCHANGED,
            )
            expected = cv2.resize(truth, (48, 32), interpolation=cv2.INTER_NEAREST_EXACT)
            np.testing.assert_array_equal(mask.numpy(), expected)


def test_a_root_changed_since_it_was_prepared_is_prepared_again(phantom_raw, tmp_path, caplog):
    """A partial download completed after the first run: the new images are used, and said."""
    root = tmp_path / "record"
    shutil.copytree(phantom_raw, root, ignore=shutil.ignore_patterns("Trans-cerebellum*"))
    args = dict(root=root, cache_dir=tmp_path / "prepared", image_size=(32, 48), n_folds=3)
    before = set(read_index(ready(fetal_head_data(**args)).prepared_dir)["plane"])
    assert "Trans-cerebellum" not in before

    for name in ("Trans-cerebellum", "Trans-cerebellum-PASCAL"):
        shutil.copytree(phantom_raw / name, root / name)
    n_added = sum(p.is_file() for p in (root / "Trans-cerebellum").rglob("*"))
    n_added += sum(p.is_file() for p in (root / "Trans-cerebellum-PASCAL").rglob("*"))
    with caplog.at_level("WARNING"):
        again = ready(fetal_head_data(**args))
    assert f"root changed since it was prepared: {n_added} files added" in caplog.text
    assert "re-preparing" in caplog.text
    rows = read_index(again.prepared_dir)
    assert "Trans-cerebellum" in set(rows["plane"])
    assert sum(len(again.splits[s]) for s in ("train", "val", "test")) == len(rows)

    caplog.clear()
    with caplog.at_level("INFO"):
        ready(fetal_head_data(**args))
    assert "preparing" not in caplog.text  # up to date now


def prepare_and_train_in_this_process(tmp_path: Path, run: int, barrier) -> None:
    """One of two concurrent runs (a forked process): its data log goes to log<run>.txt."""
    torch.set_num_threads(1)  # no intra-op thread pool inherited over fork
    handler = logging.FileHandler(tmp_path / f"log{run}.txt")
    logging.getLogger("src.data").addHandler(handler)
    logging.getLogger("src.data").setLevel(logging.INFO)
    root = tmp_path / "phantom"
    dm = fetal_head_data(
        root=root,
        cache_dir=tmp_path / "prepared",
        image_size=(16, 24),
        n_folds=3,
        synthetic={"root": str(root), "generate": phantom_generator(n_subjects=6, size=[48, 33])},
    )
    barrier.wait(timeout=30)  # both start preparing at the same moment
    dm.prepare_data()
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) > 0


def test_two_processes_preparing_the_same_fresh_root_build_once_and_both_train(tmp_path):
    """A parallel sweep on a fresh machine: the phantom, the prepared copy and the cache are
    each built by one process while the other waits, then reused; neither run fails."""
    context = multiprocessing.get_context("fork")  # spawn would import torch again: seconds
    barrier = context.Barrier(2)
    runs = [
        context.Process(target=prepare_and_train_in_this_process, args=(tmp_path, i, barrier))
        for i in range(2)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
    logs = "".join((tmp_path / f"log{i}.txt").read_text() for i in range(2))
    assert [run.exitcode for run in runs] == [0, 0], logs
    lines = logs.splitlines()

    def count(start: str) -> int:
        return sum(line.startswith(start) for line in lines)

    # Generated, prepared and cached once; the other process waited, then reused them.
    assert (count("data root"), count("preparing"), count("caching")) == (1, 1, 1), logs
    assert count("waiting for another process") >= 1, logs


def test_the_default_config_generates_its_phantom_through_the_configured_generator(tmp_path):
    """data=phantom hands src.synthetic's writer to the DataModule as a partial (the loader
    imports no phantom code); composed and instantiated as a run does, it generates once."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.data_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'run'}",
                "data.synthetic.generate.n_subjects=3",
                "data.synthetic.generate.size=[96,66]",
                "data.image_size=[32,48]",
                "data.n_folds=3",
            ],
        )
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm.synthetic["generate"], functools.partial)
    ready(dm)
    heads = (tmp_path / "phantom" / "phantom_truth" / "heads.csv").read_text().splitlines()
    assert len(heads) - 1 == sum(len(dm.splits[s]) for s in ("train", "val", "test"))


_PREPARE_IN_ANOTHER_PROCESS = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_datamodule import fetal_head_data
dm = fetal_head_data(root=Path(sys.argv[1]), cache_dir=Path(sys.argv[2]), image_size=(32, 24),
                     batch_size=2, n_folds=3, fold=0, seed=0)
dm.prepare_record()
print(dm.prepared_dir)
"""


def test_a_copy_in_use_is_not_replaced_when_its_root_changes(tmp_path, caplog):
    """Run A uses the prepared copy (and its cache); the root changes; another process
    re-prepares: the new content goes to a new version beside it, A's copy stays and A still
    reads its test batches; once nothing holds the old copy, the next prepare removes it."""
    import subprocess
    import sys

    root = write_phantom_record(tmp_path / "raw", n_subjects=9, size=(64, 48), seed=0)
    cache = tmp_path / "prepared"
    args = dict(root=root, cache_dir=cache, image_size=(32, 24), batch_size=2)
    run_a = ready(fetal_head_data(**args, n_folds=3, fold=0, seed=0))
    first = run_a.prepared_dir
    (root / "late_note.txt").write_text("a file added to the record")  # the root changed

    other = subprocess.run(
        [
            sys.executable,
            "-c",
            _PREPARE_IN_ANOTHER_PROCESS,
            str(root),
            str(cache),
            str(Path(__file__).parent),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode == 0, other.stderr[-2000:]
    second = Path(other.stdout.strip().splitlines()[-1])
    assert second == first.with_name(f"{first.name}.v2")
    assert "in use" in other.stderr
    assert (first / "index.csv").is_file()
    run_a.setup("test")
    assert sum(len(batch["image"]) for batch in run_a.test_dataloader()) > 0

    del run_a  # A ended: nothing holds the old copy
    import gc

    gc.collect()
    with caplog.at_level(logging.INFO):
        later = fetal_head_data(**args, n_folds=3, fold=0, seed=0)
        later.prepare_record()
    assert later.prepared_dir == second and not first.exists()
    assert f"removed {first}" in caplog.text
