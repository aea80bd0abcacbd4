"""lib/cli/evaluate.py: eval.py's options are EvalConfig's fields (with test.py's and testall.py's presets),
parsed once into the config without rewriting the namespace; the range checks at their boundaries."""
import dataclasses

import pytest
from helpers import help_text

import eval as eval_cli
from lib.cli.evaluate import check_evaluation_options, evaluation_config, evaluation_parser
from lib.evaluation.config import EvalConfig

AT_LEAST_1 = "must be at least 1"
COUNT = "must be 0 or more"


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def parse(*argv, **defaults):
    return evaluation_parser("eval", **defaults).parse_args(list(argv))


# eval.py's defaults as they were before the options were generated from EvalConfig.
EVAL_DEFAULTS = {
    "model_path": None, "data_path": None, "data_name": None, "image_root": None, "split": "test", "fold5": False,
    "fold_images": 1000, "batch_size": 128, "workers": 2, "storage": "float32", "rows_per_block": 0,
    "save_sims": None, "ensemble": (), "json": None, "shortlist": None, "compare": None, "n_resamples": 10000,
    "seed": 0, "protocols": (), "pm_dir": None, "no_progress": False, "bert_path": None,
}


def test_no_option_gives_the_documented_defaults():
    # catches: a default changed while moving it into the dataclass (e.g. workers 2 -> 10, fold_images 5000).
    config = evaluation_config(parse())
    values = dataclasses.asdict(config)
    assert {name: values[name] for name in EVAL_DEFAULTS} == EVAL_DEFAULTS  # a new option may come
    assert config == EvalConfig() and config.progress


@pytest.mark.parametrize("presets", [dict(data_name="f30k_precomp", split="test", fold5=False),
                                     dict(data_name="coco_precomp", split="testall", fold5=True)])
def test_the_presets_of_test_and_testall_reach_the_config(presets):
    config = evaluation_config(parse(**presets))
    assert (config.data_name, config.split, config.fold5) == tuple(presets.values())
    assert evaluation_config(parse("--no-fold5", **presets)).fold5 is False


def test_options_become_typed_values_without_rewriting_the_namespace(tmp_path):
    pm_dir = tmp_path / "pm"
    pm_dir.mkdir()
    for name in ("pm_image_to_caption.json", "pm_caption_to_image.json"):
        (pm_dir / name).write_text("{}")
    args = parse("--ensemble", "a.npy", "b.npy", "--protocols", "pmrp, eccv,coco", "--pm_dir", str(pm_dir),
                 "--shortlist", "7", "--bert_path", "bert", "--no_progress")
    before = dict(vars(args))
    config = evaluation_config(args)
    assert vars(args) == before  # catches: the entry point writing the parsed protocols back into args
    assert config.ensemble == ("a.npy", "b.npy") and config.protocols == ("coco", "eccv", "pmrp")
    assert (config.shortlist, config.bert_path, config.progress) == (7, "bert", False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.split = "dev"


def test_compare_takes_two_paths():
    assert evaluation_config(parse("--compare", "a.npy", "b.pth")).compare == ("a.npy", "b.pth")
    with pytest.raises(SystemExit):
        parse("--compare", "a.npy")


def test_help_shows_no_empty_default():
    text = help_text(evaluation_parser("eval"))
    assert "(default: None)" not in text and "(default: ())" not in text and "(default: [])" not in text
    assert "(default: 10000)" in text and "--fold5, --no-fold5" in text


EVALUATION_REFUSED = [
    ("--batch_size", ["0", "-1"], AT_LEAST_1),
    ("--fold_images", ["0", "-1000"], AT_LEAST_1),
    ("--rows_per_block", ["-1"], COUNT),
    ("--workers", ["-1"], "must be 0 (load in the main process) or more"),
    ("--threads", ["-1"], "must be 0 (automatic) or more"),
]
EVALUATION_LOWEST = [("--batch_size", "1"), ("--fold_images", "1"), ("--rows_per_block", "0"), ("--workers", "0"),
                     ("--threads", "0"), ("--shortlist", "1")]


@pytest.mark.parametrize("option, value, requirement",
                         [(option, value, requirement) for option, values, requirement in EVALUATION_REFUSED
                          for value in values])
def test_evaluation_option_out_of_range_is_one_error_line(tmp_path, capsys, option, value, requirement):
    assert eval_cli.main(["--model_path", str(tmp_path / "m.pth"), "--device", "cpu", option, value]) == 2
    assert error_lines(capsys) == [f"error: {option} {value}: {requirement}"]


@pytest.mark.parametrize("value", ["0", "-5"])
def test_shortlist_of_no_item_is_refused(tmp_path, capsys, value):
    # catches: `shortlist < 0` for `< 1`, or `if args.shortlist and ...` (0 would skip the two-stage report).
    assert eval_cli.main(["--model_path", str(tmp_path / "m.pth"), "--device", "cpu", "--shortlist", value]) == 2
    assert error_lines(capsys) == [f"error: --shortlist {value}: needs K >= 1 and --model_path "
                                   "(the global vectors come from the model)"]


@pytest.mark.parametrize("option, value", EVALUATION_LOWEST)
def test_evaluation_option_at_its_lower_bound_is_accepted(tmp_path, option, value):
    args = parse("--model_path", str(tmp_path / "m.pth"), "--device", "cpu", option, value)
    assert str(check_evaluation_options(args)) == "cpu"
