"""The shipped default is what its provenance file says it is."""

import hashlib
import re
from importlib import resources

import torch

from cdtool.inference.detector import default_weights, load_detector


def test_default_3band_matches_its_provenance():
    path = default_weights(3)
    assert path is not None and path.stat().st_size < 5_000_000  # a few MB at most, inside the package
    text = (resources.files("cdtool") / "weights" / "PROVENANCE.md").read_text()
    shipped = re.search(r"default_3band.*?sha256: ([0-9a-f]{64})", text, re.S).group(1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == shipped
    det = load_detector(None, 3)
    assert det.name == "fcn_metrics" and f"threshold {det.threshold:.3f}" in text
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = det.model(x, x)
    assert y.shape == (1, 1, 64, 64) and float(y.max()) <= 1


def test_no_13band_default_falls_back_to_cva():
    assert default_weights(13) is None
    assert load_detector(None, 13).name == "cva"
