"""Polygonising a speckled mask: the cost the minimum mapping unit saves.

    ./run shell benchmarks/polygonize_speckle.py LABEL

A 2048x4096 mask at 10 m, 7 % of it random specks plus one large change, fed band by band to the
Polygonizer with the default minimum (4 px, 400 m² here); prints LABEL, the polygons written and seconds.
Run it on two checkouts (PYTHONPATH=...) to compare.
"""
import time, numpy as np, sys, tempfile, pathlib
from affine import Affine
from rasterio.crs import CRS
from cdtool.io.vectors import Polygonizer
rng = np.random.default_rng(0)
H, W = 2048, 4096
hit = rng.random((H, W)) > 0.93          # speckle: ~7 % single pixels and tiny clusters
hit[500:900, 1000:1800] = True           # one real change
score = rng.random((H, W)).astype(np.float32)
t = time.perf_counter()
p = Polygonizer(pathlib.Path(tempfile.mkdtemp()) / "c.gpkg", CRS.from_epsg(32632), Affine(10, 0, 6e5, 0, -10, 5e6), 4, 400.0)
for r in range(0, H, 256):
    p.add(r, hit[r:r+256], score[r:r+256])
n = p.close()
print(sys.argv[1], n, round(time.perf_counter() - t, 2))
