"""How a model is trained: data, schedule, loss, optimizer, output folders, seed.

`TrainConfig` is built once by train.py (lib.cli.train.train_configs) and passed
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
    The raw-image mode adds the backbone's schedule (`fixed_blocks`, `ramps_loss`), its lr
    factor and the image folder (`image_root`, '' for the dataset folder's own).
    """

    data_path: str = field(default="../Flickr30K/", metadata={
        "help": "folder that holds {data_name}/ (backbone mode: the dataset folder itself, holding precomp/, "
                "id_mapping.json and the images)"})
    data_name: str = field(default="f30k_precomp", metadata={
        "help": "{coco,f30k}_precomp (backbone mode: a name containing 'coco' reads images/, any other "
                "flickr30k-images/)"})
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
    image_root: str = field(default="", metadata={
        "help": "backbone mode: the image folder, when not inside --data_path "
                "(images/ for COCO, flickr30k-images/ otherwise)"})
    embedding_warmup_epochs: int = field(default=2, metadata={
        "help": "backbone mode: first epochs with the whole backbone frozen; the next one ramps the "
                "loss up linearly from 0"})
    backbone_warmup_epochs: int = field(default=5, metadata={
        "help": "backbone mode: epochs with 3, then 2, then 1 fixed blocks after the embedding warm-up, "
                "before the whole backbone trains"})
    backbone_lr_factor: float = field(default=0.01, metadata={
        "help": "backbone mode: the backbone's learning rate is --learning_rate times this"})

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
