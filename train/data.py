"""The AIDERv2 dataset layout for classifier training, and its torch loading.

``DATA_DIR/Train|Val|Test/<Class>/*.png|jpg`` (docs/glimmernet.md, "AIDERv2 dataset layout"): sorted
class folder names give the class indices. ``Val/`` missing: a stratified hold-out of ``Train/``
stands in (and the run says so). ``Test/`` missing: no test report. Class folders that differ across
splits are an error before any training. Every image is decoded once up front, so unreadable files
are skipped and listed rather than crashing a worker at epoch 57.

Loading: a map-style dataset decoded with OpenCV in DataLoader workers. The sampler hands each
worker ``(index, epoch)``, and the augmentation seeds itself from that key, so the batches of an
epoch do not depend on the worker count, and ``--resume`` replays exactly what an uninterrupted run
would have done.
"""

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.images import IMAGE_EXTS, class_folders, list_images, read_image

# Accepted spellings of the split folders (AIDERv2 capitalises them; other exports do not).
SPLIT_ALIASES = {
    "train": ("train",),
    "val": ("val", "valid", "validation"),
    "test": ("test",),
}
SampleKey = Tuple[int, int]  # (index into the split, epoch)


@dataclass
class Split:
    """One split: image paths, integer labels, and where it came from."""

    name: str
    paths: List[Path]
    labels: List[int]
    source: str  # the folder, or "holdout of <Train folder>"

    def __len__(self) -> int:
        return len(self.paths)

    def per_class(self, class_names: Sequence[str]) -> Dict[str, int]:
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(class_names))
        return {name: int(counts[i]) for i, name in enumerate(class_names)}


@dataclass
class AiderDataset:
    """The splits of one dataset folder, checked and ready to load."""

    root: Path
    class_names: List[str]
    train: Split
    val: Split
    test: Optional[Split]
    holdout_fraction: Optional[float] = None  # set when Val/ was missing
    skipped: List[Dict[str, str]] = field(default_factory=list)

    def summary(self) -> Dict[str, Any]:
        """The ``dataset`` block of metrics.json."""
        splits = {
            s.name: {
                "source": s.source,
                "images": len(s),
                "per_class": s.per_class(self.class_names),
            }
            for s in (self.train, self.val, self.test)
            if s is not None
        }
        return {
            "root": str(self.root),
            "class_names": list(self.class_names),
            "splits": splits,
            "val_source": "holdout" if self.holdout_fraction is not None else "folder",
            "holdout_fraction": self.holdout_fraction,
            "test_source": "folder" if self.test is not None else None,
        }


def find_split(root: Path, split: str) -> Optional[Path]:
    """The sub-folder of ``root`` holding ``split`` (case-insensitive, ``Val``/``valid``...)."""
    aliases = SPLIT_ALIASES[split]
    matches = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() in aliases)
    if len(matches) > 1:
        raise GlimmerError(
            "{}: more than one {} folder ({}); keep one".format(
                root, split, ", ".join(p.name for p in matches)
            )
        )
    return matches[0] if matches else None


def _check_classes(reference: Path, names: List[str], other: Path) -> None:
    found = class_folders(other)
    if found != names:
        missing = sorted(set(names) - set(found))
        extra = sorted(set(found) - set(names))
        raise GlimmerError(
            "{}: class folders differ from {}: missing {}, extra {} (every split needs the "
            "same class folders)".format(other, reference, missing or "none", extra or "none")
        )


def stratified_holdout(
    labels: Sequence[int], fraction: float, seed: int
) -> Tuple[List[int], List[int]]:
    """Indices (keep, held out): ``fraction`` of every class (at least one of a class of two+).

    Per-class rounding keeps each class's share of the hold-out equal to its share of Train.
    """
    labels_arr = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep: List[int] = []
    held: List[int] = []
    for cls in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == cls)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction))
        n_held = min(max(n_held, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        held.extend(int(i) for i in idx[:n_held])
        keep.extend(int(i) for i in idx[n_held:])
    return sorted(keep), sorted(held)


def find_unreadable(
    paths: Sequence[Path], threads: int, desc: str = "checking images", quiet: bool = False
) -> List[Path]:
    """Paths OpenCV cannot decode. Threads suffice: imdecode releases the GIL."""

    def bad(path: Path) -> bool:
        return read_image(path) is None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        flags = list(
            progress(pool.map(bad, paths), desc, total=len(paths), unit="img", disable=quiet)
        )
    return [p for p, is_bad in zip(paths, flags) if is_bad]


def progress(
    iterable, desc: str, total: Optional[int] = None, unit: str = "batch", disable: bool = False
) -> tqdm:
    """A transient bar on stderr; off a terminal (CI logs) it redraws every few seconds.
    ``disable``: the processes of a torchrun launch other than rank 0 draw none."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.1 if interactive else 5.0,
        disable=disable,
    )


def load_aider(
    root: Path, val_fraction: float = 0.1, seed: int = 22, threads: int = 4, quiet: bool = False
) -> AiderDataset:
    """Find, check and scan ``root``; raise :class:`GlimmerError` before any training
    (``quiet``: no progress bar, for the processes of a torchrun launch other than rank 0)."""
    root = Path(root)
    if not root.is_dir():
        raise GlimmerError(f"DATA_DIR {root}: no such folder")
    train_dir = find_split(root, "train")
    if train_dir is None:
        raise GlimmerError(
            f"DATA_DIR {root}: no Train/ folder (expected the AIDERv2 layout "
            f"{root}/Train/<class>/<image>, with Val/ and Test/ beside it)"
        )
    val_dir, test_dir = find_split(root, "val"), find_split(root, "test")
    names = class_folders(train_dir)
    if not names:
        raise GlimmerError(f"{train_dir}: no class folders (expected {train_dir}/<class>/<image>)")
    if len(names) < 2:
        raise GlimmerError(
            f"{train_dir}: only one class folder ({names[0]}); a classifier needs two or more"
        )
    for other in (val_dir, test_dir):
        if other is not None:
            _check_classes(train_dir, names, other)

    def collect(folder: Path, split: str) -> Split:
        paths: List[Path] = []
        labels: List[int] = []
        for index, name in enumerate(names):
            found = list_images(folder / name)
            if not found and split == "Train":
                raise GlimmerError(
                    f"{folder / name}: no images ({', '.join(IMAGE_EXTS)}); every class "
                    "needs training images"
                )
            paths += found
            labels += [index] * len(found)
        if not paths:
            raise GlimmerError(
                f"{folder}: the class folders hold no images ({', '.join(IMAGE_EXTS)})"
            )
        return Split(split, paths, labels, str(folder))

    splits = [collect(train_dir, "Train")]
    if val_dir is not None:
        splits.append(collect(val_dir, "Val"))
    if test_dir is not None:
        splits.append(collect(test_dir, "Test"))

    every = [p for s in splits for p in s.paths]
    bad = set(find_unreadable(every, threads, quiet=quiet))
    skipped = [
        {"path": str(p), "reason": "cannot be decoded (truncated or not an image)"}
        for p in every
        if p in bad
    ]
    for s in splits:
        kept = [(p, y) for p, y in zip(s.paths, s.labels) if p not in bad]
        s.paths, s.labels = [p for p, _ in kept], [y for _, y in kept]
    train = splits[0]
    for index, name in enumerate(names):
        if index not in train.labels:
            raise GlimmerError(
                f"{train_dir / name}: no readable images; every class needs training images"
            )
    val = next((s for s in splits if s.name == "Val"), None)
    test = next((s for s in splits if s.name == "Test"), None)
    for s in (val, test):
        if s is not None and not s.paths:
            raise GlimmerError(f"{s.source}: no readable images")

    holdout = None
    if val is None:
        if not 0.0 < val_fraction < 1.0:
            raise GlimmerError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
        keep, held = stratified_holdout(train.labels, val_fraction, seed)
        if not held:
            raise GlimmerError(
                f"{train_dir}: too few images to hold out a validation split; add a Val/ folder"
            )
        val = Split(
            "Val",
            [train.paths[i] for i in held],
            [train.labels[i] for i in held],
            f"holdout of {train_dir}",
        )
        train = Split(
            "Train", [train.paths[i] for i in keep], [train.labels[i] for i in keep], str(train_dir)
        )
        holdout = val_fraction
    return AiderDataset(root, names, train, val, test, holdout, skipped)


class ImageDataset(Dataset):
    """Decoded, transformed images of one split: item ``(index, epoch)`` -> (CHW float32, label)."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        transform: Callable[[np.ndarray, SampleKey], np.ndarray],
    ) -> None:
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (int(key), 0)
        image = read_image(self.paths[index])
        if image is None:  # readable at the start of the run, so the file changed under us
            raise GlimmerError(f"{self.paths[index]}: can no longer be decoded")
        return torch.from_numpy(self.transform(image, (index, epoch))), self.labels[index]


class EpochSampler(Sampler):
    """Yields ``(index, epoch)``; the order is a permutation seeded by (seed, epoch) when shuffling.

    Workers never see the epoch otherwise: with persistent workers the dataset copy in each worker
    is frozen at start-up, but the sampler runs in the main process.
    """

    def __init__(self, size: int, seed: int, shuffle: bool) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[SampleKey]:
        order = epoch_order(self.size, self.seed, self.epoch, self.shuffle)
        return iter([(i, self.epoch) for i in order])


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool) -> List[int]:
    """The sample order of an epoch: a permutation seeded by (seed, epoch) when shuffling. One
    function, so a run under torchrun splits exactly the order a single process would take."""
    if not shuffle:
        return list(range(size))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    workers: int,
    seed: int,
    shuffle: bool,
    pin_memory: bool = False,
    sampler: Optional[Sampler] = None,
) -> DataLoader:
    """A DataLoader with persistent workers (no re-fork each epoch).

    ``sampler``: this process's share under torchrun (``distributed.ShardSampler``, with
    ``batch_size`` the per-process batch); by default the whole split in :class:`EpochSampler`'s
    order. In training, a last global batch of one image is dropped: BatchNorm cannot normalise a
    single sample once the Refiner's map is 1x1 (small inputs).
    """
    if sampler is None:
        sampler = EpochSampler(len(dataset), seed, shuffle)
    world = int(getattr(sampler, "num_replicas", 1))
    total, global_batch = len(sampler) * world, batch_size * world
    drop_last = shuffle and total > global_batch and total % global_batch == 1
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        drop_last=drop_last,
        prefetch_factor=4 if workers > 0 else None,
    )
