"""THE prepared-dir format, shared by every dataset's reader and by everything downstream.

A reader turns a raw layout into::

    OUT/images/...             8-bit images (grey, or RGB for a reader with in_channels=3)
    OUT/masks/...              uint8 label maps (label ids of the dataset's class set)
    OUT/index.csv              INDEX_COLUMNS, then the reader's own columns (plane, hc_mm, ...)
    OUT/prepare_report.json    what the reader read, skipped and ignored
    OUT/source.json            the reader (name, version) and the raw root's file listing

This module owns that format: the columns, reading and writing index.csv, the fingerprint
that tells when a prepared copy is outdated, and the locked, atomic folder builds that make
concurrent runs safe. It knows no dataset.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

try:  # shared locks say which prepared copies are in use (POSIX; elsewhere none are seen)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from src.data.classes import ClassSet
from src.data.images import read_image
from src.runs import process_identity, process_is_gone

log = logging.getLogger(__name__)

# Every prepared dir has these; readers append columns of their own (see Reader.columns).
INDEX_COLUMNS = ("image", "mask", "subject", "pixel_size_mm", "orig_width", "orig_height")
SOURCE_FILE = "source.json"
# Files by which an existing folder is recognised as a prepared copy (and may be replaced).
PREPARED_MARKERS = ("index.csv", "prepare_report.json")
PREPARED_KIND = "prepared copy"


class Reader(Protocol):
    """One raw layout -> the prepared format. ``name`` and ``version`` go into source.json:
    bump ``version`` when the same raw files would be prepared differently."""

    name: str
    version: int
    class_set: ClassSet
    columns: tuple[str, ...]  # index.csv columns beyond INDEX_COLUMNS
    in_channels: int  # channels of its images: 1 grey, 3 RGB (src.data.images reads them)

    def prepare(self, raw_dir: Path, out_dir: Path, *, overwrite: bool = False) -> dict: ...


# ---------------------------------------------------------------------------- folders


@contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold an inter-process lock on ``target`` (a ``.<name>.lock`` file beside it).

    Parallel sweeps and nodes sharing a file system build the same folders; under the lock
    the first one builds and the others wait, then find the result and reuse it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(target.parent / f".{target.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process building %s", target)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


STAGING_OWNER = ".owner"  # in a staging folder: process_identity() of the process building it


def staging_dir(target: Path, kind: str) -> Path:
    """A fresh hidden sibling of ``target`` (``.<name>.<kind>-<random>``) to build it in,
    recording its owner, after removing the staging folders of ``target`` whose owner is gone
    (a build killed midway leaves its folder behind)."""
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{kind}-", dir=target.parent))
    (staging / STAGING_OWNER).write_text(process_identity())
    return staging


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove the staging folders beside ``target`` whose owning process is gone, saying so;
    those of a live process, of another host, or without an owner record are left alone."""
    removed = []
    for folder in Path(target).parent.glob(f".{Path(target).name}.*-*"):
        owner_file = folder / STAGING_OWNER
        if not folder.is_dir() or not owner_file.is_file():
            continue
        owner = owner_file.read_text().strip()
        if process_is_gone(owner):
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed %s, left by a build that ended midway (process %s)", folder, owner)
            removed.append(folder)
    return removed


IN_USE = ".in-use"  # in a prepared copy: the file its users hold a shared lock on


def copy_versions(base: Path) -> list[Path]:
    """The prepared copies of one root, oldest first: ``base``, then ``base.v2``, ``base.v3``
    ... (a new version is written when the root changed while a process used the copy)."""
    pattern = re.compile(rf"{re.escape(base.name)}\.v(\d+)")
    numbered = [
        (int(m.group(1)), p)
        for p in base.parent.glob(f"{base.name}.v*")
        if (m := pattern.fullmatch(p.name)) and p.is_dir()
    ]
    return ([base] if base.is_dir() else []) + [p for _, p in sorted(numbered)]


def next_version(base: Path) -> Path:
    versions = copy_versions(base)
    numbers = [int(p.name.rsplit(".v", 1)[1]) for p in versions if p != base]
    return base.with_name(f"{base.name}.v{max(numbers, default=1) + 1}")


def hold_copy(prepared_dir: Path):
    """A shared lock on the prepared copy for as long as the returned handle is open: another
    process that finds the root changed then writes a new version instead of replacing it
    (``in_use_elsewhere``). None where locks are unavailable."""
    if fcntl is None or not Path(prepared_dir).is_dir():
        return None
    handle = open(Path(prepared_dir) / IN_USE, "a")  # noqa: SIM115 (kept open: the hold)
    fcntl.flock(handle, fcntl.LOCK_SH)
    return handle


def in_use_elsewhere(prepared_dir: Path) -> bool:
    """Whether a process (other than through this call) holds the copy: no exclusive lock."""
    path = Path(prepared_dir) / IN_USE
    if fcntl is None or not path.is_file():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def remove_unused_versions(base: Path, keep: Path) -> list[Path]:
    """Remove the prepared copies of ``base`` other than ``keep`` that no process holds,
    saying so; a copy in use stays until a later prepare finds it free."""
    removed = []
    for version in copy_versions(base):
        if version != keep and not in_use_elsewhere(version):
            shutil.rmtree(version, ignore_errors=True)
            log.info("removed %s: an older prepared copy no process uses", version)
            removed.append(version)
    return removed


def build_dir_atomically(target: Path, build: Callable[[Path], object]) -> Path:
    """Run ``build(staging)`` on a fresh path beside ``target``, then rename it into place.

    An interrupted build leaves no half-written ``target``; if another process finished the
    same target first, its result is kept and ours is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging_root = staging_dir(target, "tmp")
    try:
        staging = staging_root / target.name
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.exists():
                raise
            log.info("%s was built concurrently by another process; keeping that one", target)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return target


def check_replaceable(out_dir: Path, overwrite: bool, markers: Sequence[str], kind: str) -> None:
    """An output folder may be written if it is missing or empty (nothing to lose), or replaced
    with ``overwrite`` if it holds every one of ``markers`` (an earlier output of the same
    ``kind``): never a file or a folder of anything else."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(f"out_dir {out_dir} exists; pass overwrite=true to replace it")
    if not all((out_dir / marker).is_file() for marker in markers):
        raise FileExistsError(
            f"out_dir {out_dir} holds no {kind} ({' and '.join(markers)} missing), so it is not "
            f"an earlier {kind}: overwrite=true replaces only those; choose another out_dir"
        )


def replace_dir(
    out_dir: Path, staging: Path, overwrite: bool, markers: Sequence[str], kind: str
) -> None:
    """Swap the finished ``staging`` folder in; an old ``out_dir`` is deleted only after the
    swap. Checked again here: ``out_dir`` may have appeared meanwhile (another process writing
    the same output), and is then not swapped out from under it unless ``overwrite`` says so."""
    check_replaceable(out_dir, overwrite, markers, kind)
    retired = staging.with_name(staging.name + ".old")
    if out_dir.exists():
        out_dir.rename(retired)
    staging.rename(out_dir)
    shutil.rmtree(retired, ignore_errors=True)


# ---------------------------------------------------------------------------- index.csv


def write_index(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] = ()) -> None:
    """index.csv: INDEX_COLUMNS, then ``columns``; other keys of ``rows`` are not written."""
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*INDEX_COLUMNS, *columns], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def read_index(prepared_dir: Path) -> pd.DataFrame:
    """index.csv of a prepared dir, with string ids kept as strings (subject '010' stays '010')."""
    index_path = Path(prepared_dir) / "index.csv"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found: {prepared_dir} is not a prepared dir")
    rows = pd.read_csv(
        index_path,
        dtype={"image": str, "mask": str, "subject": str},
        keep_default_na=False,
        na_values={"pixel_size_mm": [""]},
    )
    missing = [c for c in INDEX_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"{index_path} lacks columns {missing}; expected {list(INDEX_COLUMNS)}")
    if rows.empty:
        raise ValueError(f"{index_path} lists no images")
    duplicated = rows["image"][rows["image"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{index_path} lists these images more than once: {duplicated[:5]}")
    return rows


def write_png(path: Path, array: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    path.write_bytes(encoded.tobytes())


# ---------------------------------------------------------------------------- source listing


def source_record(raw_dir: Path, reader: str, version: int) -> dict[str, Any]:
    """The reader and RAW's listing (relative name -> [size, mtime_ns]): a cheap fingerprint
    that changes when files are added, removed or rewritten; no content is read."""
    raw_dir = Path(raw_dir)
    files = {}
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        files[path.relative_to(raw_dir).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return {"reader": reader, "reader_version": version, "files": files}


def write_source_record(out_dir: Path, record: dict[str, Any]) -> None:
    (Path(out_dir) / SOURCE_FILE).write_text(json.dumps(record, indent=1) + "\n")


def why_outdated(raw_dir: Path, prepared_dir: Path, reader: Reader) -> str | None:
    """Why ``prepared_dir`` is not (or no longer) RAW prepared by ``reader``; None if it is."""
    if not (Path(prepared_dir) / "index.csv").is_file():
        return "not prepared yet"
    source = Path(prepared_dir) / SOURCE_FILE
    if not source.is_file():
        return f"{source} is missing (prepared by an older version)"
    recorded = json.loads(source.read_text())
    current = source_record(raw_dir, reader.name, reader.version)
    was = (recorded.get("reader", "fetal_head"), recorded.get("reader_version"))
    if was != (reader.name, reader.version):
        return (
            f"prepared by reader {was[0]} version {was[1]}, this is {reader.name} {reader.version}"
        )
    before, now = recorded.get("files", {}), current["files"]
    added, removed = len(now.keys() - before.keys()), len(before.keys() - now.keys())
    changed = sum(now[name] != before[name] for name in now.keys() & before.keys())
    if added or removed or changed:
        return (
            f"root changed since it was prepared: {added} files added, {removed} removed, "
            f"{changed} changed"
        )
    return None


# ---------------------------------------------------------------------------- writing


def write_prepared(
    raw_dir: Path,
    out_dir: Path,
    reader: Reader,
    convert: Callable[[Path], tuple[list[dict[str, Any]], dict[str, Any]]],
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The frame every reader runs in: ``convert(staging)`` writes images and masks into a
    temporary sibling of ``out_dir`` and returns (index rows, report); index.csv,
    prepare_report.json and source.json are added and the folder is renamed into place, so an
    interrupted run leaves no half ``out_dir``. An existing ``out_dir`` is replaced only with
    ``overwrite`` and only if it is a prepared copy. Returns the report."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw_dir {raw_dir} is not a folder")
    raw, out = raw_dir.resolve(), out_dir.resolve()
    # Either way round, a re-run would read its own output or replace the raw data.
    if out.is_relative_to(raw) or raw.is_relative_to(out):
        raise ValueError(f"out_dir {out_dir} and raw_dir {raw_dir} must not contain one another")
    check_replaceable(out_dir, overwrite, PREPARED_MARKERS, PREPARED_KIND)
    # Listed before reading, so a file changing during the run makes the copy outdated.
    source = source_record(raw_dir, reader.name, reader.version)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out_dir, "partial")
    try:
        rows, report = convert(staging)
        write_index(staging / "index.csv", rows, reader.columns)
        (staging / "prepare_report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_source_record(staging, source)
        (staging / STAGING_OWNER).unlink()  # the folder becomes the prepared copy
        replace_dir(out_dir, staging, overwrite, PREPARED_MARKERS, PREPARED_KIND)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def read_original(
    prepared_dir: Path, row: Mapping, in_channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The prepared image (uint8 (H, W) grey or (H, W, C), ``src.data.images``) and label mask
    of an index.csv row, at original size."""
    image_path, mask_path = prepared_dir / row["image"], prepared_dir / row["mask"]
    image = read_image(image_path, in_channels)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"cannot decode {mask_path}")
    expected = (int(row["orig_height"]), int(row["orig_width"]))
    if image.shape[:2] != expected or mask.shape != expected:
        raise ValueError(
            f"{image_path}: image {image.shape} / mask {mask.shape} differ from index.csv's "
            f"orig_height x orig_width {expected}"
        )
    return image, mask


def pixel_size_of(row: Mapping) -> float | None:
    value = row.get("pixel_size_mm")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
