"""What defines an X-Dim model, as one typed record stored in every checkpoint.

`ModelConfig` holds everything needed to rebuild the network's architecture:
the region feature size, the joint embedding size, the similarity, the
normalisation flags and the BERT (where its weights and vocabulary come from, and
its architecture once known). It is stored in checkpoints as a plain dict
(`as_dict`) and read back with `from_dict`, which rejects unknown fields.

Training settings (schedule, loss, optimizer, paths, seed) are not part of the
model: they live in lib.training.config.TrainConfig.
"""
from dataclasses import asdict, dataclass, field, fields, replace

from lib.errors import XDimError
from lib.model.backbone import FULL_WIDTH, SOURCES, check_backbone_source, output_channels
from lib.model.bert import DEFAULT_BERT
from lib.model.similarity import DEFAULT_SIMILARITY, SIMILARITIES, check_similarity_name

# The joint embedding size d: X-Dim's thresholds take a standard deviation over d values (none
# at d = 1) and its dependency weights are d x d (16384: 1 GiB of float32, 16 times the paper's).
MIN_EMBED_SIZE = 2
MAX_EMBED_SIZE = 16384

ENCODER_TYPES = ("basic", "backbone")
BACKBONE_FIELDS = ("backbone_source", "backbone_width", "backbone_path", "input_scale_factor")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of an X-Dim model.

    img_dim: region feature size (2048 for BUTD); embed_size: the joint space `d`;
    sim: the similarity's registry name (lib.model.similarity.SIMILARITIES);
    no_imgnorm / no_txtnorm: skip the final l2-normalisation of region / token
    embeddings; precomp_enc_type: the image encoder: 'basic' (FC + MLP on precomputed
    region features) or 'backbone' (a ResNet on the pixels, its grid cells through the
    FC alone; lib/model/backbone.py);
    backbone_source: which ResNet and weights (lib.model.backbone.SOURCES);
    backbone_width: its stem width (64: the published networks; smaller only for tests
    and the demo; img_dim must then be 32 x backbone_width); backbone_path: the weight
    file a new model starts from ('none': random initialisation), like `bert`
    recorded, never read again once the model is in a checkpoint;
    input_scale_factor: images are resized to int(256 x input_scale_factor) pixels square;
    bert: the hub name or folder the BERT weights and vocabulary came from;
    bert_config: BERT's architecture (its config.json as a dict), filled in when
    the model is built, so that a checkpoint rebuilds BERT without its source.
    A field with a help line in its metadata is a command-line option of train.py.
    """

    img_dim: int = field(default=2048, metadata={
        "help": "region feature size (raw-image mode: the backbone's channels, 32 x --backbone_width)"})
    embed_size: int = field(default=1024, metadata={"help": "joint embedding size d"})
    sim: str = field(default=DEFAULT_SIMILARITY, metadata={
        "help": "similarity function (listed below), stored in checkpoints", "choices": SIMILARITIES,
        "metavar": "NAME"})
    no_imgnorm: bool = field(default=False, metadata={"help": "do not L2-normalise image embeddings"})
    no_txtnorm: bool = field(default=False, metadata={"help": "do not L2-normalise text embeddings"})
    precomp_enc_type: str = field(default="basic", metadata={
        "help": "basic: precomputed region features through FC + MLP; backbone: image files through a "
                "ResNet whose last feature map's cells are the regions, then the FC alone "
                "(docs/training.md, \"Raw images\")", "choices": ENCODER_TYPES})
    # Set by --bert_path (lib.cli.options.add_runtime_options), which every script shares.
    bert: str = DEFAULT_BERT
    bert_config: dict = field(default=None, compare=False)
    backbone_source: str = field(default="detector", metadata={
        "help": "backbone mode: detector (BUTD Faster R-CNN ResNet-101), imagenet (ResNet-101), "
                "imagenet_res50, imagenet_res152, imagenet_resnext (ResNeXt-101 32x8d), wsl (the same, "
                "Instagram-pretrained)", "choices": SOURCES})
    backbone_width: int = field(default=FULL_WIDTH, metadata={
        "help": "backbone mode: the ResNet's stem width; 64 is the published network, smaller ones "
                "(the demo's 8) keep its blocks but are only for tests and demos"})
    backbone_path: str = field(default="", metadata={
        "help": "backbone mode: the weight file of --backbone_source (docs/data.md says where each comes "
                "from; nothing is downloaded); 'none' starts from random weights (tests, demo)"})
    input_scale_factor: float = field(default=1.0, metadata={
        "help": "backbone mode: images are resized to int(256 x this) pixels square (2.0: 512, a 16 x 16 grid)"})

    def __post_init__(self):
        check_similarity_name(self.sim, "model config sim")
        for name in ("img_dim", "embed_size", "backbone_width"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise XDimError(f"model config {name} {getattr(self, name)!r}: must be a positive integer")
        if not MIN_EMBED_SIZE <= self.embed_size <= MAX_EMBED_SIZE:
            raise XDimError(f"embed_size {self.embed_size}: must lie in {MIN_EMBED_SIZE}..{MAX_EMBED_SIZE} "
                            f"(the paper uses 1024)")
        if self.precomp_enc_type not in ENCODER_TYPES:
            raise XDimError(f"model config precomp_enc_type {self.precomp_enc_type!r}: "
                            f"must be one of {', '.join(ENCODER_TYPES)}")
        if self.uses_backbone:
            self._check_backbone()

    def _check_backbone(self):
        check_backbone_source(self.backbone_source, "model config backbone_source")
        if self.img_dim != output_channels(self.backbone_width):
            raise XDimError(f"--img_dim {self.img_dim}: the backbone's grid features have "
                            f"{output_channels(self.backbone_width)} channels (32 x --backbone_width)")
        if SOURCES[self.backbone_source].groups > 1 and self.backbone_width % 8:
            raise XDimError(f"--backbone_width {self.backbone_width}: ResNeXt needs a multiple of 8")
        if not self.input_size >= 32:
            raise XDimError(f"--input_scale_factor {self.input_scale_factor}: images would be "
                            f"{self.input_size} pixels square; at least 32 are needed")

    @property
    def uses_backbone(self):
        """True in the raw-image mode (a ResNet on pixels), False for precomputed regions."""
        return self.precomp_enc_type == "backbone"

    @property
    def input_size(self):
        """The side T of the square pixel input, int(256 x input_scale_factor)."""
        return int(256 * self.input_scale_factor)

    def as_dict(self):
        """A plain dict (stored in checkpoints; loads with weights_only=True). The backbone's
        fields are left out for region features, so those checkpoints stay as they were."""
        values = asdict(self)
        if not self.uses_backbone:
            for name in BACKBONE_FIELDS:
                values.pop(name)
        return values

    @classmethod
    def from_dict(cls, values, source="model config"):
        """The config from `as_dict`'s output; XDimError (naming `source`) for an unknown field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise XDimError(f"{source}: unknown model config field {unknown[0]!r}")
        check_similarity_name(values.get("sim", DEFAULT_SIMILARITY), f"{source} (stored similarity)")
        try:
            return cls(**values)
        except XDimError as error:
            raise XDimError(f"{source}: stored {error}") from None

    def with_bert_config(self, bert_config):
        """A copy holding BERT's architecture (a dict)."""
        return replace(self, bert_config=dict(bert_config))
