"""The engine's contracts for the shapes of papers 000, 001, 003 and 004, shown with a small stand-in task:
two data sources per step (a labelled and an unlabelled one, their own batch sizes, the shorter cycled),
a pass over data before a phase (also as a zero-epoch phase), frozen modules, a hook after each step (a
teacher's moving average), per-group learning rates, and exact resume through all of it."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cdtool.engine.loop import train
from cdtool.engine.recipe import load_recipe
from cdtool.engine.task import TASKS, Task
from cdtool.errors import InputError
from cdtool.io.checkpoint import load_checkpoint
from cdtool.models.base import ChangeModel
from cdtool.models.registry import MODELS
from engine_fixtures import make_pair_folder


class Probe(ChangeModel):
    """conv -> BatchNorm -> 1x1 head on the stacked dates; a `centre` buffer a before-phase pass fills."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(2 * in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1)
        self.register_buffer("centre", torch.zeros(4))

    def features(self, before, after):
        return F.relu(self.bn(self.conv(torch.cat([before, after], 1))))

    def forward(self, before, after):
        return torch.sigmoid(self.head(self.features(before, after)))


class ContractTask(Task):
    """Stand-in: BCE on labelled pairs + pull of unlabelled features towards a centre found before training,
    and a teacher that follows the model by a moving average after every step."""

    name = "contract_test"
    phases = ("centre", "warm", "train")
    models = {"model": "the detector", "teacher": "its moving average"}
    sources = {"labelled": "pairs with masks", "unlabelled": "pairs whose masks are not used"}
    log: dict = {}

    def build(self):
        self.log.update(before=[], sizes=[], after_steps=0, lrs={})
        self.nets["teacher"].load_state_dict(self.nets["model"].state_dict())

    def before_phase(self, phase, ctx):
        self.log["before"].append(phase)
        if phase == "centre":
            feats = [self.nets["model"].features(*self.pair(b)).mean((0, 2, 3)) for b in ctx.batches("unlabelled")]
            self.nets["model"].centre.copy_(torch.stack(feats).mean(0).detach())

    def optimizers(self, wrapped, phase, lr, frozen, factors):
        opts = super().optimizers(wrapped, phase, lr, frozen, factors)
        self.log["lrs"][phase] = sorted(g["lr"] for g in opts["model"].param_groups)
        self.log["params"] = {id(p) for g in opts["model"].param_groups for p in g["params"]}
        return opts

    def training_step(self, wrapped, batches, phase):
        lab, unl = batches["labelled"], batches["unlabelled"]
        self.log["sizes"].append((len(lab["image"]), len(unl["image"])))
        model = wrapped["model"]
        bce = F.binary_cross_entropy(model(*self.pair(lab)), lab["mask"])
        pull = (self.nets["model"].features(*self.pair(unl)).mean((0, 2, 3)) - self.nets["model"].centre).pow(2).mean()
        with torch.no_grad():
            agree = (model(*self.pair(unl)) - wrapped["teacher"](*self.pair(unl))).abs().mean()
        yield "model", bce + 0.1 * pull, {"bce": float(bce), "agree": float(agree)}

    def after_step(self, phase):
        self.log["after_steps"] += 1
        with torch.no_grad():
            for t, s in zip(self.nets["teacher"].parameters(), self.nets["model"].parameters()):
                t.mul_(0.9).add_(s, alpha=0.1)


@pytest.fixture(autouse=True)
def registered():
    with MODELS.temporary("probe_test", Probe), TASKS.temporary("contract_test", ContractTask):
        yield


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pair_folder(tmp_path_factory.mktemp("d") / "pairs", n=5)


def recipe(pairs, **over) -> dict:
    r = {"name": "contract", "task": "contract_test",
         "models": {"model": {"name": "probe_test"}, "teacher": {"name": "probe_test"}},
         "data": {"args": {"roots": [str(pairs)]},
                  "train": {"labelled": {"kind": "folder", "args": {"pairs": ["pairs/p0", "pairs/p1"], "crop": 16,
                                                                     "samples": 8}, "batch_size": 4,
                                         "augment": {"hflip": 0.5, "rot90": True}},
                            "unlabelled": {"kind": "folder", "args": {"pairs": ["pairs/p2", "pairs/p3"], "crop": 16,
                                                                       "samples": 12}, "batch_size": 2}},
                  "val": {"kind": "folder", "args": {"pairs": ["pairs/p4"]}}},
         "optim": {"lr": 0.01, "groups": {"model.head": 0.1}},
         "phases": [{"name": "centre", "epochs": 0}, {"name": "warm", "epochs": 1, "freeze": ["teacher"]},
                    {"name": "train", "epochs": 2, "freeze": ["teacher", "model.conv", "model.bn"],
                     "groups": {"model.head": 0.5}}],
         "seed": 1}
    r.update(over)
    return r


def test_two_sources_per_step_the_shorter_cycled(pairs, tmp_path):
    res = train(load_recipe(recipe(pairs)), tmp_path / "run", quiet=True)
    log = ContractTask.log
    # the unlabelled source (12 samples / 2) sets 6 steps an epoch; the labelled one (8 / 4) is drawn 3 times
    assert log["sizes"] == [(4, 2)] * 18 and log["after_steps"] == 18
    assert [r["phase"] for r in res.history] == ["warm", "train", "train"]
    assert all("train_agree" in r for r in res.history)


def test_before_phase_pass_frozen_modules_and_group_rates(pairs, tmp_path):
    train(load_recipe(recipe(pairs, phases=[{"name": "centre", "epochs": 0}, {"name": "warm", "epochs": 1,
                                                                             "freeze": ["teacher"]}])),
          tmp_path / "warm", quiet=True)
    warm, _ = load_checkpoint(tmp_path / "warm" / "last.safetensors")
    res = train(load_recipe(recipe(pairs)), tmp_path / "run", quiet=True)
    log = ContractTask.log
    assert log["before"] == ["centre", "warm", "train"]  # once per phase, the zero-epoch one included
    last, meta = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert float(last["model"]["centre"].abs().sum()) > 0  # the zero-epoch pass's result travels in the checkpoint
    # phase 'train' froze conv and BatchNorm: weights and running statistics as the warm phase left them
    for k in ("conv.weight", "bn.weight", "bn.running_mean", "bn.running_var"):
        assert torch.equal(last["model"][k], warm["model"][k]), k
    assert not torch.equal(last["model"]["head.weight"], warm["model"]["head.weight"])
    frozen = {id(p) for p in [*res.modules["model"].conv.parameters(), *res.modules["model"].bn.parameters()]}
    assert not frozen & log["params"]  # and the optimiser never saw them
    # the teacher is frozen (no gradients) yet follows the model through the after-step hook
    assert not torch.equal(last["teacher"]["head.weight"], warm["teacher"]["head.weight"])
    # per-group learning rates: optim.groups in 'warm', the phase's own groups in 'train'
    assert log["lrs"]["warm"] == pytest.approx([0.001, 0.01]) and log["lrs"]["train"] == pytest.approx([0.005])
    assert meta.model.name == "probe_test" and set(last) == {"model", "teacher"}


def test_resume_through_sources_hooks_and_freezing_is_exact(pairs, tmp_path):
    r = load_recipe(recipe(pairs))
    train(r, tmp_path / "a", quiet=True)
    train(r, tmp_path / "b", quiet=True, stop_after=2)
    train(r, tmp_path / "b", quiet=True, resume=True)
    assert ContractTask.log["before"] == []  # resumed inside 'train': its pass is not repeated
    wa, _ = load_checkpoint(tmp_path / "a" / "last.safetensors")
    wb, _ = load_checkpoint(tmp_path / "b" / "last.safetensors")
    for mod in ("model", "teacher"):
        for k, v in wa[mod].items():
            assert torch.equal(v, wb[mod][k]), (mod, k)


def test_contract_refusals(pairs, tmp_path):
    bad = recipe(pairs)
    del bad["data"]["train"]["unlabelled"]
    with pytest.raises(InputError, match=r"takes data.train \['labelled', 'unlabelled'\].*missing \['unlabelled'\]"):
        load_recipe(bad)
    with pytest.raises(InputError, match=r"takes models \['model', 'teacher'\]"):
        load_recipe(recipe(pairs, models={"model": {"name": "probe_test"}}))
    r = load_recipe(recipe(pairs, phases=[{"name": "warm", "epochs": 1, "freeze": ["model.nothing"]}]))
    with pytest.raises(InputError, match="freeze: 'model.nothing' is no module"):
        train(r, tmp_path / "run", quiet=True)


class TinyAE(ChangeModel):
    """Single-image autoencoder; its detection score is the calibrated reconstruction error."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        from cdtool.models.calibration import ScoreCalibration

        self.enc = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, 2, 1))
        self.dec = nn.Sequential(nn.ConvTranspose2d(4, 8, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, in_channels, 4, 2, 1))
        self.calibration = ScoreCalibration(65)

    def error(self, x):
        return (self.dec(self.enc(x)) - x).pow(2).mean((1, 2, 3))

    def forward(self, before, after):
        return self.calibration(self.error(before)).view(-1, 1, 1, 1).expand(-1, 1, *before.shape[-2:])


class OneClassTask(Task):
    """Stand-in one-class family: train on normal single images only, calibrate on them before the last
    (zero-epoch) phase, validate by the exact AUROC of the reconstruction error on labelled test images."""

    name = "oneclass_test"
    phases = ("train", "calibrate")
    sources = {"normal": "normal images only"}
    seen: set = set()

    def training_step(self, wrapped, batches, phase):
        batch = batches["normal"]
        self.seen.update(batch["label"].tolist())
        loss = self.nets["model"].error(self.inputs(batch)[:, 0]).mean()
        yield "model", loss, {}

    def before_phase(self, phase, ctx):
        if phase == "calibrate":
            with torch.no_grad():
                errors = torch.cat([self.nets["model"].error(self.inputs(b)[:, 0]) for b in ctx.batches("normal")])
            self.nets["model"].calibration.fit(errors)

    def validate(self, loader, device, amp):
        from cdtool.metrics import BinaryMetrics

        acc = BinaryMetrics(exact=True)
        with torch.no_grad():
            for b in loader:
                e = self.nets["model"].error(self.inputs(b)[:, 0]).numpy()
                acc.update(e > float("inf"), b["label"].numpy() > 0, scores=e)
        return acc


def test_one_class_training_on_single_images(tmp_path):
    from cdtool.inference.detector import load_detector

    mnist = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not mnist.is_dir():
        pytest.skip("needs ../shared/data/mnist")
    r = {"name": "oneclass", "task": "oneclass_test", "models": {"model": {"name": "tinyae_test"}},
         "data": {"args": {"source": str(mnist), "normal": [1]},
                  "train": {"normal": {"kind": "images", "args": {"split": "train", "labels": [0]}, "batch_size": 32}},
                  "val": {"kind": "images", "args": {"split": "test", "subset": 300}}},
         "normalization": {"mode": "fixed", "mean": [33.0], "std": [78.0]}, "threshold": 0.99, "monitor": "auroc",
         "phases": [{"name": "train", "epochs": 2}, {"name": "calibrate", "epochs": 0}], "optim": {"lr": 0.01}}
    with MODELS.temporary("tinyae_test", TinyAE), TASKS.temporary("oneclass_test", OneClassTask):
        res = train(load_recipe(r), tmp_path / "run", quiet=True)
        det = load_detector(str(tmp_path / "run" / "best.safetensors"))
    assert OneClassTask.seen == {0}  # the labels filter kept normal images only
    assert res.history[-1]["val_auroc"] > 0.8  # ones are easy to tell from other digits by reconstruction
    assert bool(det.model.calibration.fitted) and res.best_epoch == 2  # the final zero-epoch pass is saved
    x = torch.zeros(2, 1, 28, 28)
    assert 0 <= float(det.model(x, x).min()) <= float(det.model(x, x).max()) <= 1
