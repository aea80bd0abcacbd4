"""lib/cli/options.py: options generated from a config's fields (types, defaults, flags, groups) and the
config built back from them; the shared range and output checks."""
import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from lib.cli.options import (
    AT_LEAST_1,
    POSITIVE,
    HelpFormatter,
    add_config_options,
    check_output_file,
    check_ranges,
    config_from_args,
)
from lib.errors import XDimError


@dataclass(frozen=True)
class Toy:
    """Every kind of field add_config_options knows."""

    count: int = field(default=3, metadata={"help": "an int"})
    rate: float = field(default=0.5, metadata={"help": "a float"})
    name: str | None = field(default=None, metadata={"help": "optional", "metavar": "NAME"})
    files: tuple[str, ...] = field(default=(), metadata={"help": "several", "nargs": "+", "metavar": "FILE"})
    pair: tuple[int, int] | None = field(default=None, metadata={"help": "two", "nargs": 2})
    kind: str = field(default="a", metadata={"help": "a choice", "choices": ("a", "b")})
    flag: bool = field(default=False, metadata={"help": "a flag"})
    both: bool = field(default=False, metadata={"help": "negatable", "negatable": True})
    words: tuple[str, ...] = field(default=(), metadata={"help": "comma list", "type": str})
    left: str | None = field(default=None, metadata={"help": "one side", "one_of": "side"})
    right: int | None = field(default=None, metadata={"help": "other side", "one_of": "side"})
    hidden: str = "not an option"


def toy_parser():
    return add_config_options(argparse.ArgumentParser(formatter_class=HelpFormatter), Toy)


def test_each_field_with_help_is_an_option_of_its_type_and_default():
    args = toy_parser().parse_args(["--left", "x"])
    assert (args.count, args.rate, args.name, args.files, args.pair, args.kind) == (3, 0.5, None, [], None, "a")
    assert (args.flag, args.both, args.words, args.left, args.right) == (False, False, [], "x", None)
    assert not hasattr(args, "hidden")
    args = toy_parser().parse_args(["--count", "7", "--rate", "2", "--name", "n", "--files", "a", "b",
                                    "--pair", "1", "2", "--kind", "b", "--flag", "--both", "--words", "x,y",
                                    "--right", "4"])
    # catches: `X | None` or `tuple[X, ...]` passed to argparse as a type (a TypeError), or ints read as str.
    assert (args.count, args.rate, args.name, args.files, args.pair, args.kind) == (7, 2.0, "n", ["a", "b"],
                                                                                   [1, 2], "b")
    assert (args.flag, args.both, args.words, args.right) == (True, True, "x,y", 4)
    assert toy_parser().parse_args(["--left", "x", "--both", "--no-both"]).both is False


@pytest.mark.parametrize("argv", [[], ["--left", "x", "--right", "1"], ["--left", "x", "--kind", "c"],
                                  ["--left", "x", "--count", "1.5"]])
def test_a_missing_side_two_sides_or_a_bad_value_stop_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        toy_parser().parse_args(argv)
    assert stop.value.code == 2 and "error:" in capsys.readouterr().err


def test_the_config_is_built_back_with_tuples_and_the_given_values():
    args = toy_parser().parse_args(["--left", "x", "--files", "a", "b", "--words", "x,y"])
    config = config_from_args(Toy, args, words=("x", "y"), hidden="set")
    assert config == Toy(files=("a", "b"), words=("x", "y"), left="x", hidden="set")
    assert config_from_args(Toy, toy_parser().parse_args(["--left", "x"])) == Toy(left="x")


def test_a_flag_that_defaults_to_true_is_refused():
    @dataclass
    class Wrong:
        on: bool = field(default=True, metadata={"help": "cannot be turned off"})

    with pytest.raises(TypeError, match="Wrong.on: a flag must default to False"):
        add_config_options(argparse.ArgumentParser(), Wrong)


def test_help_shows_only_defaults_that_say_something():
    text = toy_parser().format_help()
    assert "(default: 3)" in text and "(default: 0.5)" in text
    assert "(default: None)" not in text and "(default: [])" not in text and "(default: False)" not in text


def test_check_ranges_names_the_first_bad_option():
    @dataclass
    class Numbers:
        lr: float = 1.0
        epochs: int = 1

    check_ranges(Numbers(), {"lr": POSITIVE, "epochs": AT_LEAST_1})
    with pytest.raises(XDimError, match=r"^--lr nan: must be a positive number$"):
        check_ranges(Numbers(lr=float("nan"), epochs=0), {"lr": POSITIVE, "epochs": AT_LEAST_1})
    with pytest.raises(XDimError, match=r"^--epochs 0: must be at least 1$"):
        check_ranges(dataclasses.replace(Numbers(), epochs=0), {"lr": POSITIVE, "epochs": AT_LEAST_1})


def test_an_output_file_in_a_missing_folder_or_a_folder_is_refused(tmp_path):
    check_output_file("--json", str(tmp_path / "out.json"))
    with pytest.raises(XDimError, match="--json .*: is a folder, give a file name"):
        check_output_file("--json", str(tmp_path))
    with pytest.raises(XDimError, match="--json .*: folder .*missing does not exist"):
        check_output_file("--json", str(tmp_path / "missing" / "out.json"))


def test_a_field_without_default_is_a_required_option_and_a_default_of_0_is_shown(capsys):
    @dataclass(frozen=True, kw_only=True)
    class Needed:
        path: str = field(metadata={"help": "where", "required": True})
        count: int = field(default=0, metadata={"help": "how many"})

    parser = add_config_options(argparse.ArgumentParser(formatter_class=HelpFormatter), Needed)
    assert config_from_args(Needed, parser.parse_args(["--path", "p"])) == Needed(path="p", count=0)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "the following arguments are required: --path" in capsys.readouterr().err
    text = " ".join(parser.format_help().split())
    assert "how many (default: 0)" in text and "where (default" not in text
