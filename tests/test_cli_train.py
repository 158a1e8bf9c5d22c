import json

import yaml
from typer.testing import CliRunner

from cdtool.cli import app
from engine_fixtures import make_pair_folder, tiny_recipe

runner = CliRunner()


def test_train_resume_and_bad_recipe(tmp_path):
    pairs = make_pair_folder(tmp_path / "pairs")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(pairs)))
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(recipe), "--out", str(run), "--set", "schedule.epochs=1", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics.json").read_text())[0]["epoch"] == 1
    # continue the stored run for one more epoch
    res = runner.invoke(app, ["train", "--resume", str(run), "--set", "schedule.epochs=2", "-q"])
    assert res.exit_code == 0, res.output
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())] == [1, 2]
    res = runner.invoke(app, ["train", str(recipe), "--set", "optim.name=lbfgs", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "optim.name" in res.output and "'adam'" in res.output


def test_models_lists_models_losses_and_recipes():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    for word in ("cosimnet", "fc_siam_diff", "fc_siam_conc", "fcn_metrics", "siamese_patch", "cva", "tcl",
                 "contrastive", "tasks", "patch", "recipes"):
        assert word in res.output


def test_set_indexes_a_list_of_phases():
    """`--set phases.0.epochs=2` changes the first phase, and keeps it a list (it used to become a dict)."""
    import pytest

    from cdtool.engine.recipe import apply_overrides, load_recipe
    from cdtool.errors import InputError

    from pathlib import Path

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "dual_ae_mnist.yaml", ["phases.0.epochs=2"])
    assert recipe.phases[0].epochs == 2 and len(recipe.phases) >= 1
    with pytest.raises(InputError, match="phases is a list of"):
        apply_overrides({"phases": [{"epochs": 1}]}, ["phases.3.epochs=2"])
