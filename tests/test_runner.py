"""The tiled runner: every row once, in order, to every sink; the same bands whatever the batching; a failed
pass aborts its sinks instead of closing them; several output channels stitch as one channel each."""

import numpy as np
import pytest
import torch

from cdtool.inference.detect import DetectOptions, input_domain
from cdtool.inference.detector import choose_detector
from cdtool.inference.runner import RunOptions, Sink, plan_scoring, run
from cdtool.inference.stitcher import Stitcher
from cdtool.io.pair import open_pair
from cdtool.windows import Tile
from tests.conftest import write_tif


class Collect(Sink):
    def __init__(self):
        self.bands, self.events = [], []

    def add(self, band):
        self.bands.append((band.row, band.score.copy(), band.valid.copy()))

    def close(self):
        self.events.append("close")

    def abort(self):
        self.events.append("abort")


def _pair(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 255, (3, 150, 110)).astype(np.uint8)
    b = a.copy()
    b[:, 30:70, 40:90] = 255 - b[:, 30:70, 40:90]
    return write_tif(tmp_path / "a.tif", a), write_tif(tmp_path / "b.tif", b)


def _bands(before, after, batch: int, readers: int, sinks=()):
    with open_pair(before, after) as pair:
        choice = choose_detector("cva", input_domain(pair, None))
        plan = plan_scoring(pair, choice, torch.device("cpu"), DetectOptions(tile=48, batch_size=batch))
        got = Collect()
        run(pair, plan, [got, *sinks], RunOptions(readers=readers))
    return got


def test_bands_cover_every_row_once_and_do_not_depend_on_batching(tmp_path):
    before, after = _pair(tmp_path)
    one = _bands(before, after, batch=1, readers=1)
    rows = [r for r, _, _ in one.bands]
    assert rows[0] == 0 and one.events == ["close"]
    assert [r + s.shape[0] for r, s, _ in one.bands][:-1] == rows[1:]  # contiguous, in order
    assert rows[-1] + one.bands[-1][1].shape[0] == 150
    assert all(s.shape[1] == 110 for _, s, _ in one.bands)
    many = _bands(before, after, batch=3, readers=2)
    assert len(many.bands) == len(one.bands)
    for (r1, s1, v1), (r2, s2, v2) in zip(one.bands, many.bands):
        assert r1 == r2 and np.array_equal(s1, s2) and np.array_equal(v1, v2)
    score = np.concatenate([s for _, s, _ in one.bands])
    assert score[30:70, 40:90].mean() > score[100:, :].mean() + 0.1  # the inverted block scores as change


def test_a_failing_sink_aborts_every_sink(tmp_path):
    before, after = _pair(tmp_path)

    class Failing(Sink):
        def add(self, band):
            if band.row > 0:
                raise OSError("disk full")

    other = Collect()
    with pytest.raises(OSError, match="disk full"):
        _bands(before, after, 1, 1, sinks=[Failing(), other])
    assert other.events == ["abort"]


def test_channels_stitch_as_separate_maps():
    rng = np.random.default_rng(0)
    tiles = [Tile(r, c, 40, 40) for r in (0, 24) for c in (0, 20)]
    both = Stitcher(64, 60, 40, halo=2, channels=2)
    alone = [Stitcher(64, 60, 40, halo=2) for _ in range(2)]
    for t in tiles:
        score = rng.random((2, 40, 40)).astype(np.float32)
        valid = rng.random((40, 40)) > 0.1
        both.add(t, score, valid)
        for k in range(2):
            alone[k].add(t, score[k], valid)
    got = list(both.finish())
    want = [list(s.finish()) for s in alone]
    for k in range(2):
        assert len(got) == len(want[k])
        for g, w in zip(got, want[k]):
            assert g.row == w.row and np.array_equal(g.score[k], w.score) and np.array_equal(g.valid, w.valid)
