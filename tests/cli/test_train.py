"""lib/cli/train.py: options are never rewritten; --help hides noise; the range checks at their boundaries
(zero, negative and non-finite refused in one `error:` line before any work, each lower bound accepted)."""
import os

import pytest
from helpers import copy_data, help_text, poison, train_argv, train_from_options

import train as train_script
from lib.cli.train import check_training_options, get_argument_parser, train_configs
from lib.errors import XDimError
from lib.formats.checkpoint import load_checkpoint
from lib.model.config import ModelConfig
from lib.model.xdim_model import XDimModel
from lib.runtime.device import RuntimeConfig
from lib.training.config import TrainConfig


def test_options_are_never_rewritten(tmp_path, tiny_precomp, tiny_bert_dir, checkpoint):
    data_path, data_name, folder = copy_data(tiny_precomp, tmp_path)
    poison(folder, "dev", 0)  # stops training right after everything is resolved
    opt = get_argument_parser().parse_args(train_argv(tmp_path, data_path, data_name, tiny_bert_dir,
                                                      "--device", "auto"))
    before = dict(vars(opt))
    with pytest.raises(XDimError):
        train_from_options(opt)
    assert vars(opt) == before
    saved = load_checkpoint(checkpoint)
    model = XDimModel.from_checkpoint(checkpoint, device="cpu", amp="bf16")
    assert model.config.as_dict() == saved["model_config"] and model.trained_with == saved["train_config"]
    assert model.amp == "bf16" and "amp" not in saved["train_config"]
    assert model.config.bert == tiny_bert_dir and model.bert_path != tiny_bert_dir  # carried in the file


def test_help_hides_noise_and_unused_options():
    text = help_text(get_argument_parser())
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: )" not in text
    assert "(default: 0.0005)" in text
    for hidden in ("--vocab_path", "--word_dim"):
        assert hidden not in text
    for shown in ("--backbone_path", "--backbone_source", "--backbone_warmup_epochs",
                  "--embedding_warmup_epochs", "--backbone_lr_factor", "--input_scale_factor"):
        assert shown in text
    old = get_argument_parser().parse_args(["--word_dim", "200"])
    assert old.word_dim == 200


# The official X-Dim parser's options with their defaults, and ours, as train.py parsed them
# before the options were generated from the config dataclasses.
OFFICIAL_DEFAULTS = {
    "data_path": "../Flickr30K/", "data_name": "f30k_precomp", "vocab_path": "./vocab/", "margin": 0.2,
    "num_epochs": 30, "batch_size": 128, "word_dim": 300, "embed_size": 1024, "grad_clip": 2.0,
    "learning_rate": 0.0005, "lr_update": 15, "optim": "adam", "workers": 10, "log_step": 100, "val_step": 500,
    "logger_name": "../log", "model_name": "../checkpoint", "resume": "", "max_violation": False,
    "img_dim": 2048, "no_imgnorm": False, "no_txtnorm": False, "precomp_enc_type": "basic",
    "backbone_path": "", "backbone_source": "detector", "vse_mean_warmup_epochs": 1,
    "reset_start_epoch": False, "backbone_warmup_epochs": 5, "embedding_warmup_epochs": 2,
    "backbone_lr_factor": 0.01, "input_scale_factor": 1,
}
OUR_DEFAULTS = {"bert_path": None, "device": "auto", "amp": "none", "threads": 0, "seed": 0,
                "mask_padded_regions": False, "sim": "xdim", "loss": "vse_hinge"}
# A command-line value of each option and what it parses to.
GIVEN = {
    "data_path": ("/d", "/d"), "data_name": ("coco_precomp", "coco_precomp"), "vocab_path": ("v", "v"),
    "margin": ("0.5", 0.5), "num_epochs": ("3", 3), "batch_size": ("8", 8), "word_dim": ("10", 10),
    "embed_size": ("64", 64), "grad_clip": ("-1", -1.0), "learning_rate": ("1e-3", 0.001),
    "lr_update": ("2", 2), "optim": ("adam", "adam"), "workers": ("0", 0), "log_step": ("7", 7),
    "val_step": ("0", 0), "logger_name": ("L", "L"), "model_name": ("M", "M"), "resume": ("r.pth", "r.pth"),
    "img_dim": ("32", 32), "precomp_enc_type": ("basic", "basic"), "backbone_path": ("b", "b"),
    "backbone_source": ("imagenet", "imagenet"), "vse_mean_warmup_epochs": ("0", 0), "backbone_warmup_epochs": ("1", 1),
    "embedding_warmup_epochs": ("1", 1), "backbone_lr_factor": ("0.5", 0.5), "input_scale_factor": ("2", 2.0),
    "bert_path": ("bert", "bert"), "device": ("cpu", "cpu"), "amp": ("bf16", "bf16"), "threads": ("2", 2),
    "seed": ("4", 4), "sim": ("cosine", "cosine"), "loss": ("vse_hinge", "vse_hinge"),
}
FLAGS = ["max_violation", "no_imgnorm", "no_txtnorm", "reset_start_epoch", "mask_padded_regions"]


def test_every_official_option_parses_to_the_same_value():
    parser = get_argument_parser()
    defaults = vars(parser.parse_args([]))
    assert {name: defaults[name] for name in {**OFFICIAL_DEFAULTS, **OUR_DEFAULTS}} == {**OFFICIAL_DEFAULTS,
                                                                                    **OUR_DEFAULTS}
    for name, (text, value) in GIVEN.items():
        parsed = getattr(parser.parse_args([f"--{name}", text]), name)
        assert parsed == value and type(parsed) is type(value), name
    for name in FLAGS:
        assert getattr(parser.parse_args([f"--{name}"]), name) is True, name
    assert set(GIVEN) | set(FLAGS) == set(OFFICIAL_DEFAULTS) | set(OUR_DEFAULTS)  # a new option may come


def test_options_are_the_config_fields():
    model, training, runtime = train_configs(get_argument_parser().parse_args([]))
    assert model == ModelConfig() and training == TrainConfig() and runtime == RuntimeConfig()
    model, training, runtime = train_configs(get_argument_parser().parse_args(
        ["--embed_size", "64", "--margin", "0.5", "--threads", "3", "--no_txtnorm", "--loss", "vse_hinge"]))
    assert (model.embed_size, model.no_txtnorm, training.margin, training.loss, runtime.threads) == (
        64, True, 0.5, "vse_hinge", 3)


POSITIVE_FLOAT = "must be a positive number"
NON_NEGATIVE_FLOAT = "must be a number >= 0"
FINITE = "must be a finite number (<= 0 disables clipping)"
AT_LEAST_1 = "must be at least 1"
COUNT = "must be 0 or more"

# (option, refused values, what the message says it must be)
TRAINING_REFUSED = [
    ("--learning_rate", ["0", "-0.0005", "nan", "inf", "-inf"], POSITIVE_FLOAT),
    ("--margin", ["-0.2", "nan", "inf"], NON_NEGATIVE_FLOAT),
    ("--grad_clip", ["nan", "inf", "-inf"], FINITE),
    ("--num_epochs", ["0", "-1"], AT_LEAST_1),
    ("--batch_size", ["0", "-128"], AT_LEAST_1),
    ("--img_dim", ["0", "-1"], AT_LEAST_1),
    ("--log_step", ["0", "-1"], AT_LEAST_1),
    ("--lr_update", ["-1"], COUNT),
    ("--vse_mean_warmup_epochs", ["-1"], COUNT),
    ("--seed", ["-1"], COUNT),
    ("--workers", ["-1"], "must be 0 (load in the main process) or more"),
    ("--threads", ["-1"], "must be 0 (automatic) or more"),
]
# The lower bound of each option above (learning_rate has none: a tiny positive rate stands in).
TRAINING_LOWEST = [("--learning_rate", "1e-12"), ("--margin", "0"), ("--grad_clip", "0"), ("--grad_clip", "-1"),
                   ("--num_epochs", "1"), ("--batch_size", "1"), ("--img_dim", "1"), ("--log_step", "1"),
                   ("--lr_update", "0"), ("--vse_mean_warmup_epochs", "0"), ("--seed", "0"), ("--workers", "0"),
                   ("--threads", "0")]
INT_OPTIONS = ["--num_epochs", "--batch_size", "--embed_size", "--img_dim", "--log_step", "--lr_update",
               "--vse_mean_warmup_epochs", "--seed", "--workers", "--threads"]


def training_argv(tmp_path, *extra):
    return ["--device", "cpu", "--logger_name", str(tmp_path / "log"), "--model_name", str(tmp_path / "ckpt"),
            *extra]


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


@pytest.mark.parametrize("option, value, requirement",
                         [(option, value, requirement) for option, values, requirement in TRAINING_REFUSED
                          for value in values])
def test_training_option_out_of_range_is_one_error_line_before_any_work(tmp_path, capsys, option, value, requirement):
    # catches: a range test loosened at its boundary (e.g. learning_rate `v >= 0`, num_epochs `v >= 0`)
    # or one that lets NaN through (a comparison with NaN is False either way).
    assert train_script.main(training_argv(tmp_path, f"{option}={value}")) == 2
    shown = value if option in INT_OPTIONS else float(value)  # the message shows the parsed number
    assert error_lines(capsys) == [f"error: {option} {shown}: {requirement}"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("option, value", TRAINING_LOWEST)
def test_training_option_at_its_lower_bound_is_accepted(tmp_path, option, value):
    # catches: a bound made strict (`v > 1`, margin `v > 0`) that refuses the documented lowest value.
    opt = get_argument_parser().parse_args(training_argv(tmp_path, option, value))
    assert str(check_training_options(opt)) == "cpu"


@pytest.mark.parametrize("option", INT_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_count_is_refused_by_the_parser_in_one_error_line(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as stop:
        train_script.main(training_argv(tmp_path, option, value))
    assert stop.value.code == 2
    [line] = error_lines(capsys)
    assert line.endswith(f" error: argument {option}: invalid int value: '{value}'")
