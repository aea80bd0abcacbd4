"""Scoring a split with a model: encode every image and caption once, then score in shards.

1. `encode_split` runs every image through the image encoder once and every
   caption through the text encoder once. Image embeddings are kept as one
   `(n_img, R, d)` tensor, caption embeddings as `RaggedCaptions` (all real
   tokens concatenated plus offsets), never as a padded float64 array.
2. `score_sharded` fills the `(n_img, n_cap)` float32 score matrix block by
   block with the similarity, in the blocks of the one scheduler that training uses
   too (lib/model/similarity/blocks.py: length-sorted caption runs, a bounded number of
   (image, real token) rows per block); its `prepare()` runs once per split.
3. lib.evaluation.metrics turns the matrix into recalls.

Entry points for other modules:
- `evaluate_split(model, split_files, caption_encoder, batch_size=128, workers=0)
  -> (sims, metrics)`: the whole pipeline on one split.
- `validate(model, split_files, caption_encoder, ...) -> metrics` (same, metrics only;
  the training loop's validation).
"""
import numpy as np
import torch
from tqdm import tqdm

from lib.errors import XDimError
from lib.evaluation.metrics import evaluate_sims
from lib.model.similarity.blocks import plan, row_budget, score_blocks

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class RaggedCaptions:
    """Caption token embeddings without padding.

    `tokens` is `(total_tokens, d)` (caption 0's tokens, then caption 1's, ...),
    `offsets` is `(n_cap + 1,)` int64 with caption `c` at rows
    `offsets[c]:offsets[c + 1]`. Stored on the CPU in `dtype` (float32, float16
    or bfloat16); blocks are handed out as float32.
    """

    def __init__(self, d, dtype=torch.float32):
        self.d = d
        self.dtype = dtype
        self._chunks = []
        self._chunk_lengths = []
        self._tokens = torch.empty(0, d, dtype=dtype)
        self._offsets = torch.zeros(1, dtype=torch.long)

    @classmethod
    def from_padded(cls, cap_emb, lengths, dtype=torch.float32):
        """Build from a padded batch: cap_emb (n, L, d), lengths (n,)."""
        ragged = cls(cap_emb.shape[-1], dtype)
        ragged.append(cap_emb, lengths)
        return ragged

    def append(self, cap_emb, lengths):
        """Add captions given padded: cap_emb (b, L, d), lengths (b,) with 1 <= lengths <= L."""
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        if cap_emb.shape[-1] != self.d:
            raise ValueError(f"embedding size {cap_emb.shape[-1]} != {self.d}")
        if len(lengths) and (lengths.min() < 1 or lengths.max() > cap_emb.shape[1]):
            raise ValueError("caption lengths must lie in 1..L")
        keep = torch.arange(cap_emb.shape[1]) < lengths[:, None]
        self._chunks.append(cap_emb.detach().cpu()[keep].to(self.dtype))
        self._chunk_lengths.append(lengths)

    def _consolidate(self):
        if not self._chunks:
            return
        self._tokens = torch.cat([self._tokens] + self._chunks)
        new_offsets = self._offsets[-1] + torch.cumsum(torch.cat(self._chunk_lengths), 0)
        self._offsets = torch.cat([self._offsets, new_offsets])
        self._chunks, self._chunk_lengths = [], []

    @property
    def tokens(self):
        """(total_tokens, d) in the storage dtype."""
        self._consolidate()
        return self._tokens

    @property
    def offsets(self):
        """(n_cap + 1,) int64."""
        self._consolidate()
        return self._offsets

    @property
    def lengths(self):
        """(n_cap,) int64 token counts."""
        return self.offsets.diff()

    def __len__(self):
        return len(self.offsets) - 1

    @property
    def nbytes(self):
        return self.tokens.numel() * self.tokens.element_size() + self.offsets.numel() * 8

    def gather(self, indices):
        """Captions `indices` (b,) padded: -> (float32 (b, Lmax, d) zero-padded, lengths (b,))."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[indices]
        max_len = int(lengths.max()) if len(indices) else 0
        positions = torch.arange(max_len)
        valid = positions < lengths[:, None]
        rows = self.offsets[indices][:, None] + positions
        rows = torch.where(valid, rows, torch.zeros_like(rows))
        padded = self.tokens.index_select(0, rows.reshape(-1)).reshape(len(indices), max_len, self.d)
        padded = padded.float() * valid[..., None]
        return padded, lengths

    def block(self, start, end):
        """Captions start..end-1 padded: -> (float32 (b, Lmax, d), lengths (b,))."""
        return self.gather(torch.arange(start, end))


def storage_dtype(name):
    if name not in STORAGE_DTYPES:
        raise XDimError(f"unknown storage dtype {name!r} (choose from {', '.join(STORAGE_DTYPES)})")
    return STORAGE_DTYPES[name]


def _check_order(indices, expected_start):
    expected = torch.arange(expected_start, expected_start + len(indices))
    if not torch.equal(torch.as_tensor(indices, dtype=torch.long), expected):
        raise RuntimeError("evaluation loaders must yield items in order")


def encode_images(model, split_files, batch_size=128, workers=0, storage="float32", progress=True):
    """Encode every image of the split once: -> (n_img, R, d) CPU tensor in the storage dtype.

    XDimError names the first image whose features hold NaN or inf.
    """
    from lib.data.precomp import check_finite_images, image_loader
    loader = image_loader(split_files, batch_size, workers)
    out, done = None, 0
    for images, image_lengths, indices in tqdm(loader, desc="encode images", disable=not progress):
        _check_order(indices, done)
        check_finite_images(images, indices, split_files.images_path)
        emb = model.encode_images(images, image_lengths)
        if out is None:
            out = torch.empty(split_files.n_images, *emb.shape[1:], dtype=storage_dtype(storage))
        out[done:done + len(emb)] = emb.detach().cpu().to(out.dtype)
        done += len(emb)
    return out


def encode_captions(model, split_files, caption_encoder, batch_size=128, workers=0,
                    storage="float32", progress=True):
    """Encode every caption of the split once: -> RaggedCaptions."""
    from lib.data.precomp import caption_loader
    loader = caption_loader(split_files, caption_encoder, batch_size, workers)
    ragged = None
    for captions, lengths, indices in tqdm(loader, desc="encode captions", disable=not progress):
        _check_order(indices, 0 if ragged is None else len(ragged))
        emb = model.encode_captions(captions, lengths)
        if ragged is None:
            ragged = RaggedCaptions(emb.shape[-1], storage_dtype(storage))
        ragged.append(emb, lengths)
    return ragged


def encode_split(model, split_files, caption_encoder, batch_size=128, workers=0,
                 storage="float32", progress=True):
    """-> (img_emb (n_img, R, d) tensor, RaggedCaptions), in eval mode without gradients.

    Every caption is checked to tokenize to something before any encoding.
    """
    caption_encoder.check_captions(split_files)
    model.val_start()
    with torch.no_grad():
        img_emb = encode_images(model, split_files, batch_size, workers, storage, progress)
        captions = encode_captions(model, split_files, caption_encoder, batch_size, workers,
                                   storage, progress)
    return img_emb, captions


def score_sharded(img_emb, captions, similarity, rows_per_block=None, device="cpu", progress=True):
    """Score every image against every caption with the block scheduler (lib/model/similarity/blocks.py).

    img_emb (n_img, R, d) in any storage dtype; captions: RaggedCaptions; similarity: a
    lib.model.similarity Similarity. Each caption run is gathered from the ragged storage and
    moved to `device` once, each image block when it is scored (as float32); a run's
    scores come back from the device in one piece.
    -> float32 numpy (n_img, n_cap) in the original caption order.
    """
    n_img, n_cap = len(img_emb), len(captions)
    sims = np.empty((n_img, n_cap), dtype=np.float32)
    blocks = plan(captions.lengths, n_img, row_budget(similarity, device, rows_per_block))

    def captions_of(run):
        cap, lens = captions.gather(run.columns)
        return cap.to(device), lens.to(device)

    def images_of(i0, i1):
        return img_emb[i0:i1].to(device=device, dtype=torch.float32), None

    with tqdm(total=n_img * n_cap, desc="score", unit="pair", unit_scale=True, disable=not progress) as bar:
        for run, scores in score_blocks(similarity, blocks, captions_of, images_of):
            sims[:, run.columns.numpy()] = scores.detach().float().cpu().numpy()
            bar.update(scores.numel())
    return sims


def model_sims(model, img_emb, captions, rows_per_block=None, progress=True):
    """The model's (n_img, n_cap) float32 scores, as forward_sim computes them (autocast included)."""
    model.val_start()
    with torch.no_grad(), model.autocast():
        return score_sharded(img_emb, captions, model.sim, rows_per_block, model.device, progress)


def open_model_split(model, data_path=None, data_name=None, split="test"):
    """The split a model is evaluated on (data_path/data_name default to those it was trained on).

    -> (split files, caption encoder for the model's BERT, table label "data_name split").
    """
    from lib.data.precomp import open_split
    trained_on = model.trained_with or {}
    data_path = data_path or trained_on.get("data_path")
    data_name = data_name or trained_on.get("data_name")
    if not data_path or not data_name:
        raise XDimError("the checkpoint does not say which data it was trained on: give --data_path and --data_name")
    files = open_split(data_path, data_name, split, img_dim=model.config.img_dim)
    return files, caption_encoder(model), f"{data_name} {split}"


def caption_encoder(model):
    """The CaptionEncoder of a model's BERT: its tokenizer, captions cut to its position limit."""
    from lib.data.precomp import CaptionEncoder
    from lib.model.bert import load_tokenizer
    return CaptionEncoder(load_tokenizer(model.bert_path), model.bert_config["max_position_embeddings"])


def evaluate_split(model, split_files, caption_encoder, batch_size=128, workers=0, storage="float32",
                   rows_per_block=None, progress=True):
    """Encode and score one split (split_files from lib.data.precomp.open_split).

    -> (sims float32 numpy (n_img, n_cap), metrics dict of the whole matrix:
    METRIC_KEYS, 'rsum' included). Leaves the model in eval mode.
    """
    img_emb, captions = encode_split(model, split_files, caption_encoder, batch_size, workers,
                                     storage, progress)
    sims = model_sims(model, img_emb, captions, rows_per_block, progress)
    return sims, evaluate_sims(sims, split_files.captions_per_image)[0]


def validate(model, split_files, caption_encoder, batch_size=128, workers=0, progress=True):
    """Metrics dict (with 'rsum') of `split_files` (e.g. dev) for the training loop."""
    return evaluate_split(model, split_files, caption_encoder, batch_size, workers,
                          progress=progress)[1]
