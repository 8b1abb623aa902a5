"""Image folders as users keep them: one folder per class (AIDERv2's ``Train/<Class>/*.png``), or a
flat/recursive folder of images (calibration sets, image sources).

Unreadable files are returned, never silently dropped, so callers can list them in a warning.
"""

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from glimmer.runtime.core.errors import GlimmerError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS


def list_images(root: Path, recursive: bool = True) -> List[Path]:
    """Images under ``root`` in sorted order (recursive by default, so class folders work)."""
    root = Path(root)
    if not root.is_dir():
        raise GlimmerError(f"{root}: no such folder")
    pattern = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in pattern if p.is_file() and is_image(p))


def class_folders(root: Path) -> List[str]:
    """Sorted names of the sub-folders of ``root`` (sorted names give class indices, as AIDERv2)."""
    root = Path(root)
    if not root.is_dir():
        raise GlimmerError(f"{root}: no such folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def labelled_images(
    root: Path, class_names: Optional[Sequence[str]] = None
) -> Tuple[List[Path], List[int], List[str]]:
    """(paths, labels, class names) of ``root/<Class>/*``.

    With ``class_names`` (e.g. from a model's metadata) the folders must match them exactly;
    a mismatch is an error naming the differing folders.
    """
    found = class_folders(root)
    if not found:
        raise GlimmerError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    names = list(class_names) if class_names is not None else found
    if class_names is not None and sorted(found) != sorted(names):
        extra = sorted(set(found) - set(names))
        missing = sorted(set(names) - set(found))
        raise GlimmerError(
            (
                "{}: class folders {} do not match the model's classes {} (extra: {}, missing: {})"
            ).format(root, found, names, extra or "none", missing or "none")
        )
    paths: List[Path] = []
    labels: List[int] = []
    for index, name in enumerate(names):
        for path in list_images(Path(root) / name):
            paths.append(path)
            labels.append(index)
    if not paths:
        raise GlimmerError(
            "{}: class folders hold no images ({})".format(root, ", ".join(IMAGE_EXTS))
        )
    return paths, labels, names


def read_image(path: Path) -> Optional[np.ndarray]:
    """BGR uint8 HxWx3, or None when the file cannot be decoded (truncated, not an image)."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or min(image.shape[:2]) == 0:
        return None
    return image
