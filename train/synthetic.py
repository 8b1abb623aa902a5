"""Synthetic aerial-like scenes for tests, the demo and benchmarks (no dataset can be downloaded
here).

Four classes in the AIDERv2 layout whose visual cues are learnable but not constant: randomised
textures, positions, sizes and noise. ``Earthquake``: grey rubble with dark cracks; ``Fire``: orange
blobs with smoke; ``Flood``: brown-blue water bands; ``Normal``: green fields with roads.
Nothing here resembles real imagery closely: models trained on it are for plumbing, not for use.
"""

from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

CLASSES = ("Earthquake", "Fire", "Flood", "Normal")
#: glimmer-train's flags for the demo: the paper's recipe, shortened for 96 px generated scenes
DEMO_TRAIN_FLAGS = ("--epochs", "10", "--img-size", "96", "--batch-size", "32", "--lr", "0.003")


def _cv2():
    import cv2

    return cv2


def render_scene(label: str, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """One BGR uint8 image of class ``label``."""
    cv2 = _cv2()
    h = w = size
    noise = rng.normal(0, 12, (h, w, 3))
    if label == "Earthquake":
        img = np.full((h, w, 3), rng.uniform(110, 150), np.float64) + rng.normal(0, 25, (h, w, 1))
        for _ in range(int(rng.integers(4, 8))):
            p = rng.integers(0, size, 4)
            cv2.line(
                img,
                (int(p[0]), int(p[1])),
                (int(p[2]), int(p[3])),
                (30, 30, 35),
                int(rng.integers(1, 3)),
            )
    elif label == "Fire":
        img = np.zeros((h, w, 3)) + np.array([40, 70, 50]) + rng.normal(0, 10, (1, 1, 3))
        for _ in range(int(rng.integers(2, 5))):
            c = rng.integers(0, size, 2)
            r = int(rng.integers(size // 10, size // 4))
            cv2.circle(img, (int(c[0]), int(c[1])), r + 4, (160, 160, 170), -1)  # smoke
            cv2.circle(
                img, (int(c[0]), int(c[1])), r, (20, int(110 + rng.integers(0, 60)), 240), -1
            )
    elif label == "Flood":
        img = np.zeros((h, w, 3)) + np.array([90, 110, 120]) + rng.normal(0, 8, (1, 1, 3))
        for y in range(0, h, int(rng.integers(6, 14))):
            shade = rng.uniform(0.8, 1.2)
            cv2.line(
                img,
                (0, y),
                (w, y + int(rng.integers(-5, 6))),
                (150 * shade, 120 * shade, 70 * shade),
                3,
            )
    else:  # Normal
        img = np.zeros((h, w, 3)) + np.array([40, 130, 60]) + rng.normal(0, 10, (1, 1, 3))
        for _ in range(int(rng.integers(1, 3))):
            x = int(rng.integers(0, w))
            cv2.line(
                img,
                (x, 0),
                (x + int(rng.integers(-20, 20)), h),
                (170, 170, 170),
                int(rng.integers(2, 5)),
            )
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def make_scene_dataset(
    root: Path,
    per_class: Dict[str, int],
    classes: Sequence[str] = CLASSES,
    size: int = 96,
    seed: int = 0,
    jpeg_every: int = 3,
) -> Path:
    """Write ``root/<Split>/<Class>/*.png|jpg`` with ``per_class[split]`` images per class.

    Every ``jpeg_every``-th image is JPEG, the rest PNG, as users' folders mix both.
    """
    cv2 = _cv2()
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in per_class.items():
        for label in classes:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                ext = ".jpg" if jpeg_every and i % jpeg_every == jpeg_every - 1 else ".png"
                cv2.imwrite(
                    str(folder / f"{label.lower()}_{i:04d}{ext}"), render_scene(label, rng, size)
                )
    return root


def make_scene_video(
    path: Path,
    labels: Iterable[str],
    frames_per_label: int = 15,
    size=(640, 360),
    fps: float = 15.0,
    seed: int = 0,
    fourcc: str = "mp4v",
) -> Path:
    """An MJPEG/MP4 clip cycling through ``labels``, each scene held ``frames_per_label`` frames."""
    cv2 = _cv2()
    rng = np.random.default_rng(seed)
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with codec {fourcc}")
    try:
        for label in labels:
            scene = cv2.resize(
                render_scene(label, rng, 128), (width, height), interpolation=cv2.INTER_LINEAR
            )
            for _ in range(frames_per_label):
                jitter = rng.normal(0, 4, scene.shape)
                writer.write(np.clip(scene + jitter, 0, 255).astype(np.uint8))
    finally:
        writer.release()
    return Path(path)


def scene_labels(n: int, classes: Sequence[str] = CLASSES, seed: Optional[int] = None) -> list:
    """``n`` labels cycling through the classes (shuffled when ``seed`` is given)."""
    labels = [classes[i % len(classes)] for i in range(n)]
    if seed is not None:
        np.random.default_rng(seed).shuffle(labels)
    return labels
