"""Image and text encoders: BUTD region features and BERT tokens -> the joint space (docs/method.md)."""
import math

import torch
import torch.nn as nn

from lib.model.bert import build_bert


def l2norm(x, dim=-1, eps=1e-8):
    """x / (||x|| + eps) along `dim` (the epsilon is added to the norm, not under the root)."""
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + eps)


class ImageEncoder(nn.Module):
    """Region (or grid cell) features -> joint space: `l2n(FC(x) + MLP(x))` per region.

    The MLP's BatchNorm normalises over all regions of the batch flattened. With
    mlp=False (grid features of the raw-image mode) it is `l2n(FC(x))`.
    """

    def __init__(self, img_dim, embed_size, no_imgnorm=False, mlp=True):
        super().__init__()
        hidden = max(1, embed_size // 2)
        self.no_imgnorm = no_imgnorm
        self.fc = nn.Linear(img_dim, embed_size)
        if mlp:
            self.mlp_in = nn.Linear(img_dim, hidden)
            self.mlp_bn = nn.BatchNorm1d(hidden)
            self.mlp_out = nn.Linear(hidden, embed_size)
        self.mlp = mlp
        bound = math.sqrt(6.0 / (img_dim + embed_size))
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, images):
        """images (B, R, img_dim) -> (B, R, embed_size)."""
        batch, regions, _ = images.shape
        flat = images.reshape(batch * regions, -1)
        emb = self.fc(flat)
        if self.mlp:
            emb = emb + self.mlp_out(torch.relu(self.mlp_bn(self.mlp_in(flat))))
        emb = emb.view(batch, regions, -1)
        return emb if self.no_imgnorm else l2norm(emb)


class TextEncoder(nn.Module):
    """Token ids -> joint space: BERT's last hidden states, a linear projection, `l2n`.

    Every position is kept ([CLS] and [SEP] included); the projection's input size
    is read from the BERT config.
    """

    def __init__(self, embed_size, bert_path=None, bert_config=None, no_txtnorm=False):
        super().__init__()
        self.no_txtnorm = no_txtnorm
        self.bert = build_bert(bert_path, bert_config)
        # The pooler takes no part in the loss; freezing it keeps DDP from waiting for its
        # gradients and changes nothing else (AdamW skips parameters without a gradient).
        if getattr(self.bert, "pooler", None) is not None:
            self.bert.pooler.requires_grad_(False)
        self.proj = nn.Linear(self.bert.config.hidden_size, embed_size)

    def forward(self, captions):
        """captions (B, L) long, 0 = padding -> (B, L, embed_size)."""
        hidden = self.bert(input_ids=captions, attention_mask=(captions != 0).long()).last_hidden_state
        emb = self.proj(hidden)
        return emb if self.no_txtnorm else l2norm(emb)


