# Copyright (c) monai-sacb contributors
# Licensed under the Apache License, Version 2.0 (see LICENSE).

from __future__ import annotations

import pytest
from ignite.engine import Engine

from monai_sacb.data import (
    RandomPairDataset,
    all_pairs,
    atlas_pairs,
    harmonize_labels,
    make_pairs,
    random_pairs,
    subjects_from_pairs,
)

SUBJECTS = [{"image": f"/d/img{i}.nii.gz", "label": f"/d/seg{i}.nii.gz"} for i in range(5)]


def as_tuples(pairs):
    return [(p["moving_image"], p["fixed_image"]) for p in pairs]


def test_counts_and_keys():
    n = len(SUBJECTS)
    pairs = all_pairs(SUBJECTS)
    assert len(pairs) == n * (n - 1) == len(set(as_tuples(pairs)))
    assert all(m != f for m, f in as_tuples(pairs))
    assert pairs[0] == {
        "moving_image": "/d/img0.nii.gz", "fixed_image": "/d/img1.nii.gz",
        "moving_label": "/d/seg0.nii.gz", "fixed_label": "/d/seg1.nii.gz",
    }  # fmt: skip
    atlas = {"image": "/d/atlas.nii.gz", "label": "/d/atlas_seg.nii.gz"}
    pairs = atlas_pairs(atlas, SUBJECTS)
    assert len(pairs) == n
    assert {p["moving_image"] for p in pairs} == {"/d/atlas.nii.gz"}
    assert {p["fixed_image"] for p in pairs} == {s["image"] for s in SUBJECTS}
    assert len(make_pairs(SUBJECTS, "atlas", atlas=SUBJECTS[0])) == n - 1  # the atlas is not paired with itself
    # plain paths work; no labels then
    assert all_pairs(["a", "b"]) == [
        {"moving_image": "a", "fixed_image": "b"},
        {"moving_image": "b", "fixed_image": "a"},
    ]
    assert make_pairs(SUBJECTS, pairing=None) == SUBJECTS


def test_random_pairs_deterministic_per_seed_and_epoch():
    first = random_pairs(SUBJECTS, num_pairs=40, seed=3, epoch=1)
    assert len(first) == 40
    assert all(m != f for m, f in as_tuples(first))
    assert first == random_pairs(SUBJECTS, num_pairs=40, seed=3, epoch=1)
    assert as_tuples(first) != as_tuples(random_pairs(SUBJECTS, num_pairs=40, seed=3, epoch=2))
    assert as_tuples(first) != as_tuples(random_pairs(SUBJECTS, num_pairs=40, seed=4, epoch=1))
    # every ordered pair is reachable
    assert len(set(as_tuples(random_pairs(SUBJECTS, num_pairs=500, seed=0)))) == 20
    assert len(random_pairs(SUBJECTS)) == len(SUBJECTS)


def test_pairing_errors_and_label_harmonization():
    with pytest.raises(ValueError, match="atlas, all, random"):
        make_pairs(SUBJECTS, pairing="nearest")
    with pytest.raises(ValueError, match="needs an atlas"):
        make_pairs(SUBJECTS, pairing="atlas")
    with pytest.raises(ValueError, match="at least 2"):
        random_pairs(SUBJECTS[:1])
    with pytest.raises(ValueError, match="no pairs"):
        make_pairs(SUBJECTS[:1], pairing="all")
    mixed = SUBJECTS[:2] + [{"image": "/d/unlabelled.nii.gz"}]
    with pytest.warns(UserWarning, match="no label maps"):
        pairs = all_pairs(mixed)
    assert all(set(p) == {"moving_image", "fixed_image"} for p in pairs)


def test_harmonize_labels_keeps_labels_on_all_pairs_or_none():
    labelled = all_pairs(SUBJECTS[:2])
    assert harmonize_labels(labelled) == labelled
    unlabelled = [{"moving_image": "/d/a.nii.gz", "fixed_image": "/d/b.nii.gz"}]
    assert harmonize_labels(unlabelled) == unlabelled
    with pytest.warns(UserWarning, match="1 of 3 pairs have no label maps"):
        mixed = harmonize_labels(labelled + unlabelled)
    assert mixed == [{k: p[k] for k in ("moving_image", "fixed_image")} for p in labelled + unlabelled]


def test_subjects_from_pairs_round_trip():
    assert subjects_from_pairs(all_pairs(SUBJECTS)) == SUBJECTS


def test_random_pair_dataset_epochs_and_transform():
    ds = RandomPairDataset(SUBJECTS, transform=lambda d: {**d, "seen": True}, num_pairs=7, seed=11)
    assert len(ds) == 7
    assert ds[0]["seen"] and ds[0]["moving_image"] != ds[0]["fixed_image"]
    ds.set_epoch(2)
    epoch2 = [ds[i]["moving_image"] + ds[i]["fixed_image"] for i in range(len(ds))]
    assert as_tuples(ds.data) == as_tuples(random_pairs(SUBJECTS, 7, seed=11, epoch=2))
    ds.set_epoch(3)
    assert [ds[i]["moving_image"] + ds[i]["fixed_image"] for i in range(len(ds))] != epoch2
    # the same seed in another process (or rank) draws the same pairs
    other = RandomPairDataset(all_pairs(SUBJECTS), num_pairs=7, seed=11)
    other.set_epoch(3)
    assert other.data == ds.data


def test_random_pair_dataset_follows_ignite_epochs():
    ds = RandomPairDataset(SUBJECTS, num_pairs=4, seed=5)
    seen: dict[int, list] = {}

    def step(engine, batch):
        seen.setdefault(engine.state.epoch, []).append((batch["moving_image"], batch["fixed_image"]))

    engine = Engine(step)
    ds.attach(engine)
    ds.attach(engine)  # attaching twice registers once
    # a fresh iterator per epoch, as a DataLoader gives
    engine.run(_Reiterable(ds), max_epochs=3)
    for epoch in (1, 2, 3):
        assert seen[epoch] == as_tuples(random_pairs(SUBJECTS, 4, seed=5, epoch=epoch))
    assert seen[1] != seen[2]


class _Reiterable:
    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        return (self.dataset[i] for i in range(len(self.dataset)))

    def __len__(self):
        return len(self.dataset)
