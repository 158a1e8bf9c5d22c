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
        shipped = re.search(rf"## {path.stem}\.safetensors.*?sha256: ([0-9a-f]{{64}})", text, re.S).group(1)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shipped
        det = load_detector(path.stem)  # by name, as `--model siam_diff_unet_rgb`
        assert det.card.band_count in (3, 12) and det.card.gsd_m is not None and det.card.scores
        assert f"threshold {det.threshold:.3f}" in text
        x = torch.rand(1, det.card.band_count, 64, 64)
        with torch.no_grad():
            y = det.model(x, x)
        # identical dates: one constant score, below the threshold
        assert y.shape == (1, 1, 64, 64) and float(y.max() - y.min()) == 0 and float(y.max()) < det.threshold


def test_default_is_label_free_where_no_card_covers_the_input():
    cases = ((3, ["a", "b", "c"], 30.0, False), (3, ["a", "b", "c"], None, True), (13, ["b"] * 13, 10.0, False),
             (4, ["a", "b", "c", "d"], 0.5, False))
    for count, names, gsd, panorama in cases:
        domain = InputDomain(count, names, [], "uint8", gsd, "transform" if gsd else "unknown", panorama)
        choice = choose_detector(None, domain)
        kind = "rgb" if count == 3 else "multispectral"
        assert choice.detector.name == LABEL_FREE_DEFAULT[kind] and "label-free" in choice.reason


def test_very_high_resolution_rgb_gets_the_learned_default():
    """vhr_rgb beat the best label-free method in cross-validation over whole scenes at 0.25-2 m (its card), on
    pairs without georeference too; outside that range, or for a panorama, the default stays label-free."""
    for gsd in (0.25, 0.5, 1.5, 2.0, None):
        domain = InputDomain(3, ["a", "b", "c"], ["red", "green", "blue"], "uint8", gsd,
                             "transform" if gsd else "unknown")
        choice = choose_detector(None, domain)
        assert choice.detector.card.usable_gsd_m == (0.25, 2.0) and choice.reason.startswith("vhr_rgb")
        assert ("GSD unknown" in choice.reason) == (gsd is None)
        scores = choice.detector.card.scores["cross_validated"]
        assert scores["default"] and scores["mean_f1"] > scores["best_label_free_f1"]
        assert scores["losses"] <= scores["scenes"] / 3
    for gsd in (0.1, 3.0, 10.0):
        domain = InputDomain(3, ["a", "b", "c"], ["red", "green", "blue"], "uint8", gsd, "transform")
        assert choose_detector(None, domain).detector.name == LABEL_FREE_DEFAULT["rgb"]


def test_sentinel2_band_names_get_the_learned_default():
    """sentinel2 beat cva in cross-validation over OSCD cities; it is the default wherever the band names say
    Sentinel-2 (L1C's 13 or L2A's 12) at 8-12.5 m, and never for unnamed bands or other GSDs."""
    l1c = [f"T31UDQ_B{b}" for b in ("01", "02", "03", "04", "05", "06", "07", "08", "8A", "09", "10", "11", "12")]
    l2a = [n + "_10m" for n in l1c if not n.endswith("B10")] + ["T31UDQ_SCL_20m"]
    for names, gsd in ((l1c, 10.0), (l2a, 10.0), (l1c, 12.0)):
        domain = InputDomain(len(names), names, [], "uint16", gsd, "transform")
        choice = choose_detector(None, domain)
        assert choice.reason.startswith("sentinel2"), choice.reason
        scores = choice.detector.card.scores["cross_validated"]
        assert scores["default"] and scores["mean_f1"] > scores["best_label_free_f1"]
        assert scores["losses"] <= scores["scenes"] / 3
    for names, gsd in ((["band"] * 13, 10.0), (l1c, 20.0), (l1c[:10], 10.0)):
        domain = InputDomain(len(names), names, [], "uint16", gsd, "transform")
        assert choose_detector(None, domain).detector.name == LABEL_FREE_DEFAULT["multispectral"]
