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
from lib.model.similarity import DEFAULT_SIMILARITY, check_similarity_name

# The joint embedding size d: X-Dim's thresholds take a standard deviation over d values (none
# at d = 1) and its dependency weights are d x d (16384: 1 GiB of float32, 16 times the paper's).
MIN_EMBED_SIZE = 2
MAX_EMBED_SIZE = 16384


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
    """

    img_dim: int = 2048
    embed_size: int = 1024
    sim: str = DEFAULT_SIMILARITY
    no_imgnorm: bool = False
    no_txtnorm: bool = False
    precomp_enc_type: str = "basic"
    bert: str = DEFAULT_BERT
    bert_config: dict = field(default=None, compare=False)

    def __post_init__(self):
        check_similarity_name(self.sim, "model config sim")
        for name in ("img_dim", "embed_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise XDimError(f"model config {name} {getattr(self, name)!r}: must be a positive integer")
        if not MIN_EMBED_SIZE <= self.embed_size <= MAX_EMBED_SIZE:
            raise XDimError(f"embed_size {self.embed_size}: must lie in {MIN_EMBED_SIZE}..{MAX_EMBED_SIZE} "
                            f"(the paper uses 1024)")

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
        try:
            return cls(**values)
        except XDimError as error:
            raise XDimError(f"{source}: stored {error}") from None

    def with_bert_config(self, bert_config):
        """A copy holding BERT's architecture (a dict)."""
        return replace(self, bert_config=dict(bert_config))
