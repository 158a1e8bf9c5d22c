"""cdtool.data tiling: chips, index footprints, nodata, splits, panorama wrap, resume and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import rasterio
from affine import Affine
from PIL import Image
from rasterio.windows import from_bounds

from cdtool.data.chips import ChipDataset
from cdtool.data.sources import collect_pairs
from cdtool.data.store import read_index
from cdtool.data.tiling import TileOptions, make_tiles
from cdtool.errors import InputError

SHARED = Path(__file__).parents[1].parent / "shared" / "data"


def tif(path: Path, arr: np.ndarray, nodata=None, crs="EPSG:32632", transform=None) -> Path:
    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0],
                       dtype=arr.dtype, crs=crs, nodata=nodata,
                       transform=transform or Affine(10, 0, 500000, 0, -10, 4600000)) as ds:
        ds.write(arr)
    return path


@pytest.fixture
def geo_pair(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(1, 200, (2, 96, 128), dtype=np.uint16)
    b = a.copy()
    b[:, 10:30, 40:70] += 50
    a[:, :, 96:] = 0  # right strip is nodata in BEFORE
    m = np.zeros((96, 128), np.uint8)
    m[10:30, 40:70] = 1
    return (tif(tmp_path / "a.tif", a, nodata=0), tif(tmp_path / "b.tif", b, nodata=0),
            tif(tmp_path / "m.tif", m))


def test_tiles_footprints_reproject_onto_source_grid(geo_pair, tmp_path):
    a, b, m = geo_pair
    s = make_tiles(collect_pairs(a, b, m), tmp_path / "out", TileOptions(size=32, stride=32, max_nodata=0.5))
    idx = read_index(tmp_path / "out")
    import geopandas as gpd
    gdf = gpd.read_file(tmp_path / "out" / "index.gpkg")
    assert gdf.crs.to_epsg() == 32632
    with rasterio.open(a) as ds:
        for _, r in gdf.iterrows():
            w = from_bounds(*r.geometry.bounds, transform=ds.transform)
            assert (round(w.row_off), round(w.col_off), round(w.height), round(w.width)) == \
                (r["row"], r["col"], r["height"], r["width"])
    # 3 x 4 grid; the last column (96..128) is all nodata and skipped, unless dropped at split borders
    assert (idx["col"] < 96).all()
    assert s["skipped_nodata"] + s["dropped_guard"] + len(idx) == 12
    ds = ChipDataset(tmp_path / "out")
    with rasterio.open(a) as src, rasterio.open(m) as msk:
        for i in range(len(ds)):
            x, r = ds[i], idx.iloc[i]
            win = rasterio.windows.Window(r["col"], r["row"], 32, 32)
            assert x["image"].shape == (2, 2, 32, 32) and x["valid"].dtype == torch.bool
            np.testing.assert_array_equal(x["image"][0].numpy(), src.read(window=win).astype(np.float32))
            np.testing.assert_array_equal(x["mask"][0].numpy(), msk.read(1, window=win))
            assert abs(float(x["mask"].mean()) - r["changed_share"]) < 1e-6


def test_block_split_never_shares_pixels(geo_pair, tmp_path):
    a, b, m = geo_pair
    make_tiles(collect_pairs(a, b, m), tmp_path / "o",
               TileOptions(size=16, stride=8, block=32, max_nodata=1.0, fractions=(0.4, 0.3, 0.3)))
    idx = read_index(tmp_path / "o")
    cover = {}
    for _, r in idx.iterrows():
        for rr in range(r["row"], r["row"] + 16):
            for cc in range(r["col"], r["col"] + 16):
                cover.setdefault((rr, cc), set()).add(r["split"])
    assert max(len(v) for v in cover.values()) == 1
    assert len(set(idx["split"])) >= 2


def test_rerun_is_idempotent_and_resumes(geo_pair, tmp_path, monkeypatch):
    monkeypatch.setattr("cdtool.data.tiling.ROWS_PER_UNIT", 2)  # several resumable units in a small raster
    a, b, m = geo_pair
    pairs, out, opts = collect_pairs(a, b, m), tmp_path / "o", TileOptions(size=16, stride=16, max_nodata=1.0)
    first = make_tiles(pairs, out, opts)
    stamp = (out / "index.gpkg").stat().st_mtime_ns
    again = make_tiles(pairs, out, opts)
    assert again["already_complete"] and (out / "index.gpkg").stat().st_mtime_ns == stamp
    # simulate an interruption: the last unit and the final files are gone
    parts = sorted(p for p in (out / "parts").glob("*.json") if p.name != "_params.json")
    parts[-1].unlink()
    (out / "dataset.json").unlink()
    (out / "index.gpkg").unlink()
    kept = sorted((out / "shards").glob("*.npy"))[0]
    stamp_shard = kept.stat().st_mtime_ns
    half = out / "shards" / f".{kept.stem}.partial.npy"  # a shard the killed run was writing
    half.write_bytes(b"half")
    resumed = make_tiles(pairs, out, opts)
    assert kept.stat().st_mtime_ns == stamp_shard and not half.exists()  # finished units are not redone
    assert resumed["resumed"] and resumed["samples"] == first["samples"]
    with pytest.raises(InputError, match="other settings"):
        make_tiles(pairs, out, TileOptions(size=8, stride=8))
    assert make_tiles(pairs, out, TileOptions(size=8, stride=8), overwrite=True)["samples"] == 12 * 12  # nodata strip skipped


def test_panorama_tiles_wrap_across_seam(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (40, 100, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a[:, ::-1].copy()).save(tmp_path / "b.png")
    make_tiles(collect_pairs(tmp_path / "a.png", tmp_path / "b.png"), tmp_path / "o",
               TileOptions(size=40, stride=40, wrap=True, split_by="pair"))
    ds = ChipDataset(tmp_path / "o")
    cols = list(ds.index["col"])
    assert cols == [0, 40, 80]
    seam = ds[2]["image"][0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(seam, np.concatenate([a[:, 80:], a[:, :20]], axis=1).astype(np.float32))


def test_missing_after_image_fails_before_writing(tmp_path):
    for d in ("A", "B", "label"):
        (tmp_path / "ds" / d).mkdir(parents=True)
    img = np.zeros((8, 8, 3), np.uint8)
    for name in ("x", "y"):
        Image.fromarray(img).save(tmp_path / "ds" / "A" / f"{name}.png")
        Image.fromarray(img[..., 0]).save(tmp_path / "ds" / "label" / f"{name}.png")
    Image.fromarray(img).save(tmp_path / "ds" / "B" / "x.png")
    with pytest.raises(InputError, match=r"B: missing the after image for y.png"):
        make_tiles(collect_pairs(tmp_path / "ds"), tmp_path / "out", TileOptions(size=8, stride=8))
    assert not (tmp_path / "out").exists()


def test_mask_of_wrong_size_is_refused(geo_pair, tmp_path):
    a, b, _ = geo_pair
    small = tif(tmp_path / "small.tif", np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="small.tif: mask is 10x10"):
        make_tiles(collect_pairs(a, b, small), tmp_path / "out", TileOptions(size=16, stride=16))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (SHARED / "levir").is_dir(), reason="../shared/data/levir not present")
def test_levir_folder_uses_its_split_names(tmp_path):
    s = make_tiles(collect_pairs(SHARED / "levir"), tmp_path / "o", TileOptions(size=128, stride=128))
    assert s["samples"] == 11 * 4
    idx = read_index(tmp_path / "o")
    assert all(r["pair"].startswith(r["split"]) for _, r in idx.iterrows())
    assert json.loads((tmp_path / "o" / "dataset.json").read_text())["image_dtype"] == "uint8"


@pytest.mark.skipif(not (SHARED / "oscd").is_dir(), reason="../shared/data/oscd not present")
def test_oscd_band_folders_with_mask(tmp_path):
    city = SHARED / "oscd" / "bercy"
    s = make_tiles(collect_pairs(city / "imgs_1", city / "imgs_2", city / "cm" / "bercy-cm.tif"), tmp_path / "o",
                   TileOptions(size=64, stride=64))
    ds = ChipDataset(tmp_path / "o")
    x = ds[0]
    assert x["image"].shape == (2, 13, 64, 64) and x["image"].max() > 255  # raw uint16 reflectance
    assert s["samples"] + s["dropped_guard"] + s["skipped_nodata"] == 7 * 6  # 395x360: row starts 0..320 + 331, column starts 0..256 + 296
    assert ds.index["changed_share"].max() > 0


@pytest.mark.skipif(not (SHARED / "oscd").is_dir(), reason="../shared/data/oscd not present")
@pytest.mark.parametrize("city", ["bercy", "mumbai", "paris", "pisa"])
def test_oscd_tiles_keep_the_changed_share_of_the_truth(tmp_path, city):
    """OSCD codes 1 = unchanged, 2 = changed: the tiles, laid back on the grid, hold the truth's changed pixels
    (cm == 2), not every pixel (> 0 read 100 % of these cities as changed)."""
    d = SHARED / "oscd" / city
    cm = d / "cm" / f"{city}-cm.tif"
    make_tiles(collect_pairs(d / "imgs_1", d / "imgs_2", cm), tmp_path / "o",
               TileOptions(size=128, stride=128, split_by="pair", max_nodata=1.0))
    with rasterio.open(cm) as f:
        truth = f.read(1) == 2
    ds = ChipDataset(tmp_path / "o")
    canvas = np.full(truth.shape, -1, np.int8)
    for i, (_, r) in enumerate(ds.index.iterrows()):
        canvas[r["row"]:r["row"] + r["height"], r["col"]:r["col"] + r["width"]] = ds[i]["mask"][0].numpy()
    assert (canvas >= 0).all()  # every pixel tiled
    assert abs(100 * (canvas == 1).mean() - 100 * truth.mean()) < 0.1  # percentage points
    assert 0.2 < 100 * truth.mean() < 3


def test_mask_nodata_255_is_not_valid_in_tiles(geo_pair, tmp_path):
    """A 0/1 mask with 255 where there is no truth: those pixels are nodata in the tiles, not change."""
    a, b, _ = geo_pair
    m = np.zeros((96, 128), np.uint8)
    m[:8, :8] = 1  # only 1s and 255s in the first tile: its coding comes from the whole file
    m[8:16, :16] = 255
    m = tif(tmp_path / "m255.tif", m)
    make_tiles(collect_pairs(a, b, m), tmp_path / "o", TileOptions(size=16, stride=16, split_by="pair"))
    x = ChipDataset(tmp_path / "o")[0]
    assert x["mask"][0, :8, :8].all() and not x["mask"][0, 8:].any()
    assert x["valid"][0, :8].all() and not x["valid"][0, 8:].any()


def test_a_second_tile_run_into_the_same_folder_is_refused(tmp_path):
    import os

    from cdtool.data.store import DatasetWriter
    from cdtool.errors import InputError

    out = tmp_path / "ds"
    out.mkdir()
    (out / ".cdtool.lock").write_text(f"{os.getppid()}\n")  # another live process is writing here
    with pytest.raises(InputError, match="another cdtool run"):
        DatasetWriter(out, "tiles", {"size": 64})
    (out / ".cdtool.lock").write_text("999999999\n")  # left by a killed run: taken over
    DatasetWriter(out, "tiles", {"size": 64})
