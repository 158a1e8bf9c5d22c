"""Recipes: one YAML file per experiment, validated before anything runs.

A recipe names a task family, the modules (`models:`) and losses (`losses:`) it builds by registry name
with their arguments, its named training sources (`data.train`), the optimiser and the schedule. Each
registered task family gets its own recipe type (`task` is the discriminator), so a recipe is checked
against the roles and rules of its family; errors name the bad key and list the allowed values.
``--set a.b=c`` overrides any key (the value parsed as YAML). The resolved recipe (defaults filled in,
in_channels inferred from the data) is written to the run folder and stored inside every checkpoint.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, create_model

from cdtool.engine.schema import RecipeBase
from cdtool.engine.task import TASKS
from cdtool.errors import InputError

Recipe = RecipeBase  # the type every family's recipe is


@lru_cache(maxsize=None)
def _recipe_type(task: str, family: type) -> type[RecipeBase]:
    """The recipe type of one task family: `task` fixed to its name, checked against its roles."""
    cls = create_model(f"{task}_recipe", __base__=RecipeBase, __doc__=TASKS.entry(task).summary,
                       task=(Literal[task], Field(description=f"Task family: {task}.")))
    cls.family = family
    return cls


def _family_type(task: str) -> type[RecipeBase]:
    return _recipe_type(task, TASKS.get(task))


def _adapter() -> TypeAdapter:
    families = tuple(_family_type(t) for t in TASKS.names())
    union = families[0] if len(families) == 1 else Annotated[Union[families], Field(discriminator="task")]
    return TypeAdapter(union)


# Values a YAML text may expand to through its aliases. PyYAML shares an aliased node instead of copying it, so
# nine levels of nine aliases (billion laughs: 9^10 leaves from a few hundred bytes) load at once and then hang
# whatever walks the tree; an alias inside its own anchor (`self: &s {again: *s}`) makes a cycle that ended in
# RecursionError. A recipe of real use expands to a few hundred values.
MAX_YAML_VALUES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing an alias to a node that holds it and aliases that expand beyond
    MAX_YAML_VALUES, as YAML errors (composed nodes are checked before any object is built)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._open_anchors: set[str] = set()

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open_anchors:
            raise yaml.composer.ComposerError(None, None, f"the alias *{event.anchor} lies inside its own anchor "
                                              "(a cycle)", event.start_mark)
        anchor = None if isinstance(event, yaml.AliasEvent) else event.anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.discard(anchor)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise yaml.composer.ComposerError(None, None, f"its aliases expand to more than {MAX_YAML_VALUES:,} "
                                              "values", node.start_mark)
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values `node` stands for once its aliases are expanded, each shared node counted once per use and
    computed once (`sizes`), so the count costs the nodes written, not the values they expand to."""
    if id(node) not in sizes:
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def read_yaml(text: str):
    """YAML text as Python values, safely (no tags that build objects) and bounded (see `_BoundedLoader`); a
    nesting too deep to compose is a YAML error too."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def set_key(tree: dict, dotted: str, value: Any) -> None:
    """Set tree['a']['b'] = value for 'a.b', creating dicts on the way; a number indexes a list
    (`phases.0.epochs`: the first phase's epochs)."""
    keys = dotted.split(".")
    node: Any = tree
    for depth, k in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise InputError(f"--set {dotted}: {'.'.join(keys[:depth]) or 'the recipe'} is a list of "
                                 f"{len(node)}; index it with 0-{len(node) - 1}")
            k = int(k)
        elif not last and not isinstance(node.get(k), (dict, list)):
            node[k] = {}
        if last:
            node[k] = value
        else:
            node = node[k]


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for item in overrides or []:
        key, sep, text = item.partition("=")
        shown = repr(item if len(item) <= 80 else item[:77] + "...")
        if not sep or not key.strip():
            raise InputError(f"--set {shown}: expected key=value, e.g. optim.lr=0.001")
        try:
            value = read_yaml(text)
        except yaml.YAMLError as exc:
            raise InputError(f"--set {shown}: the value is not valid YAML ({_first_line(exc)})") from None
        set_key(tree, key.strip(), value)
    return tree


def _format(exc: ValidationError, family: type[BaseModel] | None) -> str:
    lines = []
    for err in exc.errors():
        parts = list(err["loc"])
        if family is not None and parts and parts[0] == family.model_fields["task"].annotation.__args__[0]:
            parts = parts[1:]  # the union's tag
        # a key with a line break or other control character is quoted, so the message stays one line
        loc = ".".join(str(p) if str(p).isprintable() else repr(p) for p in parts) or "recipe"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            loc, msg = "task", f"unknown task {err['input'].get('task')!r}; allowed: {', '.join(TASKS.names())}"
        elif err["type"] == "union_tag_not_found":
            loc, msg = "task", f"missing (required); allowed: {', '.join(TASKS.names())}"
        elif err["type"] == "extra_forbidden":
            parent = _model_at(family or RecipeBase, tuple(parts[:-1]))
            msg = f"unknown key; allowed: {', '.join(parent.model_fields) if parent else ''}"
        elif err["type"] == "missing":
            msg = "missing (required)"
        lines.append(f"{loc}: {msg}")
    return "invalid recipe: " + "; ".join(lines)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model at a location of the recipe, for listing its allowed keys."""
    parts = list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        ann = getattr(field, "annotation", None)
        for arg in getattr(ann, "__args__", ()):  # Optional[X] -> X; dict[str, X]: skip the key
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                if getattr(ann, "__origin__", None) is dict and parts:
                    parts.pop(0)
                ann = arg
                break
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def parse_recipe(tree: dict) -> Recipe:
    """Validate a recipe tree against its task family's recipe type."""
    task = tree.get("task") if isinstance(tree, dict) else None
    family = _family_type(task) if isinstance(task, str) and task in TASKS else None
    try:
        return _adapter().validate_python(tree)
    except ValidationError as exc:
        raise InputError(_format(exc, family)) from None


def load_recipe(source: str | Path | dict, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or a dict), apply --set overrides, validate."""
    if isinstance(source, dict):
        tree = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: no such recipe file")
        try:
            tree = read_yaml(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid YAML ({_first_line(exc)})") from None
        if not isinstance(tree, dict):
            raise InputError(f"{path}: a recipe is a mapping of keys (name, task, model, loss, data, ...)")
        tree = resolve_paths(tree, path.resolve().parent)
        try:
            return parse_recipe(apply_overrides(tree, overrides or []))
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
    return parse_recipe(apply_overrides(tree, overrides or []))


def _first_line(exc: Exception) -> str:
    """A YAML error's problem and where, without its multi-line excerpt of the text."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


PATH_KEYS = ("roots", "root", "path", "source", "init")


def resolve_paths(tree: Any, base: Path) -> Any:
    """Relative paths in a recipe file (data roots, dataset files, init weights: keys in PATH_KEYS; a
    `source` only when it holds a '/', since it may name a built-in set) are relative to that file, so a
    recipe runs from any folder; the run stores them absolute, so `--resume` does too. Overrides given with
    --set stay as typed (relative to where the command runs)."""
    def fix(p, key):
        if not isinstance(p, str) or Path(p).is_absolute() or (key == "source" and "/" not in p):
            return p
        return str((base / p).resolve())

    if isinstance(tree, list):
        return [resolve_paths(v, base) for v in tree]
    if not isinstance(tree, dict):
        return tree
    return {k: ([fix(p, k) for p in v] if isinstance(v, list) else fix(v, k))
            if k in PATH_KEYS and not isinstance(v, dict) else resolve_paths(v, base) for k, v in tree.items()}


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
