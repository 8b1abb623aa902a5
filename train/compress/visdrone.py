"""VisDrone2019-DET annotations to the YOLO detection format.

A raw line is ``left,top,width,height,score,category,truncation,occlusion`` in pixels. Categories
1-10 (pedestrian ... motor) become YOLO ids 0-9. Dropped, and counted in the report: category 0
(ignored regions), 11 ('others', which as id 10 would make ultralytics discard the whole image),
rows with score 0 (VisDrone's "ignore this box" flag) and boxes with no area inside the image.

Input: ``RAW_DIR`` holding ``VisDrone2019-DET-<split>/{images,annotations}`` folders, or one
``images`` + ``annotations`` pair. Output: ``OUT_DIR/images/<split>`` (hard links where possible),
``OUT_DIR/labels/<split>/*.txt`` and ``OUT_DIR/data.yaml``.
"""

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_write_text

NAMES = (
    "pedestrian",
    "people",
    "bicycle",
    "car",
    "van",
    "truck",
    "tricycle",
    "awning-tricycle",
    "bus",
    "motor",
)
IMG_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass
class ConversionReport:
    images: int = 0
    kept: Counter = field(default_factory=Counter)  # YOLO class id -> boxes
    dropped: Counter = field(default_factory=Counter)  # reason -> boxes

    def add(self, other: "ConversionReport") -> None:
        self.images += other.images
        self.kept.update(other.kept)
        self.dropped.update(other.dropped)

    def lines(self) -> List[str]:
        out = [f"images: {self.images}", f"boxes kept: {sum(self.kept.values())}"]
        out += [f"  {i} {NAMES[i]}: {self.kept[i]}" for i in sorted(self.kept)]
        out.append(f"boxes dropped: {sum(self.dropped.values())}")
        out += [f"  {reason}: {n}" for reason, n in sorted(self.dropped.items())]
        return out


def convert_line(line: str, img_w: int, img_h: int, where: str) -> Tuple[str, str]:
    """``(yolo_line, "")`` for a kept box, ``("", reason)`` for a dropped one."""
    fields = [f for f in line.strip().split(",") if f != ""]  # some files end lines with a comma
    if len(fields) < 6:
        raise GlimmerError(
            f"{where}: expected at least 6 comma-separated fields "
            f"(left,top,width,height,score,category,...), got {line.strip()!r}"
        )
    try:
        left, top, w, h, score, cat = (float(f) for f in fields[:6])
    except ValueError:
        raise GlimmerError(f"{where}: not numbers: {line.strip()!r}") from None
    cat = int(cat)
    if cat == 0:
        return "", "ignored region (category 0)"
    if cat == 11:
        return "", "others (category 11)"
    if not 1 <= cat <= 10:
        raise GlimmerError(f"{where}: category {cat} is not a VisDrone category (0-11)")
    if score == 0:
        return "", "ignored box (score 0)"
    x0, y0 = max(0.0, left), max(0.0, top)
    x1, y1 = min(float(img_w), left + w), min(float(img_h), top + h)
    if x1 <= x0 or y1 <= y0:
        return "", "no area inside the image"
    xc, yc = (x0 + x1) / 2 / img_w, (y0 + y1) / 2 / img_h
    return f"{cat - 1} {xc:.6f} {yc:.6f} {(x1 - x0) / img_w:.6f} {(y1 - y0) / img_h:.6f}", ""


def _image_size(path: Path) -> Tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as exc:
        raise GlimmerError(f"{path}: cannot read the image size: {exc}") from None


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # 1.5 GB of VisDrone need not be copied when on one filesystem
    except OSError:
        shutil.copy2(src, dst)


def convert_split(images: Path, annotations: Path, out: Path, split: str) -> ConversionReport:
    report = ConversionReport()
    files = sorted(f for f in images.iterdir() if f.suffix.lower() in IMG_SUFFIXES)
    if not files:
        raise GlimmerError(f"{images}: no images")
    for img in files:
        ann = annotations / (img.stem + ".txt")
        if not ann.is_file():
            raise GlimmerError(f"{img}: no annotation file {ann}")
        w, h = _image_size(img)
        rows = []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row, reason = convert_line(line, w, h, f"{ann}:{n}")
            if row:
                rows.append(row)
                report.kept[int(row.split()[0])] += 1
            else:
                report.dropped[reason] += 1
        atomic_write_text(
            out / "labels" / split / (img.stem + ".txt"), "".join(r + "\n" for r in rows)
        )
        _place(img, out / "images" / split / img.name)
        report.images += 1
    return report


def find_splits(raw: Path) -> Dict[str, Tuple[Path, Path]]:
    """split -> (images dir, annotations dir)."""
    if not raw.is_dir():
        raise GlimmerError(f"{raw}: no such folder")
    if (raw / "images").is_dir() and (raw / "annotations").is_dir():
        return {"train": (raw / "images", raw / "annotations")}
    found = {}
    for d in sorted(raw.iterdir()):
        if d.is_dir() and d.name.startswith("VisDrone2019-DET-") and (d / "annotations").is_dir():
            found[d.name[len("VisDrone2019-DET-") :]] = (d / "images", d / "annotations")
    if not found:
        raise GlimmerError(
            f"{raw}: expected images/ + annotations/ or VisDrone2019-DET-<split>/ folders"
        )
    return found


def visdrone_to_yolo(raw: Path, out: Path) -> Dict[str, ConversionReport]:
    """Convert every split found under ``raw``; write ``out/data.yaml``."""
    import yaml

    raw, out = Path(raw), Path(out)
    reports = {split: convert_split(i, a, out, split) for split, (i, a) in find_splits(raw).items()}
    data = {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val" if "val" in reports else "images/train",
        "names": dict(enumerate(NAMES)),
    }
    if "test-dev" in reports:
        data["test"] = "images/test-dev"
    atomic_write_text(out / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    return reports
