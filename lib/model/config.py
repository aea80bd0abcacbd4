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
from lib.model.bert import DEFAULT_BERT
from lib.model.similarity import DEFAULT_SIMILARITY, SIMILARITIES, check_similarity_name


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of an X-Dim model.

    img_dim: region feature size (2048 for BUTD); embed_size: the joint space `d`;
    sim: the similarity's registry name (lib.model.similarity.SIMILARITIES);
    no_imgnorm / no_txtnorm: skip the final l2-normalisation of region / token
    embeddings; precomp_enc_type: the image encoder ('basic': FC + MLP);
    bert: the hub name or folder the BERT weights and vocabulary came from;
    bert_config: BERT's architecture (its config.json as a dict), filled in when
    the model is built, so that a checkpoint rebuilds BERT without its source.
    A field with a help line in its metadata is a command-line option of train.py.
    """

    img_dim: int = field(default=2048, metadata={"help": "region feature size"})
    embed_size: int = field(default=1024, metadata={"help": "joint embedding size d"})
    sim: str = field(default=DEFAULT_SIMILARITY, metadata={
        "help": "similarity function (listed below), stored in checkpoints", "choices": SIMILARITIES,
        "metavar": "NAME"})
    no_imgnorm: bool = field(default=False, metadata={"help": "do not L2-normalise image embeddings"})
    no_txtnorm: bool = field(default=False, metadata={"help": "do not L2-normalise text embeddings"})
    precomp_enc_type: str = field(default="basic", metadata={
        "help": "image encoder for precomputed features (only basic: FC + MLP)", "choices": ("basic",)})
    # Set by --bert_path (lib.cli.options.add_runtime_options), which every script shares.
    bert: str = DEFAULT_BERT
    bert_config: dict = field(default=None, compare=False)

    def __post_init__(self):
        check_similarity_name(self.sim, "model config sim")
        for name in ("img_dim", "embed_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise XDimError(f"model config {name} {getattr(self, name)!r}: must be a positive integer")

    def as_dict(self):
        """A plain dict (stored in checkpoints; loads with weights_only=True)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values, source="model config"):
        """The config from `as_dict`'s output; XDimError (naming `source`) for an unknown field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise XDimError(f"{source}: unknown model config field {unknown[0]!r}")
        check_similarity_name(values.get("sim", DEFAULT_SIMILARITY), f"{source} (stored similarity)")
        return cls(**values)

    def with_bert_config(self, bert_config):
        """A copy holding BERT's architecture (a dict)."""
        return replace(self, bert_config=dict(bert_config))
