"""The selection arguments every dataset kind takes: labels, positives, subset, resize; seeded, aligned
labels, what the engine reads off a dataset kept on the wrappers, one-line refusals."""

import pytest
import torch
from torch.utils.data import Dataset

from cdtool.data.registry import DATASETS, build_dataset
from cdtool.errors import InputError


class Toy(Dataset):
    """60 pairs (2, 3, 20, 20) labelled 0 (40), 1 (15) and 2 (5); the image holds its index."""

    def __init__(self):
        self.labels = [0] * 40 + [1] * 15 + [2] * 5
        self.names = [f"s{i}" for i in range(60)]
        self.channels, self.epoch = 3, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        mask = torch.zeros(1, 20, 20)
        mask[:, 5:15, 5:15] = 1
        return {"image": torch.full((2, 3, 20, 20), float(i)), "mask": mask,
                "valid": torch.ones(1, 20, 20, dtype=torch.bool), "flow": torch.ones(2, 20, 20),
                "label": torch.tensor(self.labels[i])}


class Unlabelled(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"image": torch.zeros(1, 1, 8, 8)}


@pytest.fixture(autouse=True)
def toy():
    with DATASETS.temporary("toy", Toy), DATASETS.temporary("unlabelled", Unlabelled):
        yield


def _ids(data):
    return [int(data[i]["image"][0, 0, 0, 0]) for i in range(len(data))]


def test_labels_keep_the_listed_classes():
    neg = build_dataset("toy", labels=[0])
    assert _ids(neg) == list(range(40)) and neg.labels == [0] * 40
    assert set(build_dataset("toy", labels=2).labels) == {2}


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_positives_keeps_exactly_n_drawn_with_the_seed_and_every_negative(seed):
    rare = build_dataset("toy", positives=4, seed=seed)
    assert len(rare) == 44 and sum(x > 0 for x in rare.labels) == 4 and _ids(rare)[:40] == list(range(40))
    assert _ids(rare) == _ids(build_dataset("toy", positives=4, seed=seed))  # the same draw for the same seed
    assert _ids(rare) != _ids(build_dataset("toy", positives=4, seed=seed + 1))
    assert [rare[i]["label"].item() for i in range(len(rare))] == rare.labels  # labels stay aligned
    assert rare.names == [f"s{i}" for i in _ids(rare)]


def test_subset_counts_fractions_and_seeding():
    assert len(build_dataset("toy", subset=0.1)) == 6 and len(build_dataset("toy", subset=7)) == 7
    assert _ids(build_dataset("toy", subset=7, seed=2)) == _ids(build_dataset("toy", subset=7, seed=2))
    assert _ids(build_dataset("toy", subset=7, seed=2)) != _ids(build_dataset("toy", subset=7, seed=3))
    both = build_dataset("toy", labels=[0, 2], subset=10, seed=1)
    assert len(both) == 10 and set(both.labels) <= {0, 2}
    assert build_dataset("toy", subset=1.0).labels == Toy().labels  # everything: the dataset itself


def test_wrappers_keep_names_channels_and_epochs():
    data = build_dataset("toy", subset=5, resize=10)
    assert data.channels == 3 and len(data.names) == 5 and len(data.labels) == 5
    data.set_epoch(4)
    assert data.base.base.epoch == 4


def test_resize_images_masks_valid_and_flow():
    s = build_dataset("toy", resize=32)[0]
    assert s["image"].shape == (2, 3, 32, 32) and s["mask"].shape == (1, 32, 32)
    assert set(s["mask"].unique().tolist()) == {0.0, 1.0} and s["mask"].sum() == 16 * 16  # nearest: still 0/1
    assert s["valid"].dtype == torch.bool and s["valid"].shape == (1, 32, 32)
    assert torch.allclose(s["flow"], torch.full((2, 32, 32), 1.6))  # a pixel is 1.6 new pixels
    assert build_dataset("unlabelled", resize=4)[0]["image"].shape == (1, 1, 4, 4)  # one date


@pytest.mark.parametrize("kind, args, message", [
    ("toy", {"labels": [7]}, "labels \\[7\\]: no sample has these labels"),
    ("toy", {"labels": ["a"]}, "labels: 'a' is not a whole number"),
    ("toy", {"positives": 30}, "positives: 30 asked for, 20 positives available"),
    ("toy", {"positives": 2.5}, "positives: 2.5 is not a whole number"),
    ("toy", {"subset": 0}, "subset: 0 is not a whole number >= 1"),
    ("toy", {"subset": 0.001}, "subset: 0.001 does not pick between 1 and 60"),
    ("toy", {"subset": 1.5}, "subset: 1.5 is not a whole number"),
    ("toy", {"subset": 61}, "subset: 61 does not pick between 1 and 60"),
    ("toy", {"resize": 0}, "resize: 0 is not a whole number >= 1"),
    ("unlabelled", {"positives": 1}, "positives: this dataset has no per-sample labels"),
])
def test_selection_refusals(kind, args, message):
    with pytest.raises(InputError, match="^data args " + message):
        build_dataset(kind, **args)
