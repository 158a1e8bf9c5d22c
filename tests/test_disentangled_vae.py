"""Paper 000's disentangled VAE: shapes of both architectures, the L_sim distances and activation loss,
gradients, the identical-pair invariance through the centre-patch adapter, the unsupervised 2-means mode,
and the `vae` task's phases end to end on tiny labelled patches."""

import numpy as np
import pytest
import torch
from engine_fixtures import make_pair_folder, tiny_recipe

from cdtool.data.pcd import PcdOptions, make_pcd
from cdtool.data.sources import collect_pairs
from cdtool.engine.loop import train
from cdtool.engine.recipe import load_recipe
from cdtool.inference.centre_patch import CentrePatch
from cdtool.losses import create_loss
from cdtool.losses.vae import act_loss, sparsity_loss
from cdtool.models import create_model, model_entry
from cdtool.models.disentangled_vae import DISTANCES, common_distance, two_means_1d

torch.set_num_threads(1)


def digits(**kw):
    torch.manual_seed(0)
    return create_model("disentangled_vae", **{"in_channels": 1, "patch": 28, "zc": 8, "zs": 6, "width": 8,
                                               "hidden": 16, **kw})


def test_registered_as_centre_model():
    e = model_entry("disentangled_vae")
    assert e.info["output"] == "centre" and e.info["paper"].startswith("Hamaguchi et al. 2019")
    m = digits()
    assert m.patch_only and m.patch_size == 28


def test_shapes_digits_and_scene():
    m = digits()
    a, b = torch.randn(5, 1, 28, 28), torch.randn(5, 1, 28, 28)
    assert m(a, b).shape == (5, 1, 1, 1)
    assert m.forward_train(a, b)["logits"][0].shape == (5, 1, 1, 1)
    out = m.forward_train(a, b, vae=True)
    assert out["mu_c"][0].shape == (5, 8) and out["logvar_s"][1].shape == (5, 6)
    assert out["recon"][0].shape == a.shape
    assert float(out["mu_c"][0].detach().abs().max()) < 1  # tanh-bounded common means
    s = create_model("disentangled_vae", in_channels=3, patch=112, arch="scene", zc=8, zs=9, width=4, levels=3,
                     hidden=16)
    x, y = torch.randn(2, 3, 112, 112), torch.randn(2, 3, 112, 112)
    o = s.forward_vae(x, y)
    assert o["recon"][1].shape == y.shape and o["mu_c"][0].shape == (2, 8) and o["mu_s"][0].shape == (2, 9)
    assert s(x, y).shape == (2, 1, 1, 1)
    # the paper's 5 levels on 112 patches: padded inside to 128, the reconstruction cropped back
    s5 = create_model("disentangled_vae", in_channels=3, patch=112, arch="scene", zc=8, zs=10, width=4, levels=5,
                      hidden=16)
    o5 = s5.forward_vae(x, y)
    assert o5["recon"][0].shape == x.shape and o5["mu_c"][0].shape == (2, 8) and o5["mu_s"][0].shape == (2, 10)
    assert s5(x, y).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError):
        create_model("disentangled_vae", patch=30)


@pytest.mark.parametrize("kind", DISTANCES)
def test_lsim_zero_for_identical_positive_otherwise(kind):
    g = torch.Generator().manual_seed(1)
    mu, lv = torch.randn(4, 8, generator=g).tanh(), torch.randn(4, 8, generator=g) * 0.3
    assert torch.allclose(common_distance(mu, lv, mu, lv, kind), torch.zeros(4), atol=1e-6)
    mu2, lv2 = torch.randn(4, 8, generator=g).tanh(), torch.randn(4, 8, generator=g) * 0.3
    assert bool((common_distance(mu, lv, mu2, lv2, kind) > 1e-4).all())
    loss = create_loss("vae_sim", distance=kind)
    out = {"mu_c": (mu, mu2), "logvar_c": (lv, lv2)}
    val, parts = loss(out)
    assert float(val) > 0 and parts["sim"] == pytest.approx(float(val))


def test_mahalanobis_weighs_by_the_posterior_spread():
    mu_a, mu_b = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    lv = torch.log(torch.tensor([[1.0, 0.25]]))  # sd 1 and 0.5: the second unit's gap counts 4x
    per_unit = [float(common_distance(mu_a[:, i:i + 1], lv[:, i:i + 1], mu_b[:, i:i + 1], lv[:, i:i + 1]))
                for i in range(2)]
    assert per_unit == pytest.approx([1.0, 4.0])


def test_sparsity_has_its_minus_sign_and_pulls_towards_s():
    losses = [float(sparsity_loss(torch.full((8, 4), m), s=0.5)) for m in (0.05, 0.5, 0.95)]
    assert losses[1] < losses[0] and losses[1] < losses[2] and min(losses) > 0
    inactive = {"mu_c": (torch.zeros(4, 3), torch.zeros(4, 3))}
    active = {"mu_c": (torch.full((4, 3), 0.5), torch.full((4, 3), -0.5))}
    assert float(act_loss(active)[0]) < float(act_loss(inactive)[0])


def test_gradients_flow_through_both_losses():
    m = digits()
    a, b = torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28)
    loss, parts = create_loss("disentangled_vae")(m.forward_train(a, b, vae=True))
    assert {"rec", "kl", "sim", "sparsity", "invmax"} <= set(parts)
    loss.backward()
    assert m.vae.features[0].weight.grad.abs().sum() > 0 and m.vae.dec[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.classifier.parameters())  # the detector is not part of eq. 3
    m.zero_grad()
    ce, _ = create_loss("bce")(m.forward_train(a, b), torch.tensor([0, 1, 0, 1, 1, 0.]).view(-1, 1, 1, 1), None)
    ce.backward()
    assert m.classifier[0].weight.grad.abs().sum() > 0 and m.vae.features[0].weight.grad.abs().sum() > 0
    _, parts = create_loss("disentangled_vae", distance="none")(m.forward_train(a, b, vae=True))
    assert "sim" not in parts


def test_loss_shares_are_each_weighted_term_over_the_total():
    m = digits()
    a, b = torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28)
    out = m.forward_train(a, b, vae=True)
    loss, p = create_loss("disentangled_vae", lambda_sim=10.0, lambda_act=2.0, beta=0.5)(out)
    terms = {"rec": p["rec"], "kl": 0.5 * p["kl"], "sim": 10.0 * p["sim"], "act": 2.0 * (p["sparsity"] + p["invmax"])}
    assert sum(terms.values()) == pytest.approx(float(loss), rel=1e-5)
    for k, v in terms.items():
        assert p[f"share_{k}"] == pytest.approx(v / float(loss), rel=1e-4)
    assert sum(p[f"share_{k}"] for k in terms) == pytest.approx(1.0)
    _, p = create_loss("disentangled_vae", distance="none")(out)  # "without L_sim": no sim share
    assert "share_sim" not in p and sum(v for k, v in p.items() if k.startswith("share_")) == pytest.approx(1.0)


@pytest.mark.parametrize("unsupervised", [False, True])
def test_identical_pair_scores_the_same_in_every_window(unsupervised):
    m = digits().eval()
    with torch.no_grad():
        m.classifier[-1].weight.normal_()  # a detector that is far from constant
        if unsupervised:
            m.unsupervised.fill_(1.0)
            d = m.distance(torch.randn(64, 1, 28, 28), torch.randn(64, 1, 28, 28))
            m.centroids.copy_(torch.stack([d.min() / 2, d.max()]))
    dense = CentrePatch(m, m.patch_size, m.cell)  # as `cdtool detect` slides it
    x = torch.randn(2, 1, 56, 70)
    with torch.no_grad():
        same = dense(x, x)
        other = dense(x, torch.randn(2, 1, 56, 70))
    assert same.shape == (2, 1, 56, 70)
    assert float(same.max() - same.min()) < 1e-5
    assert float(other.max() - other.min()) > 1e-3  # different pairs do differ from window to window
    assert float(same.max()) < 0.5  # never flagged at the default threshold (identical_negative)
    if unsupervised:
        assert float(same.max()) == 0.0


def test_unpinned_head_is_the_papers_plain_classifier():
    m = digits(pinned=False)
    assert m.bias is None and m.classifier[0].in_features == 16


def test_two_means_1d():
    d = torch.cat([torch.rand(200) * 0.1, 1 + torch.rand(50) * 0.1])
    lo, hi = two_means_1d(d).tolist()
    assert 0 < lo < 0.1 and 1 < hi < 1.1


@pytest.fixture(scope="module")
def chips(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_pcd")
    pairs = make_pair_folder(root / "pairs", n=8, size=64, seed=3)
    make_pcd(collect_pairs(pairs, require_mask=True), root / "chips",
             PcdOptions(patch=28, centre=4, stride=8, fractions=(0.6, 0.4, 0.0), seed=1))
    return root / "chips"


def vae_recipe(chips, phases) -> dict:
    return tiny_recipe(chips, **{
        "task": "vae",
        "models": {"model": {"name": "disentangled_vae",
                             "args": {"patch": 28, "zc": 4, "zs": 4, "width": 4, "hidden": 8}}},
        "losses": {"vae": {"name": "disentangled_vae", "args": {}}, "change": {"name": "bce", "args": {}}},
        "data": {"args": {"root": [str(chips)]},
                 "train": {"main": {"kind": "chips", "args": {"split": "train"}, "batch_size": 16}},
                 "val": {"kind": "chips", "args": {"split": "val"}}},
        "phases": phases, "threshold": 0.5, "monitor": "loss"})


def test_vae_task_represents_on_negatives_then_finetunes(chips, tmp_path):
    res = train(load_recipe(vae_recipe(chips, [
        {"name": "represent", "epochs": 1, "train": {"main": {"labels": [0]}}},
        {"name": "finetune", "epochs": 1, "sampler": "under", "groups": {"model.vae": 0.1}}])), tmp_path / "r",
        quiet=True)
    assert [r["phase"] for r in res.history] == ["represent", "finetune"]
    assert "train_sim" in res.history[0] and "train_bce0" in res.history[1]
    assert np.isfinite(res.history[-1]["train_loss"])
    from cdtool.inference.detector import load_detector

    det = load_detector(str(tmp_path / "r" / "last.safetensors"), 3)
    x = torch.randn(1, 3, 42, 56)
    y = det.model(x, x)
    assert y.shape == (1, 1, 42, 56) and float((y.max() - y.min()).detach()) < 1e-5 and float(y.max()) < 0.5


def test_vae_task_refuses_positives_in_represent(chips, tmp_path):
    from cdtool.errors import InputError

    with pytest.raises(InputError, match="negative pairs only"):
        train(load_recipe(vae_recipe(chips, [{"name": "represent", "epochs": 1}])), tmp_path / "r", quiet=True)


def test_vae_task_cluster_phase_sets_the_unsupervised_mode(chips, tmp_path):
    res = train(load_recipe(vae_recipe(chips, [
        {"name": "represent", "epochs": 1, "train": {"main": {"labels": [0]}}},
        {"name": "cluster", "epochs": 0, "train": {"main": {"split": "val"}}}])), tmp_path / "c", quiet=True)
    model = res.modules["model"]
    assert float(model.unsupervised) == 1.0
    lo, hi = model.centroids.tolist()
    assert 0 <= lo <= hi
