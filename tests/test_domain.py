"""Models know their domain: GSD from rasters, band layouts, cards, the default chosen by domain, and
scale-aware inference that keeps maps consistent across GSDs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from cdtool.domain import SENTINEL2, InputDomain, ModelCard, mismatches, model_bands, scale_factor
from cdtool.io.checkpoint import load_checkpoint, save_checkpoint
from cdtool.errors import InputError
from cdtool.inference import detector as detector_module
from cdtool.inference.detect import DetectOptions, detect
from cdtool.inference.rescale import Rescaled
from cdtool.io.pair import ground_sampling_distance, open_pair
from cdtool.models.registry import create_model


def rgb_domain(gsd=None, names=("band 1", "band 2", "band 3"), colors=("red", "green", "blue")):
    return InputDomain(3, list(names), list(colors), "uint8", gsd, "transform" if gsd else "unknown")


def test_gsd_from_projected_and_geographic_transforms():
    utm = ground_sampling_distance(rasterio.crs.CRS.from_epsg(32632), Affine(2, 0, 500000, 0, -2, 5000000), 10, 10)
    assert utm == pytest.approx(2, rel=1e-3)  # UTM's scale factor 0.9996 on the central meridian
    # Web Mercator's "metres" stretch with latitude: at 60 degrees N a 2-unit pixel is 1 m on the ground
    merc = ground_sampling_distance(rasterio.crs.CRS.from_epsg(3857), Affine(2, 0, 0, 0, -2, 8399737.89), 10, 10)
    assert merc == pytest.approx(1.0, rel=1e-2)
    # 1e-4 degrees at the equator is about 11.1 m east-west and 11.06 m north-south
    g = ground_sampling_distance(rasterio.crs.CRS.from_epsg(4326), Affine(1e-4, 0, 0, 0, -1e-4, 0.0005), 10, 10)
    assert 11.0 < g < 11.2
    assert ground_sampling_distance(None, Affine.identity(), 10, 10) is None


def test_gsd_of_real_rasters(shared_data):
    with open_pair(shared_data / "oscd/rennes/imgs_1", shared_data / "oscd/rennes/imgs_2") as pair:
        assert 9 < pair.info.gsd < 12  # 10 m Sentinel-2 bands, EPSG:4326, measured on the ellipsoid
    png = sorted((shared_data / "levir/A").glob("*.png"))[0]
    with open_pair(png, png) as pair:
        assert pair.info.gsd is None and pair.info.colors == ["red", "green", "blue"]


@pytest.mark.parametrize("names,colors,layout", [
    (["x_B04", "x_B03", "x_B02"], ["undefined"] * 3, "rgb"),
    (["x_B08", "x_B04", "x_B03"], ["undefined"] * 3, None),
    (["TM (0.660 Micrometers)", "TM (0.569 Micrometers)", "TM (0.485 Micrometers)"], ["undefined"] * 3, "rgb"),
    (["TM (0.840 Micrometers)", "TM (0.660 Micrometers)", "TM (0.569 Micrometers)"], ["undefined"] * 3, None),
    (["nir", "red", "green"], ["gray"] * 3, None),
    (["band 1", "band 2", "band 3"], ["red", "green", "blue"], "rgb"),
])
def test_band_layout_from_names(names, colors, layout):
    assert rgb_domain(names=names, colors=colors).layout == layout


def test_mismatches_and_scale_factor():
    card = ModelCard(layout="rgb", band_count=3, gsd_m=(0.5, 2.0), usable_gsd_m=(0.3, 4.0))
    assert mismatches(card, rgb_domain(1.0)) == []
    assert mismatches(card, rgb_domain(None)) == []  # unknown GSD: the caller says so, nothing to compare
    assert "GSD 10 m" in mismatches(card, rgb_domain(10.0))[0]
    assert "13 bands" in mismatches(card, InputDomain(13, ["b"] * 13, [], "uint16", 10.0, "transform"))[0]
    assert scale_factor(card, 1.0) == 1.0
    assert scale_factor(card, 0.25) == pytest.approx(0.5)  # shrink 0.25 m windows to 0.5 m
    assert scale_factor(card, 3.0) == pytest.approx(1.5)  # enlarge 3 m windows to 2 m
    assert scale_factor(card, 100.0) == 4.0  # never more than MAX_RESAMPLE
    assert scale_factor(ModelCard(), 3.0) == 1.0


def test_card_is_checked_when_read():
    with pytest.raises(InputError, match="gsd_m"):
        ModelCard.from_card({"gsd_m": [2.0, 1.0]})
    assert ModelCard.from_card(None, band_count=3).value_range == "not recorded"


def test_rescaled_model_returns_the_input_grid():
    model = create_model("siam_diff_unet").eval()
    for factor in (0.5, 1.7, 3.0):
        wrapped = Rescaled(model, factor).eval()
        x = torch.randn(1, 3, 45, 61)
        with torch.no_grad():
            assert wrapped(x, x + 0.5).shape == (1, 1, 45, 61)
    with pytest.raises(ValueError):
        Rescaled(create_model("cva"), 0.0)


def _card_checkpoint(path, gsd_m, usable=None):
    """The shipped default's weights under a card of our choosing."""
    rgb = [p for p in detector_module.shipped_weights() if p.stem == "siam_diff_unet_rgb"]
    states, meta = load_checkpoint(rgb[0])
    meta = dict(meta.to_json(), card=dict(meta.card or {}, gsd_m=list(gsd_m), usable_gsd_m=usable))
    return save_checkpoint(path, states, meta)


def _downsample_png(src, dst, factor: int):
    with rasterio.open(src) as ds:
        a = ds.read(out_shape=(ds.count, ds.height // factor, ds.width // factor),
                    resampling=rasterio.enums.Resampling.average)
    with rasterio.open(dst, "w", driver="PNG", width=a.shape[2], height=a.shape[1], count=3, dtype="uint8") as out:
        out.write(a)
    return dst


def _scores(folder):
    with rasterio.open(folder / "change_prob.png") as ds:
        return ds.read(1).astype(np.float32) / 255


def test_maps_agree_across_gsds(shared_data, tmp_path):
    """One LEVIR pair at 0.5 m, 1 m and 2 m: the model (card: trained at 0.5 m) sees 0.5 m windows each time,
    so the coarser maps match the 0.5 m map averaged onto their grids."""
    ckpt = _card_checkpoint(tmp_path / "m.safetensors", (0.5, 0.5))
    name = "test_2_0000_0000.png"
    a, b = shared_data / "levir/A" / name, shared_data / "levir/B" / name
    opts = dict(model=str(ckpt), polygons=False, tile=128, overlap=48)
    detect(a, b, tmp_path / "fine", DetectOptions(gsd=0.5, **opts))
    fine = _scores(tmp_path / "fine")
    for k in (2, 4):
        a2, b2 = _downsample_png(a, tmp_path / f"a{k}.png", k), _downsample_png(b, tmp_path / f"b{k}.png", k)
        r = detect(a2, b2, tmp_path / f"coarse{k}", DetectOptions(gsd=0.5 * k, **opts))
        assert r.extra["model_choice"]["scale"] == k
        n = 256 // k
        expected = fine.reshape(n, k, n, k).mean(axis=(1, 3))
        corr = float(np.corrcoef(expected.ravel(), _scores(tmp_path / f"coarse{k}").ravel())[0, 1])
        assert corr > 0.75, (k, corr)


def test_rescaled_detection_streams_like_one_window(shared_data, tmp_path):
    """Small tiles at 2x resampling stitch to the map of one big window."""
    ckpt = _card_checkpoint(tmp_path / "m.safetensors", (0.5, 0.5))
    name = "test_2_0000_0000.png"
    a, b = shared_data / "levir/A" / name, shared_data / "levir/B" / name
    detect(a, b, tmp_path / "big", DetectOptions(model=str(ckpt), gsd=1.0, tile=1024, polygons=False))
    detect(a, b, tmp_path / "small", DetectOptions(model=str(ckpt), gsd=1.0, tile=128, overlap=64, polygons=False))
    diff = np.abs(_scores(tmp_path / "big") - _scores(tmp_path / "small"))
    assert np.percentile(diff, 99) < 0.05 and diff.mean() < 0.01


def test_default_follows_the_domain(tmp_path, make_tif, monkeypatch):
    """A card that covers 0.3-4 m takes an RGB input at 1 m; at 30 m or with 5 bands the label-free default
    runs, and detect.json says which and why; a model named out of its domain runs with a warning."""
    ckpt = _card_checkpoint(tmp_path / "default_test.safetensors", (0.5, 2.0), usable=[0.3, 4.0])
    monkeypatch.setattr(detector_module, "shipped_weights", lambda: [ckpt])
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 96, 96)).astype(np.uint8)
    # a shipped model is known by its shipped name, not its architecture
    for gsd, expect in ((1.0, "default_test"), (30.0, detector_module.LABEL_FREE_DEFAULT["rgb"])):
        t = Affine(gsd, 0, 600000, 0, -gsd, 5000000)
        a, b = make_tif(f"a{gsd}.tif", img, transform=t), make_tif(f"b{gsd}.tif", img[::-1].copy(), transform=t)
        r = detect(a, b, tmp_path / f"out{gsd}", DetectOptions(polygons=False))
        record = json.loads((tmp_path / f"out{gsd}" / "detect.json").read_text())["model_choice"]
        assert r.model == expect and record["model"] == expect and record["reason"]
    five = rng.integers(0, 255, (5, 64, 64)).astype(np.uint8)
    r = detect(make_tif("a5.tif", five), make_tif("b5.tif", five), tmp_path / "five", DetectOptions(polygons=False))
    assert r.model == detector_module.LABEL_FREE_DEFAULT["multispectral"]
    t = Affine(30.0, 0, 600000, 0, -30.0, 5000000)
    r = detect(make_tif("a30.tif", img, transform=t), make_tif("b30.tif", img, transform=t), tmp_path / "named",
               DetectOptions(model=str(ckpt), polygons=False))
    assert "outside its training domain" in r.extra["model_choice"]["warnings"][0]
    with pytest.raises(InputError, match="trained on 3"):
        detect(make_tif("a5b.tif", five), make_tif("b5b.tif", five), tmp_path / "bad", DetectOptions(model=str(ckpt)))


@pytest.mark.parametrize("args,message", [({"width": 200000}, "do not fit"), ({"width": -3}, "do not fit"),
                                          ("x", "not a mapping"), ({"nope": 1}, "do not fit")])
def test_checkpoint_metadata_is_checked_before_the_model_is_built(tmp_path, args, message):
    """A card or arguments asking for a huge model fail on the meta device, before any allocation."""
    rgb = [p for p in detector_module.shipped_weights() if p.stem == "siam_diff_unet_rgb"]
    states, meta = load_checkpoint(rgb[0])
    path = save_checkpoint(tmp_path / "bad.safetensors", states, dict(meta.to_json(), model={"name": "siam_diff_unet", "args": args}))
    with pytest.raises(InputError, match=message):
        detector_module.load_detector(str(path))


S2_NAMES = [f"T31UDQ_B{b.zfill(2)}" for b in SENTINEL2]  # B01 ... B8A ... B12, as L1C files name them


def s2_domain(names):
    return InputDomain(len(names), list(names), ["undefined"] * len(names), "uint16", 10.0, "transform")


def test_sentinel2_bands_are_found_by_name_whatever_the_order():
    card = ModelCard(layout="sentinel2", band_count=12, band_names=[f"B{b}" for b in SENTINEL2 if b != "10"])
    l1c = s2_domain(S2_NAMES)
    assert l1c.layout == "sentinel2" and mismatches(card, l1c) == []
    assert model_bands(card, l1c) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13]  # B10 (the 11th file band) left out
    l2a = s2_domain([n for n in S2_NAMES if not n.endswith("B10")])
    assert model_bands(card, l2a) is None and mismatches(card, l2a) == []  # already the model's bands, in order
    shuffled = s2_domain(S2_NAMES[::-1] + ["SCL"])
    picks = model_bands(card, shuffled)
    assert [shuffled.band_names[i - 1][-3:] for i in picks] == [n[-3:] for n in S2_NAMES if not n.endswith("B10")]
    no_swir = s2_domain([n for n in S2_NAMES if not n.endswith(("B11", "B12"))])
    assert no_swir.layout is None and "B11, B12" in mismatches(card, no_swir)[0]


def _s2_file(path, data, names):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32632", transform=Affine(10, 0, 600000, 0, -10, 5000000)) as ds:
        ds.write(data)
        for i, n in enumerate(names, 1):
            ds.set_band_description(i, n)
    return path


def test_a_sentinel2_model_reads_its_bands_by_name(tmp_path):
    """A 12-band model on a 13-band L1C stack reads the same map whatever the order of the bands in the file,
    and records the file bands it read."""
    torch.manual_seed(0)
    model = create_model("siam_diff_unet", in_channels=12, width=4)
    card = {"layout": "sentinel2", "band_count": 12, "band_names": [f"B{b}" for b in SENTINEL2 if b != "10"],
            "gsd_m": [8.0, 12.5]}
    ckpt = save_checkpoint(tmp_path / "s2.safetensors", {"model": model.state_dict()},
                           {"model": {"name": "siam_diff_unet", "args": {"in_channels": 12, "width": 4}},
                            "normalization": {"mode": "per-image"}, "threshold": 0.5, "card": card})
    rng = np.random.default_rng(0)
    before = rng.integers(0, 3000, (13, 64, 64)).astype(np.uint16)
    after = before.copy()
    after[:, 20:40, 20:40] = rng.integers(0, 3000, (13, 20, 20))
    order = rng.permutation(13)
    maps = []
    for tag, idx in (("ordered", np.arange(13)), ("shuffled", order)):
        names = [S2_NAMES[i] for i in idx]
        a = _s2_file(tmp_path / f"a_{tag}.tif", before[idx], names)
        b = _s2_file(tmp_path / f"b_{tag}.tif", after[idx], names)
        r = detect(a, b, tmp_path / tag, DetectOptions(model=str(ckpt), polygons=False, preview=False))
        read = json.loads((tmp_path / tag / "detect.json").read_text())["options"]["bands"]
        assert [names[i - 1][-3:] for i in read] == [n[-3:] for n in S2_NAMES if not n.endswith("B10")]
        assert r.model == "siam_diff_unet"
        with rasterio.open(tmp_path / tag / "change_prob.tif") as ds:
            maps.append(ds.read(1))
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)
