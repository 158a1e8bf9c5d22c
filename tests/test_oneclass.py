"""One-class detectors (issue 17): the adversarial dual autoencoder (paper 003), the two-stage RotNet
autoencoder (paper 004), the CAE baseline: shapes, gradients, the L_dual sign, calibration into [0, 1], pair
mode, and each family trained end to end through the engine into a detector `cdtool detect` can load."""

from pathlib import Path

import pytest
import torch

import cdtool.losses
import cdtool.models
import cdtool.tasks  # noqa: F401
from cdtool.errors import InputError
from cdtool.inference.centre_patch import as_dense
from cdtool.losses import create_loss
from cdtool.losses.oneclass import dual_term, l1
from cdtool.models import create_model

torch.set_num_threads(1)
SMALL = {"cae": {"width": 4, "nz": 8}, "dual_ae": {"width": 4, "nz": 8}, "rotnet_ae": {"width": 4}}
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "mnist_5k.csv.gz"


@pytest.mark.parametrize("name", ["cae", "dual_ae", "rotnet_ae"])
@pytest.mark.parametrize("inputs,channels,patch", [("image", 1, 28), ("pair", 3, 112)])
def test_shapes_range_and_constant_window(name, inputs, channels, patch):
    torch.manual_seed(0)
    m = create_model(name, in_channels=channels, inputs=inputs, patch=patch, **SMALL[name]).eval()
    assert m.patch_only and m.patch_size == patch
    x = torch.randn(3, channels, patch, patch)
    with torch.no_grad():
        y = m(x, x)
    assert y.shape == (3, 1, 1, 1)  # one score per window (CentrePatch paints it on the window's centre)
    assert 0 <= float(y.min()) <= float(y.max()) <= 1
    with torch.no_grad():
        dense = as_dense(m, "centre")(x[:1], x[:1])
    assert dense.shape == (1, 1, patch, patch) and 0 <= float(dense.min()) <= float(dense.max()) <= 1


def test_pair_mode_stacks_dates_and_slides_as_centre_patch():
    m = create_model("cae", in_channels=3, inputs="pair", patch=32, width=4, nz=8).eval()
    assert m.prep(torch.zeros(2, 3, 32, 32), torch.ones(2, 3, 32, 32)).shape == (2, 6, 32, 32)
    dense = as_dense(m, "centre")
    img = torch.full((1, 3, 60, 70), 0.3)
    with torch.no_grad():
        y = dense(img, img)
    assert y.shape == (1, 1, 60, 70) and float(y.max() - y.min()) < 1e-6  # identical uniform pair: constant map
    with pytest.raises(ValueError, match="inputs"):
        create_model("cae", inputs="stack")


def test_dual_loss_sign_and_gradients():
    torch.manual_seed(0)
    m = create_model("dual_ae", patch=32, width=4, nz=8)
    x = torch.rand(4, 1, 32, 32)
    gx = m.generator(x).detach()
    # L_dual = ||x - D'(x)||_1 - k ||G(x) - D'(G(x))||_1: zero for an identity D', and D' is rewarded for
    # failing on generated inputs (the second term lowers it)
    assert float(dual_term(x, gx, torch.nn.Identity(), 0.4)) == 0.0
    zero = lambda t: torch.zeros_like(t)
    assert torch.isclose(dual_term(x, gx, zero, 0.4), x.abs().mean() - 0.4 * gx.abs().mean())
    full = create_loss("adae")
    no_dual = create_loss("adae", w_dual=0.0)
    lg, _ = full.generator(m, x)
    lg0, _ = no_dual.generator(m, x)
    g = m.generator(x)
    # G's side of the min-max: + w_d ||G(x) - D'(G(x))||_1 (it wants its outputs reconstructed by D')
    assert torch.isclose(lg - lg0, l1(g, m.auxiliary(g)), atol=1e-5)
    for step, part in ((full.discriminator, m.discriminator), (full.auxiliary, m.auxiliary), (full.generator, m.generator)):
        m.zero_grad()
        loss, _ = step(m, x)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in part.parameters())
    m.zero_grad()
    full.discriminator(m, x)[0].backward()
    assert all(p.grad is None for p in m.generator.parameters())  # D's step leaves G alone


def test_rotnet_losses_and_frozen_encoder_gradients():
    torch.manual_seed(0)
    m = create_model("rotnet_ae", patch=32, width=4)
    x = torch.rand(2, 1, 32, 32)
    ce, acc = create_loss("rotation_ce")(m, x)
    ce.backward()
    assert m.encoder.stem[0].weight.grad is not None and 0 <= acc <= 1
    m.zero_grad()
    with torch.no_grad():
        z = m.encoder(x)
    loss = create_loss("recon_mse")(x, m.dec_mse(z)) + create_loss("recon_ssim")(x, m.dec_ssim(z))
    loss.backward()
    assert m.encoder.stem[0].weight.grad is None and m.dec_ssim[0].weight.grad is not None
    assert -1 <= float(create_loss("recon_ssim")(x, x)) <= -0.99  # -SSIM of an image with itself is -1


def test_calibration_maps_training_negatives_into_unit_interval():
    torch.manual_seed(0)
    m = create_model("cae", patch=28, width=4, nz=8).eval()
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        raw = m.raw_score(m.prep(x))
        m.calibration.fit(raw)
        y = m(x, x)[:, 0, 0, 0]
        far = m(x * 40, x)[:, 0, 0, 0]
    assert 0 <= float(y.min()) and float(y.max()) <= 1 and float(far.min()) > 0.99
    assert abs(float((y < 0.5).float().mean()) - 0.5) < 0.1  # the median negative sits near 0.5
    order = raw.argsort()
    assert (y[order].diff() >= 0).all()  # monotone in the raw score


def _recipe(task, model, losses, phases, **model_args):
    return {"name": task, "task": task, "models": {"model": {"name": model, "args": {"patch": 28, **model_args}}},
            "losses": losses,
            "data": {"args": {"source": str(MNIST), "normal": [1]},
                     "train": {"normal": {"kind": "images", "args": {"split": "train", "labels": [0], "subset": 64},
                                          "batch_size": 32}},
                     "val": {"kind": "images", "args": {"split": "test", "subset": 120}}},
            "normalization": {"mode": "fixed", "mean": [0.0], "std": [255.0]}, "threshold": 0.99,
            "monitor": "auroc", "phases": phases, "optim": {"lr": 0.002}}


RECIPES = {
    "cae": _recipe("cae", "cae", {"rec": {"name": "recon_mse"}},
                   [{"name": "train", "epochs": 1}, {"name": "calibrate", "epochs": 0}], width=4, nz=8),
    "dual_ae": _recipe("dual_ae", "dual_ae", {"adae": {"name": "adae"}},
                       [{"name": "centre", "epochs": 0}, {"name": "train", "epochs": 1},
                        {"name": "calibrate", "epochs": 0}], width=4, nz=8),
    "rotnet_ae": _recipe("rotnet_ae", "rotnet_ae", {"rotation": {"name": "rotation_ce"}, "mse": {"name": "recon_mse"},
                                                    "ssim": {"name": "recon_ssim"}},
                         [{"name": "rotnet", "epochs": 1},
                          {"name": "decoders", "epochs": 1, "freeze": ["model.encoder"]},
                          {"name": "calibrate", "epochs": 0}], width=4),
}


@pytest.mark.parametrize("family", list(RECIPES))
def test_family_trains_calibrates_and_exports_a_detector(family, tmp_path):
    if not MNIST.is_file():
        pytest.skip("needs ../shared/data/mnist")
    from cdtool.engine.loop import train
    from cdtool.engine.recipe import load_recipe
    from cdtool.inference.detector import load_detector

    res = train(load_recipe(RECIPES[family]), tmp_path / "run", quiet=True)
    assert 0 <= res.history[-1]["val_auroc"] <= 1
    det = load_detector(str(tmp_path / "run" / "best.safetensors"))
    model = det.model
    inner = getattr(model, "model", model)  # the detector may come wrapped as a centre-patch slider
    assert bool(inner.calibration.fitted)
    if family == "dual_ae":
        assert bool(inner.centre_set) and float(inner.centre.abs().sum()) > 0
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        y = inner(x, x)
    assert 0 <= float(y.min()) <= float(y.max()) <= 1


def test_recipe_refusals():
    from cdtool.engine.recipe import load_recipe

    r = RECIPES["rotnet_ae"]
    bad = {**r, "phases": [{"name": "rotnet", "epochs": 1}, {"name": "decoders", "epochs": 1},
                           {"name": "calibrate", "epochs": 0}]}
    with pytest.raises(InputError, match="freeze"):
        load_recipe(bad)
    data = {**r["data"], "train": {"normal": {"kind": "images", "args": {"split": "train"}}}}
    with pytest.raises(InputError, match="labels"):
        load_recipe({**r, "data": data})
