"""Encoding images and captions in batches: the one loop of each side.

`image_embedding_batches` reads batches of rows of a memory-mapped region-feature array
(n, R, img_dim) and yields each batch's embeddings; `caption_embedding_batches` does the
same for captions given as token ids. The callers put the batches where they
belong: a tensor and `RaggedCaptions` for scoring a split (`encode_split`),
float16 files of a gallery index (lib.retrieval.index), global vectors of the
shortlist head (lib.retrieval.shortlist). `rows` selects the items to encode, in
that order: a torchrun process's share of a split or gallery, or one training
batch of the head; None encodes them all.

Both generators run the model as they are advanced: call them inside
`torch.no_grad()` and with the model in eval mode (`model.val_start()`).
"""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from lib.data.precomp import CaptionDataset, check_finite_images, collate_captions
from lib.errors import XDimError

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def storage_dtype(name):
    if name not in STORAGE_DTYPES:
        raise XDimError(f"unknown storage dtype {name!r} (choose from {', '.join(STORAGE_DTYPES)})")
    return STORAGE_DTYPES[name]


def all_rows(rows, n):
    """`rows` (any sequence of item indices) as an int64 numpy array; None -> 0 .. n-1."""
    return np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)


# ---------------------------------------------------------------- images

class _ImageRowBatches(Dataset):
    """Item k: the k-th batch of `rows` of `images`, read from the memory map in one piece.

    -> (float32 (b, R, img_dim), lengths (b,) int64 or None, rows (b,) int64).
    """

    def __init__(self, images, rows, lengths, batch_size):
        self.images, self.rows, self.lengths, self.batch_size = images, rows, lengths, batch_size

    def __len__(self):
        return -(-len(self.rows) // self.batch_size)

    def __getitem__(self, k):
        rows = self.rows[k * self.batch_size:(k + 1) * self.batch_size]
        contiguous = bool(np.all(np.diff(rows) == 1))
        block = self.images[rows[0]:rows[-1] + 1] if contiguous else self.images[rows]
        lengths = None if self.lengths is None else torch.from_numpy(np.asarray(self.lengths[rows]))
        return torch.from_numpy(np.array(block, dtype=np.float32)), lengths, torch.from_numpy(rows)


def image_embedding_batches(model, images, rows=None, lengths=None, batch_size=128, workers=0,
                            check_path=None, progress=True):
    """Encode images batch by batch.

    images: (n, R, img_dim) array (a memory map); rows: the items to encode (None: all);
    lengths: (n,) real regions per image, handed through (None: all R real);
    check_path: name a batch's first image with NaN or inf features in an XDimError
    about this file (None: no check); `workers` data loader processes read ahead.
    Yields (emb (b, R, d) float32 on model.device, lengths (b,) int64 or None, rows (b,) int64).
    """
    dataset = _ImageRowBatches(images, all_rows(rows, len(images)), lengths, batch_size)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)
    for batch, batch_lengths, batch_rows in tqdm(loader, desc="encode images", disable=not progress):
        if check_path is not None:
            check_finite_images(batch, batch_rows, check_path)
        yield model.encode_images(batch, batch_lengths), batch_lengths, batch_rows


# ---------------------------------------------------------------- captions

class TokenIds(Dataset):
    """Captions given as token id lists: item i -> (ids (L_i,) int64, i), like precomp.CaptionDataset."""

    def __init__(self, token_ids):
        self.token_ids = token_ids

    def __len__(self):
        return len(self.token_ids)

    def __getitem__(self, index):
        return torch.tensor(self.token_ids[index], dtype=torch.long), index


def caption_embedding_batches(model, captions, rows=None, batch_size=128, workers=0, progress=True):
    """Encode captions batch by batch.

    captions: a Dataset whose item i is (token ids (L_i,) int64, i) (precomp.CaptionDataset
    tokenizes in the loader's workers, TokenIds holds ids already); rows as in image_embedding_batches.
    Yields (emb (b, L, d) float32 on model.device, lengths (b,) int64, rows (b,) int64),
    each batch padded to its longest caption.
    """
    subset = Subset(captions, all_rows(rows, len(captions)).tolist())
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_captions)
    for ids, lengths, batch_rows in tqdm(loader, desc="encode captions", disable=not progress):
        yield model.encode_captions(ids, lengths), lengths, batch_rows


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

    @classmethod
    def from_tokens(cls, tokens, lengths):
        """Build from storage already unpadded: tokens (sum(lengths), d) in the storage dtype, lengths (n,)."""
        ragged = cls(tokens.shape[-1], tokens.dtype)
        ragged._chunks.append(tokens)
        ragged._chunk_lengths.append(torch.as_tensor(lengths, dtype=torch.long))
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


# ---------------------------------------------------------------- a split

def pixel_embedding_batches(model, split, rows=None, batch_size=128, workers=0, progress=True):
    """Encode the images of a raw-image split (lib.data.images.ImageSplit) batch by batch, each
    file decoded once, through the model's backbone. Yields (emb (b, h*w, d) float32 on
    model.device, None, rows (b,) int64) like image_embedding_batches."""
    from lib.data.images import PixelConfig, image_eval_batches
    batches = image_eval_batches(split, PixelConfig.for_model(model.config), batch_size, workers, all_rows(rows, split.n_images))
    for pixels, batch_rows in tqdm(batches, desc="encode images", disable=not progress):
        yield model.encode_images(pixels), None, batch_rows


def encode_split_images(model, split_files, batch_size=128, workers=0, storage="float32", progress=True, rows=None):
    """Encode the split's images `rows` (None: all) -> (len(rows), R, d) CPU tensor in the storage dtype.

    Region features (precomp.SplitFiles) are read from their memory map, XDimError naming the
    first image whose features hold NaN or inf; a raw-image model's split (images.ImageSplit)
    goes through its backbone (`pixel_embedding_batches`).
    """
    rows = all_rows(rows, split_files.n_images)
    if model.backbone is not None:
        batches = pixel_embedding_batches(model, split_files, rows, batch_size, workers, progress)
    else:
        batches = image_embedding_batches(model, split_files.images, rows, None, batch_size, workers,
                                 split_files.images_path, progress)
    out, done = None, 0
    for emb, _, _ in batches:
        if out is None:
            out = torch.empty(len(rows), *emb.shape[1:], dtype=storage_dtype(storage))
        out[done:done + len(emb)] = emb.detach().cpu().to(out.dtype)
        done += len(emb)
    return out


def encode_split_captions(model, split_files, caption_tokenizer, batch_size=128, workers=0,
                          storage="float32", progress=True, rows=None):
    """Encode the split's captions `rows` (None: all) -> RaggedCaptions."""
    ragged = None
    for emb, lengths, _ in caption_embedding_batches(model, CaptionDataset(split_files, caption_tokenizer),
                                                     rows, batch_size, workers, progress):
        if ragged is None:
            ragged = RaggedCaptions(emb.shape[-1], storage_dtype(storage))
        ragged.append(emb, lengths)
    return ragged


def encode_split(model, split_files, caption_tokenizer, batch_size=128, workers=0,
                 storage="float32", progress=True, image_rows=None, caption_rows=None):
    """-> (img_emb (n_img, R, d) tensor, RaggedCaptions) of the images `image_rows` and
    captions `caption_rows` (None: all), in eval mode without gradients.

    Every caption of the split is checked to tokenize to something before any encoding.
    """
    caption_tokenizer.check_captions(split_files)
    model.val_start()
    with torch.no_grad():
        img_emb = encode_split_images(model, split_files, batch_size, workers, storage, progress, image_rows)
        captions = encode_split_captions(model, split_files, caption_tokenizer, batch_size, workers,
                                         storage, progress, caption_rows)
    return img_emb, captions
