"""How a model is trained: data, schedule, loss, optimizer, output folders, seed.

`TrainConfig` is built once by train.py (lib.cli.options.train_configs) and passed
down; checkpoints store it as a plain dict (`as_dict`). Each field is also its
command-line option (`--NAME`): type and default come from the field, the help line,
choices and metavar from its metadata (lib.cli.options.add_config_options), so a new
training option is one field here. The model's architecture is
lib.model.config.ModelConfig; where the run executes (device, threads, precision)
is lib.runtime.device.RuntimeConfig.
"""
from dataclasses import asdict, dataclass, field, fields

from lib.model.loss import DEFAULT_LOSS, LOSSES


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe (the official option names; docs/training.md explains each).

    The defaults are the official code's: 30 epochs of AdamW at 5e-4 (BERT x0.1),
    lr x0.1 at epoch 15, the VSE hinge loss (`loss`, lib.model.loss) with margin 0.2
    summing violations for one warm-up epoch, then hardest negatives; gradient norm clipped at 2.
    """

    data_path: str = field(default="../Flickr30K/", metadata={"help": "folder that holds {data_name}/"})
    data_name: str = field(default="f30k_precomp", metadata={"help": "{coco,f30k}_precomp"})
    margin: float = field(default=0.2, metadata={"help": "rank loss margin"})
    num_epochs: int = field(default=30, metadata={"help": "number of training epochs"})
    batch_size: int = field(default=128, metadata={
        "help": "global mini-batch size (split across processes under torchrun)"})
    grad_clip: float = field(default=2.0, metadata={"help": "gradient norm clipping threshold (<= 0 disables)"})
    learning_rate: float = field(default=0.0005, metadata={"help": "base learning rate"})
    lr_update: int = field(default=15, metadata={"help": "epoch at which every learning rate is multiplied by 0.1"})
    optim: str = field(default="adam", metadata={
        "help": "optimizer: adam means AdamW, weight decay 1e-4", "choices": ("adam",)})
    workers: int = field(default=10, metadata={"help": "data loader worker processes"})
    log_step: int = field(default=100, metadata={"help": "iterations between log lines"})
    val_step: int = field(default=500, metadata={
        "help": "also validate (and keep model_best) every this many iterations inside an epoch"})
    logger_name: str = field(default="../log", metadata={
        "help": "folder for the TensorBoard events, the text log and the run's configs (configs.json)"})
    model_name: str = field(default="../checkpoint", metadata={"help": "folder for checkpoints"})
    resume: str = field(default="", metadata={"help": "checkpoint to resume from", "metavar": "PATH"})
    max_violation: bool = field(default=False, metadata={
        "help": "hardest negatives from the first epoch (otherwise after --vse_mean_warmup_epochs)"})
    vse_mean_warmup_epochs: int = field(default=1, metadata={
        "help": "epochs that sum all violations before switching to hardest negatives"})
    reset_start_epoch: bool = field(default=False, metadata={"help": "with --resume: start again from epoch 0"})
    seed: int = field(default=0, metadata={"help": "random seed (python, numpy, torch)"})
    mask_padded_regions: bool = field(default=False, metadata={
        "help": "exclude zero-padded (dropped) regions from attention; off reproduces the official code"})
    loss: str = field(default=DEFAULT_LOSS, metadata={
        "help": "training loss (listed below), recorded with the recipe", "choices": LOSSES, "metavar": "NAME"})

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
