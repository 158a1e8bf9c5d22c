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
    from cdtool.sample_pair import write_pair

    small = write_pair(tmp_path / "s", size=1024, seed=0)
    large = write_pair(tmp_path / "l", size=4096, seed=0)  # 16x the area
    p_small = _peak_mib(small[0], small[1], tmp_path / "os")
    p_large = _peak_mib(large[0], large[1], tmp_path / "ol")
    # A whole-image implementation would need > 16 x 4096² x 3 x 2 x 4 bytes more (~400 MiB) for inputs alone.
    assert p_large < p_small * 1.5, (p_small, p_large)
