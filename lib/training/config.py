"""How a model is trained: data, schedule, loss, optimizer, output folders, seed.

`TrainConfig` is built once by train.py (lib.cli.options.train_configs) and passed
down; checkpoints store it as a plain dict (`as_dict`). The model's architecture is
lib.model.config.ModelConfig; where the run executes (device, threads, precision)
is lib.runtime.device.RuntimeConfig.
"""
from dataclasses import asdict, dataclass, fields

from lib.model.loss import DEFAULT_LOSS


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe (the official option names; docs/training.md explains each).

    The defaults are the official code's: 30 epochs of AdamW at 5e-4 (BERT x0.1),
    lr x0.1 at epoch 15, the VSE hinge loss (`loss`, lib.model.loss) with margin 0.2
    summing violations for one warm-up epoch, then hardest negatives; gradient norm clipped at 2.
    """

    data_path: str = "../Flickr30K/"
    data_name: str = "f30k_precomp"
    margin: float = 0.2
    num_epochs: int = 30
    batch_size: int = 128
    grad_clip: float = 2.0
    learning_rate: float = 0.0005
    lr_update: int = 15
    optim: str = "adam"
    workers: int = 10
    log_step: int = 100
    val_step: int = 500
    logger_name: str = "../log"
    model_name: str = "../checkpoint"
    resume: str = ""
    max_violation: bool = False
    vse_mean_warmup_epochs: int = 1
    reset_start_epoch: bool = False
    seed: int = 0
    mask_padded_regions: bool = False
    loss: str = DEFAULT_LOSS

    def as_dict(self):
        """A plain dict (stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        """The config from a dict of its fields; fields it does not know are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def lr_factor(self, epoch):
        """All learning rates x0.1 from epoch `lr_update` on."""
        return 0.1 if epoch >= self.lr_update else 1.0
