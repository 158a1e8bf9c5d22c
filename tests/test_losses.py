import pytest
import torch

from cdtool.errors import InputError
from cdtool.losses import create_loss, loss_names
from cdtool.losses.metric import contrastive_map


def test_contrastive_and_tcl_per_pixel():
    d = torch.tensor([0.0, 0.3, 1.0, 3.0])
    unchanged = torch.zeros(4)
    changed = torch.ones(4)
    assert torch.allclose(contrastive_map(d, unchanged, 2.0, 0.0), d ** 2)
    assert torch.allclose(contrastive_map(d, unchanged, 2.0, 0.5), torch.tensor([0.0, 0.0, 0.25, 6.25]))
    assert torch.allclose(contrastive_map(d, changed, 2.0, 0.5), torch.tensor([4.0, 2.89, 1.0, 0.0]))


def test_tcl_with_zero_threshold_is_contrastive_and_side_outputs_are_weighted():
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    dists = [torch.rand(2, 1, 8, 8) * 3 for _ in range(3)]
    out = {"distances": dists}
    a, _ = create_loss("contrastive", margin=2.0)(out, target)
    b, _ = create_loss("tcl", margin=2.0, tau=0.0)(out, target)
    assert torch.allclose(a, b)
    w, parts = create_loss("contrastive", margin=2.0, weights=[0.0, 0.0, 1.0])(out, target)
    only_last, _ = create_loss("contrastive", margin=2.0)({"distances": dists[-1:]}, target)
    assert torch.allclose(w, only_last) and len(parts) == 3


def test_fcn_metrics_is_classification_plus_lambda_contrastive():
    torch.manual_seed(1)
    target = (torch.rand(1, 1, 6, 6) > 0.5).float()
    out = {"logits": [torch.randn(1, 1, 6, 6)], "distances": [torch.rand(1, 1, 6, 6)]}
    total, _ = create_loss("fcn_metrics", lam=3.0)(out, target)
    cls, _ = create_loss("bce")(out, target)
    feat, _ = create_loss("contrastive")(out, target)
    assert torch.allclose(total, cls + 3.0 * feat)


def test_cos_loss_is_zero_for_perfect_scores():
    target = torch.tensor([[[[0.0, 1.0]]]])
    loss, _ = create_loss("cos")({"layer_scores": [target.clone()]}, target)
    assert float(loss) == 0.0


def test_registry():
    assert {"bce", "contrastive", "tcl", "cos", "fcn_metrics"} <= set(loss_names())
    with pytest.raises(InputError, match="unknown loss 'hinge'; registered: .*bce"):
        create_loss("hinge")
