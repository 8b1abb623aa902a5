"""A tiny YOLO-format detection set of coloured shapes on noise, for tests and demos.

Two classes: ``disc`` (warm-coloured filled circles) and ``box`` (cool-coloured filled squares),
1-3 objects per image, on Gaussian noise. Learnable in a few epochs; not a benchmark.
"""

from pathlib import Path
from typing import Tuple

import numpy as np

from glimmer.runtime.core.files import atomic_write_text

NAMES = ("disc", "box")


def render(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, list]:
    """One BGR uint8 image and its YOLO rows ``(cls, xc, yc, w, h)``."""
    import cv2

    img = np.clip(rng.normal(110, 35, (size, size, 3)), 0, 255).astype(np.uint8)
    rows = []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(0, 2))
        r = int(rng.integers(size // 10, size // 4))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        if cls == 0:
            color = (
                int(rng.integers(0, 60)),
                int(rng.integers(60, 160)),
                int(rng.integers(200, 256)),
            )
            cv2.circle(img, (cx, cy), r, color, -1)
        else:
            color = (
                int(rng.integers(200, 256)),
                int(rng.integers(100, 200)),
                int(rng.integers(0, 60)),
            )
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
        rows.append((cls, cx / size, cy / size, 2 * r / size, 2 * r / size))
    return img, rows


def make_shapes_dataset(
    root: Path, n_train: int = 16, n_val: int = 8, size: int = 64, seed: int = 0
) -> Path:
    """Write ``root/images/{train,val}``, ``root/labels/{train,val}`` and ``root/data.yaml``."""
    import cv2
    import yaml

    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, rows = render(rng, size)
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.png"), img)
            text = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows)
            atomic_write_text(root / "labels" / split / f"{i:04d}.txt", text)
    data = {
        "path": str(root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(NAMES)),
    }
    atomic_write_text(root / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    return root / "data.yaml"
