"""Image and text encoders (spec section 3) and where BERT comes from."""
import hashlib
import json
import math
import os
import tempfile

import torch
import torch.nn as nn

from lib.errors import XDimError, first_line
from lib.options import DEFAULT_BERT

# How to get BERT when the hub cannot be reached (said by every BERT loading error).
BERT_DOWNLOAD_HINT = (
    f"on a machine with internet, run `python -c \"from transformers import BertModel, "
    f"BertTokenizerFast as T; n='{DEFAULT_BERT}'; BertModel.from_pretrained(n).save_pretrained('bert'); "
    f"T.from_pretrained(n).save_pretrained('bert')\"` and pass --bert_path bert")
# bert-base-uncased's config.json and vocab.txt (no weights), shipped for offline use.
BUNDLED_BERT_BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "data", "bert-base-uncased")


def l2norm(x, dim=-1, eps=1e-8):
    """x / (||x|| + eps) along `dim` (the epsilon is added to the norm, as in the spec)."""
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + eps)


class ImageEncoder(nn.Module):
    """Precomputed region features -> joint space: `l2n(FC(x) + MLP(x))` per region.

    The MLP's BatchNorm normalises over all regions of the batch flattened.
    """

    def __init__(self, img_dim, embed_size, no_imgnorm=False):
        super().__init__()
        hidden = max(1, embed_size // 2)
        self.no_imgnorm = no_imgnorm
        self.fc = nn.Linear(img_dim, embed_size)
        self.mlp_in = nn.Linear(img_dim, hidden)
        self.mlp_bn = nn.BatchNorm1d(hidden)
        self.mlp_out = nn.Linear(hidden, embed_size)
        bound = math.sqrt(6.0 / (img_dim + embed_size))
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, images):
        """images (B, R, img_dim) -> (B, R, embed_size)."""
        batch, regions, _ = images.shape
        flat = images.reshape(batch * regions, -1)
        hidden = torch.relu(self.mlp_bn(self.mlp_in(flat)))
        emb = (self.fc(flat) + self.mlp_out(hidden)).view(batch, regions, -1)
        return emb if self.no_imgnorm else l2norm(emb)


def bert_config_dict(bert_path):
    """The config of the BERT at `bert_path` (local folder or hub name) as a plain dict."""
    from transformers import BertConfig
    try:
        return BertConfig.from_pretrained(bert_path).to_dict()
    except (OSError, ValueError) as exc:
        raise XDimError(f"{bert_path}: cannot read a BERT config.json ({first_line(exc)})") from None


def build_bert(bert_path=None, config=None):
    """A `BertModel`: pretrained weights from `bert_path`, or the bare architecture of `config`.

    `config` (a dict) is used when the weights will come from an X-Dim checkpoint.
    """
    from transformers import BertConfig, BertModel
    if config is not None:
        return BertModel(BertConfig.from_dict(dict(config)))
    bert_path = bert_path or DEFAULT_BERT
    try:
        return BertModel.from_pretrained(bert_path)
    except (OSError, ValueError) as exc:
        raise XDimError(f"{bert_path}: cannot load pretrained BERT weights ({first_line(exc)}). "
                        f"Training needs them: {BERT_DOWNLOAD_HINT}") from None


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


def bert_vocab(bert_path):
    """BERT's vocabulary as a list of tokens ordered by id (a local folder or a hub name)."""
    path = os.path.join(bert_path, "vocab.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    from transformers import BertTokenizerFast
    by_id = BertTokenizerFast.from_pretrained(bert_path).get_vocab()
    return sorted(by_id, key=by_id.get)


def write_bert_folder(folder, config, vocab):
    """Write a BERT folder without weights: config.json, tokenizer_config.json, vocab.txt.

    config: dict; vocab: tokens ordered by id. vocab.txt is written last and renamed
    into place, so its presence means the folder is complete.
    """
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"do_lower_case": True, "model_max_length": config["max_position_embeddings"]}, f)
    partial = os.path.join(folder, f"vocab.txt.{os.getpid()}.tmp")
    with open(partial, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    os.replace(partial, os.path.join(folder, "vocab.txt"))
    return folder


def materialize_bert_dir(config, vocab):
    """Write a BERT config and vocabulary (no weights) to a folder and return its path.

    Checkpoints carry both, so evaluating one needs neither the network nor the
    original BERT folder; the folder name is a hash of the contents, so it is reused.
    """
    blob = json.dumps([config, vocab], sort_keys=True).encode("utf-8")
    folder = os.path.join(tempfile.gettempdir(), "xdim-bert-" + hashlib.sha1(blob).hexdigest()[:16])
    if not os.path.isfile(os.path.join(folder, "vocab.txt")):
        write_bert_folder(folder, config, vocab)
    return folder
