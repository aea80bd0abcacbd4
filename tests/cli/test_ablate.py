"""lib/cli/ablate.py: ablate.py's options (the demo's training defaults, AblationConfig's own), their checks
before any work, and the configs built from them without rewriting the parsed options."""
import os

import pytest

from lib.cli.ablate import ablation_configs, ablation_parser, check_ablation_options
from lib.errors import XDimError
from lib.model.similarity import ablation_variants


def parse(*argv):
    return ablation_parser("ablate").parse_args(list(argv))


def test_no_option_gives_the_demo_recipe_and_the_documented_ablation(tmp_path):
    args = parse("--out", str(tmp_path / "abl"))
    before = dict(vars(args))
    check_ablation_options(args)
    model, training, runtime, ablation = ablation_configs(args)
    # catches: ablate.py writing --sim/--model_name/--logger_name back into the parsed options.
    assert vars(args) == before
    assert list(ablation.variants) == ablation_variants() and ablation.variants[0] == "xdim"
    assert (ablation.split, ablation.seeds, ablation.n_resamples) == ("test", 1, 10000)
    assert model.sim == "xdim" and training.model_name == training.logger_name == str(tmp_path / "abl")
    # the demo's recipe (train_demo.sh), not train.py's
    assert (training.batch_size, training.learning_rate, training.num_epochs, training.lr_update) == (64, 0.002, 4, 3)
    assert (model.embed_size, runtime.device) == (64, "cpu")
    assert parse().out == os.path.join("runs", "ablation")


def test_the_first_variant_is_the_model_of_the_configs(tmp_path):
    args = parse("--out", str(tmp_path), "--variants", "cosine", "xdim", "--seeds", "3", "--n_resamples", "50")
    model, _, _, ablation = ablation_configs(args)
    assert model.sim == "cosine" and ablation.variants == ("cosine", "xdim")
    assert (ablation.seeds, ablation.n_resamples) == (3, 50)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds 0: must be at least 1"),
    (["--variants", "xdim", "cosine", "--n_resamples", "1"], "--n_resamples 1"),
    (["--learning_rate", "0"], "--learning_rate 0.0: must be a positive number"),
])
def test_a_bad_option_stops_before_any_work(tmp_path, argv, message):
    with pytest.raises(XDimError, match=message):
        check_ablation_options(parse("--out", str(tmp_path / "abl"), *argv))
    assert os.listdir(tmp_path) == []


def test_one_variant_needs_no_resamples(tmp_path):
    check_ablation_options(parse("--out", str(tmp_path), "--variants", "xdim", "--n_resamples", "1"))
