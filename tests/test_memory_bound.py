"""Peak memory of detect must not grow with raster area (it may grow with width, mildly)."""

import json
import subprocess
import sys

import pytest

CHILD = """
import json, resource, sys
from cdtool.inference.detect import DetectOptions, detect
detect(sys.argv[1], sys.argv[2], sys.argv[3], DetectOptions(model="cva", tile=256, overlap=32))
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def _peak_mib(before, after, out) -> float:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(before), str(after), str(out)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_follow_raster_area(tmp_path):
    from cdtool.generated_pairs import write_pair

    small = write_pair(tmp_path / "s", size=1024, seed=0)
    large = write_pair(tmp_path / "l", size=4096, seed=0)  # 16x the area
    p_small = _peak_mib(small[0], small[1], tmp_path / "os")
    p_large = _peak_mib(large[0], large[1], tmp_path / "ol")
    # A whole-image implementation would need > 16 x 4096² x 3 x 2 x 4 bytes more (~400 MiB) for inputs alone.
    assert p_large < p_small * 1.5, (p_small, p_large)


def _noise_below(after, row: int) -> None:
    """AFTER's rows from `row` down replaced by noise: an unrelated texture, so a changed region winds through
    every band below it, with thousands of holes."""
    import numpy as np
    import rasterio

    rng = np.random.default_rng(1)
    with rasterio.open(after, "r+") as ds:
        for r in range(row, ds.height, 256):
            h = min(256, ds.height - r)
            ds.write(rng.integers(0, 256, (ds.count, h, ds.width)).astype(ds.dtypes[0]),
                     window=((r, r + h), (0, ds.width)))


@pytest.mark.slow
def test_peak_memory_does_not_follow_the_largest_changed_region(tmp_path):
    """A pair whose lower two thirds are unrelated (one changed region through 16 bands) peaks within 120 MiB
    of the same pair unchanged: the polygon writer keeps every piece of an open region no longer (it held
    them all, 1.1 GB for a 2048² half)."""
    import json as _json

    from cdtool.generated_pairs import write_pair

    same = write_pair(tmp_path / "same", size=3072, width=1024, seed=0)
    half = write_pair(tmp_path / "half", size=3072, width=1024, seed=0)
    _noise_below(half[1], 1024)
    p_same = _peak_mib(same[0], same[1], tmp_path / "os")
    p_half = _peak_mib(half[0], half[1], tmp_path / "oh")
    summary = _json.loads((tmp_path / "oh" / "detect.json").read_text())
    assert summary["changed_share"] > 0.4 and summary["polygons_skipped"] is None
    assert p_half < p_same + 120, (p_same, p_half)
