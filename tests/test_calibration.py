"""Score calibration of unbounded scores: monotone, ranks kept (AUROC unchanged), the median training
negative at 0.5, and the fitted state carried by the state dict."""

import numpy as np
import pytest
import torch

from cdtool.inference.calibration import TAIL, ScoreCalibration
from cdtool.metrics import exact_auroc


def test_calibration_is_monotone_keeps_auroc_and_centres_the_median():
    g = torch.Generator().manual_seed(0)
    negatives = torch.randn(2000, generator=g).exp() * 40  # reconstruction-error-like, unbounded
    cal = ScoreCalibration().fit(negatives)
    assert float(cal(negatives.median().view(1))) == pytest.approx(0.5, abs=0.01)
    test = torch.cat([torch.randn(500, generator=g).exp() * 40, torch.randn(500, generator=g).exp() * 120])
    labels = np.r_[np.zeros(500), np.ones(500)]
    out = cal(test)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert exact_auroc(out.numpy(), labels) == pytest.approx(exact_auroc(test.numpy(), labels), abs=1e-3)
    grid = torch.linspace(-10, 2000, 5000)
    assert bool((cal(grid)[1:] >= cal(grid)[:-1]).all())
    assert float(cal(torch.tensor([negatives.max() * 3]))) > 1 - TAIL  # beyond every negative
    assert float(cal(torch.tensor([negatives.max() * 3]))) > float(cal(torch.tensor([negatives.max() * 2])))


def test_calibration_travels_in_the_state_dict():
    cal = ScoreCalibration(knots=33).fit(torch.arange(100.0))
    other = ScoreCalibration(knots=33)
    other.load_state_dict(cal.state_dict())
    x = torch.tensor([3.0, 50.0, 99.0, 500.0])
    assert torch.equal(other(x), cal(x)) and bool(other.fitted)
    with pytest.raises(ValueError, match="at least two"):
        ScoreCalibration().fit(torch.tensor([1.0]))
