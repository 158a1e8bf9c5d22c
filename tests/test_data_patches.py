"""PCD label purity, footprint classes (hand-made and neudorf), mnist and synthetic pair semantics."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from shapely.geometry import Polygon, box

from cdtool.data.chips import ChipDataset
from cdtool.data.footprints import FootprintOptions, classify, make_footprints, read_footprints
from cdtool.data.pcd import PcdOptions, make_pcd
from cdtool.data.sources import collect_pairs, pairs_from_folder
from cdtool.errors import InputError

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
needs = lambda name: pytest.mark.skipif(not (SHARED / name).is_dir(), reason=f"../shared/data/{name} not present")


@needs("levir")
def test_pcd_labels_are_pure_centres_of_the_mask(tmp_path):
    pairs = collect_pairs(SHARED / "levir", require_mask=True)
    s = make_pcd(pairs, tmp_path / "p", PcdOptions(stride=28))
    ds = ChipDataset(tmp_path / "p")
    assert s["positives"] > 0 and s["negatives"] > 0 and ds.labels is not None
    masks = {}
    for i in range(len(ds)):
        r = ds.index.iloc[i]
        m = masks.setdefault(r["mask_file"], np.asarray(Image.open(r["mask_file"])) > 0)
        centre = m[r["row"] + 49:r["row"] + 63, r["col"] + 49:r["col"] + 63]
        assert centre.all() if r["label"] == 1 else not centre.any()
        x = ds[i]
        assert x["image"].shape == (2, 3, 112, 112) and int(x["label"]) == r["label"]
        assert torch.equal(x["mask"][0].bool(), torch.from_numpy(m[r["row"]:r["row"] + 112, r["col"]:r["col"] + 112]))


@needs("levir")
def test_pcd_max_positives_is_seeded(tmp_path):
    pairs = collect_pairs(SHARED / "levir", require_mask=True)
    a = make_pcd(pairs, tmp_path / "a", PcdOptions(stride=14, max_positives=2, seed=3))
    make_pcd(pairs, tmp_path / "b", PcdOptions(stride=14, max_positives=2, seed=3))
    # the rare-event setting: that many positives to train on, every positive of val and test kept
    assert a["labels_by_split"]["train"]["1"] == 2 and a["train_positives_found"] > 2
    assert a["labels"]["1"] == a["positives_found"] - a["train_positives_found"] + 2
    ia, ib = (ChipDataset(tmp_path / d).index for d in "ab")
    assert list(ia["sample"]) == list(ib["sample"])


def test_pcd_empty_mask_gives_only_negatives_and_needs_a_mask(tmp_path):
    Image.fromarray(np.full((120, 120, 3), 7, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((120, 120, 3), 9, np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((120, 120), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(InputError, match="needs a change mask"):
        collect_pairs(tmp_path / "a.png", tmp_path / "b.png", None, require_mask=True)
    s = make_pcd(collect_pairs(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "m.png"), tmp_path / "o",
                 PcdOptions(stride=4))
    assert s["positives_found"] == 0 and s["negatives_found"] == 9 and s["labels"] == {"0": s["samples"]}


def test_pcd_wrap_finds_changes_across_the_panorama_seam(tmp_path):
    """A change that straddles the left/right seam of a 360° panorama is a positive only with wrap."""
    Image.fromarray(np.full((16, 64, 3), 7, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((16, 64, 3), 9, np.uint8)).save(tmp_path / "b.png")
    m = np.zeros((16, 64), np.uint8)
    m[:, 60:], m[:, :4] = 255, 255
    Image.fromarray(m).save(tmp_path / "m.png")
    pairs = collect_pairs(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "m.png")
    flat = make_pcd(pairs, tmp_path / "flat", PcdOptions(patch=16, centre=4, stride=4))
    pano = make_pcd(pairs, tmp_path / "pano", PcdOptions(patch=16, centre=4, stride=4, wrap=True))
    assert flat["positives_found"] == 0 and pano["positives_found"] == 1  # centre on columns 62, 63, 0, 1
    ds = ChipDataset(tmp_path / "pano")
    i = ds.labels.index(1)
    assert ds.index.iloc[i]["col"] == 56 and ds[i]["mask"][0, 0].tolist() == [0.0] * 4 + [1.0] * 8 + [0.0] * 4


def test_classify_hand_made_polygons():
    sq = lambda x, y, w=10, h=10: box(x, y, x + w, y + h)
    before = [sq(0, 0), sq(100, 0), sq(200, 0, 20), sq(300, 0), sq(312, 0), sq(400, 0)]
    after = [sq(0, 0.5),                      # unchanged
             sq(200, 0), sq(211, 0),          # split of before[2]
             sq(300, 0, 22),                  # merge of before[3], before[4]
             sq(400, 0, 25),                  # modified (IoU 0.4)
             sq(500, 0)]                      # new; before[1] demolished
    groups = classify(before, after, min_overlap=0.5, min_iou=0.5)
    got = {(tuple(g["before"]), tuple(g["after"])): g["class"] for g in groups}
    assert got == {((0,), (0,)): "unchanged", ((1,), ()): "demolished", ((2,), (1, 2)): "split",
                   ((3, 4), (3,)): "merged", ((5,), (4,)): "modified", ((), (5,)): "new"}


def test_footprints_repair_reproject_and_write(tmp_path):
    bowtie = Polygon([(500100, 4600000), (500120, 4600020), (500120, 4600000), (500100, 4600020)])  # invalid
    b = gpd.GeoDataFrame({"id": [1, 2]}, geometry=[box(500000, 4600000, 500020, 4600020), bowtie], crs="EPSG:32632")
    a = gpd.GeoDataFrame({"id": [1]}, geometry=[box(500000, 4600000, 500020, 4600020)], crs="EPSG:32632").to_crs(3857)
    b.to_file(tmp_path / "b.gpkg")
    a.to_file(tmp_path / "a.geojson")
    fixed, rep = read_footprints(tmp_path / "b.gpkg")
    assert rep["repaired"] == 1 and fixed.is_valid.all()
    s = make_footprints(tmp_path / "b.gpkg", tmp_path / "a.geojson", tmp_path / "o",
                        FootprintOptions(patch=16, resolution=2.0))
    assert s["classes"]["unchanged"] == 1 and s["classes"]["demolished"] == 1 and s["repaired"] == 1
    changes = gpd.read_file(tmp_path / "o" / "footprint_changes.gpkg", layer="changes")
    assert changes.crs.to_epsg() == 32632 and sorted(changes["class"]) == ["demolished", "unchanged"]
    with sqlite3.connect(tmp_path / "o" / "footprint_changes.gpkg") as con:
        assert con.execute("select count(*) from layer_styles").fetchone()[0] == 2
    assert (tmp_path / "o" / "footprint_changes.qml").read_text().count("<category ") == 7


def test_footprints_layer_without_crs_is_refused(tmp_path):
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs="EPSG:2154").to_file(tmp_path / "b.gpkg")
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)]).to_file(tmp_path / "a.gpkg")
    with pytest.raises(InputError, match="a.gpkg: layer has no CRS"):
        make_footprints(tmp_path / "b.gpkg", tmp_path / "a.gpkg", tmp_path / "o", FootprintOptions())
    assert not (tmp_path / "o").exists()


@needs("footprints_neudorf")
def test_neudorf_2012_vs_2022(tmp_path):
    d = SHARED / "footprints_neudorf"
    s = make_footprints(d / "neudorf_2012.shp", d / "neudorf_2022.shp", tmp_path / "o", FootprintOptions())
    assert s["buildings_before"] == 48 and s["buildings_after"] == 172
    c = s["classes"]
    assert c == {"unchanged": 16, "modified": 1, "new": 30, "demolished": 0, "split": 31, "merged": 0, "complex": 0}
    changes = gpd.read_file(tmp_path / "o" / "footprint_changes.gpkg", layer="changes")
    assert changes["n_before"].sum() == 48 and changes["n_after"].sum() == 172
    ds = ChipDataset(tmp_path / "o")
    assert set(ds.labels) == {0, 1} and ds[0]["image"].shape == (2, 1, 112, 112)
    import rasterio
    with rasterio.open(tmp_path / "o" / "change_mask.tif") as m:
        assert m.crs.to_epsg() == 2154 and m.read(1).sum() == s["changed_pixels"] > 0


@needs("mnist")
def test_mnist_pairs(tmp_path):
    from cdtool.data.mnist import MnistOptions, make_mnist
    s = make_mnist(SHARED / "mnist", tmp_path / "m", MnistOptions(variant="R-B", pairs=300, seed=1),
                   backgrounds=[SHARED / "levir" / "A"])
    ds = ChipDataset(tmp_path / "m")
    idx = ds.index
    assert s["samples"] == 300 and ((idx["digit_before"] != idx["digit_after"]) == (idx["label"] == 1)).all()
    assert ((idx["label"] == 0) <= (idx["src_before"] != idx["src_after"])).all()
    used = {sp: set(idx.loc[idx["split"] == sp, "src_before"]) | set(idx.loc[idx["split"] == sp, "src_after"])
            for sp in ("train", "val", "test")}
    assert not (used["train"] & used["val"]) and not (used["train"] & used["test"])
    x = ds[0]
    assert x["image"].shape == (2, 1, 28, 28) and x["label"].dtype == torch.int64
    with pytest.raises(InputError, match="need --backgrounds"):
        make_mnist(SHARED / "mnist", tmp_path / "n", MnistOptions(variant="B"))


def test_mnist_background_crops_below_the_texture_floor_are_redrawn():
    from cdtool.data.mnist import background_crop
    flat = np.full((64, 64), 90, np.uint8)
    textured = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    rng = np.random.default_rng(3)
    crops = [background_crop([flat, textured], rng, 20.0) for _ in range(200)]
    assert all(c.std() > 60 for c in crops)                       # every flat draw was redrawn
    rng = np.random.default_rng(3)
    crops = [background_crop([flat, textured], rng, 0.0) for _ in range(200)]
    assert 60 < sum(c.std() == 0 for c in crops) < 140            # without a floor about half are flat
    assert background_crop([flat], np.random.default_rng(0), 20.0).std() == 0   # a flat set still ends


@needs("levir")
def test_synthetic_flow_aligns_before_onto_after(tmp_path):
    from cdtool.data.synthetic import SyntheticOptions, make_synthetic
    s = make_synthetic([SHARED / "levir" / "A"], pairs_from_folder(SHARED / "levir", require_mask=True),
                       tmp_path / "s", SyntheticOptions(samples=4, size=128, seed=2))
    ds = ChipDataset(tmp_path / "s")
    assert s["samples"] == 4
    for i in range(len(ds)):
        x = ds[i]
        im, f = x["image"], x["flow"]
        h, w = im.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid = torch.stack([(xs + f[0]) / (w - 1) * 2 - 1, (ys + f[1]) / (h - 1) * 2 - 1], -1)[None]
        warped = F.grid_sample(im[:1], grid, align_corners=True)[0]
        ok = x["valid"][0] & (x["mask"][0] == 0)
        assert (warped - im[1]).abs()[:, ok].mean() < 2.0 < (im[0] - im[1]).abs()[:, ok].mean()
    assert sum(float(ds[i]["mask"].sum()) for i in range(len(ds))) > 0
