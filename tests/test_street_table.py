"""benchmarks/street_table.py: a method's `:tX` suffix reaches detect as a fixed threshold."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _table():
    if "street_table" not in sys.modules:
        spec = importlib.util.spec_from_file_location("street_table", BENCH / "street_table.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["street_table"] = module
        spec.loader.exec_module(module)
    return sys.modules["street_table"]


def test_threshold_suffix_is_split_off_and_kept_in_the_label():
    t = _table()
    assert t.split_threshold("simsac=runs/x/best.safetensors:t0.5") == ("simsac=runs/x/best.safetensors", 0.5)
    assert t.split_threshold("cva:n5:t.25") == ("cva:n5", 0.25)
    assert t.split_threshold("local:r64") == ("local:r64", None)
    assert t.split_threshold("simsac=runs/tune/best.safetensors") == ("simsac=runs/tune/best.safetensors", None)
    assert t.label("simsac=runs/x/best.safetensors:t0.5") == "simsac:t0.5"
    assert t.label("simsac=runs/x/best.safetensors") == "simsac"
    assert t.label("cva:n5:t0.3") == "cva:n5:t0.3"


def test_fixed_threshold_reaches_detect(tmp_path):
    t = _table()
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    after = before.copy()
    after[20:60, 30:70] = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(before).save(tmp_path / "b.png")
    Image.fromarray(after).save(tmp_path / "a.png")
    shares = {}
    for thr in (0.2, 0.6):
        prob, mask, valid = t.run(tmp_path / "b.png", tmp_path / "a.png", tmp_path / f"o{thr}", f"cva:t{thr}",
                                  align=False, wrap=False)
        assert valid.all()
        # the mask is the score map at that threshold (the PNG holds the score in 1/255 steps)
        assert mask[prob > thr + 1 / 255].all() and not mask[prob < thr - 1 / 255].any()
        shares[thr] = mask.mean()
    assert 0 < shares[0.6] < shares[0.2] < 1
