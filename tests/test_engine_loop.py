"""Training end to end on tiny synthetic pairs: run folder, reproducibility, resume, init weights."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cdtool.io.checkpoint import load_checkpoint
from cdtool.io.checkpoint_meta import FORMAT_VERSION
from cdtool.engine.loop import train
from cdtool.engine.recipe import load_recipe
from cdtool.errors import InputError
from cdtool.inference.detector import load_detector
from engine_fixtures import make_pair_folder, tiny_recipe


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pair_folder(tmp_path_factory.mktemp("d") / "pairs")


def test_run_folder_contents_and_checkpoint(pairs, tmp_path):
    res = train(load_recipe(tiny_recipe(pairs)), tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    for f in ("recipe.yaml", "metrics.csv", "metrics.json", "curves.png", "best.safetensors", "last.safetensors",
              "last.state.pt"):
        assert (run / f).is_file(), f
    hist = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2] and "val_f1" in hist[0] and "train_contrastive2" in hist[0]
    states, meta = load_checkpoint(run / "best.safetensors")
    assert meta.model.model_dump() == {"name": "cosimnet", "args": {"width": 4, "embed": 8, "side_outputs": 3, "in_channels": 3}}
    assert meta.normalization == {"mode": "per-image"} and 0 <= meta.threshold <= 1
    assert meta.val_pairs == ["pairs/p3"] and "pairs/p3" not in meta.train_pairs
    assert meta.recipe["losses"]["change"]["name"] == "contrastive" and meta.epoch == res.best_epoch
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:  # the version is in the file itself
        assert json.loads(f.metadata()["cdtool"])["format_version"] == FORMAT_VERSION == 1
    det = load_detector(str(run / "best.safetensors"))
    assert det.threshold == meta.threshold
    with pytest.raises(InputError, match="--resume"):
        train(load_recipe(tiny_recipe(pairs)), run, quiet=True)
    # evaluation without --pairs scores only what the model neither trained nor validated on
    from cdtool.engine.evaluate import evaluate_model, seen_pairs

    seen = seen_pairs(str(run / "best.safetensors"), [str(pairs)])
    assert set(seen) == set(meta.train_pairs) | {"pairs/p3"}
    with pytest.raises(InputError, match="every pair"):  # this tiny set was all used in training
        evaluate_model(str(run / "best.safetensors"), [str(pairs)])
    _, rows = evaluate_model(str(run / "best.safetensors"), [str(pairs)], pairs=["pairs/p3"])
    assert [r["name"] for r in rows] == ["pairs/p3"]
    assert det.card.band_count == 3 and det.card.recipe == "tiny" and det.card.usable_gsd_m is None


def test_seeded_runs_repeat_and_resume_continues_exactly(pairs, tmp_path):
    recipe = load_recipe(tiny_recipe(pairs, **{"schedule.epochs": 3}))
    train(recipe, tmp_path / "a", quiet=True)
    train(recipe, tmp_path / "b", quiet=True, stop_after=1)  # "interrupted" after epoch 1
    train(recipe, tmp_path / "b", quiet=True, resume=True)
    wa, ma = load_checkpoint(tmp_path / "a" / "last.safetensors")
    wb, mb = load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert ma.epoch == mb.epoch == 3
    for k, v in wa["model"].items():
        assert torch.equal(v, wb["model"][k]), k
    ha = json.loads((tmp_path / "a" / "metrics.json").read_text())
    hb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    with pytest.raises(InputError, match="already trained"):
        train(recipe, tmp_path / "a", quiet=True, resume=True)


def test_dense_task_and_init_from_local_weights(pairs, tmp_path):
    from cdtool.models import create_model

    donor = create_model("fc_siam_diff", width=4)
    torch.nn.init.constant_(donor.enc[0][0].weight, 0.125)
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "backbone.safetensors"))
    r = tiny_recipe(pairs, **{"task": "dense", "models.model": {"name": "fc_siam_diff", "args": {"width": 4},
                                                               "init": str(tmp_path / "backbone.safetensors")},
                              "losses.change": {"name": "bce", "args": {"pos_weight": 2.0}}, "schedule.epochs": 1,
                              "optim.lr": 1e-9, "threshold": 0.5, "data.train.pairs.args.crop": 32})
    train(load_recipe(r), tmp_path / "run", quiet=True)
    states, meta = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert torch.allclose(states["model"]["enc.0.0.weight"], torch.full_like(states["model"]["enc.0.0.weight"], 0.125),
                          atol=1e-6)
    assert meta.threshold == 0.5


def test_crop_must_fit_the_model(pairs, tmp_path):
    r = tiny_recipe(pairs, **{"task": "dense", "models.model": {"name": "fc_siam_conc", "args": {"width": 4}},
                              "losses.change": {"name": "bce", "args": {}}})
    with pytest.raises(InputError, match="data.train.pairs.args.crop: 24 is not a multiple of 16"):
        train(load_recipe(r), tmp_path / "run", quiet=True)


def test_loss_that_needs_outputs_the_model_lacks(pairs, tmp_path):
    r = tiny_recipe(pairs, **{"task": "dense", "models.model": {"name": "fc_siam_conc", "args": {"width": 4}},
                              "losses.change": {"name": "contrastive", "args": {}}, "data.train.pairs.args.crop": 32})
    with pytest.raises(InputError, match="needs model outputs"):
        train(load_recipe(r), tmp_path / "run", quiet=True)


def test_degenerate_validation_is_named():
    import numpy as np

    from cdtool.engine.run_files import degenerate_validation

    hist = lambda *idx: np.bincount(np.array(idx, int), minlength=10).astype(float)  # noqa: E731
    assert degenerate_validation(hist(), hist(1, 2, 8), 0.5)[0].startswith("the validation data holds no changed")
    assert "marks 100%" in degenerate_validation(hist(9, 9), hist(7, 8), 0.5)[0]
    assert "marks no validation pixel" in degenerate_validation(hist(1, 2), hist(1, 2), 0.5)[0]
    assert degenerate_validation(hist(8, 9), hist(1, 2, 3), 0.5) == []


def test_resume_refuses_a_torn_or_foreign_state(pairs, tmp_path):
    """A crash between the two saves, or files swapped in from another epoch, is refused in one line."""
    run = tmp_path / "run"
    train(load_recipe(tiny_recipe(pairs, **{"schedule.epochs": 3})), run, quiet=True, stop_after=1)
    old_state = (run / "last.state.pt").read_bytes()
    train(load_recipe(tiny_recipe(pairs, **{"schedule.epochs": 3})), run, resume=True, quiet=True, stop_after=1)
    (run / "last.state.pt").write_bytes(old_state)  # the weights of epoch 2 with the state of epoch 1
    with pytest.raises(InputError, match="torn"):
        train(load_recipe(tiny_recipe(pairs, **{"schedule.epochs": 3})), run, resume=True, quiet=True)
    (run / "last.json").unlink()
    with pytest.raises(InputError, match="did not finish"):
        train(load_recipe(tiny_recipe(pairs, **{"schedule.epochs": 3})), run, resume=True, quiet=True)


def test_a_diverging_loss_is_a_failure_not_bad_input(pairs, tmp_path):
    from cdtool.errors import CdtoolError

    recipe = load_recipe(tiny_recipe(pairs, **{"losses.change.args": {"margin": float("nan")}}))
    with pytest.raises(CdtoolError, match="loss became nan") as info:
        train(recipe, tmp_path / "run", quiet=True)
    assert info.value.exit_code == 1  # a failure (1), not bad input (2)


def test_a_second_run_into_the_same_folder_is_refused(pairs, tmp_path):
    import os

    run = tmp_path / "run"
    run.mkdir()
    (run / ".cdtool.lock").write_text(f"{os.getppid()}\n")  # a live process holds the folder
    with pytest.raises(InputError, match="another cdtool run"):
        train(load_recipe(tiny_recipe(pairs)), run, quiet=True)
    (run / ".cdtool.lock").write_text("999999999\n")  # left by a killed run: taken over
    train(load_recipe(tiny_recipe(pairs, **{"schedule.epochs": 1})), run, quiet=True)
    assert not (run / ".cdtool.lock").exists()


def test_a_crash_between_the_two_saves_resumes_from_the_recorded_pair(pairs, tmp_path):
    """Killed after the new weights were written but before the run state and manifest: resume falls back to
    the pair the manifest records (kept as .prev- links) and ends equal to an uninterrupted run."""
    from safetensors.torch import load_file

    from cdtool.engine import run_files

    recipe = lambda: load_recipe(tiny_recipe(pairs, **{"schedule.epochs": 3}))  # noqa: E731
    train(recipe(), tmp_path / "whole", quiet=True)
    ahead = tmp_path / "ahead"
    train(recipe(), ahead, quiet=True, stop_after=2)
    run = tmp_path / "run"
    train(recipe(), run, quiet=True, stop_after=1)
    run_files.keep_previous(run)  # what the next save does first
    (run / "new.tmp").write_bytes((ahead / "last.safetensors").read_bytes())
    (run / "new.tmp").replace(run / "last.safetensors")  # epoch 2's weights saved as saves do, then killed
    train(recipe(), run, resume=True, quiet=True)
    a, b = load_file(str(tmp_path / "whole" / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(run.glob(run_files.PREVIOUS + "*"))
