"""Every labelled source in ../shared/data as compact arrays, for training on a machine with only torch and
numpy (no rasterio), plus the source catalogue that benchmarks/domain_table.py scores models on.

Sources (ground sampling distance):
  levir       11 LEVIR-CD crops, 256x256 RGB PNG, 0.5 m, building change, label 0/255
  dsifn       10 DSIFN-CD crops, 256x256 RGB PNG (Google Earth), ~2 m, label 0/255
  oscd_train  6 OSCD training cities, Sentinel-2 (13 single-band GeoTIFFs per date, stacked on the 10 m grid)
  oscd_test   10 OSCD test cities, same layout (labels cm/cm.png 0/255 on the 10 m grid)
  nanjing     one Landsat-5 TM pair (6-band ENVI, 800x800, 30 m), partial labels: change.bmp marks changed
              pixels, unchanged.bmp pixels known unchanged, everything else is unknown
  oscd        all 20 OSCD cities (the two above together): the Sentinel-2 domain's scenes
  egy_bcd     9 EGY-BCD New Cairo crops, 256x256 RGB PNG, about 0.25 m, building change, label 0/255
  beijing     INLPG's two Beijing pairs, 500x500 RGB JPEG (Google Earth, very high resolution; the source
              states no GSD, taken as 0.5 m), label JPEG > 127

Run from the repository root:

    python benchmarks/domain_data.py --data ../shared/data --out .domain_data

writes `<source>.npz` (np.savez_compressed) with, per pair i: `before_i`, `after_i` (3, H, W) uint8 RGB,
`mask_i` (H, W) uint8 (0 unchanged, 1 changed, 255 unknown), plus `names` (str array) and `gsd` (metres),
and `manifest.json`. OSCD reflectance (uint16) becomes uint8 by one linear stretch per city and band, shared
by both dates (0.5-99.5 percentiles of both dates' pixels together), so the dates keep their relative
radiometry. Load with `np.load(path)`; `int(f["count"])` pairs. `--bands all` writes `<source>_all.npz` with
every band in the file's own dtype (OSCD: 13 bands, uint16 reflectance x 10000, in Sentinel-2 order B01-B08,
B8A, B09-B12, listed in `band_names`) and no stretch: training standardises each date per band as detect does.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

OSCD_TRAIN = ("bercy", "paris", "rennes", "saclay_e", "pisa", "mumbai")
OSCD_TEST = ("brasilia", "chongqing", "dubai", "lasvegas", "milano", "montpellier", "norcia", "rio",
             "saclay_w", "valencia")
NANJING = ("LT51200382000124BJC00_Nanjing", "LT51200382002193BJC00_Nanjing")  # 2000-05-03, 2002-07-12
OSCD_MORE = ("abudhabi", "beihai", "beirut", "cupertino")  # training cities added to ../shared/data later
UNKNOWN = 255
PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Pair:
    """One labelled pair of a source, as files in ../shared/data."""

    source: str
    name: str
    before: Path  # an image file, or a folder of single-band files (OSCD)
    after: Path
    rgb: tuple[int, ...]  # 1-based band indexes of red, green, blue
    all_bands: tuple[int, ...]  # 1-based indexes of every band
    georeferenced: bool

    def mask(self) -> np.ndarray:
        """(H, W) uint8: 0 unchanged, 1 changed, 255 unknown (left out of scoring)."""
        return read_mask(self)

    def bands(self, which: str) -> list[int]:
        if which not in ("rgb", "all"):
            raise ValueError(f"bands must be 'rgb' or 'all', got {which!r}")
        return list(self.rgb if which == "rgb" else self.all_bands)


@dataclass(frozen=True)
class Source:
    name: str
    gsd: float  # nominal metres per pixel
    georeferenced: bool
    what: str


SOURCES = {
    "levir": Source("levir", 0.5, False, "LEVIR-CD crops (A/, B/, label/ PNG), building change"),
    "dsifn": Source("dsifn", 2.0, False, "DSIFN-CD crops (A/, B/, label/ PNG), Google Earth, ~2 m"),
    "oscd_train": Source("oscd_train", 10.0, True, "OSCD training cities " + ", ".join(OSCD_TRAIN)),
    "oscd_test": Source("oscd_test", 10.0, True, "OSCD test cities " + ", ".join(OSCD_TEST)),
    "nanjing": Source("nanjing", 30.0, True, "Landsat-5 TM Nanjing pair, partial labels"),
    "oscd": Source("oscd", 10.0, True, "all 20 OSCD cities in ../shared/data"),
    "egy_bcd": Source("egy_bcd", 0.25, False, "EGY-BCD New Cairo crops (A/, B/, label/ PNG), building change"),
    "beijing": Source("beijing", 0.5, False, "INLPG Beijing VHR pairs (JPEG, Google Earth; GSD not stated)"),
}


def _read(path: Path, band: int | None = None) -> np.ndarray:
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as ds:
            return ds.read(band) if band else ds.read()


def pairs(source: str, data: Path = DEFAULT_DATA) -> list[Pair]:
    """The labelled pairs of `source`, in a fixed order."""
    data = Path(data)
    if source in ("levir", "dsifn"):
        root = data / source
        # only pairs with a label (levir's A/test_113_0256.png is a 768x384 figure with no label)
        return [Pair(source, lab.stem, root / "A" / lab.name, root / "B" / lab.name, (1, 2, 3), (1, 2, 3), False)
                for lab in sorted((root / "label").glob("*.png")) if (root / "A" / lab.name).is_file()]
    if source == "egy_bcd":
        root = data / "egy_bcd"
        return [Pair(source, f"{lab.parent.parent.name}/{lab.stem}", lab.parent.parent / "A" / lab.name,
                     lab.parent.parent / "B" / lab.name, (1, 2, 3), (1, 2, 3), False)
                for split in ("train", "val", "test") for lab in sorted((root / split / "label").glob("*.png"),
                                                                         key=lambda p: int(p.stem.split("_")[-1]))]
    if source == "beijing":
        root = data / "inlpg"
        return [Pair(source, n, root / f"{n}_1.jpg", root / f"{n}_2.jpg", (1, 2, 3), (1, 2, 3), False)
                for n in ("beijing_A", "beijing_B")]
    if source in ("oscd_train", "oscd_test", "oscd"):
        from cdtool.io.stack import band_files

        out = []
        cities = {"oscd_train": OSCD_TRAIN, "oscd_test": OSCD_TEST}.get(source, OSCD_TRAIN + OSCD_MORE + OSCD_TEST)
        for city in cities:
            d1, d2 = data / "oscd" / city / "imgs_1", data / "oscd" / city / "imgs_2"
            order = [_s2_band(p) for p in band_files(d1)]
            if order != [_s2_band(p) for p in band_files(d2)]:
                raise SystemExit(f"{city}: band files of the two dates sort differently")
            rgb = tuple(order.index(b) + 1 for b in ("B04", "B03", "B02"))
            out.append(Pair(source, city, d1, d2, rgb, tuple(range(1, len(order) + 1)), True))
        return out
    if source == "nanjing":
        root = data / "landsat_nanjing"
        # TM bands 1, 2, 3, 4, 5, 7 in file order: red, green, blue = TM 3, 2, 1
        return [Pair(source, "nanjing", root / NANJING[0], root / NANJING[1], (3, 2, 1), tuple(range(1, 7)), True)]
    raise SystemExit(f"unknown source {source!r}; one of {', '.join(SOURCES)}")


def _s2_band(path: Path) -> str:
    return path.stem.rsplit("_", 1)[-1].upper()


def read_mask(pair: Pair) -> np.ndarray:
    if pair.source in ("levir", "dsifn", "egy_bcd"):
        label = _read(pair.before.parent.parent / "label" / pair.before.name, 1)
        return (label > 0).astype(np.uint8)
    if pair.source == "beijing":
        return (_read(pair.before.parent / f"{pair.name}_gt.jpg", 1) > 127).astype(np.uint8)  # JPEG: not pure
    if pair.source.startswith("oscd"):
        return (_read(pair.before.parent / "cm" / "cm.png", 1) > 0).astype(np.uint8)  # 0/255 on the 10 m grid
    if pair.source == "nanjing":
        root = pair.before.parent
        changed = _read(root / "change.bmp", 1) > 0  # 255 = changed
        unchanged = _read(root / "unchanged.bmp", 1) > 0  # 255 = known unchanged
        mask = np.full(changed.shape, UNKNOWN, np.uint8)
        mask[unchanged] = 0
        mask[changed] = 1
        mask[changed & unchanged] = UNKNOWN  # contradictory (none in the shipped files)
        return mask
    raise ValueError(pair.source)


def read_rgb(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(before, after) as (3, H, W) uint8, where both dates are valid, and how the values were made."""
    from cdtool.io.pair import open_pair
    from cdtool.windows import Tile

    with open_pair(pair.before, pair.after, bands=list(pair.rgb), align=True) as p:
        h, w = p.shape
        if p.origin != (0, 0):
            raise SystemExit(f"{pair.name}: dates overlap only in part; not handled")
        dtype = p.info.dtype
        x, valid = p.read(Tile(0, 0, h, w))
    if dtype == "uint8":
        return x[0].astype(np.uint8), x[1].astype(np.uint8), valid, {"scaling": "none (uint8 input)"}
    out = np.empty(x.shape, np.uint8)
    lows, highs = [], []
    for c in range(x.shape[1]):
        both = x[:, c][:, valid]
        lo, hi = np.percentile(both, PERCENTILES)
        hi = max(hi, lo + 1.0)
        out[:, c] = np.clip(np.round((x[:, c] - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        lows.append(float(lo))
        highs.append(float(hi))
    how = {"scaling": f"{dtype} -> uint8: (x - lo) * 255 / (hi - lo), clipped; lo, hi = the {PERCENTILES[0]}-"
                      f"{PERCENTILES[1]} percentiles of both dates together, per band",
           "lo": lows, "hi": highs}
    return out[0], out[1], valid, how


def read_all(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(before, after) as (C, H, W) with every band in its own dtype, where both dates are valid."""
    from cdtool.io.pair import open_pair
    from cdtool.windows import Tile

    with open_pair(pair.before, pair.after, bands=list(pair.all_bands), align=True) as p:
        h, w = p.shape
        if p.origin != (0, 0):
            raise SystemExit(f"{pair.name}: dates overlap only in part; not handled")
        x, valid = p.read(Tile(0, 0, h, w))
        names = list(p.info.band_names)
    dtype = np.uint16 if np.nanmax(x) < 65536 and np.nanmin(x) >= 0 else np.float32
    x = np.where(valid[None, None], x, 0).astype(dtype)
    return x[0], x[1], valid, {"scaling": "none (native values)", "band_names": names}


def export(source: str, data: Path, out: Path, bands: str = "rgb") -> dict:
    arrays: dict[str, np.ndarray] = {}
    records = []
    names = []
    for i, pair in enumerate(pairs(source, data)):
        before, after, valid, how = (read_rgb if bands == "rgb" else read_all)(pair)
        mask = pair.mask()
        if mask.shape != before.shape[1:]:
            raise SystemExit(f"{source}/{pair.name}: label is {mask.shape} but the images are {before.shape[1:]}")
        mask = np.where(valid, mask, UNKNOWN).astype(np.uint8)
        arrays[f"before_{i}"], arrays[f"after_{i}"], arrays[f"mask_{i}"] = before, after, mask
        names.append(pair.name)
        records.append({"name": pair.name, "height": int(mask.shape[0]), "width": int(mask.shape[1]),
                        "changed": int((mask == 1).sum()), "unchanged": int((mask == 0).sum()),
                        "unknown": int((mask == UNKNOWN).sum()), "rgb_bands": list(pair.rgb),
                        "before": str(pair.before.relative_to(data)), "after": str(pair.after.relative_to(data)),
                        **how})
    path = out / (f"{source}.npz" if bands == "rgb" else f"{source}_all.npz")
    np.savez_compressed(path, names=np.array(names), gsd=np.float64(SOURCES[source].gsd),
                        count=np.int64(len(names)), **arrays)
    return {"file": path.name, "bytes": path.stat().st_size, "gsd": SOURCES[source].gsd,
            "what": SOURCES[source].what, "pairs": records}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--out", type=Path, default=Path(".domain_data"))
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--bands", choices=("rgb", "all"), default="rgb",
                    help="rgb: 3 uint8 bands; all: every band in its own dtype (<source>_all.npz)")
    ap.add_argument("--max-mb", type=float, default=40.0, help="fail when the files together exceed this")
    args = ap.parse_args(argv)
    data = args.data.resolve()
    if not data.is_dir():
        raise SystemExit(f"{args.data}: no such folder")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "by": "benchmarks/domain_data.py", "data": str(args.data),
                "layout": "per pair i: before_i, after_i (3, H, W) uint8 RGB; mask_i (H, W) uint8 0 unchanged, "
                          "1 changed, 255 unknown; names (str), gsd (metres), count",
                "sources": {}}
    total = 0
    for source in args.sources:
        info = export(source, data, args.out, args.bands)
        manifest["sources"][source] = info
        total += info["bytes"]
        px = sum(p["height"] * p["width"] for p in info["pairs"])
        print(f"{source:11s} {len(info['pairs']):3d} pairs  {px / 1e6:6.2f} Mpx  gsd {info['gsd']:g} m  "
              f"{info['bytes'] / 1e6:6.2f} MB", flush=True)
    manifest["total_bytes"] = total
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"{'total':11s} {total / 1e6:6.2f} MB in {args.out}")
    if total > args.max_mb * 1e6:
        sys.exit(f"total {total / 1e6:.1f} MB is over --max-mb {args.max_mb:g}")


if __name__ == "__main__":
    main()
