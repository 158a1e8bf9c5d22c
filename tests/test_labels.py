"""detect --labels: a classifier fitted on an analyst's polygons, validated polygon by polygon, kept as
fitted.safetensors and applied to another pair; labels init; bad labels refused in one line."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.io.checkpoint import read_meta
from tests.conftest import write_tif

runner = CliRunner()
T = Affine(10, 0, 600000, 0, -10, 5000000)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def scene(root, seed: int, n: int = 160):
    """A pair where two things change: large 'fields' turn green (not wanted) and small bright 'roofs' appear
    (wanted). CVA flags both; labels say which one is change."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    b = rng.normal(100, 8, (3, n, n)).astype(np.float32)
    a = b + rng.normal(0, 3, b.shape).astype(np.float32)
    truth = np.zeros((n, n), np.uint8)
    for _ in range(3):
        r, c = rng.integers(0, n - 40, 2)
        a[1, r:r + 40, c:c + 40] += 40
        a[0, r:r + 40, c:c + 40] -= 20
    for _ in range(10):
        r, c = rng.integers(0, n - 10, 2)
        a[:, r:r + 10, c:c + 10] = 200 + rng.normal(0, 3, (3, 10, 10))
        truth[r:r + 10, c:c + 10] = 1
    write_tif(root / "before.tif", b, transform=T)
    write_tif(root / "after.tif", a, transform=T)
    return root / "before.tif", root / "after.tif", truth


def squares(truth: np.ndarray, k: int, seed: int = 0, size: int = 4, transform=T) -> tuple[list, list]:
    """k changed and k unchanged squares lying wholly in one class of the truth, as map polygons."""
    rng = np.random.default_rng(seed)
    polys, values = [], []
    for cls in (1, 0):
        found = 0
        for r, c in rng.permutation(np.argwhere(truth[:-size, :-size] == cls)):
            if found == k:
                break
            if (truth[r:r + size, c:c + size] == cls).all():
                (x0, y0), (x1, y1) = transform * (c, r), transform * (c + size, r + size)
                polys.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
                values.append(cls)
                found += 1
    return polys, values


def layer(path, polys, values, crs="EPSG:32632", field="change"):
    gpd.GeoDataFrame({field: values}, geometry=polys, crs=crs).to_file(path)
    return path


def f1(mask: np.ndarray, truth: np.ndarray) -> float:
    tp, fp, fn = ((mask == 1) & (truth == 1)).sum(), ((mask == 1) & (truth == 0)).sum(), ((mask == 0) & (truth == 1)).sum()
    return 2 * tp / (2 * tp + fp + fn)


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    before, after, truth = scene(root / "a", seed=1)
    rois = layer(root / "rois.gpkg", *squares(truth, 6))
    r = invoke("detect", before, after, "--labels", rois, "--out", root / "out", "--no-preview", "--quiet")
    assert r.exit_code == 0, r.output
    return root, before, after, truth, rois


def test_labels_teach_which_change_counts(fitted, tmp_path):
    root, before, after, truth, rois = fitted
    mask = read(root / "out" / "change_mask.tif")
    assert f1(mask, truth) > 0.85  # the roofs, not the fields
    r = invoke("detect", before, after, "--model", "cva", "--out", tmp_path / "cva", "--no-preview", "--quiet")
    assert r.exit_code == 0, r.output
    assert f1(read(tmp_path / "cva" / "change_mask.tif"), truth) < 0.5  # label-free: fields flagged too
    summary = json.loads((root / "out" / "detect.json").read_text())
    fit = summary["labels"]
    assert summary["model"] == "pixel_classifier"
    assert fit["polygons"] == {"changed": 6, "unchanged": 6}
    assert fit["labelled_pixels"] == {"changed": 96, "unchanged": 96}  # 4x4 squares
    assert fit["validation"]["scheme"] == "leave-one-polygon-out"
    assert fit["validation"]["polygons_scored"] == 12 and fit["validation"]["f1"] > 0.9


def test_fitted_model_has_a_card_and_applies_to_a_neighbouring_pair(fitted, tmp_path):
    root, _, _, _, rois = fitted
    meta = read_meta(root / "out" / "fitted.safetensors")
    import hashlib

    assert meta.model_extra["fit"]["sha256"] == hashlib.sha256(rois.read_bytes()).hexdigest()
    assert meta.card["band_count"] == 3 and meta.card["gsd_m"] == pytest.approx([10.0, 10.0], rel=1e-3)
    assert meta.card["scores"]["validation"]["polygons_scored"] == 12
    before, after, truth = scene(tmp_path / "b", seed=7)
    r = invoke("detect", before, after, "--model", root / "out" / "fitted.safetensors", "--out", tmp_path / "o",
               "--no-preview", "--quiet")
    assert r.exit_code == 0, r.output
    assert f1(read(tmp_path / "o" / "change_mask.tif"), truth) > 0.8


def test_identical_dates_flag_nothing(fitted, tmp_path):
    root, before, _, _, rois = fitted
    r = invoke("detect", before, before, "--model", root / "out" / "fitted.safetensors", "--out", tmp_path / "o",
               "--no-preview", "--quiet")
    assert r.exit_code == 0, r.output
    assert read(tmp_path / "o" / "change_mask.tif").max() == 0
    assert read(tmp_path / "o" / "change_prob.tif").max() == 0


def test_tiles_stitch_exactly(fitted, tmp_path):
    """The model's halo is its whole reach: small tiles give the whole-image map."""
    root, before, after, _, _ = fitted
    model = root / "out" / "fitted.safetensors"
    for tile in (48, 512):
        r = invoke("detect", before, after, "--model", model, "--tile", tile, "--out", tmp_path / str(tile),
                   "--no-preview", "--no-polygons", "--quiet")
        assert r.exit_code == 0, r.output
    a, b = read(tmp_path / "48" / "change_prob.tif"), read(tmp_path / "512" / "change_prob.tif")
    assert np.abs(a.astype(float) - b.astype(float)).max() < 1e-5


def test_raster_labels_and_windows(tmp_path, monkeypatch):
    """A 1/0/255 raster is read as labels, patch by patch; reading in small windows gives the same counts."""
    from cdtool.labels import read as label_read
    from cdtool.labels.read import Grid, open_labels, sample_labels

    before, after, truth = scene(tmp_path, seed=2)
    paint = np.full(truth.shape, 255, np.uint8)
    paint[truth == 1] = 1
    paint[:20, :20][truth[:20, :20] == 0] = 0
    paint[-20:, -20:][truth[-20:, -20:] == 0] = 0
    labels = write_tif(tmp_path / "paint.tif", paint, transform=T, nodata=255)
    grid = Grid(*truth.shape, T, rasterio.crs.CRS.from_epsg(32632))
    whole = sample_labels(open_labels(labels, grid), grid, 10_000)
    assert whole.pixels == {1: int((truth == 1).sum()), 0: int((paint == 0).sum())}
    monkeypatch.setattr(label_read, "WINDOW", 64)
    pieces = sample_labels(open_labels(labels, grid), grid, 10_000)
    assert pieces.pixels == whole.pixels and len(np.unique(pieces.group)) >= len(np.unique(whole.group))
    r = invoke("detect", before, after, "--labels", labels, "--out", tmp_path / "o", "--no-preview", "--quiet")
    assert r.exit_code == 0, r.output
    assert f1(read(tmp_path / "o" / "change_mask.tif"), truth) > 0.85


@pytest.mark.filterwarnings("ignore:.*crs.*")  # a layer in the pixel grid has no CRS, as intended
def test_png_pair_polygons_in_pixel_grid(tmp_path):
    from PIL import Image

    _, _, truth = scene(tmp_path / "g", seed=3)
    for name in ("before", "after"):
        with rasterio.open(tmp_path / "g" / f"{name}.tif") as ds:
            Image.fromarray(np.clip(ds.read(), 0, 255).astype(np.uint8).transpose(1, 2, 0)).save(tmp_path / f"{name}.png")
    rois = layer(tmp_path / "rois.geojson", *squares(truth, 6, transform=Affine(1, 0, 0, 0, -1, 0)), crs=None)
    r = invoke("detect", tmp_path / "before.png", tmp_path / "after.png", "--labels", rois, "--out", tmp_path / "o",
               "--no-preview", "--quiet")
    assert r.exit_code == 0, r.output
    mask = np.asarray(Image.open(tmp_path / "o" / "change_mask.png").convert("LA"))[..., 0]
    assert f1((mask == 255).astype(np.uint8), truth) > 0.85


def test_warnings_for_few_polygons_in_one_corner(tmp_path):
    before, after, truth = scene(tmp_path, seed=4)
    corner = truth.copy()
    corner[60:, :] = 2
    corner[:, 60:] = 2  # squares only where neither class is 2: the top-left corner
    polys, values = squares(corner, 2)
    rois = layer(tmp_path / "rois.gpkg", polys, values)
    r = invoke("detect", before, after, "--labels", rois, "--out", tmp_path / "o", "--no-preview", "--quiet")
    assert r.exit_code == 0, r.output
    assert "only 2 changed polygon(s)" in r.output and "cover one corner only" in r.output


@pytest.mark.parametrize("case, message", [
    ("outside", "no labelled pixel lies over the pair"),
    ("one_class", "every labelled pixel over the pair is changed (1)"),
    ("no_field", "has no field 'change'"),
    ("bad_value", "values other than 1 (changed) and 0 (unchanged): 2"),
    ("unreadable", "cannot read as a polygon layer"),
    ("bad_crs", "cannot be transformed"),
    ("bad_raster", "holds values other than 1 (changed), 0 (unchanged) and nodata"),
])
def test_bad_labels_one_line(tmp_path, case, message):
    before, after, truth = scene(tmp_path, seed=5, n=64)
    polys, values = squares(truth, 3)
    rois = tmp_path / "rois.gpkg"
    if case == "outside":
        layer(rois, [shapely.affinity.translate(p, 1e5, 0) for p in polys], values)
    elif case == "one_class":
        layer(rois, polys[:3], values[:3])
    elif case == "no_field":
        layer(rois, polys, values, field="klass")
    elif case == "bad_value":
        layer(rois, polys, [2 if v else 0 for v in values])
    elif case == "unreadable":
        rois.write_bytes(b"not a geopackage")
    elif case == "bad_crs":  # a CRS whose area of use is far away: the transformation has no finite result
        layer(rois, [shapely.box(1e9, 1e9, 1e9 + 10, 1e9 + 10)] * len(values), values, crs="EPSG:4326")
    elif case == "bad_raster":
        rois = write_tif(tmp_path / "paint.tif", np.full(truth.shape, 3, np.uint8), transform=T)
    r = invoke("detect", before, after, "--labels", rois, "--out", tmp_path / "o", "--quiet")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and str(rois) in lines[0] and message in lines[0], r.output
    assert not (tmp_path / "o" / "fitted.safetensors").exists() and not (tmp_path / "o" / "detect.json").exists()


def test_labels_with_model_refused_and_outputs_kept(fitted, tmp_path):
    root, before, after, _, rois = fitted
    r = invoke("detect", before, after, "--labels", rois, "--model", "cva", "--out", tmp_path / "o", "--quiet")
    assert r.exit_code == 2 and "leave out --model cva" in r.output
    stamp = (root / "out" / "fitted.safetensors").stat().st_mtime_ns
    r = invoke("detect", before, after, "--labels", rois, "--out", root / "out", "--quiet")
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (root / "out" / "fitted.safetensors").stat().st_mtime_ns == stamp


def test_labels_init_layer(tmp_path):
    before, _, _ = scene(tmp_path, seed=6, n=64)
    r = invoke("labels", "init", tmp_path / "rois.gpkg", "--like", before)
    assert r.exit_code == 0, r.output
    import pyogrio

    info = pyogrio.read_info(tmp_path / "rois.gpkg")
    assert info["crs"] == "EPSG:32632" and list(info["fields"]) == ["change"] and info["features"] == 0
    assert info["geometry_type"] == "Polygon"
    qml = (tmp_path / "rois.qml").read_text()
    assert 'attr="change"' in qml and "227,26,28,255" in qml and "31,120,180,255" in qml
    r = invoke("labels", "init", tmp_path / "rois.gpkg", "--like", before)
    assert r.exit_code == 2 and "--overwrite" in r.output
