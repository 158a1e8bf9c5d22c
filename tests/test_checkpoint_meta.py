"""Checkpoint metadata is read as one typed, versioned `CheckpointMeta`: the shipped weights (written before the
version field existed) load as version 1, and a newer version or malformed metadata is refused in one line
that names the file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from cdtool.errors import InputError
from cdtool.inference.detector import load_detector, shipped_weights
from cdtool.io.checkpoint import load_checkpoint, read_meta, save_checkpoint
from cdtool.io.checkpoint_meta import FORMAT_VERSION, CheckpointMeta, ModelRecord
from cdtool.models.registry import create_model

BASE = {"model": {"name": "fc_siam_diff", "args": {"width": 4, "in_channels": 3}},
        "normalization": {"mode": "per-image"}, "threshold": 0.5}


@pytest.fixture(scope="module")
def weights():
    return create_model("fc_siam_diff", width=4, in_channels=3).state_dict()


def write(tmp_path, weights, meta, name="m.safetensors"):
    return save_checkpoint(tmp_path / name, {"model": weights}, meta)


def test_the_shipped_weights_load_as_version_1_with_their_values():
    files = {p.stem: p for p in shipped_weights()}
    assert {"vhr_rgb", "sentinel2", "siam_diff_unet_rgb"} <= set(files)
    for path in files.values():
        with safe_open(str(path), framework="pt") as f:
            assert "format_version" not in json.loads(f.metadata()["cdtool"])  # written before the field
    vhr = read_meta(files["vhr_rgb"])
    assert vhr.format_version == 1 and vhr.model == ModelRecord(name="siam_diff_unet", args={"in_channels": 3, "width": 8})
    assert vhr.threshold == 0.385 and vhr.bands == ["red", "green", "blue"] and vhr.normalization == {"mode": "per-image"}
    assert vhr.model_card.usable_gsd_m == (0.25, 2.0) and vhr.model_card.usable_without_gsd is True
    assert vhr.model_extra["train"]["crop"] == 128  # provenance beyond the declared fields is kept
    s2 = load_detector("sentinel2")
    assert s2.meta.model.args == {"in_channels": 12, "width": 8} and s2.card.layout == "sentinel2" and s2.threshold == 0.205


def test_written_metadata_carries_the_version_and_reads_back_equal(tmp_path, weights):
    meta = CheckpointMeta(model=ModelRecord(name="fc_siam_diff", args={"width": 4, "in_channels": 3}),
                          normalization={"mode": "per-image"}, threshold="otsu", epoch=3, phase="train",
                          train_pairs=["a/p0"], card={"band_count": 3})
    path = write(tmp_path, weights, meta)
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["cdtool"])["format_version"] == FORMAT_VERSION
    states, back = load_checkpoint(path)
    assert back == meta and back.model_card.band_count == 3 and set(states) == {"model"}
    assert load_detector(str(path)).threshold == "otsu"


def test_a_file_without_a_version_is_read_as_version_1(tmp_path, weights):
    meta = read_meta(write(tmp_path, weights, BASE))
    assert meta.format_version == 1 and meta.threshold == 0.5 and meta.epoch is None and meta.train_pairs == []
    assert meta.model_card.band_count == 3 and meta.model_card.change == "not recorded"  # no card: args tell


@pytest.mark.parametrize("edit,message", [
    ({"format_version": 2}, "checkpoint format version 2 is newer than this cdtool reads \\(1\\); upgrade cdtool"),
    ({"format_version": "1"}, "format_version must be a positive integer, got '1'"),
    ({"format_version": 0}, "format_version must be a positive integer, got 0"),
    ({"format_version": True}, "format_version must be a positive integer, got True"),
    ({"model": {"args": {}}}, "checkpoint metadata lacks model.name"),
    ({"model": {"name": "fc_siam_diff", "args": [4]}}, "checkpoint metadata model.args is not a mapping"),
    ({"normalization": None}, "checkpoint metadata normalization is not a mapping"),
    ({"normalization": {"mode": "whiten"}}, "normalization.mode must be one of"),
    ({"threshold": 1.5}, "threshold must be a number in \\[0, 1\\] or a method name, got 1.5"),
    ({"threshold": "0.5"}, "threshold must be a number in \\[0, 1\\] or a method name, got '0.5'"),
    ({"card": {"gsd_m": [2.0, 1.0]}}, "checkpoint card: gsd_m must be \\[low, high\\]"),
    ({"epoch": "three"}, "checkpoint metadata epoch: "),
    ({"train_pairs": "p0"}, "checkpoint metadata train_pairs: "),
])
def test_malformed_or_newer_metadata_is_refused_in_one_line_naming_the_file(tmp_path, weights, edit, message):
    path = write(tmp_path, weights, {**BASE, **edit}, "odd.safetensors")
    for read in (read_meta, load_checkpoint, lambda p: load_detector(str(p))):
        with pytest.raises(InputError, match=message) as caught:
            read(path)
        text = str(caught.value)
        assert text.startswith(f"{path}: ") and "\n" not in text


def test_metadata_that_is_not_a_mapping_is_refused(tmp_path, weights):
    path = tmp_path / "list.safetensors"
    from safetensors.torch import save_file

    save_file({"model.w": torch.zeros(1)}, str(path), metadata={"cdtool": json.dumps([1, 2])})
    with pytest.raises(InputError, match=f"^{path}: checkpoint metadata is not a mapping$"):
        read_meta(path)
