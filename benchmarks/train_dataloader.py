"""Benchmark: does glimmer-train's data loading keep up with GlimmerNet's training step on this CPU?

Measures, at the paper's 224x224 and with the paper's augmentations (the goal: data loading must
not starve the model):
- the DataLoader alone (OpenCV decode of PNG/JPEG, runtime resize, albumentations, /255), images/s
  with 0, 1 and 2 worker processes;
- the training step alone (forward, cross-entropy, backward, RMSprop step) on tensors already in
  memory, images/s at the paper's batch 64;
- real training steps fed by the loader (workers and the step share the cores), images/s.
The ratio column is loader / step: above 1 the loader is not the bottleneck. Images are synthetic
scenes rendered at AIDERv2-like sizes (default 512 px); weights are random (speed does not depend
on them).

    .venv/bin/python benchmarks/train_dataloader.py [--images 256] [--src-size 512] [--steps 4]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

from glimmer.models.glimmernet import GlimmerNet
from glimmer.train.augment import ClassifierTransform, classifier_meta
from glimmer.train.data import ImageDataset, load_aider, make_loader
from glimmer.train.synthetic import CLASSES, make_scene_dataset
from glimmer.train.trainer import build_optimizer


def loader_rate(dataset: ImageDataset, batch_size: int, workers: int) -> float:
    """Images/s over one epoch, after the first batch (worker start-up is a one-off per run)."""
    loader = make_loader(dataset, batch_size, workers, seed=22, shuffle=True)
    loader.sampler.set_epoch(1)
    it = iter(loader)
    next(it)
    start, seen = time.perf_counter(), 0
    for images, _ in it:
        seen += images.shape[0]
    rate = seen / (time.perf_counter() - start)
    del it, loader
    return rate


def step_rate(img_size: int, batch_size: int, steps: int) -> float:
    model = GlimmerNet().train()
    optimizer = build_optimizer(model, 1e-3)
    x = torch.rand(batch_size, 3, img_size, img_size)
    y = torch.randint(0, 4, (batch_size,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # warm-up: allocator and kernel selection
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def epoch_rate(dataset: ImageDataset, batch_size: int, workers: int, steps: int) -> float:
    """Images/s of real training steps fed by the loader (``steps`` batches after the first)."""
    model = GlimmerNet().train()
    optimizer = build_optimizer(model, 1e-3)
    loader = make_loader(dataset, batch_size, workers, seed=22, shuffle=True)
    loader.sampler.set_epoch(1)
    it = iter(loader)
    next(it)
    start, seen = time.perf_counter(), 0
    for images, labels in it:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        seen += images.shape[0]
        steps -= 1
        if steps == 0:
            break
    rate = seen / (time.perf_counter() - start)
    del it, loader
    return rate


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument(
        "--images", type=int, default=256, help="training images (split over 4 classes)"
    )
    parser.add_argument(
        "--src-size", type=int, default=512, help="side of the synthetic source images"
    )
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"rendering {args.images} synthetic {args.src_size}px images ...",
            file=sys.stderr,
            flush=True,
        )
        root = make_scene_dataset(
            Path(tmp) / "data",
            {"Train": args.images // len(CLASSES), "Val": 1},
            size=args.src_size,
            seed=0,
        )
        data = load_aider(root, threads=2)
        meta = classifier_meta(data.class_names, args.img_size)
        dataset = ImageDataset(
            data.train.paths, data.train.labels, ClassifierTransform(meta, train=True)
        )
        loaders = {}
        for workers in args.workers:
            print(f"loader, {workers} workers ...", file=sys.stderr, flush=True)
            loaders[workers] = loader_rate(dataset, args.batch_size, workers)
        print("training step ...", file=sys.stderr, flush=True)
        step = step_rate(args.img_size, args.batch_size, args.steps)
        overlap_workers = max(args.workers)
        print(
            f"training fed by the loader, {overlap_workers} workers ...",
            file=sys.stderr,
            flush=True,
        )
        epoch = epoch_rate(dataset, args.batch_size, overlap_workers, args.steps)

    print(
        f"\nglimmer-train data loading vs training step, {args.img_size}x{args.img_size}, "
        f"batch {args.batch_size}, {len(dataset)} images of {args.src_size}x{args.src_size} "
        "(2/3 PNG, 1/3 JPEG), paper augmentations"
    )
    print(
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads\n"
    )
    print("| measurement | images/s | ratio to train step |")
    print("|---|---:|---:|")
    for workers, rate in loaders.items():
        print(
            f"| DataLoader alone, {workers} worker{'s' if workers != 1 else ''} | {rate:,.0f} "
            f"| {rate / step:.1f}x |"
        )
    print(
        f"| training step alone (forward + backward + RMSprop), GlimmerNet | {step:,.1f} | 1.0x |"
    )
    print(
        f"| training, loader ({overlap_workers} workers) feeding the step | {epoch:,.1f} | "
        f"{epoch / step:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
