"""Score calibration of unbounded scores: monotone, ranks kept (AUROC unchanged), the median training
negative at 0.5, and the fitted state carried by the state dict."""

import numpy as np
import pytest
import torch

from cdtool.errors import InputError
from cdtool.models.calibration import TAIL, ScoreCalibration
from cdtool.metrics import exact_auroc


def test_calibration_is_monotone_keeps_auroc_and_centres_the_median():
    g = torch.Generator().manual_seed(0)
    negatives = torch.randn(2001, generator=g).exp() * 40  # reconstruction-error-like, unbounded
    cal = ScoreCalibration().fit(negatives)
    assert float(cal(negatives.median().view(1))) == pytest.approx(0.5, abs=TAIL)
    test = torch.cat([torch.randn(500, generator=g).exp() * 40, torch.randn(500, generator=g).exp() * 120])
    labels = np.r_[np.zeros(500), np.ones(500)]
    out = cal(test)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    above_lowest = test >= negatives.min()  # below every negative all scores are 0: ties there are the only loss
    assert exact_auroc(out[above_lowest].numpy(), labels[above_lowest]) == exact_auroc(test[above_lowest].numpy(),
                                                                                    labels[above_lowest])
    assert exact_auroc(out.numpy(), labels) == pytest.approx(exact_auroc(test.numpy(), labels), abs=1e-3)
    grid = torch.linspace(-10, 2000, 5000)
    assert bool((cal(grid)[1:] >= cal(grid)[:-1]).all())
    assert float(cal(torch.tensor([negatives.max() * 3]))) > 1 - TAIL  # beyond every negative
    assert float(cal(torch.tensor([negatives.max() * 3]))) > float(cal(torch.tensor([negatives.max() * 2])))


def test_tied_negatives_keep_the_map_monotone_and_any_shape_passes():
    cal = ScoreCalibration(knots=33).fit(torch.tensor([0.0] * 50 + [1.0] * 30 + [2.0] * 20))
    grid = torch.linspace(-1, 4, 1001)
    assert bool((cal(grid)[1:] >= cal(grid)[:-1]).all())
    assert float(cal(torch.tensor([2.0]))) == pytest.approx(1 - TAIL)  # the highest negative: the top level
    maps = torch.rand(2, 1, 5, 7, dtype=torch.float64) * 3
    assert cal(maps).shape == maps.shape and cal(maps).dtype == torch.float64


def test_calibration_travels_in_the_state_dict():
    cal = ScoreCalibration(knots=33).fit(torch.arange(100.0))
    other = ScoreCalibration(knots=33)
    other.load_state_dict(cal.state_dict())
    x = torch.tensor([3.0, 50.0, 99.0, 500.0])
    assert torch.equal(other(x), cal(x)) and bool(other.fitted)
    with pytest.raises(InputError, match="at least two"):
        ScoreCalibration().fit(torch.tensor([1.0, float("nan")]))
