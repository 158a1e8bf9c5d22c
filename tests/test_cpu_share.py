"""Torch's CPU threads beside the reader threads follow the work: a heavy model takes every core, a cheap one
leaves the readers theirs."""

import pytest
import torch

from cdtool.inference import predictor
from cdtool.inference.predictor import CpuShare


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(predictor, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_heavy_model_gets_every_core_and_gives_them_back(four_cores):
    with CpuShare(readers=1) as share:
        assert torch.get_num_threads() == 3
        share.observe(read_s=0.01, model_s=1.0)  # reading is 1 % of the model's time
        assert torch.get_num_threads() == 4
        share.observe(read_s=0.5, model_s=0.5 * 3 / 4)  # now the readers are busy: their core back
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 4


def test_cheap_model_leaves_the_readers_their_cores(four_cores):
    with CpuShare(readers=2) as share:
        for _ in range(3):
            share.observe(read_s=0.05, model_s=0.1)
            assert torch.get_num_threads() == 2


def test_without_readers_nothing_changes(four_cores):
    with CpuShare(readers=0) as share:
        share.observe(read_s=1.0, model_s=0.01)
        assert torch.get_num_threads() == 4
