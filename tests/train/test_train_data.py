"""glimmer.train.data: AIDERv2 layout checks, stratified hold-out, unreadable images, order."""

from pathlib import Path

import pytest
import torch

from glimmer.runtime.core.errors import GlimmerError
from glimmer.train.augment import ClassifierTransform, classifier_meta
from glimmer.train.data import (
    EpochSampler,
    ImageDataset,
    load_aider,
    make_loader,
    stratified_holdout,
)
from glimmer.train.synthetic import CLASSES, make_scene_dataset


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.fixture()
def train_test_only(tmp_path):
    return make_scene_dataset(tmp_path / "data", {"Train": 10, "Test": 3}, size=32, seed=1)


def test_stratified_holdout_takes_the_fraction_of_every_class():
    labels = [0] * 20 + [1] * 10 + [2] * 5 + [3] * 1
    keep, held = stratified_holdout(labels, 0.2, seed=22)
    held_per_class = [sum(1 for i in held if labels[i] == c) for c in range(4)]
    assert held_per_class == [4, 2, 1, 0]  # a class of one image stays in Train
    assert sorted(keep + held) == list(range(len(labels)))
    assert stratified_holdout(labels, 0.2, seed=22) == (keep, held)
    assert stratified_holdout(labels, 0.2, seed=23) != (keep, held)


def test_missing_val_is_a_stratified_holdout_of_train(train_test_only):
    data = load_aider(train_test_only, val_fraction=0.2, seed=22, threads=1)
    assert data.class_names == list(CLASSES)
    assert data.val.per_class(data.class_names) == {c: 2 for c in CLASSES}
    assert data.train.per_class(data.class_names) == {c: 8 for c in CLASSES}
    assert not set(data.val.paths) & set(data.train.paths)
    summary = data.summary()
    assert summary["val_source"] == "holdout" and summary["holdout_fraction"] == 0.2
    assert summary["splits"]["Val"]["source"].startswith("holdout of ")
    assert summary["splits"]["Test"]["images"] == 12


def test_truncated_image_is_skipped_and_listed(train_test_only):
    bad = sorted((train_test_only / "Train" / "Fire").glob("*.png"))[0]
    _truncate(bad)
    data = load_aider(train_test_only, val_fraction=0.2, threads=2)
    assert [d["path"] for d in data.skipped] == [str(bad)]
    assert bad not in data.train.paths + data.val.paths
    assert len(data.train) + len(data.val) == 39


def test_different_class_folders_across_splits_is_an_error(train_test_only):
    (train_test_only / "Test" / "Fire").rename(train_test_only / "Test" / "Smoke")
    with pytest.raises(
        GlimmerError, match=r"class folders differ .*missing \['Fire'\], extra \['Smoke'\]"
    ):
        load_aider(train_test_only)


def test_empty_and_malformed_folders_are_errors(tmp_path):
    with pytest.raises(GlimmerError, match="no such folder"):
        load_aider(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    with pytest.raises(GlimmerError, match="no Train/ folder"):
        load_aider(tmp_path / "flat")
    for name in ("Fire", "Flood"):
        (tmp_path / "empty" / "Train" / name).mkdir(parents=True)
    with pytest.raises(GlimmerError, match=r"Train/Fire: no images"):
        load_aider(tmp_path / "empty")


def test_split_folders_are_found_case_insensitively(tmp_path):
    root = make_scene_dataset(tmp_path / "d", {"train": 2, "valid": 1}, classes=("A", "B"), size=32)
    data = load_aider(root, threads=1)
    assert (len(data.train), len(data.val), data.test) == (4, 2, None)
    assert data.holdout_fraction is None


def test_epoch_sampler_is_a_seeded_permutation_per_epoch():
    sampler = EpochSampler(10, seed=22, shuffle=True)
    sampler.set_epoch(3)
    first = list(sampler)
    assert sorted(i for i, _ in first) == list(range(10)) and {e for _, e in first} == {3}
    assert list(sampler) == first
    sampler.set_epoch(4)
    assert [i for i, _ in sampler] != [i for i, _ in first]
    assert list(EpochSampler(4, 22, shuffle=False)) == [(0, 0), (1, 0), (2, 0), (3, 0)]


def test_augmented_batches_do_not_depend_on_the_worker_count(train_test_only):
    data = load_aider(train_test_only, val_fraction=0.2, threads=1)
    meta = classifier_meta(data.class_names, 64)
    dataset = ImageDataset(
        data.train.paths, data.train.labels, ClassifierTransform(meta, train=True, seed=5)
    )
    batches = []
    for workers in (0, 2):
        loader = make_loader(dataset, 8, workers, seed=5, shuffle=True)
        loader.sampler.set_epoch(2)
        batches.append(next(iter(loader)))
        del loader
    assert batches[0][0].shape == (8, 3, 64, 64)
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
