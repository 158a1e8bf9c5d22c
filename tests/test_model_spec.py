"""`--model` names a registered model, shipped weights or a checkpoint file by one explicit rule: a path has a
separator or a checkpoint suffix, so a file in the working folder never shadows a model name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from cdtool.errors import InputError
from cdtool.inference.detect import DetectOptions, _checkpoint, detect
from cdtool.inference.detector import load_detector
from cdtool.inference.model_spec import ModelSpec, shipped_weights
from cdtool.io.checkpoint import save_checkpoint
from cdtool.models.classical import ChangeVectorAnalysis
from cdtool.models.registry import create_model, model_names


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working folder holding a real checkpoint (of fc_siam_diff) under the registered name `cva` and the
    shipped name `vhr_rgb`, and a file of rubbish called `mymodel`."""
    monkeypatch.chdir(tmp_path)
    model = create_model("fc_siam_diff", width=4, in_channels=3)
    meta = {"model": {"name": "fc_siam_diff", "args": {"width": 4, "in_channels": 3}},
            "normalization": {"mode": "per-image"}, "threshold": 0.25}
    for name in ("cva", "vhr_rgb"):
        save_checkpoint(tmp_path / name, {"model": model.state_dict()}, meta)
    (tmp_path / "mymodel").write_bytes(b"not a checkpoint")
    return tmp_path


def test_a_file_named_like_a_model_does_not_shadow_it(here):
    assert ModelSpec.parse("cva") == ModelSpec("registered", "cva")
    det = load_detector("cva")
    assert det.name == "cva" and isinstance(det.model, ChangeVectorAnalysis) and det.threshold == "otsu"
    shipped = ModelSpec.parse("vhr_rgb")
    assert shipped.kind == "shipped" and shipped.path.parent.name == "weights" and shipped.path != here / "vhr_rgb"
    assert load_detector("vhr_rgb").threshold == 0.385  # the shipped card, not the file here (0.25)


@pytest.mark.parametrize("spec", ["./cva", "./vhr_rgb"])
def test_a_path_means_the_file(here, spec):
    assert ModelSpec.parse(spec) == ModelSpec("file", spec, Path(spec))
    det = load_detector(spec)
    assert det.name == "fc_siam_diff" and det.threshold == 0.25
    assert ModelSpec.parse(Path(spec.removeprefix("./"))).kind == "file"  # a path object is always a path


def test_what_makes_a_path_and_what_a_missing_one_says(here):
    for spec in ("runs/best.safetensors", "best.safetensors", "old.pt", "sub\\x.SAFETENSORS"):
        with pytest.raises(InputError, match="no such checkpoint file"):
            ModelSpec.parse(spec)
    with pytest.raises(InputError, match=r"unknown model 'mymodel'; registered: .*cva.*; shipped: .*vhr_rgb"
                                         r".*; to read the file mymodel here, pass ./mymodel$"):
        ModelSpec.parse("mymodel")
    with pytest.raises(InputError, match=r"unknown model 'nothing'; registered: .*vhr_rgb$"):
        ModelSpec.parse("nothing")


def test_shipped_and_registered_names_never_overlap():
    shipped = {p.stem for p in shipped_weights()}
    assert shipped and not shipped & set(model_names())


def test_the_resume_fingerprint_reads_the_file_the_spec_names(here):
    assert _checkpoint(DetectOptions(model="cva")) == []
    assert _checkpoint(DetectOptions(model="./cva")) == [Path("./cva")]
    assert _checkpoint(DetectOptions(model="vhr_rgb")) == [ModelSpec.parse("vhr_rgb").path]


def test_detect_with_a_shadowing_file_in_the_folder_runs_the_registered_model(here):
    from cdtool.generated_pairs import write_pair

    before, after, _ = write_pair(here / "pair", size=96, seed=4, rate=0.5)
    opts = dict(polygons=False, preview=False)
    res = detect(before, after, here / "out", DetectOptions(model="cva", **opts))
    with rasterio.open(res.outputs["change_prob.tif"]) as ds:
        shadowed = ds.read(1)
    (here / "cva").unlink()
    res = detect(before, after, here / "out2", DetectOptions(model="cva", **opts))
    with rasterio.open(res.outputs["change_prob.tif"]) as ds:
        assert res.model == "cva" and np.array_equal(ds.read(1), shadowed, equal_nan=True)
