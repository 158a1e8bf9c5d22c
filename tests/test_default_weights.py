"""Shipped weights are what their provenance says, carry a card, and stay out of the default unless their
card says where they beat the label-free methods."""

import hashlib
import re
from importlib import resources

import torch

from cdtool.domain import InputDomain
from cdtool.inference.detector import LABEL_FREE_DEFAULT, choose_detector, load_detector, shipped_weights


def test_shipped_weights_match_their_provenance_and_cards():
    paths = shipped_weights()
    assert paths, "no weights shipped"
    text = (resources.files("cdtool") / "weights" / "PROVENANCE.md").read_text()
    for path in paths:
        assert path.stat().st_size < 5_000_000  # a few MB at most, inside the package
        shipped = re.search(rf"{path.stem}.*?sha256: ([0-9a-f]{{64}})", text, re.S).group(1)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shipped
        det = load_detector(path.stem)  # by name, as `--model siam_diff_unet_rgb`
        assert det.card.band_count == 3 and det.card.gsd_m is not None and det.card.scores
        assert f"threshold {det.threshold:.3f}" in text
        x = torch.rand(1, 3, 64, 64)
        with torch.no_grad():
            y = det.model(x, x)
        # identical dates: one constant score, below the threshold
        assert y.shape == (1, 1, 64, 64) and float(y.max() - y.min()) == 0 and float(y.max()) < det.threshold


def test_default_is_label_free_where_no_card_covers_the_input():
    for count, names, gsd in ((3, ["a", "b", "c"], 0.5), (3, ["a", "b", "c"], None), (13, ["b"] * 13, 10.0)):
        domain = InputDomain(count, names, [], "uint8", gsd, "transform" if gsd else "unknown")
        choice = choose_detector(None, domain)
        kind = "rgb" if count == 3 else "multispectral"
        assert choice.detector.name == LABEL_FREE_DEFAULT[kind] and "label-free" in choice.reason
