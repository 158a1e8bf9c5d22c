"""Walk-through: every training set `cdtool tile` / `cdtool patches` can make, on ../shared/data.

    python examples/make_datasets.py [OUT_DIR]      (default: ./datasets_demo, ~1 minute on 2 cores)

Each step is one library call (the CLI commands in comments do the same); re-running is a no-op.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from torch.utils.data import DataLoader

from cdtool.data.augment import PairAugment
from cdtool.data.chips import ChipDataset
from cdtool.data.footprints import FootprintOptions, make_footprints
from cdtool.data.mnist import MnistOptions, make_mnist
from cdtool.data.pcd import PcdOptions, make_pcd
from cdtool.data.samplers import undersampler
from cdtool.data.sources import collect_pairs, pairs_from_folder
from cdtool.data.synthetic import SyntheticOptions, make_synthetic
from cdtool.data.tiling import TileOptions, make_tiles

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(out: Path) -> None:
    t0 = time.perf_counter()
    # cdtool tile ../shared/data/levir --size 128 --out OUT/levir_tiles
    s = make_tiles(collect_pairs(DATA / "levir"), out / "levir_tiles", TileOptions(size=128, stride=128))
    print(f"LEVIR tiles 128/128: {s['samples']} {s['splits']}")
    city = DATA / "oscd" / "rennes"
    # cdtool tile oscd/rennes/imgs_1 oscd/rennes/imgs_2 --mask oscd/rennes/cm/rennes-cm.tif --size 64 --stride 32
    s = make_tiles(collect_pairs(city / "imgs_1", city / "imgs_2", city / "cm" / "rennes-cm.tif"),
                   out / "oscd_rennes_tiles", TileOptions(size=64, stride=32))
    print(f"OSCD rennes tiles 64/32: {s['samples']} {s['splits']} (dropped on split borders: {s['dropped_guard']})")
    # cdtool patches pcd ../shared/data/levir --stride 14 [--max-positives 50]
    for n in (None, 50):
        s = make_pcd(collect_pairs(DATA / "levir", require_mask=True), out / f"pcd_levir_{n or 'all'}",
                     PcdOptions(stride=14, max_positives=n))
        print(f"PCD on LEVIR, max positives {n or 'all'}: positives {s['positives']}/{s['positives_found']}, "
              f"negatives {s['negatives']}, samples {s['samples']} {s['splits']}")
    # cdtool patches footprints neudorf_2012.shp neudorf_2022.shp
    fp = DATA / "footprints_neudorf"
    s = make_footprints(fp / "neudorf_2012.shp", fp / "neudorf_2022.shp", out / "neudorf", FootprintOptions())
    print(f"neudorf classes: {s['classes']}; patches {s['samples']} labels {s['labels']}")
    # cdtool patches mnist ../shared/data/mnist --variant R-B --backgrounds ../shared/data/levir/A
    for v in ("R", "B", "R-B"):
        s = make_mnist(DATA / "mnist", out / f"mnist_{v}", MnistOptions(variant=v, pairs=10000),
                       backgrounds=[DATA / "levir" / "A", DATA / "dsifn" / "A"])
        print(f"MNIST-{v}: {s['samples']} pairs {s['splits']} labels {s['labels']}")
    # cdtool patches synthetic levir/A dsifn/A --objects levir --objects dsifn --samples 500
    objects = pairs_from_folder(DATA / "levir", True) + pairs_from_folder(DATA / "dsifn", True)
    s = make_synthetic([DATA / "levir" / "A", DATA / "dsifn" / "A"], objects, out / "synthetic",
                       SyntheticOptions(samples=500))
    print(f"synthetic: {s['samples']} pairs {s['splits']}")
    # Training side: a balanced, augmented loader over the 50-positive PCD set.
    ds = ChipDataset(out / "pcd_levir_50", split="train", transform=None)
    loader = DataLoader(ds, batch_size=16, sampler=undersampler(ds.labels, seed=0))
    batch = PairAugment(seed=0)(next(iter(loader)))
    print(f"batch: image {tuple(batch['image'].shape)}, labels {batch['label'].tolist()}")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("datasets_demo"))
