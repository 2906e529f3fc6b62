"""How much the decoded-image cache saves: one pass over every split, cached vs decoding PNGs.

    python -m src.bench_data [--n-subjects 84] [--size 256] [--batch-size 16] [--num-workers 0]

Writes a phantom record at the real 959x661 size into a temporary folder, times
``prepare_dataset``, builds the array cache, then times one full pass of the DataModule's
train+val+test loaders against the same pass through a plain Dataset that decodes and
resizes each PNG on every access (what a pipeline without a cache does every epoch).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from src.data.cache import load_resized
from src.data.classes import FETAL_HEAD
from src.data.datamodule import SegmentationDataModule, to_sample
from src.data.prepared import read_index
from src.data.readers.fetal_head import FetalHeadReader, prepare_dataset
from src.data.splits import SPLIT_NAMES
from src.synthetic.record import write_phantom_record


class DecodingDataset(Dataset):
    """The uncached baseline: decode and resize the PNGs of a prepared dir on every access."""

    def __init__(self, prepared_dir: Path, images: list[str], image_size: tuple[int, int]):
        rows = read_index(prepared_dir).set_index("image")
        self.items = [
            (image, prepared_dir / image, prepared_dir / rows.at[image, "mask"]) for image in images
        ]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        image_id, image_path, mask_path = self.items[i]
        image, mask = load_resized(
            image_path, mask_path, self.image_size, num_classes=FETAL_HEAD.num_classes
        )
        return to_sample(image, mask, image_id)


def timed_pass(loaders: list[DataLoader]) -> tuple[float, int]:
    start, seen = time.perf_counter(), 0
    for loader in loaders:
        for batch in loader:
            seen += len(batch["id"])
    return time.perf_counter() - start, seen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-subjects", type=int, default=84, help="84 = the default, 200 images")
    parser.add_argument("--size", type=int, default=256, help="cached images are size x size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args(argv)
    image_size = (args.size, args.size)

    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
        raw = Path(tmp) / "phantom"
        start = time.perf_counter()
        write_phantom_record(raw, n_subjects=args.n_subjects, seed=0)
        phantom_s = time.perf_counter() - start
        print(f"phantom record ({args.n_subjects} subjects, 959x661): {phantom_s:.1f} s")

        dm = SegmentationDataModule(
            root=raw,
            reader=FetalHeadReader(),
            num_classes=FETAL_HEAD.num_classes,
            splits_out=None,
            train_transform=None,
            stratify_column="plane",
            cache_dir=Path(tmp) / "prepared",
            image_size=image_size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            pin_memory=False,  # as the decoding loaders below
        )
        start = time.perf_counter()
        prepare_dataset(raw, dm.prepared_dir)
        prepare_s = time.perf_counter() - start
        n_images = len(read_index(dm.prepared_dir))
        print(f"prepare_dataset: {n_images} images in {prepare_s:.1f} s")

        start = time.perf_counter()
        dm.prepare_data()  # the prepared copy exists: this builds the array cache only
        build_s = time.perf_counter() - start
        print(f"array cache at {args.size}x{args.size}: built in {build_s:.2f} s")
        dm.setup("fit")

        cached_loaders = [dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()]
        decoding_loaders = [
            DataLoader(
                DecodingDataset(dm.prepared_dir, list(dm.splits[split]), image_size),
                batch_size=args.batch_size,
                shuffle=split == "train",
                drop_last=cached.drop_last,
                num_workers=args.num_workers,
            )
            for split, cached in zip(SPLIT_NAMES, cached_loaders, strict=True)
        ]
        cached_s, cached_n = timed_pass(cached_loaders)
        decoding_s, decoding_n = timed_pass(decoding_loaders)

    assert cached_n == decoding_n, (cached_n, decoding_n)
    print(
        f"one pass, train+val+test ({cached_n} images, batch {args.batch_size}, "
        f"{args.num_workers} workers):"
    )
    print(f"  cached arrays:        {cached_s:7.2f} s  ({cached_n / cached_s:8.0f} images/s)")
    print(f"  decode + resize PNGs: {decoding_s:7.2f} s  ({decoding_n / decoding_s:8.0f} images/s)")
    print(
        f"  speed-up: {decoding_s / cached_s:.1f}x; the cache pays for itself after "
        f"{build_s / max(decoding_s - cached_s, 1e-9):.2f} epochs"
    )


if __name__ == "__main__":
    main()
