"""benchmarks/oneclass_table.py: one dual_ae training read by two scores (paper 003's open question)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "mnist_5k.csv.gz"


def _load():
    if "oneclass_table" in sys.modules:
        return sys.modules["oneclass_table"]
    spec = importlib.util.spec_from_file_location("oneclass_table", BENCH / "oneclass_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["oneclass_table"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_full_method_scored_by_dual_and_generator_from_one_training(tmp_path):
    if not MNIST.is_file():
        pytest.skip("needs ../shared/data/mnist")
    table = _load()
    out = tmp_path / "rows.json"
    table.main(["p003", "--classes", "5", "--methods", "+dual", "--also-score", "dual", "generator",
                "--epochs", "1", "--width", "4", "--subset", "40", "--val-subset", "120", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    # the row's own score is not repeated; the generator reading comes as one more row of the same run
    assert [r["method"] for r in rows] == ["+dual", "+dual (generator score)"]
    assert rows[0]["seed"] == rows[1]["seed"] == 0 and rows[0]["wall"] == rows[1]["wall"]
    assert 0 <= rows[1]["auroc"] <= 1 and rows[1]["auroc"] != rows[0]["auroc"]


def test_rescoring_the_trained_weights_by_their_own_score_gives_their_auroc():
    if not MNIST.is_file():
        pytest.skip("needs ../shared/data/mnist")
    table = _load()
    overrides = {"data.args.normal": [3], "models.model.args.width": 4, "data.train.normal.args.subset": 40,
                 "data.val.args.subset": 120,
                 "phases": [{"name": "centre", "epochs": 0}, {"name": "train", "epochs": 1},
                            {"name": "calibrate", "epochs": 0}]}
    auc, _, hist = table.run("dual_ae_mnist.yaml", overrides, 0, rescore=("dual", "generator"))
    assert hist[-1]["val_auroc_dual"] == auc  # the same weights and score: the engine's own number exactly
    assert 0 <= hist[-1]["val_auroc_generator"] <= 1 and hist[-1]["val_auroc_generator"] != auc


def test_g_dual_flag_reaches_the_loss_the_recipe_builds():
    """--g-dual sets the adae loss arg g_dual of every p003 row (default 'help', the recipe's reading)."""
    import yaml

    from cdtool.engine.recipe import load_recipe, resolve_paths, set_key
    from cdtool.losses.base import create_loss

    table = _load()
    path = table.RECIPES / "dual_ae_mnist.yaml"
    for flag, want in (([], "help"), (["--g-dual", "against"], "against")):
        a = table.parse(["p003", "--width", "4", "--epochs", "1", *flag])
        tree = resolve_paths(yaml.safe_load(path.read_text()), path.parent)
        for k, v in table.p003_overrides(a, 5, table.ABLATION["+dual"][0], "dual").items():
            set_key(tree, k, v)
        spec = load_recipe(tree).losses["adae"]
        assert spec.args["g_dual"] == want and create_loss(spec.name, **spec.args).g_dual == want
