"""A bounded fuzz of the loaders a stranger's file reaches: recipes, checkpoints, rasters and vectors, mutated
at random (hypothesis). Whatever the mutation, the loader returns a valid object or refuses with an InputError (one
line, exit 2 in the CLI); nothing else escapes, nothing runs, nothing large is allocated."""

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from cdtool.engine.recipe import load_recipe
from cdtool.errors import InputError
from cdtool.inference.detector import load_detector
from cdtool.io.checkpoint import save_checkpoint
from cdtool.models.registry import create_model
from engine_fixtures import tiny_recipe

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                                  st.integers(), max_size=2))


def _paths(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))


@FUZZ
@given(data=st.data())
def test_mutated_recipes_load_or_are_refused_in_one_line(tmp_path, data):
    tree = tiny_recipe(tmp_path)
    paths = list(_paths(tree))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = tree
        for k in path[:-1]:
            node = node[k] if isinstance(node, dict) and isinstance(node.get(k), dict) else {}
        if data.draw(st.booleans()):
            node.pop(path[-1], None)
        else:
            node[path[-1]] = data.draw(VALUES)
    try:
        load_recipe(tree)
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc)


@FUZZ
@given(text=st.text(max_size=200))
def test_arbitrary_yaml_text_is_refused_in_one_line(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(InputError):
        load_recipe(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = create_model("fc_siam_diff", width=4, in_channels=3)
    meta = {"model": {"name": "fc_siam_diff", "args": {"width": 4, "in_channels": 3}},
            "normalization": {"mode": "per-image"}, "threshold": 0.5}
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "m.safetensors", {"model": model.state_dict()},
                           meta).read_bytes()


META_MUTATIONS = st.fixed_dictionaries({}, optional={
    "width": st.one_of(st.integers(-10, 10**6), st.text(max_size=4), st.none()),
    "in_channels": st.one_of(st.integers(-3, 10**5), st.floats(allow_nan=True)),
    "extra": st.integers(),
    "name": st.one_of(st.text(max_size=8), st.sampled_from(["cva", "cosimnet", "siamese_patch"])),
    "threshold": st.one_of(st.floats(allow_nan=True), st.text(max_size=5), st.none()),
    "normalization": st.one_of(st.dictionaries(st.text(max_size=5), st.integers(), max_size=2), st.none()),
})


@FUZZ
@given(mutation=META_MUTATIONS)
def test_checkpoints_with_mutated_metadata_load_or_are_refused(tmp_path, checkpoint, mutation):
    header_len = struct.unpack("<Q", checkpoint[:8])[0]
    header = json.loads(checkpoint[8:8 + header_len])
    meta = json.loads(header["__metadata__"]["cdtool"])
    args = meta["model"]["args"]
    for key in ("width", "in_channels", "extra"):
        if key in mutation:
            args[key] = mutation[key]
    if "name" in mutation:
        meta["model"]["name"] = mutation["name"]
    for key in ("threshold", "normalization"):
        if key in mutation:
            meta[key] = mutation[key]
    header["__metadata__"]["cdtool"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + checkpoint[8 + header_len:])
    try:
        det = load_detector(str(path))
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    x = torch.zeros(1, 3, 32, 32)
    assert det.model(x, x).shape[-2:] == (32, 32)


@FUZZ
@given(cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=4))
def test_truncated_or_corrupted_checkpoint_bytes_are_refused(tmp_path, checkpoint, cut, flips):
    data = bytearray(checkpoint[:len(checkpoint) - cut] if cut else checkpoint)
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(data))
    try:
        load_detector(str(path))
    except InputError as exc:
        assert "\n" not in str(exc)


RASTER_FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def geotiff_bytes(tmp_path_factory):
    """A small tiled, deflated 3-band GeoTIFF, the kind of file a stranger sends, as bytes to mutate."""
    from cdtool.generated_pairs import write_pair

    before, _, _ = write_pair(tmp_path_factory.mktemp("fuzz_pair"), size=96, bands=3, seed=2, block=96)
    return before.read_bytes()


@RASTER_FUZZ
@given(cut=st.floats(0.05, 1.0), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=12))
def test_mutated_rasters_detect_or_are_refused_in_one_line(tmp_path, geotiff_bytes, cut, flips):
    """A truncated or corrupted GeoTIFF as the BEFORE date: detect succeeds (a flip in pixel data) or exits 2
    with one line naming the file, no traceback, and no outputs left."""
    from typer.testing import CliRunner

    from cdtool.cli import app

    raw = bytearray(geotiff_bytes[:max(8, int(len(geotiff_bytes) * cut))])
    for where, value in flips:
        raw[min(len(raw) - 1, int(where * len(raw)))] = value
    work = tmp_path / f"case{abs(hash((cut, tuple(flips)))) % 10**8}"
    work.mkdir()
    (work / "before.tif").write_bytes(bytes(raw))
    (work / "after.tif").write_bytes(geotiff_bytes)
    result = CliRunner().invoke(app, ["detect", str(work / "before.tif"), str(work / "after.tif"), "--out",
                                      str(work / "out"), "--model", "cva", "--no-preview", "--quiet"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "before.tif" in lines[0], result.stderr
        assert not (work / "out").exists() or not any((work / "out").iterdir())


@RASTER_FUZZ
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace")),
                      st.sampled_from(['{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": '
                                       '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 1], [1, 1], [0, 0]]]}'
                                       ', "properties": {}}]}', '{"type": "FeatureCollection", "features": []}',
                                       '{"type": "Point", "coordinates": [0]}'])))
def test_mutated_vectors_load_or_are_refused_in_one_line(tmp_path, text):
    """Building footprints from a stranger: any text as GeoJSON reads as polygons or is one InputError."""
    from cdtool.data.footprints import read_footprints

    path = tmp_path / "footprints.geojson"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        gdf, report = read_footprints(path)
    except InputError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    else:
        assert len(gdf) > 0 and all(g.geom_type in ("Polygon", "MultiPolygon") for g in gdf.geometry)
