"""The detect pipeline as a library call: outputs, nodata, stitching exactness, wrap, checkpoints."""

import json

import numpy as np
import pytest
import rasterio
import torch
import torch.nn as nn

from cdtool.io.checkpoint import save_checkpoint
from cdtool.errors import InputError
from cdtool.inference.detect import DetectOptions, detect
from cdtool.inference.detector import Detector, load_detector
from cdtool.io.writers import MASK_NODATA, PROB_NODATA
from cdtool.models.base import ChangeModel


class TinyConv(ChangeModel):
    """Three 3x3 convolutions (receptive radius 3) with fixed random weights."""

    halo = 4

    def __init__(self, bands: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(2 * bands, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1),
                                 nn.Tanh(), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, before, after):
        return torch.sigmoid(self.net(torch.cat([before, after], 1)))


def tiny_detector(bands=3):
    norm = {"mode": "fixed", "mean": [100.0] * bands, "std": [50.0] * bands}
    return Detector("tiny", TinyConv(bands).eval(), norm, 0.5)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile, ds


def test_outputs_on_generated_pair(small_pair, tmp_path):
    before, after, truth = small_pair
    res = detect(before, after, tmp_path / "out", DetectOptions(model="cva", tile=128, overlap=32))
    names = {p.name for p in res.outputs.values()}
    assert names == {"change_prob.tif", "change_prob.qml", "change_prob.qmd", "change_mask.tif", "change_mask.qml",
                     "change_mask.qmd", "changes.gpkg", "changes.qml", "changes.qmd", "preview.png", "report.html",
                     "detect.json"}
    assert (tmp_path / "out" / "preview.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporaries left
    with rasterio.open(before) as b, rasterio.open(res.outputs["change_prob.tif"]) as p, \
            rasterio.open(res.outputs["change_mask.tif"]) as m:
        assert p.crs == b.crs and p.transform == b.transform and (p.width, p.height) == (b.width, b.height)
        assert m.crs == b.crs and m.transform == b.transform
        assert p.nodata == PROB_NODATA and m.nodata == MASK_NODATA
        assert p.overviews(1) and m.overviews(1)
        assert p.profile["compress"].lower() == "deflate"
        for ds in (p, m):  # Cloud-optimised, and self-describing without detect.json
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert ds.tags()["model"] == "cva" and float(ds.tags()["threshold"]) == pytest.approx(res.threshold, abs=1e-5)
        assert 0 <= float(p.tags(1)["STATISTICS_MINIMUM"]) <= float(p.tags(1)["STATISTICS_MAXIMUM"]) <= 1
        assert m.colormap(1)[1][:3] == (227, 26, 28) and m.colormap(1)[0][:3] == (255, 255, 255)
        mask = m.read(1)
    assert set(np.unique(mask)) <= {0, 1}
    gt = rasterio.open(truth).read(1) == 1
    f1 = 2 * (gt & (mask == 1)).sum() / (gt.sum() + (mask == 1).sum())
    assert f1 > 0.9  # generated changes are strong; CVA with Otsu must find them
    import geopandas as gpd

    polys = gpd.read_file(res.outputs["changes.gpkg"])
    assert len(polys) == res.regions > 0
    assert polys.geometry.is_valid.all() and polys.crs == gpd.read_file(res.outputs["changes.gpkg"]).crs
    assert (polys["mean_prob"] >= res.threshold).all() and (polys["max_prob"] <= 1).all()
    # the default minimum mapping unit (4 px and 20 m² = 80 px at 0.5 m) drops specks from the polygons only
    assert (polys["pixels"] >= 80).all() and polys["pixels"].sum() <= (mask == 1).sum()
    assert np.allclose(polys["area"], polys["pixels"] * 0.25)  # 0.5 m pixels
    assert sorted(polys["rank"]) == list(range(1, len(polys) + 1))
    assert (polys.sort_values("rank")["area_m2"].diff().dropna() <= 0).all()  # rank 1 = largest
    summary = json.loads(res.outputs["detect.json"].read_text())
    assert summary["threshold"] == pytest.approx(res.threshold) and summary["model"] == "cva"
    assert summary["summary"]["changed_area_m2"] == pytest.approx((mask == 1).sum() * 0.25, rel=0.01)  # UTM scale
    largest = summary["summary"]["largest_regions"]
    assert largest[0]["area_m2"] == pytest.approx(polys["area_m2"].max(), abs=0.01)
    every = detect(before, after, tmp_path / "all", DetectOptions(model="cva", tile=128, overlap=32, min_area=0,
                                                                   min_pixels=1))
    every_polys = gpd.read_file(every.outputs["changes.gpkg"])
    assert every_polys["pixels"].sum() == (mask == 1).sum()  # with no minimum, polygons cover the mask


@pytest.mark.parametrize("model", ["cva", "tiny"])
def test_stitched_equals_whole_image(small_pair, tmp_path, model):
    before, after, _ = small_pair
    spec = "cva" if model == "cva" else tiny_detector()
    whole = detect(before, after, tmp_path / "whole", DetectOptions(model=spec, tile=1024, polygons=False))
    tiled = detect(before, after, tmp_path / "tiled", DetectOptions(model=spec, tile=64, overlap=16, polygons=False))
    a, b = read(whole.outputs["change_prob.tif"])[0], read(tiled.outputs["change_prob.tif"])[0]
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_nodata_from_either_date_is_nodata_everywhere(make_tif, tmp_path):
    rng = np.random.default_rng(0)
    b = rng.integers(1, 255, (3, 120, 140)).astype("uint8")
    a = rng.integers(1, 255, (3, 120, 140)).astype("float32")
    b[:, :20, :30] = 0  # nodata in BEFORE
    a[1, 100:, 100:] = np.nan  # NaN in one band of AFTER
    res = detect(make_tif("b.tif", b, nodata=0), make_tif("a.tif", a), tmp_path / "o", DetectOptions(model="cva", tile=64, overlap=16))
    prob, mask = read(res.outputs["change_prob.tif"])[0], read(res.outputs["change_mask.tif"])[0]
    hole = np.zeros((120, 140), bool)
    hole[:20, :30] = True
    hole[100:, 100:] = True
    assert (prob[hole] == PROB_NODATA).all() and (mask[hole] == MASK_NODATA).all()
    assert (prob[~hole] >= 0).all() and set(np.unique(mask[~hole])) <= {0, 1}
    assert res.valid_pixels == (~hole).sum()


def test_wrap_makes_the_panorama_seam_continuous(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    pano_b = rng.integers(0, 255, (96, 200, 3), dtype=np.uint8)
    pano_a = rng.integers(0, 255, (96, 200, 3), dtype=np.uint8)
    shift = 77
    for name, arr in [("b", pano_b), ("a", pano_a), ("rb", np.roll(pano_b, shift, 1)), ("ra", np.roll(pano_a, shift, 1))]:
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
    opts = dict(model=tiny_detector(), tile=64, overlap=16, wrap=True, polygons=False, threshold=0.5)
    r1 = detect(tmp_path / "b.png", tmp_path / "a.png", tmp_path / "o1", DetectOptions(**opts))
    r2 = detect(tmp_path / "rb.png", tmp_path / "ra.png", tmp_path / "o2", DetectOptions(**opts))
    p1 = np.array(Image.open(r1.outputs["change_prob.png"]))[..., 0].astype(int)
    p2 = np.array(Image.open(r2.outputs["change_prob.png"]))[..., 0].astype(int)
    # Rolling the panorama moves the seam; with --wrap the result is the same map rolled (PNG rounding aside).
    assert np.abs(np.roll(p1, shift, 1) - p2).max() <= 1


def test_png_pair_gives_png_outputs_with_alpha(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for n in "ab":
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / f"{n}.png")
    res = detect(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "o", DetectOptions())
    assert {p.name for p in res.outputs.values()} >= {"change_prob.png", "change_mask.png", "changes.gpkg"}
    m = Image.open(res.outputs["change_mask.png"])
    assert m.mode == "LA" and m.size == (70, 50)


def test_checkpoint_carries_model_normalisation_and_threshold(small_pair, tmp_path):
    ckpt = save_checkpoint(tmp_path / "cva.safetensors", {"model": {}},
                           {"model": {"name": "cva", "args": {}}, "normalization": {"mode": "per-image"},
                            "threshold": 0.9})
    det = load_detector(str(ckpt))
    assert det.name == "cva" and det.threshold == 0.9
    res = detect(small_pair[0], small_pair[1], tmp_path / "o", DetectOptions(model=str(ckpt), polygons=False))
    assert res.threshold == 0.9


def test_untrained_model_name_is_refused():
    with pytest.raises(InputError, match="unknown model"):
        load_detector("no-such-model")


def test_polygons_as_geojson(small_pair, tmp_path):
    import geopandas as gpd

    before, after, _ = small_pair
    gp = detect(before, after, tmp_path / "g", DetectOptions(model="cva", polygons=True))
    gj = detect(before, after, tmp_path / "j", DetectOptions(model="cva", vector_format="geojson"))
    assert "changes.geojson" in {p.name for p in gj.outputs.values()} and not (tmp_path / "j" / "changes.gpkg").exists()
    a, b = gpd.read_file(gp.outputs["changes.gpkg"]), gpd.read_file(gj.outputs["changes.geojson"])
    assert len(a) == len(b) == gj.regions > 0
    assert b.crs.to_epsg() == 4326 and b.total_bounds[0] > -180 and b.total_bounds[3] < 90  # RFC 7946
    with pytest.raises(InputError, match="^vector_format must be one of"):
        detect(before, after, tmp_path / "x", DetectOptions(vector_format="shp"))


def test_detect_without_polygons_needs_no_vector_stack(small_pair, tmp_path):
    """Score and mask only (--no-polygons) must run where GDAL's vector stack (pyogrio, geopandas) is missing,
    as on a bare GPU machine; polygon code loads only when asked for."""
    import subprocess
    import sys

    before, after, _ = small_pair
    code = ("import sys; sys.modules['pyogrio'] = sys.modules['geopandas'] = None\n"
            "from cdtool.inference.detect import DetectOptions, detect\n"
            f"r = detect({str(before)!r}, {str(after)!r}, {str(tmp_path / 'out')!r}, "
            "DetectOptions(polygons=False, preview=True))\n"
            "print(r.changed_pixels)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert (tmp_path / "out" / "change_mask.tif").is_file() and not (tmp_path / "out" / "changes.gpkg").exists()


@pytest.mark.parametrize("dtypes", [("uint8", "uint8"), ("uint16", "uint16"), ("int16", "uint8"), ("float32", "uint16")])
def test_tiles_travel_in_the_files_compact_type_and_score_the_same(make_tif, dtypes):
    """Detect reads tiles in the files' own integer type and converts them where they are scored: the values
    the model sees are those of a float32 read, uint16 above 32767 included (sent as its int16 bit pattern)."""
    from cdtool.inference.predictor import float_on_device
    from cdtool.io.pair import open_pair
    from cdtool.windows import Tile

    rng = np.random.default_rng(3)
    top = {"uint8": 255, "uint16": 65535, "int16": 32767, "float32": 1000}
    arrays = [rng.integers(0, top[d], (2, 40, 50)).astype(d) for d in dtypes]
    arrays[0][:, :5, :5] = 0
    pair = open_pair(make_tif("b.tif", arrays[0], nodata=0), make_tif("a.tif", arrays[1]))
    tile = Tile(3, 4, 30, 40)
    native, valid = pair.read(tile, native=True)
    exact, valid_f = pair.read(tile)
    expected = {("uint8", "uint8"): "uint8", ("uint16", "uint16"): "uint16", ("int16", "uint8"): "int16",
                ("float32", "uint16"): "float32"}[dtypes]
    assert native.dtype == expected and exact.dtype == np.float32
    np.testing.assert_array_equal(valid, valid_f)
    back = float_on_device(np.stack([native]), torch.device("cpu"))
    assert back.dtype == torch.float32
    np.testing.assert_array_equal(back[0].numpy(), exact)


def test_uint16_pair_scores_as_its_float_copy(make_tif, tmp_path):
    rng = np.random.default_rng(4)
    b = rng.integers(0, 65535, (3, 90, 110)).astype("uint16")
    a = b.copy()
    a[:, 30:60, 40:80] = rng.integers(0, 65535, (3, 30, 40))
    opts = DetectOptions(model="cva", tile=64, overlap=16, polygons=False, preview=False)
    native = detect(make_tif("b.tif", b), make_tif("a.tif", a), tmp_path / "n", opts)
    floats = detect(make_tif("bf.tif", b.astype("float32")), make_tif("af.tif", a.astype("float32")), tmp_path / "f",
                    opts)
    score = read(native.outputs["change_prob.tif"])[0]
    assert score[35:55, 45:75].mean() > 0.2 > 0.01 > score[:20, :20].mean()
    np.testing.assert_array_equal(score, read(floats.outputs["change_prob.tif"])[0])


@pytest.mark.parametrize("model", ["cva", "pca_kmeans", "irmad"])
def test_classical_models_overlap_tiles_by_their_halo_only_and_stitch_exactly(small_pair, tmp_path, model):
    """A model whose halo is its whole reach gets tiles overlapping by twice the halo (CVA: 2 px, not 64), which
    computes 1.3x fewer pixels at tile 512 and still gives the whole-image map."""
    from cdtool.inference.detect import input_domain
    from cdtool.inference.runner import plan_scoring
    from cdtool.inference.detector import choose_detector
    from cdtool.io.pair import open_pair

    before, after, _ = small_pair
    with open_pair(before, after) as pair:
        choice = choose_detector(model, input_domain(pair, None), True)
        plan = plan_scoring(pair, choice, torch.device("cpu"), DetectOptions(model=model, tile=64))
    assert plan.overlap == 2 * plan.halo
    whole = detect(before, after, tmp_path / "whole", DetectOptions(model=model, tile=1024, polygons=False))
    tiled = detect(before, after, tmp_path / "tiled", DetectOptions(model=model, tile=64, polygons=False))
    a, b = read(whole.outputs["change_prob.tif"])[0], read(tiled.outputs["change_prob.tif"])[0]
    np.testing.assert_allclose(a, b, atol=2e-5)
