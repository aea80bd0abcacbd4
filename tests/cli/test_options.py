"""lib/cli/options.py: options are never rewritten; --help hides noise."""
import pytest
from helpers import copy_data, help_text, poison, train_argv, train_from_options

import eval as eval_cli
from lib.cli.options import get_argument_parser
from lib.errors import XDimError
from lib.formats.checkpoint import load_checkpoint
from lib.model.xdim_model import XDimModel


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
    for hidden in ("--vocab_path", "--word_dim", "--backbone_path", "--backbone_source", "--backbone_warmup_epochs",
                   "--embedding_warmup_epochs", "--backbone_lr_factor", "--input_scale_factor"):
        assert hidden not in text
    old = get_argument_parser().parse_args(["--word_dim", "200", "--backbone_lr_factor", "0.1"])
    assert old.word_dim == 200 and old.backbone_lr_factor == 0.1
    assert "(default: None)" not in help_text(eval_cli.build_parser())
