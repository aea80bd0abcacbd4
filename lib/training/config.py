"""How a model is trained: data, schedule, loss, optimizer, output folders, seed.

`TrainConfig` is built once by train.py (lib.cli.options.train_configs) and passed
down; checkpoints store it as a plain dict (`as_dict`). The model's architecture is
lib.model.config.ModelConfig; where the run executes (device, threads, precision)
is lib.runtime.device.RuntimeConfig.
"""
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe (the official option names; docs/training.md explains each).

    The defaults are the official code's: 30 epochs of AdamW at 5e-4 (BERT x0.1),
    lr x0.1 at epoch 15, margin 0.2 summing violations for one warm-up epoch, then
    hardest negatives; gradient norm clipped at 2. The raw-image mode adds the backbone's
    schedule (`fixed_blocks`, `ramps_loss`), its lr factor and the image folder
    (`image_root`, '' for the dataset folder's own).
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
    image_root: str = ""
    embedding_warmup_epochs: int = 2
    backbone_warmup_epochs: int = 5
    backbone_lr_factor: float = 0.01

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

    def uses_max_violation(self, epoch):
        """Hardest negatives after the warm-up epochs (or always with max_violation)."""
        return bool(self.max_violation) or epoch >= self.vse_mean_warmup_epochs

    def fixed_blocks(self, epoch):
        """How many parts of the backbone stay frozen in `epoch` (lib.model.backbone.set_fixed_blocks):
        4 (all) for the first embedding_warmup_epochs epochs, then 3, 2 and 1 for
        backbone_warmup_epochs epochs each, then 0 (everything trains)."""
        if epoch < self.embedding_warmup_epochs:
            return 4
        if self.backbone_warmup_epochs <= 0:
            return 0
        return max(0, 3 - (epoch - self.embedding_warmup_epochs) // self.backbone_warmup_epochs)

    def ramps_loss(self, epoch):
        """True in the first epoch the backbone trains: its batch i's loss is scaled by
        i / (batches per epoch + 1), a linear ramp from 0."""
        return epoch == self.embedding_warmup_epochs
