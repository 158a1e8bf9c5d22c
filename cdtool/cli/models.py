"""cdtool models: what can be trained or detected with, by name, and the recipes that train them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.table import Table

from cdtool.cli.options import friendly_errors, out_console


def recipe_dirs() -> list[Path]:
    """recipes/ in the working directory and beside the package (a source checkout)."""
    here = Path(__file__).resolve().parents[2] / "recipes"
    dirs = [Path("recipes").resolve(), here]
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def models(
    recipes: Annotated[Optional[Path], typer.Option("--recipes", help="Folder of recipes to list (default recipes/).")] = None,
) -> None:
    """List registered models (name, output kind, paper), losses, tasks and the recipes found."""
    from cdtool.errors import InputError
    from cdtool.losses.base import loss_entry, loss_names

    if recipes is not None and not recipes.is_dir():
        raise InputError(f"{recipes}: no such folder of recipes")
    from cdtool.engine.recipe import read_yaml
    from cdtool.models.registry import create_model, model_entry, model_names

    t = Table("model", "output", "trainable", "paper", "summary", title="models")
    for name in model_names():
        e = model_entry(name)
        trainable = any(p.requires_grad for p in create_model(name).parameters())
        t.add_row(name, e.output, "yes" if trainable else "no", e.paper, e.summary)
    out_console.print(t)
    from cdtool.inference.detector import LABEL_FREE_DEFAULT, shipped_cards

    dt = Table("shipped (--model NAME)", "model", "bands", "GSD trained", "default for GSD", "change",
               title="shipped weights (`cdtool info NAME` for the full card); the default elsewhere: "
                     + ", ".join(f"{v} for {k} inputs" for k, v in LABEL_FREE_DEFAULT.items()))
    for path, name, model_card in shipped_cards():
        card = dict(model_card.describe())
        dt.add_row(path.stem, name, card["bands"], card["GSD trained"], card["default for GSD"],
                   card["change learned"])
    out_console.print(dt)
    lt = Table("loss", "reads", "summary", title="losses")
    for name in loss_names():
        e = loss_entry(name)
        lt.add_row(name, ", ".join(e.needs), e.summary)
    out_console.print(lt)
    from cdtool.engine.task import TASKS

    tt = Table("task", "phases", "models", "losses", "data.train", "summary",
               title="tasks (recipe key `task`; `phases` names them in this order; the roles a recipe gives)")
    for e in TASKS.entries():
        t = e.obj
        tt.add_row(e.name, ", ".join(t.phases), ", ".join(t.models), ", ".join(t.losses), ", ".join(t.sources), e.summary)
    out_console.print(tt)
    rt = Table("recipe", "task", "models", "losses", "description", title="recipes")
    for d in [recipes] if recipes else recipe_dirs():
        for path in sorted(Path(d).glob("*.yaml")):
            try:
                r = read_yaml(path.read_text()) or {}
                rt.add_row(str(path), str(r.get("task", "")), _names(r.get("models")), _names(r.get("losses")),
                           str(r.get("description", "")))
            except (yaml.YAMLError, AttributeError):
                rt.add_row(str(path), "", "", "", "(not a readable recipe)")
    out_console.print(rt)


def _names(entries) -> str:
    """The registry names of a recipe's `models:` or `losses:` as text."""
    return ", ".join(str((v or {}).get("name", "")) for v in (entries or {}).values())


def register(app: typer.Typer) -> None:
    app.command("models")(friendly_errors(models))
