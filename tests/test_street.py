"""Street-level pairs: aligning photos and panoramas by their content (`--align` without a CRS), the street
default, and synthetic street pairs made here from the real TSUNAMI panorama (seeded), whose viewpoint
change, changes and lighting are known."""

import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.data.street_synthetic import street_pair
from cdtool.io.image_align import ESTIMATE_PX, grey_copy
from cdtool.io.pair import open_pair
from cdtool.windows import Tile

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def panorama(shared_data):
    return np.asarray(Image.open(shared_data / "streetview" / "tsunami_pcd" / "t0.jpg").convert("RGB"))


def write_pair(folder, pair):
    folder.mkdir(exist_ok=True)
    Image.fromarray(pair.before).save(folder / "before.png")
    Image.fromarray(pair.after).save(folder / "after.png")
    return folder / "before.png", folder / "after.png"


def alignment_error(pair, found) -> np.ndarray:
    """Pixels between where the estimate sends BEFORE's pixels and where they truly are in AFTER, measured back
    on BEFORE's grid (columns modulo the width for panoramas), over a grid of interior points."""
    h, w = pair.before.shape[:2]
    rows, cols = np.mgrid[8:h - 8:4, 0:w:4].astype(float)
    x, y = found.map(cols, rows)
    bx, by = pair.after_to_before(x, y)
    dx = bx - cols
    if pair.panorama:
        dx = (dx + w / 2) % w - w / 2
    return np.hypot(dx, by - rows)


def f1(out, truth) -> float:
    mask = np.asarray(Image.open(out / "change_mask.png"))
    hit, valid = mask[..., 0] > 0, mask[..., 1] > 0
    t, p = truth[valid], hit[valid]
    return 2 * (t & p).sum() / max(1, 2 * (t & p).sum() + (~t & p).sum() + (t & ~p).sum())


@pytest.mark.parametrize("seed", [0, 3])
def test_photo_alignment_recovers_the_homography(panorama, tmp_path, seed):
    pair = street_pair(panorama, seed, panorama=False)
    with open_pair(*write_pair(tmp_path, pair), align=True) as rp:
        found = rp.after.alignment
    err = alignment_error(pair, found)
    assert err.max() < 0.5, err.max()  # measured 0.11 px for both seeds
    assert found.inliers > 300 and found.residual_px < 0.6  # measured 858 and 605 inliers, 0.28 and 0.23 px


@pytest.mark.parametrize("seed", [0, 2])
def test_panorama_alignment_recovers_shift_and_homography(panorama, tmp_path, seed):
    pair = street_pair(panorama, seed, panorama=True)
    with open_pair(*write_pair(tmp_path, pair), align=True, wrap=True) as rp:
        found = rp.after.alignment
    err = alignment_error(pair, found)
    assert err.max() < 0.5, err.max()  # measured 0.11 and 0.09 px
    # the heading change (the true shift is AFTER -> BEFORE, the estimate BEFORE -> AFTER)
    assert abs(found.shift_px + pair.shift) < 5  # measured 3.1 and 1.2 px (the homography takes the rest)


def test_panorama_seam_stays_seamless(panorama, tmp_path):
    """Across the 360° seam the warped AFTER continues, valid and as close to the truth as anywhere else."""
    pair = street_pair(panorama, 1, panorama=True)
    h, w = pair.before.shape[:2]
    with open_pair(*write_pair(tmp_path, pair), align=True, wrap=True) as rp:
        data, valid = rp.read(Tile(0, -64, h, 128))  # columns w-64 .. w-1, then 0 .. 63
        whole, _ = rp.read(Tile(0, 0, h, w))
    inner = slice(12, h - 12)  # the rows the viewpoint change keeps inside AFTER
    assert valid[inner].all()
    truth = np.concatenate([pair.lit_on_before[:, -64:], pair.lit_on_before[:, :64]], axis=1)
    err = np.abs(data[1].transpose(1, 2, 0) - truth).mean(axis=-1)
    unchanged = ~np.concatenate([pair.changed[:, -64:], pair.changed[:, :64]], axis=1)
    column_err = np.array([err[inner, c][unchanged[inner, c]].mean() for c in range(128)])
    assert column_err[60:68].max() < 1.5 * np.median(column_err) + 1.0, column_err[60:68]
    # the same pixels as a read that does not cross the seam
    np.testing.assert_array_equal(data[1][..., 64:], whole[1][..., :64])
    np.testing.assert_array_equal(data[1][..., :64], whole[1][..., -64:])


def test_windows_equal_the_whole_warp(panorama, tmp_path):
    """The warp serves detect's windowed reads: any window equals the same window of a whole-image read."""
    pair = street_pair(panorama, 2, panorama=False)
    h, w = pair.before.shape[:2]
    with open_pair(*write_pair(tmp_path, pair), align=True) as rp:
        whole, whole_valid = rp.read(Tile(0, 0, h, w))
        for tile in (Tile(0, 0, 100, 130), Tile(37, 200, 150, 300), Tile(h - 50, w - 70, 50, 70)):
            part, part_valid = rp.read(tile)
            np.testing.assert_array_equal(part, whole[:, :, tile.row:tile.row_stop, tile.col:tile.col_stop])
            np.testing.assert_array_equal(part_valid, whole_valid[tile.row:tile.row_stop, tile.col:tile.col_stop])
        outside = ~whole_valid
    assert 0 < outside.mean() < 0.1  # what falls outside AFTER is nodata, and little does


def test_large_photos_are_estimated_on_a_bounded_copy(tmp_path):
    """A 12 Mpx image is read about ESTIMATE_PX large for the estimate, never whole."""
    rng = np.random.default_rng(0)
    path = tmp_path / "big.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4000, height=3000, count=3, dtype="uint8", tiled=True) as ds:
        ds.write(rng.integers(0, 255, (3, 3000, 4000), dtype=np.uint8))
    with rasterio.open(path) as ds:
        grey, valid, (fx, fy) = grey_copy(ds, [1, 2, 3])
    assert grey.size <= 1.01 * ESTIMATE_PX and valid.all()
    assert fx == pytest.approx(4000 / grey.shape[1]) and fx > 3


def test_detect_aligned_beats_unaligned(panorama, tmp_path):
    pair = street_pair(panorama, 0, panorama=True)
    before, after = write_pair(tmp_path, pair)
    plain = invoke("detect", before, after, "--wrap", "-o", tmp_path / "plain", "--no-polygons", "--no-preview")
    aligned = invoke("detect", before, after, "--wrap", "--align", "-o", tmp_path / "aligned", "--no-polygons",
                     "--no-preview")
    assert plain.exit_code == 0 and aligned.exit_code == 0, aligned.output
    unaligned_f1, aligned_f1 = f1(tmp_path / "plain", pair.changed), f1(tmp_path / "aligned", pair.changed)
    assert aligned_f1 > unaligned_f1 + 0.5, (aligned_f1, unaligned_f1)  # measured 0.85 against 0.09 (irmad_local)
    line = next(ln for ln in aligned.output.splitlines() if ln.startswith("aligned AFTER onto BEFORE"))
    assert "circular shift" in line and "feature matches" in line and "residual" in line
    record = json.loads((tmp_path / "aligned" / "detect.json").read_text())["alignment"]
    assert record["inliers"] > 300 and record["residual_px"] < 1.0 and len(record["matrix"]) == 3
    assert json.loads((tmp_path / "plain" / "detect.json").read_text())["alignment"] is None


def test_identical_dates_flag_nothing_when_aligned(panorama, tmp_path):
    pair = street_pair(panorama, 0, panorama=True)
    before, _ = write_pair(tmp_path, pair)
    r = invoke("detect", before, before, "--wrap", "--align", "-o", tmp_path / "o", "--no-polygons", "--no-preview")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "detect.json").read_text())
    assert summary["changed_share"] <= 0.001
    assert summary["valid_pixels"] >= 0.99 * pair.before.shape[0] * pair.before.shape[1]
    assert np.allclose(summary["alignment"]["matrix"], np.eye(3), atol=1e-3)


def test_unrelated_images_are_refused_in_one_line(shared_data, tmp_path):
    street = shared_data / "streetview" / "tsunami_pcd" / "t0.jpg"
    aerial = shared_data / "levir" / "A" / "test_2_0000_0000.png"
    r = invoke("detect", street, aerial, "--align", "--wrap", "-o", tmp_path / "o")
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "cannot be aligned" in lines[0] and "feature matches" in lines[0], r.output
    assert not (tmp_path / "o" / "change_mask.png").exists()


def test_real_tsunami_pair_aligns(shared_data):
    """The one real street pair: its heading differs little; its matches lie around the seam only (parallax and
    the tsunami changed the rest), so a similarity is fitted, not a homography; still far more matches agree
    than for unrelated images (at most 6)."""
    folder = shared_data / "streetview" / "tsunami_pcd"
    with open_pair(folder / "t0.jpg", folder / "t1.jpg", align=True, wrap=True) as rp:
        found = rp.after.alignment
    assert found.model == "similarity" and found.inliers >= 20 and found.residual_px < 1.0  # 27 inliers, 0.55 px
    assert abs(found.shift_px) < 10  # measured -1.3 px


def test_street_default_says_why(panorama, tmp_path):
    pair = street_pair(panorama, 0, panorama=True)
    before, after = write_pair(tmp_path, pair)
    auto = invoke("detect", before, after, "--wrap", "-o", tmp_path / "a", "--no-polygons", "--no-preview")
    said = invoke("detect", before, after, "--scene", "street", "-o", tmp_path / "s", "--no-polygons",
                  "--no-preview")
    assert auto.exit_code == 0 and said.exit_code == 0, said.output
    assert "model irmad_local (label-free, street-level pair: a 360° panorama without a CRS" in auto.output
    assert "street-level pair: --scene street" in said.output
    for out in ("a", "s"):
        assert json.loads((tmp_path / out / "detect.json").read_text())["model"] == "irmad_local"
    bad = invoke("detect", before, after, "--scene", "orbit", "-o", tmp_path / "b")
    assert bad.exit_code == 2 and "'--scene': 'orbit' is not one of auto, street" in bad.output


def test_lighting_and_viewpoint_alone_flag_little(panorama, tmp_path):
    """Nothing pasted: after --align only the lighting change is left, which the street default cancels locally;
    cva, standardised per image only, flags it."""
    pair = street_pair(panorama, 7, panorama=True, objects=0)
    before, after = write_pair(tmp_path, pair)
    shares = {}
    for model in ("default", "cva"):
        args = [] if model == "default" else ["--model", model]
        r = invoke("detect", before, after, "--wrap", "--align", "-o", tmp_path / model, "--no-polygons",
                   "--no-preview", *args)
        assert r.exit_code == 0, r.output
        summary = json.loads((tmp_path / model / "detect.json").read_text())
        shares[summary["model"]] = summary["changed_share"]
    assert shares["irmad_local"] < 0.01 and shares["cva"] > 0.05, shares  # measured 0.30 % and 11.8 %


def test_locally_matched_tiles_equal_the_whole_image():
    """The local matching's box widens the halo: a tile's pixels further than it from the tile's edges score as
    in the whole image, so detect's stitched maps equal whole-image maps."""
    import torch

    from cdtool.models.registry import create_model

    torch.manual_seed(0)
    before = torch.randn(1, 3, 96, 160)
    after = before * torch.linspace(0.7, 1.2, 160) + 0.05 * torch.randn(1, 3, 96, 160)  # lighting, noise
    after[..., 30:50, 60:90] = torch.randn(1, 3, 20, 30)
    model = create_model("irmad_local", radius=12).eval()
    model.fit([(before[0], after[0], torch.ones(96, 160, dtype=torch.bool))])
    whole = model(before, after)
    halo = model.halo
    assert halo == 12
    tile = model(before[..., 10:80, 20:130], after[..., 10:80, 20:130])
    inner = (slice(None), slice(None), slice(halo, -halo), slice(halo, -halo))
    torch.testing.assert_close(tile[inner], whole[..., 10:80, 20:130][inner], rtol=1e-5, atol=1e-5)
    assert whole[..., 30:50, 60:90].mean() > 0.9 and whole[..., :, :40].mean() < 0.2
