"""Models, checkpoints, trainers and trainings built from train.py-style option namespaces.

Tests describe a run the way a user does, as options (`lib.cli.options.default_options`),
and turn them into the typed configs here, as train.py does.
"""
from lib.cli.options import check_training_options, train_configs
from lib.model.xdim_model import XDimModel
from lib.training import trainer


def model_from_options(opt, bert_config=None):
    """A new XDimModel on opt.device: pretrained BERT from opt.bert_path, or only
    the architecture of `bert_config` (a dict) when given."""
    model_config, _, runtime = train_configs(opt)
    if bert_config is not None:
        model_config = model_config.with_bert_config(bert_config)
    return XDimModel(model_config, bert_path=opt.bert_path, amp=runtime.amp).to(runtime.torch_device())


def checkpoint_of(model, opt=None, **training_state):
    """`model`'s checkpoint dict; with `opt`, its TrainConfig too (where it was trained)."""
    train_config = None if opt is None else train_configs(opt)[1]
    return model.to_checkpoint(train_config, training_state or None)


def trainer_for(model, opt):
    """A Trainer of `model` with opt's optimizer and loss settings, for single train steps."""
    return trainer.Trainer(model, train_configs(opt)[1], loader=None, dev_files=None, caption_encoder=None,
                           logger=None, tb=None)


def train_from_options(opt, **kwargs):
    """train.py's work on `opt`: check the options, build the configs, train."""
    check_training_options(opt)
    return trainer.train(*train_configs(opt), **kwargs)
