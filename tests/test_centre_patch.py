"""A fully connected model that scores one fixed-size window runs in `cdtool detect` through the centre-patch
adapter: each cell gets the score of the window centred on it, and the streamed map equals the whole-image
map. PCD sizes (112-pixel windows, 14-pixel cells), whose window margin (49) is not a whole number of cells."""

import numpy as np
import pytest
import rasterio
import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.errors import InputError
from cdtool.inference.centre_patch import CentrePatch, as_dense
from cdtool.io.checkpoint import save_checkpoint
from cdtool.models.base import ChangeModel
from cdtool.models.registry import MODELS, create_model
from cdtool.windows import Tile
from tests.conftest import write_tif

PATCH, CELL = 112, 14


class FullyConnected(ChangeModel):
    """The windows' difference, flattened -> linear -> sigmoid: takes PATCH×PATCH inputs only. With equal
    dates the difference is zero, so the score is one constant."""

    patch_only, patch_size, cell = True, PATCH, CELL

    def __init__(self, in_channels: int = 3, shape: tuple = (-1, 1)):
        super().__init__()
        self.fc = nn.Linear(in_channels * PATCH * PATCH, 1)
        self.shape = shape

    def forward(self, before, after):
        assert before.shape[-2:] == (PATCH, PATCH), before.shape  # it cannot take anything else
        d = after - before
        return torch.sigmoid(self.fc(d.flatten(1)) + 2 * d.abs().mean((1, 2, 3))[:, None]).reshape(self.shape)


@pytest.fixture(autouse=True)
def registered():
    with MODELS.temporary("fc_centre_test", FullyConnected, output="centre"):
        yield


@pytest.mark.parametrize("shape", [(-1,), (-1, 1), (-1, 1, 1, 1)])
def test_each_cell_gets_the_score_of_the_window_centred_on_it(shape):
    torch.manual_seed(0)
    model = FullyConnected(shape=shape).eval()
    adapter = CentrePatch(model, PATCH, CELL, chunk=7)  # chunks that cut grid rows
    before, after = torch.randn(2, 3, 70, 57), torch.randn(2, 3, 70, 57)
    with torch.no_grad():
        dense = adapter(before, after)
        assert dense.shape == (2, 1, 70, 57)
        pad = (PATCH - CELL) // 2
        xb = F.pad(before, (pad, PATCH, pad, PATCH), mode="replicate")
        xa = F.pad(after, (pad, PATCH, pad, PATCH), mode="replicate")
        for i, j in [(0, 0), (2, 1), (4, 3)]:  # cell (i, j) covers rows i*14.., cols j*14..
            r, c = i * CELL, j * CELL
            want = model(xb[:, :, r:r + PATCH, c:c + PATCH], xa[:, :, r:r + PATCH, c:c + PATCH]).reshape(2)
            assert torch.allclose(dense[:, 0, r, c], want, atol=1e-6)
            assert torch.allclose(dense[:, 0, min(r + 13, 69), c + 13], want, atol=1e-6)
    assert adapter.size_multiple == CELL and adapter.halo == pad + CELL - 1


def test_only_patch_only_centre_models_are_wrapped_and_must_give_one_score_per_window():
    fc = FullyConnected()
    assert isinstance(as_dense(fc, "centre"), CentrePatch) and as_dense(fc, "dense") is fc
    siamese = create_model("siamese_patch")
    assert as_dense(siamese, "centre") is siamese  # it slides as one convolution
    dense_output = CentrePatch(FullyConnected(shape=(-1, 1, 1, 1)), PATCH, CELL)
    dense_output.model.forward = lambda b, a: torch.zeros(len(b), 1, 2, 2)
    with pytest.raises(InputError, match="one score per window"):
        dense_output(torch.zeros(1, 3, 14, 14), torch.zeros(1, 3, 14, 14))
    with pytest.raises(InputError, match="cannot centre"):
        CentrePatch(fc, 111, CELL)


def test_a_fully_connected_checkpoint_runs_streamed_in_detect(tmp_path):
    from cdtool.inference.detect import DetectOptions, detect
    from cdtool.inference.detector import load_detector
    from cdtool.io.pair import open_pair
    from cdtool.normalization import Normalizer

    torch.manual_seed(1)
    model = FullyConnected()
    ckpt = save_checkpoint(tmp_path / "fc.safetensors", {"model": model.state_dict()},
                           {"model": {"name": "fc_centre_test", "args": {"in_channels": 3}},
                            "normalization": {"mode": "per-image"}, "threshold": 0.5})
    rng = np.random.default_rng(0)
    a = (rng.random((3, 260, 300)) * 200).astype(np.uint8)
    b = a.copy()
    b[:, 100:160, 120:200] = 255
    before, after = write_tif(tmp_path / "a.tif", a), write_tif(tmp_path / "b.tif", b)
    options = dict(model=str(ckpt), tile=196, overlap=124, polygons=False, preview=False)  # 2 x 3 tiles
    detect(before, after, tmp_path / "out", DetectOptions(**options))
    with rasterio.open(tmp_path / "out" / "change_prob.tif") as ds:
        streamed = ds.read(1)
    det = load_detector(str(ckpt))
    assert isinstance(det.model, CentrePatch)
    with open_pair(before, after) as pair:
        x = torch.from_numpy(Normalizer(det.normalization, pair)(pair.read(Tile(0, 0, *pair.shape))[0]))
    with torch.no_grad():
        whole = det.model(x[0][None], x[1][None])[0, 0].numpy()
    assert np.abs(streamed - whole).max() < 1e-6  # several tiles, one map
    assert streamed[120:140, 140:180].mean() > streamed[:60, :60].mean()  # the change scores higher
    detect(before, before, tmp_path / "same", DetectOptions(**options))
    with rasterio.open(tmp_path / "same" / "change_prob.tif") as ds:
        flat = ds.read(1)
    assert flat.max() - flat.min() < 1e-6  # identical dates: one constant score
