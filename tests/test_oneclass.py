"""One-class detectors (issue 17): the adversarial dual autoencoder (paper 003), the two-stage RotNet
autoencoder (paper 004), the CAE baseline: shapes, gradients, the L_dual sign, calibration into [0, 1], pair
mode, and each family trained end to end through the engine into a detector `cdtool detect` can load."""

from pathlib import Path

import numpy as np
import pytest
import torch

import cdtool.losses
import cdtool.models
import cdtool.tasks  # noqa: F401
from cdtool.errors import InputError
from cdtool.inference.centre_patch import as_dense
from cdtool.losses import create_loss
from cdtool.losses.oneclass import dual_term, l1_norm, l2_norm
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
    # each term the 1-norm of a sample (summed over its pixels), averaged over the batch
    norm1 = lambda t: t.abs().sum((1, 2, 3)).mean()
    assert torch.isclose(dual_term(x, gx, zero, 0.4), norm1(x) - 0.4 * norm1(gx))
    full = create_loss("adae")
    no_dual = create_loss("adae", w_dual=0.0)
    lg, _ = full.generator(m, x)
    lg0, _ = no_dual.generator(m, x)
    g = m.generator(x)
    # G's side of the min-max: + w_d ||G(x) - D'(G(x))||_1 (it wants its outputs reconstructed by D')
    assert torch.isclose(lg - lg0, l1_norm(g, m.auxiliary(g)), atol=1e-3)
    for step, part in ((full.discriminator, m.discriminator), (full.auxiliary, m.auxiliary), (full.generator, m.generator)):
        m.zero_grad()
        loss, _ = step(m, x)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in part.parameters())
    m.zero_grad()
    full.discriminator(m, x)[0].backward()
    assert all(p.grad is None for p in m.generator.parameters())  # D's step leaves G alone


def test_dual_loss_g_side_reading():
    """g_dual 'against' (eq. 1 read literally: G minimises −w_d·k·‖G(x) − D′(G(x))‖₁) flips the sign and scale
    of G's L_dual term and of its gradient on G; D′'s loss does not depend on the reading."""
    torch.manual_seed(0)
    m = create_model("dual_ae", patch=32, width=4, nz=8)
    x = torch.rand(4, 1, 32, 32)
    help_, against = create_loss("adae", w_dual=2.0), create_loss("adae", w_dual=2.0, g_dual="against")
    lg0, _ = create_loss("adae", w_dual=0.0).generator(m, x)
    g = m.generator(x)
    direc = l1_norm(g, m.auxiliary(g))
    assert torch.isclose(help_.generator(m, x)[0] - lg0, 2.0 * direc, atol=1e-3)
    assert torch.isclose(against.generator(m, x)[0] - lg0, -2.0 * 0.4 * direc, atol=1e-3)
    assert torch.isclose(help_.auxiliary(m, x)[0], against.auxiliary(m, x)[0])

    def dual_grad(loss):  # gradient on G of G's loss less the same loss without L_dual
        grads = []
        for fn in (loss.generator, create_loss("adae", w_dual=0.0).generator):
            m.zero_grad()
            fn(m, x)[0].backward()
            grads.append(torch.cat([p.grad.flatten() for p in m.generator.parameters()]))
        return grads[0] - grads[1]

    gh, ga = dual_grad(help_), dual_grad(against)
    assert gh.abs().max() > 1e-3
    assert torch.allclose(ga, -0.4 * gh, atol=1e-4 * float(gh.abs().max()) + 1e-6)
    with pytest.raises(ValueError, match="g_dual"):
        create_loss("adae", g_dual="with")


class _FixedAE:
    """G (or D′) that encodes any batch to `z` and decodes to a constant image of x's shape."""

    def __init__(self, shape, value, z):
        self.shape, self.value, self.z = shape, value, z

    def encode(self, x):
        return self.z[: len(x)]

    def decode(self, z):
        return torch.full((len(z), *self.shape), self.value)

    def __call__(self, x):
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("side", [16, 32])
def test_adae_reconstruction_terms_are_norms_that_grow_with_the_image(side):
    """Paper 003: L_irec = E‖x − G(x)‖₁, L_dual's terms alike, L_zrec = E‖Ge(x) − Ge′(G(x))‖₂ (eqs. 3, 5-8):
    norms of each sample, so a fixed per-pixel error costs 4× as much on an image twice as wide, while
    L_adv (a per-sample BCE) does not grow; the batch size does not change any term (a mean over samples)."""
    from types import SimpleNamespace

    nz = 16
    z = torch.zeros(5, nz)
    for batch in (2, 5):
        x = torch.zeros(batch, 1, side, side)
        model = SimpleNamespace(generator=_FixedAE((1, side, side), 0.25, z),
                                auxiliary=_FixedAE((1, side, side), 0.0, z + 3.0 / nz ** 0.5),
                                centre=torch.zeros(nz), discriminate=lambda t: torch.zeros(len(t)))
        loss = create_loss("adae", w_adv=5.0, w_zrec=1.0, w_c=0.05, w_dual=1.0, k=0.4)
        _, parts = loss.generator(model, x)
        pixels = side * side
        assert parts["irec"] == pytest.approx(0.25 * pixels)       # ‖x − G(x)‖₁, not the mean 0.25
        assert parts["g_direc"] == pytest.approx(0.25 * pixels)    # ‖G(x) − D′(G(x))‖₁, D′ outputs 0
        assert parts["zrec"] == pytest.approx(3.0)                 # ‖·‖₂ = 3, not its square or a mean
        assert parts["adv"] == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(0.0))))
        _, aux_parts = loss.auxiliary(model, x)
        assert aux_parts["dual"] == pytest.approx(0.0 - 0.4 * 0.25 * pixels)  # D′ reconstructs x = 0 exactly
        assert aux_parts["aux_zrec"] == pytest.approx(3.0)         # D′'s side of eq. 5: the same unsquared norm
    a, b = torch.rand(3, 2, side, side), torch.rand(3, 2, side, side)
    assert float(l1_norm(a, b)) == pytest.approx(float((a - b).abs().mean()) * 2 * side * side, rel=1e-5)
    assert float(l2_norm(a[:, :, 0, 0], b[:, :, 0, 0])) == pytest.approx(
        float((a - b)[:, :, 0, 0].norm(dim=1).mean()), rel=1e-5)


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
    d = RECIPES["dual_ae"]
    assert load_recipe({**d, "losses": {"adae": {"name": "adae", "args": {"g_dual": "against"}}}})
    with pytest.raises(InputError, match="g_dual must be one of help, against"):
        load_recipe({**d, "losses": {"adae": {"name": "adae", "args": {"g_dual": "with"}}}})


def _pair_folder(root: Path, mask_value: int) -> Path:
    """A 84×84 RGB pair whose right third changes (bright squares appear), as A/ B/ label/ PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    before = (rng.normal(100, 10, (84, 84, 3))).clip(0, 255).astype(np.uint8)
    after = (before.astype(int) + rng.normal(0, 3, before.shape)).clip(0, 255).astype(np.uint8)
    after[:, 56:] = 250
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(before).save(root / "A" / "p.png")
    Image.fromarray(after).save(root / "B" / "p.png")
    Image.fromarray(np.full((84, 84), mask_value, np.uint8)).save(root / "label" / "p.png")
    return root


def test_pair_windows_screen_without_masks_and_self_training(tmp_path):
    """pair_windows labels a pair's windows by a label-free screen only (the mask file does not matter), the
    unchanged-looking ones are those away from the change, and a CAE trained on them, run on the same pair,
    ranks the changed part higher."""
    from cdtool.data.registry import build_dataset
    from cdtool.engine.evaluate import evaluate_model
    from cdtool.engine.loop import train
    from cdtool.engine.recipe import load_recipe

    a = build_dataset("pair_windows", roots=[str(_pair_folder(tmp_path / "a" / "set", 0))], patch=28, stride=7)
    b = build_dataset("pair_windows", roots=[str(_pair_folder(tmp_path / "b" / "set", 255))], patch=28, stride=7)
    assert a.labels == b.labels and len(a) == 11 * 11 and a.channels == 3  # windows of the 98×98 padded pair
    assert "mask" not in a[0]
    kept = [c0 for (_, _, c0), lab in zip(a.windows, a.labels) if lab == 0]
    assert max(kept) + 28 <= 56 + 7  # every kept window lies wholly on the unchanged side (7 px of padding)
    normal = build_dataset("pair_windows", roots=[str(tmp_path / "a" / "set")], patch=28, stride=7, labels=[0])
    assert len(normal) == round(0.5 * 121) and set(normal.labels) == {0}
    with pytest.raises(InputError, match="keep"):
        build_dataset("pair_windows", roots=[str(tmp_path / "a" / "set")], keep=0)

    recipe = {"name": "self", "task": "cae",
              "models": {"model": {"name": "cae", "args": {"inputs": "pair", "patch": 28, "width": 4, "nz": 8}}},
              "losses": {"rec": {"name": "recon_mse"}},
              "data": {"args": {"roots": [str(tmp_path / "a" / "set")], "patch": 28, "stride": 7},
                       "train": {"normal": {"kind": "pair_windows", "args": {"labels": [0]}, "batch_size": 16}}},
              "normalization": {"mode": "per-image"}, "threshold": 0.99, "monitor": "auroc",
              "phases": [{"name": "train", "epochs": 8}, {"name": "calibrate", "epochs": 0}],
              "optim": {"lr": 0.005}, "seed": 0}
    train(load_recipe(recipe), tmp_path / "run", quiet=True)
    _pair_folder(tmp_path / "truth" / "set", 0)
    from PIL import Image

    truth = np.zeros((84, 84), np.uint8)
    truth[:, 56:] = 255
    Image.fromarray(truth).save(tmp_path / "truth" / "set" / "label" / "p.png")
    scores, rows = evaluate_model(str(tmp_path / "run" / "last.safetensors"), [str(tmp_path / "truth" / "set")],
                                  pairs=["set/p"])
    assert scores["auroc"] > 0.8
