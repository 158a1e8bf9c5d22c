"""Every registered trainable model: the detection contract, a training forward/backward, and a
checkpoint round trip through the detector loader."""

import pytest
import torch

from cdtool.io.checkpoint import save_checkpoint
from cdtool.inference.detector import load_detector
from cdtool.models import create_model, model_names
from cdtool.inference.centre_patch import as_dense
from cdtool.models.registry import model_entry

SMALL = {"width": 4}


def _slides_itself(name: str) -> bool:
    """Takes any window size (dense models, siamese_patch); fixed-window scorers are wrapped by CentrePatch
    and tested with their families and in tests/test_centre_patch.py."""
    model = create_model(name)
    return as_dense(model, model_entry(name).info.get("output", "dense")) is model


TRAINABLE = [n for n in model_names() if any(p.requires_grad for p in create_model(n).parameters())
             and create_model(n).forward_train is not None and _slides_itself(n)]


def test_trainable_models_registered():
    assert {"cosimnet", "fcn_metrics", "fc_siam_diff", "fc_siam_conc"} <= set(TRAINABLE)


@pytest.mark.parametrize("name", TRAINABLE)
def test_forward_contract_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=4, **SMALL)
    m = model.size_multiple
    x1, x2 = torch.randn(2, 4, 2 * m * 2, 3 * m), torch.randn(2, 4, 2 * m * 2, 3 * m)
    model.eval()
    y = model(x1, x2)
    assert y.shape == (2, 1, x1.shape[2], x1.shape[3])
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    model.train()
    out = model.forward_train(x1, x2)
    loss = sum(t.float().mean() for v in out.values() for t in v)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", TRAINABLE)
def test_checkpoint_round_trip_through_detector(tmp_path, name):
    model = create_model(name, in_channels=3, **SMALL).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", {"model": model.state_dict()},
                           {"model": {"name": name, "args": {"in_channels": 3, **SMALL}},
                            "normalization": {"mode": "per-image"}, "threshold": 0.42, "bands": None})
    det = load_detector(str(path))
    assert det.threshold == 0.42 and det.name == name
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(det.model(x, x), model(x, x))


def test_cosimnet_variants():
    x1, x2 = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    for metric in ("l2", "cos"):
        for k in (1, 3):
            out = create_model("cosimnet", metric=metric, side_outputs=k, width=4).forward_train(x1, x2)
            assert len(out["distances"]) == k and len(out["layer_scores"]) == k
            assert out["distances"][0].shape == (1, 1, 16, 16)
    same = create_model("cosimnet", width=4).eval()
    assert float(same(x1, x1).max()) < 1e-3  # identical dates: zero distance, zero change
    with pytest.raises(ValueError, match="metric"):
        create_model("cosimnet", metric="l1")


class _Scaled(torch.nn.Module):
    """An encoder whose every feature map is multiplied by its own factor (per layer)."""

    def __init__(self, encoder, factors):
        super().__init__()
        self.encoder, self.factors = encoder, factors

    def forward(self, x):
        return [k * f for k, f in zip(self.factors, self.encoder(x))]


@pytest.mark.parametrize("side_outputs", [1, 3])
def test_cosimnet_features_reach_the_metric_with_unit_length(side_outputs):
    """Paper 002: features live on the hypersphere (‖f‖ = 1) before the l2 or cosine metric, at every side
    output; so l2 distances lie in [0, 2] and scaling a layer's features leaves its distance map unchanged."""
    torch.manual_seed(0)
    x1, x2 = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    m = create_model("cosimnet", metric="l2", side_outputs=side_outputs, width=4).eval()
    seen = []
    inner = m._distance
    m._distance = lambda a, b: (seen.append((a, b)), inner(a, b))[1]
    with torch.no_grad():
        ref = m.forward_train(x1, x2)["distances"]
    assert len(seen) == side_outputs
    for a, b in seen:
        for f in (a, b):
            assert torch.allclose(f.norm(dim=1), torch.ones(()), atol=1e-5)  # every pixel, every layer
    assert all(float(d.min()) >= 0 and float(d.max()) <= 2 + 1e-5 for d in ref)
    m._distance = inner
    m.encoder = _Scaled(m.encoder, [0.01, 7.0, 300.0])
    with torch.no_grad():
        scaled = m.forward_train(x1, x2)["distances"]
    for d, s in zip(ref, scaled):
        assert torch.allclose(d, s, atol=1e-5)  # raw feature scale no longer reaches the l2 distance
    with pytest.raises(ValueError, match="margin"):
        create_model("cosimnet", margin=3.0)  # unreachable on the unit sphere
