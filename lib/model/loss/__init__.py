"""Training losses: a batch's (B, B) score matrix -> one scalar to minimise.

The contract. A loss is a `Loss` (lib/model/loss/base.py), an nn.Module built from the
training recipe as `cls.from_config(train_config)`, with

- `forward(scores (B, B)) -> scalar float32`: row i is image i, column j caption j, the
  diagonal holds the matching pairs (under torchrun, the whole global batch);
- `start_epoch(epoch)`: called by the trainer at the start of every epoch, for a loss
  whose form follows a schedule (the hinge's warm-up); default nothing.

Adding one = one module plus one entry in LOSSES below (a LossEntry: the class and its
--help line); `--loss NAME` then picks it and checkpoints store the name with the recipe.
"""
from typing import NamedTuple

from lib.errors import XDimError
from lib.model.loss.base import Loss
from lib.model.loss.hinge import ContrastiveLoss

DEFAULT_LOSS = "vse_hinge"


class LossEntry(NamedTuple):
    """One --loss choice: its class and its --help line."""
    cls: type  # a Loss, built as cls.from_config(train_config)
    help: str


LOSSES = {
    "vse_hinge": LossEntry(
        ContrastiveLoss, "hinge triplet loss with --margin: every violation during the "
                         "--vse_mean_warmup_epochs, then the hardest negatives (VSE++)"),
}

__all__ = ["DEFAULT_LOSS", "LOSSES", "ContrastiveLoss", "Loss", "LossEntry", "build_loss", "check_loss_name",
           "loss_help"]


def check_loss_name(name, source="--loss"):
    """XDimError (one line, naming `source`) unless `name` is a registered loss."""
    if name not in LOSSES:
        raise XDimError(f"{source}: unknown loss {name!r} (known: {', '.join(LOSSES)})")


def build_loss(name, train_config):
    """The loss registered as `name`, set up from `train_config` (a TrainConfig)."""
    check_loss_name(name)
    return LossEntry(*LOSSES[name]).cls.from_config(train_config)


def loss_help():
    """A block of lines naming every loss, for --help."""
    width = max(map(len, LOSSES))
    return "losses (--loss NAME):\n" + "\n".join(
        f"  {name:<{width}}  {LossEntry(*entry).help}" for name, entry in LOSSES.items())
