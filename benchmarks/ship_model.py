"""Ship a trained domain model: copy it into cdtool/weights/ with the evidence in its card.

    python benchmarks/ship_model.py runs/s2/all.safetensors --name sentinel2 --table runs/tables/s2.json \
        --row cv:s2 --usable-gsd 8 12.5

The card's `usable_gsd_m` (the input GSDs where `detect` picks it by default) is set only when the table's
verdict for `--row` says it qualifies (benchmarks/domain_table.py --cv: mean per-scene F1 above the best
label-free method's, losing to it on at most a third of the scenes); otherwise it ships for `--model` only.
The verdict and the per-scene F1s go into the card's `scores` (`cdtool info NAME` shows them). Prints the
sha256 that cdtool/weights/PROVENANCE.md records.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdtool.io.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[1] / "cdtool" / "weights"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", required=True, help="the shipped name: cdtool/weights/<name>.safetensors")
    ap.add_argument("--table", type=Path, required=True, help="benchmarks/domain_table.py --json output")
    ap.add_argument("--row", required=True, help="the table row of the cross-validated model, e.g. cv:s2")
    ap.add_argument("--usable-gsd", type=float, nargs=2, metavar=("LOW", "HIGH"), required=True)
    ap.add_argument("--without-gsd", action="store_true",
                    help="also the default where the GSD is unknown (validated on pairs without georeference)")
    ap.add_argument("--change", help="the card's kind of change, where the training run's text needs correcting")
    a = ap.parse_args(argv)
    table = json.loads(a.table.read_text())
    verdict = table["verdicts"].get(a.row)
    if verdict is None:
        raise SystemExit(f"{a.table}: no verdict for row {a.row!r}; rows: {', '.join(table['verdicts'])}")
    per_scene = {f"{c['source']}/{p['name']}": round(p["f1"], 4) for c in table["cells"] if c["model"] == a.row
                 for p in c["pairs"]}
    states, meta = load_checkpoint(a.checkpoint)
    card = dict(meta.card or {})
    card["usable_gsd_m"] = list(a.usable_gsd) if verdict["default"] else None
    if a.change:
        card["change"] = a.change
    card["usable_without_gsd"] = bool(verdict["default"] and a.without_gsd)
    card["scores"] = {"cross_validated": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in verdict.items()},
                      "per_scene_f1": per_scene}
    dst = save_checkpoint(WEIGHTS / f"{a.name}.safetensors", states, dict(meta.to_json(), card=card))
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    print(f"{dst}: default {'for ' + str(card['usable_gsd_m']) if verdict['default'] else 'never'}; "
          f"threshold {meta.threshold:.3f}; sha256: {digest}")


if __name__ == "__main__":
    main()
