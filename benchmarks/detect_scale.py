"""Peak memory and time of `cdtool detect` as the raster grows, beside a whole-image reference.

Run by hand: `./run shell benchmarks/detect_scale.py --sizes 4096 16384`. Each measurement runs in a fresh
process so its peak RSS (ru_maxrss) is its own. The reference reads both images whole, computes the same
CVA in one go and writes one GeoTIFF: what a script without tiling would do. Compare ratios from one run;
absolute numbers depend on the (shared, noisy) machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
mode, before, after, out = sys.argv[1:5]
t = time.perf_counter()
if mode == "cdtool":
    from cdtool.inference.detect import DetectOptions, detect
    r = detect(before, after, out, DetectOptions(overwrite=True))
    extra = {"threshold": r.threshold, "regions": r.regions}
else:
    import numpy as np, rasterio
    from cdtool.inference.threshold import ScoreHistogram
    with rasterio.open(before) as b, rasterio.open(after) as a:
        x, y, profile = b.read().astype("float32"), a.read().astype("float32"), b.profile
    for arr in (x, y):
        m = arr.reshape(arr.shape[0], -1)
        arr -= m.mean(1)[:, None, None]; arr /= m.std(1)[:, None, None]
    score = 1 - np.exp(-0.5 * ((y - x) ** 2).mean(0))
    h = ScoreHistogram(); h.add(score)
    profile.update(count=1, dtype="float32", compress="deflate", tiled=True)
    with rasterio.open(out + "/reference.tif", "w", **profile) as ds:
        ds.write(score.astype("float32"), 1)
    extra = {"threshold": h.otsu()}
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
"""


def measure(mode: str, before: Path, after: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(before), str(after), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--reference-max", type=int, default=8192, help="largest size the whole-image reference runs at")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from cdtool.sample_pair import write_pair

    work = args.workdir or Path(tempfile.mkdtemp(prefix="cdtool-bench-"))
    rows = []
    for size in args.sizes:
        t = time.perf_counter()
        before, after, _ = write_pair(work / f"pair{size}", size=size, bands=3, seed=0)
        gen = time.perf_counter() - t
        row = {"size": size, "megapixels": size * size / 1e6, "generate_s": round(gen, 1),
               "cdtool": measure("cdtool", before, after, work / f"out{size}")}
        if size <= args.reference_max:
            row["reference"] = measure("reference", before, after, work / f"ref{size}")
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\nsize      cdtool s   cdtool MiB   reference s   reference MiB")
    for r in rows:
        ref = r.get("reference", {})
        print(f"{r['size']:>6}² {r['cdtool'].get('seconds', float('nan')):>9.1f} {r['cdtool'].get('peak_mib', float('nan')):>11.0f}"
              f" {ref.get('seconds', float('nan')):>13.1f} {ref.get('peak_mib', float('nan')):>14.0f}")


if __name__ == "__main__":
    main()
