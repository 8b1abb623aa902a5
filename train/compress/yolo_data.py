"""Check a YOLO-format dataset yaml before ultralytics sees it, and pin its paths.

ultralytics treats a missing dataset as something to download, an image without a label file as
background, and a class id outside ``names`` as a reason to drop the whole image, each silently or
with a traceback. Here each is one clear error naming the file. The checked yaml is rewritten with
an absolute ``path`` so ultralytics never falls back to its global datasets folder.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import yaml

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_write_text

IMG_SUFFIXES = {
    ".bmp",
    ".jpeg",
    ".jpg",
    ".png",
    ".tif",
    ".tiff",
    ".webp",
    ".dng",
    ".mpo",
    ".pfm",
    ".heic",
}


@dataclass
class DetectionDataset:
    yaml_path: Path
    root: Path
    names: List[str]
    splits: Dict[str, List[Path]]  # split -> image files

    @property
    def nc(self) -> int:
        return len(self.names)


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, suffix
    ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _names(data: Dict[str, Any], src: Path) -> List[str]:
    names = data.get("names")
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise GlimmerError(f"{src}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names:
        raise GlimmerError(f"{src}: 'names' must be a non-empty list or {{id: name}} mapping")
    if "nc" in data and data["nc"] != len(names):
        raise GlimmerError(f"{src}: 'nc' is {data['nc']} but 'names' lists {len(names)} classes")
    return [str(n) for n in names]


def _images(entry: Any, root: Path, src: Path, key: str) -> List[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    files: List[Path] = []
    for e in entries:
        p = Path(str(e))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMG_SUFFIXES)
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    f = Path(line.strip())
                    files.append(f if f.is_absolute() else p.parent / f)
        else:
            raise GlimmerError(
                f"{src}: '{key}' points to {p}, which does not exist (nothing is downloaded)"
            )
    if not files:
        raise GlimmerError(f"{src}: '{key}' ({entry}) holds no images")
    return files


def _check_labels(image: Path, nc: int) -> None:
    lbl = label_path(image)
    if not lbl.is_file():
        raise GlimmerError(
            f"{image}: no label file (expected {lbl}; write an empty file for an image "
            "with no objects)"
        )
    for n, line in enumerate(lbl.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, *box = [float(f) for f in fields]
        except ValueError:
            raise GlimmerError(f"{lbl}:{n}: not numbers: {line.strip()!r}") from None
        if len(box) != 4:
            raise GlimmerError(
                f"{lbl}:{n}: expected 'class x_center y_center width height', got "
                f"{len(fields)} fields"
            )
        if cls != int(cls) or not 0 <= cls < nc:
            raise GlimmerError(
                f"{lbl}:{n}: class {fields[0]} outside 0..{nc - 1} (ultralytics would "
                "drop the whole image)"
            )
        if not all(0.0 <= v <= 1.0 for v in box):
            raise GlimmerError(f"{lbl}:{n}: box values must be normalised to [0, 1], got {box}")


def check_dataset(path: Path, splits=("train", "val")) -> DetectionDataset:
    """Parse and check a dataset yaml: paths exist, every image has a valid label file."""
    path = Path(path)
    if path.is_dir():
        raise GlimmerError(
            f"--data {path}: a folder; give the dataset's data.yaml (path, train, val, names)"
        )
    if not path.is_file():
        raise GlimmerError(f"--data {path}: no such file (datasets are never downloaded)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise GlimmerError(
            f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(data, dict):
        raise GlimmerError(f"{path}: expected a mapping with 'path', 'train', 'val' and 'names'")
    names = _names(data, path)
    root = Path(str(data.get("path") or "."))
    root = root if root.is_absolute() else (path.parent / root)
    if not root.is_dir():
        raise GlimmerError(f"{path}: 'path' {root} is not a folder (nothing is downloaded)")
    found: Dict[str, List[Path]] = {}
    for key in splits:
        if key not in data:
            raise GlimmerError(f"{path}: missing key '{key}'")
        found[key] = _images(data[key], root, path, key)
        for image in found[key]:
            _check_labels(image, len(names))
    return DetectionDataset(path, root.resolve(), names, found)


def write_resolved(ds: DetectionDataset, target: Path) -> Path:
    """The dataset yaml with an absolute root, for ultralytics."""
    data = yaml.safe_load(ds.yaml_path.read_text())
    data["path"] = str(ds.root)
    data["names"] = dict(enumerate(ds.names))
    data.pop("download", None)  # never let ultralytics fetch anything
    atomic_write_text(target, yaml.safe_dump(data, sort_keys=False))
    return target
