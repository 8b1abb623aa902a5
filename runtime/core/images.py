"""Image folders as users keep them: one folder per class (AIDERv2's ``Train/<Class>/*.png``), or a
flat/recursive folder of images (calibration sets, image sources); globs and list files of images
(ultralytics users' habits: ``'imgs/*.jpg'``, ``list.txt``).

Unreadable files are returned, never silently dropped, so callers can list them in a warning.
"""

import glob
import os
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


def is_glob(text: str) -> bool:
    """Whether ``text`` holds glob wildcards (``*``, ``?``, ``[``)."""
    return any(char in text for char in "*?[")


def glob_images(pattern: str) -> List[Path]:
    """Images matching ``pattern`` (``**`` spans folders), sorted; other matches are ignored, as
    in a folder. Matching nothing is an error naming the pattern."""
    matches = [Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True)]
    files = [p for p in matches if p.is_file()]
    if not files:
        raise GlimmerError(f"source {pattern!r}: the pattern matches no file")
    images = sorted(p for p in files if is_image(p))
    if not images:
        raise GlimmerError(
            f"source {pattern!r}: the pattern matches {len(files)} files but no image "
            f"({', '.join(IMAGE_EXTS)})"
        )
    return images


def read_image_list(list_file: Path, video_exts: Sequence[str] = ()) -> List[Path]:
    """The images a ``.txt`` list names, one path per line, relative to the list's folder; blank
    lines and ``#`` comment lines are ignored. A missing file, a folder, a video (``video_exts``)
    or another non-image is an error naming the list file and the line."""
    list_file = Path(list_file)
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GlimmerError(f"{list_file}: cannot read the image list ({exc})") from None
    paths: List[Path] = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else list_file.parent / path
        where = f"{list_file}:{number}: {entry}"
        if path.is_dir():
            raise GlimmerError(f"{where} is a folder; a list names one image per line")
        if not path.is_file():
            raise GlimmerError(f"{where}: no such file")
        if path.suffix.lower() in video_exts:
            raise GlimmerError(f"{where} is a video; a list source holds images only")
        if not is_image(path):
            raise GlimmerError(f"{where} is not an image ({', '.join(IMAGE_EXTS)})")
        paths.append(path)
    if not paths:
        raise GlimmerError(f"{list_file}: lists no image (one path per line, # for comments)")
    return paths


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
