"""The selection arguments every dataset kind takes: labels, positives, subset, resize; seeded, aligned
labels, one-line refusals."""

import pytest
import torch
from torch.utils.data import Dataset

from cdtool.data.registry import DATASETS, build_dataset
from cdtool.errors import InputError


class Toy(Dataset):
    """60 pairs (2, 3, 20, 20) labelled 0 (40), 1 (15) and 2 (5); the image holds its index."""

    def __init__(self):
        self.labels = [0] * 40 + [1] * 15 + [2] * 5
        self.channels = 3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": torch.full((2, 3, 20, 20), float(i)), "mask": torch.zeros(1, 20, 20),
                "label": torch.tensor(self.labels[i])}


@pytest.fixture(autouse=True)
def toy():
    with DATASETS.temporary("toy", Toy):
        yield


def _ids(data):
    return [int(data[i]["image"][0, 0, 0, 0]) for i in range(len(data))]


def test_labels_positives_and_subsets_are_seeded_and_keep_labels_aligned():
    neg = build_dataset("toy", labels=[0])
    assert len(neg) == 40 and set(neg.labels) == {0}
    rare = build_dataset("toy", positives=4, seed=3)
    assert len(rare) == 44 and sum(x > 0 for x in rare.labels) == 4
    assert _ids(rare) == _ids(build_dataset("toy", positives=4, seed=3))  # the same draw for the same seed
    assert _ids(rare) != _ids(build_dataset("toy", positives=4, seed=4))
    assert [rare[i]["label"].item() for i in range(len(rare))] == rare.labels
    assert len(build_dataset("toy", subset=0.1)) == 6 and len(build_dataset("toy", subset=7)) == 7
    both = build_dataset("toy", labels=[0, 2], subset=10, seed=1)
    assert len(both) == 10 and set(both.labels) <= {0, 2}


def test_resize_images_and_masks():
    s = build_dataset("toy", resize=32)[0]
    assert s["image"].shape == (2, 3, 32, 32) and s["mask"].shape == (1, 32, 32)


@pytest.mark.parametrize("args, message", [
    ({"labels": [7]}, "no sample has these labels"),
    ({"positives": 30}, "30 asked for, 20 positives available"),
    ({"subset": 0}, "does not pick between 1 and 60"),
    ({"resize": 0}, "is not a size"),
])
def test_selection_refusals(args, message):
    with pytest.raises(InputError, match=message):
        build_dataset("toy", **args)
