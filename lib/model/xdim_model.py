"""XDimModel: the image encoder, the BERT text encoder and the similarity as one nn.Module.

The method names follow the VSE-infinity lineage: `encode_images`,
`encode_captions`, `forward_emb` (both at once) and `forward_sim` (scores of every
image against every caption). `forward` is the training forward that
DistributedDataParallel wraps. The model owns no optimizer and no training step
(lib.training.trainer does); `from_checkpoint` is the one way to load a saved model.
"""
import contextlib

import numpy as np
import torch
import torch.nn as nn

from lib.errors import XDimError
from lib.formats import checkpoint as ckpt_io
from lib.formats.official import official_state_dict
from lib.model.backbone import NO_BACKBONE_WEIGHTS, ResNet, load_backbone_weights
from lib.model.bert import BUNDLED_BERT_BASE, bert_config_dict, bert_vocab, materialize_bert_dir, resolve_bert_path
from lib.model.config import ModelConfig
from lib.model.encoders import ImageEncoder, TextEncoder
from lib.model.similarity import build_similarity

AMP_MODES = ("none", "bf16")
# Grid dropping: an image drops cells only when its u2 ~ U(0, 1) exceeds this; it then keeps
# each cell whose u1 ~ U(0, 1) exceeds GRID_DROP_SCALE * u2 (so at most 20% are dropped).
GRID_DROP_ABOVE = 0.2
GRID_DROP_SCALE = 0.2


def drop_grid_cells(features, rng=np.random):
    """Training-time grid dropping, the raw-image mode's counterpart of region dropping.

    features (B, N, C) -> (kept (B, N', C), lengths (B,) int64): per image u2 ~ U(0, 1);
    when u2 > 0.2 each cell whose own u1 ~ U(0, 1) exceeds 0.2 x u2 is kept, else every
    cell; kept cells come first in their order, zero-padded, and the batch is cut to its
    longest image. Draws from numpy's generator (reseeded every epoch by the trainer).
    """
    batch, cells, _ = features.shape
    u1, u2 = rng.rand(batch, cells), rng.rand(batch)
    keep = torch.from_numpy((u1 > GRID_DROP_SCALE * u2[:, None]) | (u2 <= GRID_DROP_ABOVE)[:, None])
    keep = keep.to(features.device)
    lengths = keep.sum(1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    kept = features.gather(1, order[..., None].expand_as(features))
    kept = kept * (torch.arange(cells, device=features.device) < lengths[:, None])[..., None]
    return kept[:, :int(lengths.max())], lengths.long()


class XDimModel(nn.Module):
    """X-Dim: `img_enc` (regions -> joint space), `txt_enc` (BERT + projection) and `sim`;
    in the raw-image mode (config.uses_backbone) also `backbone`, a ResNet whose grid
    cells are the regions (lib/model/backbone.py), with `img_enc` then the FC alone.

    config: a ModelConfig. bert_path: the BERT folder or hub name whose tokenizer
    and vocabulary go with the model (default config.bert). Without
    `config.bert_config` the pretrained weights at `bert_path` are loaded (training);
    with it only BERT's architecture is built (the weights come from a checkpoint).
    The backbone follows the same rule: a new model loads `config.backbone_path`
    (lib.model.backbone.load_backbone_weights; 'none' keeps the random initialisation).
    `amp` ('none' or 'bf16') is the autocast precision of the encoders and the
    similarity; the loss stays float32. The state dict is flat: `img_enc.*`,
    `txt_enc.*`, `sim.*` (and `backbone.*`).
    """

    def __init__(self, config, bert_path=None, amp="none"):
        super().__init__()
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, not {amp!r}")
        self.bert_path = bert_path or config.bert
        self.amp = amp
        self.backbone = None
        if config.uses_backbone:
            self.backbone = ResNet(config.backbone_source, config.backbone_width)
        self.img_enc = ImageEncoder(config.img_dim, config.embed_size, no_imgnorm=config.no_imgnorm,
                                    mlp=not config.uses_backbone)
        self.txt_enc = TextEncoder(config.embed_size, bert_path=self.bert_path, bert_config=config.bert_config,
                                   no_txtnorm=config.no_txtnorm)
        self.sim = build_similarity(config.sim, config.embed_size)
        fresh = config.bert_config is None
        self.config = config.with_bert_config(self.txt_enc.bert.config.to_dict())
        self.trained_with = None
        if fresh and self.backbone is not None and config.backbone_path != NO_BACKBONE_WEIGHTS:
            load_backbone_weights(self.backbone, config.backbone_path)

    @property
    def device(self):
        """The device of the model's parameters."""
        return next(self.parameters()).device

    @property
    def bert_config(self):
        """BERT's architecture as a dict (its config.json)."""
        return self.config.bert_config

    def vocab(self):
        """BERT's vocabulary (list of tokens by id), stored in checkpoints."""
        return bert_vocab(self.bert_path)

    def check_vocabulary(self, source):
        """XDimError naming `source` unless the vocabulary has one token per row of BERT's embeddings
        (a cut vocabulary would map the words past its end to [UNK] and evaluate silently wrong)."""
        tokens, rows = len(self.vocab()), self.txt_enc.bert.embeddings.word_embeddings.num_embeddings
        if tokens != rows:
            raise XDimError(f"{source}: its vocabulary holds {tokens} tokens but the BERT embeddings have {rows} "
                            f"rows (a cut or foreign vocabulary); re-save the checkpoint, or give --bert_path "
                            f"the BERT folder it was trained with")

    def val_start(self):
        """Evaluation mode (kept for the VSE lineage's callers; same as `eval()`)."""
        return self.eval()

    def autocast(self):
        """bf16 autocast on the model's device when amp == 'bf16', else a no-op."""
        if self.amp != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # ----- forward ----------------------------------------------------------
    def image_features(self, images):
        """The image encoder's input: region features (n, R, img_dim) as they are, or in the
        raw-image mode pixels (n, 3, T, T) -> grid features (n, h*w, img_dim); on the model's device."""
        images = images.to(self.device, non_blocking=True).float()
        return images if self.backbone is None else self.backbone(images)

    def encode_images(self, images, image_lengths=None):
        """images (n, R, img_dim) or pixels (n, 3, T, T) -> (n, R, d) float32 on the model's
        device (image_lengths unused)."""
        with self.autocast():
            return self.img_enc(self.image_features(images)).float()

    def encode_captions(self, captions, lengths=None):
        """captions (n, L) token ids, 0 = padding -> (n, L, d) float32 on the model's device."""
        with self.autocast():
            return self.txt_enc(captions.to(self.device, non_blocking=True).long()).float()

    def forward_emb(self, images, captions, lengths, image_lengths=None):
        """-> (img_emb (n_img, R, d), cap_emb (n_cap, L, d), cap_lens (n_cap,) on the model's device)."""
        cap_lens = torch.as_tensor(lengths, device=self.device).long()
        return self.encode_images(images, image_lengths), self.encode_captions(captions, cap_lens), cap_lens

    def forward_sim(self, img_emb, cap_emb, cap_lens, image_lengths=None):
        """-> (n_img, n_cap) float32 scores; `image_lengths` (n_img,) masks padded regions out of attention.

        Calling the similarity runs the block scheduler (lib/model/similarity/blocks.py).
        """
        with self.autocast():
            return self.sim(img_emb, cap_emb, cap_lens, image_lengths).float()

    def forward(self, images, captions, lengths, region_lengths=None, gather_captions=None, mask_padded=False):
        """The training forward: this batch's images scored against its captions.

        images (n_img, R, img_dim) or pixels (n_img, 3, T, T), captions (n_cap, L) ids,
        lengths (n_cap,); region_lengths (n_img,) or None: real regions per image, masked
        in attention. In the raw-image mode grid cells are dropped (drop_grid_cells, in
        train mode) and, with `mask_padded`, the padded cells masked.
        `gather_captions(cap_emb, cap_lens) -> (cap_emb, cap_lens)` replaces the
        captions by those of every process (lib.runtime.distributed.gather_captions)
        between encoding and scoring. -> (n_img, n_cap_total) float32.
        """
        if self.backbone is None:
            img_emb, cap_emb, cap_lens = self.forward_emb(images, captions, lengths)
        else:
            img_emb, region_lengths = self.encode_grid_for_training(images)
            region_lengths = region_lengths if mask_padded else None
            cap_lens = torch.as_tensor(lengths, device=self.device).long()
            cap_emb = self.encode_captions(captions, cap_lens)
        if gather_captions is not None:
            cap_emb, cap_lens = gather_captions(cap_emb, cap_lens)
        if region_lengths is not None:
            region_lengths = torch.as_tensor(region_lengths, device=self.device).long()
        return self.forward_sim(img_emb, cap_emb, cap_lens, region_lengths)

    def encode_grid_for_training(self, pixels):
        """pixels (n, 3, T, T) -> (embedded kept cells (n, N', d) float32, cells kept (n,)); cells are
        dropped in train mode only."""
        with self.autocast():
            features = self.image_features(pixels)
            lengths = torch.full((len(features),), features.shape[1], dtype=torch.long, device=self.device)
            if self.training:
                features, lengths = drop_grid_cells(features)
            return self.img_enc(features).float(), lengths

    # ----- state ------------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        """The flat weights dict, without the buffers only some transformers versions save
        (lib.formats.checkpoint.LEGACY_BUFFERS), so a checkpoint is the same whichever wrote it."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for name in ckpt_io.LEGACY_BUFFERS:
            state.pop(prefix + name, None)
        return state

    def load_state_dict(self, state, strict=True, path="checkpoint"):
        """Load weights after checking every key and shape (XDimError names the first bad one).

        The legacy buffers are accepted whether `state` holds them or not; the model
        keeps its own values of them (fixed position indices).
        """
        own = super().state_dict()
        ckpt_io.check_state_dict(state, self.state_dict(), path)
        merged = {key: value for key, value in state.items() if key not in ckpt_io.LEGACY_BUFFERS}
        merged.update({key: own[key] for key in ckpt_io.LEGACY_BUFFERS if key in own})
        return super().load_state_dict(merged, strict=strict)

    @classmethod
    def from_checkpoint(cls, path, bert_path=None, device="cpu", amp="none"):
        """Load our checkpoint (either version) or an official release checkpoint, in eval mode.

        BERT's weights come from the checkpoint; its architecture and vocabulary from
        `bert_path` if given (a folder or hub name, resolved here), else from our checkpoint itself, else (official files)
        from the bundled bert-base-uncased config and vocab. No network is needed.
        `device` (a torch.device or name) and `amp` apply to this use, whatever the
        checkpoint was trained with. The training settings it was saved with, if any,
        are `model.trained_with` (a dict of TrainConfig fields, or None).
        """
        ckpt = ckpt_io.load_checkpoint(path)
        configs = ckpt_io.checkpoint_configs(ckpt)
        config = ModelConfig.from_dict(configs["model"], path)
        official = ckpt_io.is_official(ckpt)
        vocab_given = bool(bert_path) or official
        if bert_path:
            bert_path = resolve_bert_path(bert_path)
            config = config.with_bert_config(bert_config_dict(bert_path))
        elif official:
            bert_path, config = BUNDLED_BERT_BASE, config.with_bert_config(bert_config_dict(BUNDLED_BERT_BASE))
        elif config.bert_config is None or "vocab" not in ckpt:
            raise XDimError(f"{path}: holds no BERT architecture and vocabulary; give --bert_path")
        else:
            bert_path = materialize_bert_dir(config.bert_config, ckpt["vocab"])
        model = cls(config, bert_path=bert_path, amp=amp)
        model.check_vocabulary(bert_path if vocab_given else path)
        state = official_state_dict(ckpt["model"], model.state_dict(), path) if official else ckpt["model"]
        model.load_state_dict(state, path=path)
        model.trained_with = configs["training"]
        return model.to(device).eval()
