"""Options with a fixed set of values are checked where they are parsed, against the library's own constants:
a bad value is one usage line naming the flag and every valid value, exit 2, before any work. Library errors
name their own fields; the CLI shows its flags for them."""

import inspect
import re
import typing

import pytest
from typer.testing import CliRunner

from cdtool.cli import app
from cdtool.cli.options import OneOf, ThresholdParser
from cdtool.cli.patches import patches_app
from cdtool.data.mnist import VARIANTS
from cdtool.data.store import SPLITS
from cdtool.data.tiling import SPLIT_BY, TileOptions, make_tiles
from cdtool.errors import OptionError
from cdtool.inference.detect import VECTOR_FORMATS
from cdtool.inference.stitcher import BLENDS
from cdtool.inference.street import SCENES
from cdtool.inference.threshold import METHODS
from cdtool.io.stack import RESAMPLINGS

runner = CliRunner()

# (command line up to the bad value, flag, the values the library accepts); inputs need not exist: the value
# is refused while parsing, before any file is opened
CASES = [
    (["detect", "a.tif", "b.tif", "--blend"], "--blend", BLENDS),
    (["detect", "a.tif", "b.tif", "--format"], "--format", VECTOR_FORMATS),
    (["detect", "a.tif", "b.tif", "--scene"], "--scene", SCENES),
    (["tile", "a.tif", "b.tif", "--split-by"], "--split-by", SPLIT_BY),
    (["evaluate", "p.tif", "t.tif", "--split"], "--split", SPLITS + ("all",)),
    (["stack", "out.vrt", "b1.tif", "--resampling"], "--resampling", RESAMPLINGS),
    (["patches", "mnist", "mnist.csv", "--variant"], "--variant", VARIANTS),
]


def _error_line(r) -> str:
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1, r.output
    return lines[0]


@pytest.mark.parametrize("args, flag, valid", CASES, ids=[c[1] for c in CASES])
def test_a_bad_choice_is_one_usage_line_naming_flag_and_choices(args, flag, valid, tmp_path):
    r = runner.invoke(app, [*args, "bogus"] + (["-o", str(tmp_path / "out")] if args[0] in ("detect", "tile") else []))
    line = _error_line(r)
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{flag}': 'bogus' is not one of {', '.join(valid)}" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["detect", "evaluate"])
@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "otsu2"])
def test_a_bad_threshold_names_the_range_and_the_methods(command, value):
    r = runner.invoke(app, [command, "p.tif", "t.tif", "--threshold", value])
    line = _error_line(r)
    assert r.exit_code == 2
    assert (f"Invalid value for '--threshold': expected a number in [0, 1] or one of {', '.join(METHODS)}, "
            f"got {value!r}") in line, line


def test_threshold_parser_values():
    parse = ThresholdParser()
    assert [parse(m) for m in METHODS] == list(METHODS)
    assert parse("0") == 0.0 and parse("0.25") == 0.25 and parse("1") == 1.0


def _choice_options():
    """(command name, flag, help, OneOf) of every option of every command parsed by OneOf."""
    commands = [(c.name, c.callback) for c in app.registered_commands]
    commands += [(f"patches {c.name}", c.callback) for c in patches_app.registered_commands]
    for name, fn in commands:
        for pname, hint in typing.get_type_hints(inspect.unwrap(fn), include_extras=True).items():
            for meta in typing.get_args(hint)[1:]:
                parser = getattr(meta, "parser", None)
                if isinstance(parser, (OneOf, ThresholdParser)):
                    flag = meta.default if str(meta.default).startswith("--") else "--" + pname.replace("_", "-")
                    yield name, flag, meta.help, parser


def test_every_choice_option_is_tested_and_its_help_lists_the_library_values():
    found = list(_choice_options())
    assert {flag for _, flag, _, p in found if isinstance(p, OneOf)} >= {c[1] for c in CASES}
    assert len(found) >= len(CASES) + 2  # the two --threshold
    for command, flag, help_text, parser in found:
        values = parser.values()
        missing = [v for v in values if v not in re.findall(r"[\w-]+", help_text)]
        assert not missing, f"{command} {flag}: help does not name {missing}: {help_text!r}"


def test_a_library_error_names_the_field_and_the_cli_its_flag(tmp_path, small_pair):
    from cdtool.data.sources import PairSource

    before, after, _ = (str(p) for p in small_pair)
    with pytest.raises(OptionError) as exc:
        make_tiles([PairSource("p", small_pair[0], small_pair[1], None)], tmp_path / "t", TileOptions(block=-1))
    assert exc.value.field == "block" and str(exc.value).startswith("block must not be negative")
    r = runner.invoke(app, ["tile", before, after, "--block", "-1", "-o", str(tmp_path / "t")])
    assert r.exit_code == 2 and _error_line(r).startswith("error: --block must not be negative"), r.output
    r = runner.invoke(app, ["tile", before, after, "--max-nodata", "2", "-o", str(tmp_path / "t")])
    assert r.exit_code == 2 and _error_line(r) == "error: --max-nodata must lie in [0, 1], got 2.0", r.output
    assert not (tmp_path / "t").exists()


def test_a_field_the_cli_names_otherwise_gets_its_flag():
    from cdtool.cli.detect import FLAGS
    from cdtool.cli.options import flag_of

    assert flag_of("vector_format", FLAGS) == "--format"
    assert flag_of("split_by") == "--split-by"
