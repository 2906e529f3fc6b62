"""Grouped, plane-stratified splits and splits.json."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from src.data.splits import (
    SPLIT_NAMES,
    PreparedSplit,
    Splits,
    make_splits,
    read_or_make_splits,
    read_splits,
)

PLANES = ("tc", "tt", "tv")


def index_rows(plane_sets: list[tuple[str, ...]]) -> pd.DataFrame:
    """One image per (subject, plane); subject i has the planes ``plane_sets[i]``."""
    return pd.DataFrame(
        [
            {
                "image": f"images/{plane}/S{i:03d}_{plane}.png",
                "plane": plane,
                "subject": f"S{i:03d}",
            }
            for i, planes in enumerate(plane_sets)
            for plane in planes
        ]
    )


def subjects_of(rows: pd.DataFrame, images) -> set[str]:
    return set(rows.set_index("image").loc[list(images), "subject"])


def plane_shares(rows: pd.DataFrame, images) -> pd.Series:
    planes = rows.set_index("image").loc[list(images), "plane"]
    return planes.value_counts(normalize=True).reindex(PLANES, fill_value=0.0)


# 75 subjects: 30 seen in all three planes, 30 only in TT, 15 in TC and TV, so the whole set
# is 30% TC, 40% TT, 30% TV (45 + 60 + 45 = 150 images) and subjects differ in their planes.
MIXED = [PLANES] * 30 + [("tt",)] * 30 + [("tc", "tv")] * 15


@pytest.mark.parametrize("fold", range(5))
def test_no_subject_is_in_two_splits_and_every_image_is_in_one(fold):
    rows = index_rows(MIXED)
    splits = make_splits(rows, n_folds=5, fold=fold, seed=3, stratify_column="plane")
    for first, second in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not subjects_of(rows, splits[first]) & subjects_of(rows, splits[second])
    assert sorted(splits.train + splits.val + splits.test) == sorted(rows["image"])
    # 75 subjects in 5 folds: val and test hold about 15 subjects each.
    for split in ("val", "test"):
        assert 11 <= len(subjects_of(rows, splits[split])) <= 19


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plane_proportions_are_kept_in_every_split(seed):
    """Tolerance: 0.05 (absolute share) per plane and split. The whole set is 30/40/30 %;
    assigning these subjects to 5 folds at random (no stratification) misses by more than
    0.10 in about half of the seeds tried, StratifiedGroupKFold hits the shares exactly."""
    rows = index_rows(MIXED)
    overall = plane_shares(rows, rows["image"])
    assert overall.tolist() == pytest.approx([0.3, 0.4, 0.3])
    for fold in range(5):
        splits = make_splits(rows, n_folds=5, fold=fold, seed=seed, stratify_column="plane")
        for split in SPLIT_NAMES:
            shares = plane_shares(rows, splits[split])
            assert (shares - overall).abs().max() <= 0.05, (fold, split, shares.to_dict())


def test_subjects_with_the_same_planes_keep_the_proportions_exactly():
    rows = index_rows([PLANES] * 20)
    splits = make_splits(rows, n_folds=4, fold=1, seed=0, stratify_column="plane")
    for split in SPLIT_NAMES:
        assert plane_shares(rows, splits[split]).tolist() == pytest.approx([1 / 3] * 3)


def test_val_is_the_next_fold_and_test_folds_cover_every_image_once():
    rows = index_rows(MIXED)
    folds = [
        make_splits(rows, n_folds=5, fold=k, seed=7, stratify_column="plane") for k in range(5)
    ]
    for k in range(5):
        assert folds[k].val == folds[(k + 1) % 5].test
    tested = [image for split in folds for image in split.test]
    assert sorted(tested) == sorted(rows["image"])


def test_the_seed_changes_the_split_and_the_same_seed_repeats_it():
    rows = index_rows(MIXED)
    assert make_splits(rows, n_folds=5, fold=0, seed=1, stratify_column="plane") == make_splits(
        rows, n_folds=5, fold=0, seed=1, stratify_column="plane"
    )
    assert (
        make_splits(rows, n_folds=5, fold=0, seed=1, stratify_column="plane").test
        != make_splits(rows, n_folds=5, fold=0, seed=2, stratify_column="plane").test
    )


@pytest.mark.parametrize(
    ("n_folds", "fold", "message"),
    [
        (5, 5, r"fold=5 is out of range for n_folds=5: expected 0\.\.4"),
        (5, -1, r"fold=-1 is out of range"),
        (2, 0, "need at least 3 folds"),
        (80, 0, "75 subject groups cannot fill data.n_folds=80 folds"),
    ],
)
def test_bad_fold_parameters_are_named(n_folds, fold, message):
    with pytest.raises(ValueError, match=message):
        make_splits(index_rows(MIXED), n_folds=n_folds, fold=fold, seed=0)


def test_a_written_splits_json_reproduces_the_split(tmp_path):
    rows = index_rows(MIXED)
    splits = make_splits(rows, n_folds=5, fold=2, seed=11, stratify_column="plane")
    path = tmp_path / "run" / "splits.json"
    splits.write(path)
    record = json.loads(path.read_text())
    assert (record["n_folds"], record["fold"], record["seed"]) == (5, 2, 11)
    assert record["test"] == list(splits.test)
    assert read_splits(path, set(rows["image"])) == splits


def test_a_given_splits_file_wins_over_the_fold_parameters(tmp_path):
    rows = index_rows(MIXED)
    folds = dict(n_folds=5, fold=2, seed=11, group_column="subject", stratify_column="plane")
    made = read_or_make_splits(rows, None, **folds)
    assert made == make_splits(rows, **folds)
    made.write(tmp_path / "splits.json")
    other = folds | dict(fold=0, seed=3)
    assert read_or_make_splits(rows, tmp_path / "splits.json", **other) == made


def test_a_prepared_split_gives_each_splits_rows_in_the_splits_order(tmp_path):
    rows = index_rows(MIXED)
    splits = make_splits(rows, n_folds=5, fold=0, seed=0, stratify_column="plane")
    source = PreparedSplit(
        prepared_dir=tmp_path,
        rows=rows.sample(frac=1, random_state=0).set_index("image", drop=False),
        splits=splits,
        class_names=("background", "brain"),
        stratify_column="plane",
        in_channels=1,
        context_slices=0,
        volume_column=None,
        slice_column=None,
    )
    for split in SPLIT_NAMES:
        part = source.split_rows(split)
        assert part["image"].tolist() == list(splits[split])
        assert list(part.index) == list(range(len(part)))


def test_writing_keeps_an_identical_file_and_refuses_a_different_one(tmp_path):
    rows = index_rows(MIXED)
    path = tmp_path / "splits.json"
    make_splits(rows, n_folds=5, fold=0, seed=0, stratify_column="plane").write(path)
    make_splits(rows, n_folds=5, fold=0, seed=0, stratify_column="plane").write(path)
    with pytest.raises(FileExistsError, match=f"{path} already holds a different split"):
        make_splits(rows, n_folds=5, fold=1, seed=0, stratify_column="plane").write(path)


def write_record(path, **lists) -> None:
    record = {"n_folds": 5, "fold": 0, "seed": 0, "train": [], "val": [], "test": []} | lists
    path.write_text(json.dumps(record))


KNOWN = {"a.png", "b.png", "c.png"}


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        (
            {"train": ["a.png", "zz.png"]},
            r"names 1 images that are not in the .*index.csv: \['zz.png'\]",
        ),
        (
            {"train": ["a.png", "b.png"], "test": ["b.png"]},
            r"in both 'train' and 'test': \['b.png'\]",
        ),
        ({"val": ["c.png", "c.png"]}, r"twice in 'val': \['c.png'\]"),
        ({"val": "c.png"}, r"'val' must be a list of image paths"),
    ],
)
def test_a_bad_splits_json_is_named_with_its_entries(tmp_path, lists, message):
    path = tmp_path / "splits.json"
    write_record(path, **lists)
    with pytest.raises(ValueError, match=f"{path}.*{message}"):
        read_splits(path, KNOWN)


def test_a_splits_json_without_keys_or_json_is_named(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(
        ValueError, match=rf"{path} lacks keys \['n_folds', 'fold', 'seed', 'test'\]"
    ):
        read_splits(path, KNOWN)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        read_splits(path, KNOWN)
    with pytest.raises(FileNotFoundError, match="splits file .*missing.json not found"):
        read_splits(tmp_path / "missing.json", KNOWN)


def test_splits_is_indexed_by_split_name():
    splits = Splits(5, 0, 0, train=("a",), val=("b",), test=("c",))
    assert [splits[s] for s in SPLIT_NAMES] == [("a",), ("b",), ("c",)]
    with pytest.raises(KeyError, match="unknown split 'dev'"):
        splits["dev"]


def test_strata_all_smaller_than_the_folds_are_named_with_the_settings_to_change():
    """scikit-learn's "n_splits=5 cannot be greater than the number of members in each
    class" (every plane with fewer images than folds) as one line naming the fix."""
    rows = pd.DataFrame(
        {
            "image": [f"i{k}.png" for k in range(6)],
            "subject": [f"s{k}" for k in range(6)],
            "plane": ["a", "a", "a", "b", "b", "b"],
        }
    )
    with pytest.raises(
        ValueError, match=r"plane stratum .*a: 3, b: 3.*data.n_folds=3 or data.stratify_column=null"
    ):
        make_splits(rows, n_folds=5, fold=0, seed=0, stratify_column="plane")
