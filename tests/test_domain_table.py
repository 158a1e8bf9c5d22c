"""benchmarks/domain_table.py on one real LEVIR pair: sane scores, and cva flags nothing on identical dates."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(BENCH))  # domain_table imports domain_data by name
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_cva_on_one_levir_pair(shared_data):
    table = _load("domain_table")
    pair = table.pairs("levir", shared_data)[0]
    mask = pair.mask()
    assert mask.shape == (256, 256) and set(mask.ravel().tolist()) <= {0, 1}
    cell = table.evaluate("cva", "levir", shared_data, bands="rgb", only=[pair.name])
    assert not cell.error, cell.error
    assert cell.detector == "cva" and len(cell.pairs) == 1
    assert cell.pairs[0]["scored_pixels"] == 256 * 256
    assert cell.pairs[0]["gsd"] == 0.5  # the PNG source's GSD reached detect
    for value in (cell.f1, cell.iou, cell.auroc, cell.precision, cell.recall):
        assert not math.isnan(value) and 0.0 <= value <= 1.0
    assert cell.iou <= cell.f1
    assert cell.same == 0.0  # identical dates: cva's change magnitude is 0 everywhere
    assert 0.0 <= cell.radiometric <= 1.0
    assert "cva" in table.markdown([cell], "rgb")
