import pytest

from cdtool.engine.recipe import dump_recipe, load_recipe
from cdtool.errors import InputError
from engine_fixtures import tiny_recipe


def test_valid_recipe_fills_defaults_and_overrides(tmp_path):
    r = load_recipe(tiny_recipe(tmp_path), ["optim.lr=0.05", "schedule.epochs=7", "models.model.args.metric=cos"])
    assert r.optim.lr == 0.05 and r.schedule.epochs == 7 and r.models["model"].args["metric"] == "cos"
    assert r.normalization == {"mode": "per-image"} and r.threshold == "tune"
    assert "name: tiny" in dump_recipe(r)


@pytest.mark.parametrize("override, message", [
    ("models.model.name=unet", "models.model.name: unknown model 'unet'; allowed: "),
    ("losses.change.name=dice", "losses.change.name: unknown loss 'dice'; allowed: "),
    ("optim.nme=adam", "optim.nme: unknown key; allowed: name, lr"),
    ("optim.name=lbfgs", "optim.name: Input should be 'adam', 'adamw' or 'sgd'"),
    ("task=gan", "task: unknown task 'gan'; allowed: "),
    ("models.model.args.depth=3", "no argument 'depth'; allowed: in_channels, metric"),
    ("normalization.mode=zscore", "normalization.mode must be one of per-image, fixed"),
    ("schedule.epochs=0", "schedule.epochs: Input should be greater than or equal to 1"),
    ("data.train.pairs.kind=tiles", "data.train.pairs.kind: unknown data.kind 'tiles'; allowed: "),
    ("data.train.pairs.augment.hflip=2", "data.train.pairs.augment.hflip: Input should be less than or equal to 1"),
    ("data.train.pairs.augment.flip=1", "data.train.pairs.augment.flip: unknown key; allowed: hflip, vflip, rot90"),
    ("losses.extra.name=bce", "task 'metric' takes losses ['change']"),
    ("data.train.more.kind=folder", "task 'metric' takes data.train ['pairs']"),
    ("phases=[{name: train, epochs: 0}]", "every phase has 0 epochs"),
])
def test_errors_name_the_key_and_the_allowed_values(tmp_path, override, message):
    with pytest.raises(InputError) as exc:
        load_recipe(tiny_recipe(tmp_path), [override])
    assert message in str(exc.value)
    listed = {"unet": "cosimnet", "dice": "contrastive", "gan": "metric", "tiles": "folder"}
    for bad, known in listed.items():  # the allowed values are listed, whatever else is registered
        if f"'{bad}'" in message:
            assert known in str(exc.value).split("allowed: ")[1]


def test_missing_keys_and_bad_yaml(tmp_path):
    with pytest.raises(InputError, match="models: missing"):
        load_recipe({"name": "x", "task": "dense", "losses": {"change": {"name": "bce"}}, "data": {"train": {}}})
    with pytest.raises(InputError, match="task: missing"):
        load_recipe({"name": "x"})
    bad = tmp_path / "r.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(InputError, match="expected key=value"):
        load_recipe(tiny_recipe(tmp_path), ["optim.lr"])


def test_recipe_paths_are_relative_to_the_recipe_file(tmp_path, monkeypatch):
    """A recipe runs from any folder: its data roots and init weights resolve against the file; --set
    overrides stay relative to where the command runs."""
    import yaml

    recipe = tiny_recipe(tmp_path, **{"data.args.roots": ["../data/pairs"], "models.model.init": "w.safetensors"})
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "r.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path.parent)
    r = load_recipe(folder / "r.yaml")
    assert r.data.args["roots"] == [str((tmp_path / "data" / "pairs").resolve())]
    assert r.models["model"].init == str((folder / "w.safetensors").resolve())
    r = load_recipe(folder / "r.yaml", ["data.args.roots=[elsewhere]"])
    assert r.data.args["roots"] == ["elsewhere"]
