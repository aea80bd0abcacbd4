"""lib/cli/analyze.py: analyze.py's options are AnalyzeConfig's fields, parsed once into the config; the help
keeps the examples line by line."""
import dataclasses

import pytest

import analyze
from lib.analysis.config import AnalyzeConfig
from lib.cli.analyze import analyze_config, analyze_parser


def parser():
    return analyze_parser("analyze", analyze.__doc__.split("\n", 2)[2])


def test_no_optional_option_gives_the_documented_defaults():
    config = analyze_config(parser().parse_args(["--model_path", "m.pth", "--out", "o"]))
    assert config == AnalyzeConfig(model_path="m.pth", out="o")
    assert (config.split, config.words, config.top_k, config.pair, config.bert_path) == ("test", (), None, None, None)
    assert config.progress


def test_words_and_pair_become_typed_tuples():
    args = parser().parse_args(["--model_path", "m.pth", "--out", "o", "--words", "dog", "cat", "--pair", "3", "14",
                                "--top_k", "5", "--bert_path", "b", "--no_progress"])
    config = analyze_config(args)
    # catches: --pair parsed as strings (the split would be indexed by '3').
    assert (config.words, config.pair, config.top_k, config.bert_path, config.progress) == (
        ("dog", "cat"), (3, 14), 5, "b", False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.out = "elsewhere"


@pytest.mark.parametrize("argv", [["--out", "o"], ["--model_path", "m.pth"], ["--model_path", "m", "--out", "o",
                                                                              "--pair", "1"]])
def test_a_missing_required_option_or_half_a_pair_stops_the_parser(argv):
    with pytest.raises(SystemExit):
        parser().parse_args(argv)


def test_the_help_keeps_each_example_on_its_own_line():
    # catches: a backslash at a line end of the docstring that joined two example lines into one.
    lines = parser().format_help().splitlines()
    assert any(line.endswith("--out runs/grid/analysis \\") for line in lines)
    assert "        --image beach.jpg --caption \"a dog running on the beach\"" in lines


def test_a_negative_thread_count_is_refused_before_anything_is_read(tmp_path, capsys):
    # catches: analyze.py taking --threads -1 silently as automatic while every other script refuses it.
    code = analyze.main(["--model_path", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "out"),
                         "--threads", "-1"])
    assert code == 2
    assert capsys.readouterr().err == "error: --threads -1: must be 0 (automatic) or more\n"
    assert not (tmp_path / "out").exists()
