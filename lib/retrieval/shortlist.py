"""Global vectors for stage one of two-stage retrieval: one vector per image and per caption.

X-Dim scores a pair by cross-attention between words and regions, so a pair's
score cannot be read off one vector per side. Stage one only needs the vectors
to put X-Dim's best items among its first K. Two encoders provide them, with one
interface (`images`, `captions`, `size`, `describe`):

- `MeanPooling` (no parameters): the l2-normalised mean of an item's real region
  or token embeddings. Measured on the demo, it does not shortlist well (docs/retrieval.md):
  X-Dim's attention singles out a few regions and
  words that a plain mean drowns in background regions and filler words.
- `ShortlistHead`, distilled after training (`distill_head`): each region or
  token embedding gets a learned gate in (0, 1) and a learned projection; an
  item's direction is the l2-normalised gated sum, and two offset coordinates
  carry per-image and per-caption score offsets. It is trained to reproduce
  X-Dim's ranking on the training split (listwise KL between the softmax of
  X-Dim's scores and of the head's, both directions, over batches of images and
  all their captions, later batches grouping images the head confuses); X-Dim
  and its checkpoint stay frozen and unchanged.

The head is saved in its own file, by default beside the checkpoint
(`model_best.pth` -> `model_best.shortlist.pth`); without it, retrieval falls
back to `MeanPooling`. The file records the fingerprint of the weights it was
distilled from, and loading it for other weights is an error.
"""
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from lib.data.precomp import CaptionDataset
from lib.errors import XDimError, first_line
from lib.evaluation.encoding import caption_embedding_batches, image_embedding_batches
from lib.formats.checkpoint import save_checkpoint, unreadable_reason, weights_fingerprint
from lib.formats.versioned import FileFormat, check_versioned

HEAD_FORMAT = "xdim-shortlist-head"
HEAD_FILE = FileFormat(HEAD_FORMAT, "a shortlist head file (retrieve.py distill writes them)",
                       fields={"config": dict, "state": dict, "model_fingerprint": str},
                       fix="distill it again with retrieve.py distill")
HEAD_SUFFIX = ".shortlist.pth"
DEFAULT_SIZE = 256
DEFAULT_HIDDEN = 128


def real_mask(lengths, emb):
    """(n, S) float mask of the real positions of emb (n, S, d), on its device (all ones for lengths None)."""
    n, size = emb.shape[:2]
    if lengths is None:
        return torch.ones(n, size, device=emb.device)
    lengths = torch.as_tensor(lengths, device=emb.device).reshape(-1, 1)
    return (torch.arange(size, device=emb.device) < lengths).float()


class MeanPooling:
    """Parameter-free global vectors: l2-normalised mean of the real region / token embeddings."""

    def __init__(self, embed_size):
        self.size = embed_size

    def describe(self):
        return {"kind": "pooling", "size": self.size}

    @staticmethod
    def _pool(emb, mask):
        return F.normalize((emb * mask.unsqueeze(-1)).sum(1), dim=-1)

    def images(self, img_emb, lengths=None):
        """img_emb (n, R, d), lengths (n,) real regions or None -> (n, d)."""
        return self._pool(img_emb.float(), real_mask(lengths, img_emb))

    def captions(self, cap_emb, lengths):
        """cap_emb (n, L, d), lengths (n,) real tokens -> (n, d)."""
        return self._pool(cap_emb.float(), real_mask(lengths, cap_emb))


class _GatedSum(nn.Module):
    """Per element x: gate = sigmoid(MLP(x)), value = Linear(x).

    -> (direction (n, size): l2n(sum of gate * value), offset (n,): a linear function
    of the gate-weighted mean of x).
    """

    def __init__(self, embed_size, size, hidden):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(embed_size, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.value = nn.Linear(embed_size, size)
        self.offset = nn.Linear(embed_size, 1)

    def forward(self, emb, mask):
        """emb (n, S, d), mask (n, S)."""
        gates = torch.sigmoid(self.gate(emb)).squeeze(-1) * mask
        direction = F.normalize((gates.unsqueeze(-1) * self.value(emb)).sum(1), dim=-1)
        mean = (gates.unsqueeze(-1) * emb).sum(1) / gates.sum(1, keepdim=True).clamp(min=1e-6)
        return direction, self.offset(mean).squeeze(-1)


class ShortlistHead(nn.Module):
    """Distilled global vectors whose inner product is scale * cos(u_img, u_cap) + b_img + b_cap.

    Image vector [scale * u_img, 1, b_img], caption vector [u_cap, b_cap, 1] (size + 2
    floats each): the offsets let one vector per side express that X-Dim gives some
    captions (and some images) higher scores against everything, which a cosine
    alone cannot; they matter when ranking captions for an image.
    """

    def __init__(self, embed_size, size=DEFAULT_SIZE, hidden=DEFAULT_HIDDEN):
        super().__init__()
        self.config = {"embed_size": embed_size, "size": size, "hidden": hidden}
        self.size = size + 2
        self.image_pool = _GatedSum(embed_size, size, hidden)
        self.caption_pool = _GatedSum(embed_size, size, hidden)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def describe(self):
        return {"kind": "head", "size": self.size, "fingerprint": weights_fingerprint(self.state_dict())}

    def images(self, img_emb, lengths=None):
        """img_emb (n, R, d), lengths (n,) real regions or None -> (n, size + 2)."""
        direction, offset = self.image_pool(img_emb.float(), real_mask(lengths, img_emb))
        return torch.cat([direction * self.log_scale.exp(), torch.ones_like(offset)[:, None], offset[:, None]], 1)

    def captions(self, cap_emb, lengths):
        """cap_emb (n, L, d), lengths (n,) real tokens -> (n, size + 2)."""
        direction, offset = self.caption_pool(cap_emb.float(), real_mask(lengths, cap_emb))
        return torch.cat([direction, offset[:, None], torch.ones_like(offset)[:, None]], 1)


# ---------------------------------------------------------------- distillation

def listwise_kl(student, teacher, temperature):
    """KL(softmax(teacher / T) || softmax(student)) per image row and per caption column, summed.

    student, teacher (n_img, n_cap) logits; batch-mean over rows and over columns.
    """
    loss = 0.0
    for dim in (1, 0):
        target = F.softmax(teacher / temperature, dim=dim)
        loss = loss + F.kl_div(F.log_softmax(student, dim=dim), target, reduction="sum") / teacher.shape[1 - dim]
    return loss


def _encode_batch(model, split_files, caption_tokenizer, image_ids):
    """Frozen embeddings of images `image_ids` (sorted) and all their captions.

    -> (img_emb (b, R, d), cap_emb (b * cpi, L, d), cap_lens (b * cpi,)) on model.device.
    """
    cpi = split_files.captions_per_image
    caption_ids = (image_ids[:, None] * cpi + np.arange(cpi)).reshape(-1)
    img_emb, _, _ = next(image_embedding_batches(model, split_files.images, image_ids,
                                                 batch_size=len(image_ids), progress=False))
    cap_emb, lens, _ = next(caption_embedding_batches(model, CaptionDataset(split_files, caption_tokenizer),
                                                      caption_ids, batch_size=len(caption_ids), progress=False))
    return img_emb, cap_emb, lens.to(model.device)


def _split_image_vectors(model, head, split_files, batch=256):
    """The head's vectors of every image of the split (n, size + 2), in eval mode without gradients."""
    head.eval()
    with torch.no_grad():
        out = [head.images(emb).cpu()
               for emb, _, _ in image_embedding_batches(model, split_files.images, batch_size=batch, progress=False)]
    head.train()
    return torch.cat(out)


def neighbour_order(vectors, group, generator, chunk=1024):
    """An epoch's image order in which consecutive runs of `group` images are near neighbours.

    vectors (n, g): the head's current image vectors. Anchors are taken in random
    order; each collects its nearest images not yet taken (by inner product), and
    the groups are shuffled. Batches cut from this order hold images (and so
    captions) that the head confuses, the negatives it learns most from.
    -> (n,) int64 permutation.
    """
    n = len(vectors)
    neighbours = []
    for start in range(0, n, chunk):
        scores = vectors[start:start + chunk] @ vectors.t()
        rows = torch.arange(len(scores))
        scores[rows, start + rows] = -float("inf")
        neighbours.append(scores.topk(min(2 * group, n - 1), dim=1).indices)
    neighbours = torch.cat(neighbours).tolist()
    taken = np.zeros(n, dtype=bool)
    groups = []
    for anchor in torch.randperm(n, generator=generator).tolist():
        if taken[anchor]:
            continue
        members = [anchor]
        for other in neighbours[anchor]:
            if len(members) < group and not taken[other]:
                members.append(other)
        taken[members] = True
        groups.append(members)
    return np.array([i for k in torch.randperm(len(groups), generator=generator).tolist() for i in groups[k]])


def distill_head(model, split_files, caption_tokenizer, epochs=30, batch_images=100, lr=2e-3, temperature=0.05,
                 size=DEFAULT_SIZE, hidden=DEFAULT_HIDDEN, group=4, seed=0, progress=True):
    """Train a ShortlistHead to imitate X-Dim's ranking on `split_files` (the training split).

    Each step takes `batch_images` images with all their captions; X-Dim's scores
    of that (b, b * cpi) block are the teacher. The first epoch draws images at
    random, later ones in `neighbour_order` groups of `group`. The model is frozen
    (eval mode, no gradients). -> (head in eval mode, mean loss of the last epoch).
    """
    model.val_start()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = ShortlistHead(model.config.embed_size, size, hidden).to(model.device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    n_images = split_files.n_images
    steps_per_epoch = max(1, math.ceil(n_images / batch_images))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    bar = tqdm(total=epochs * steps_per_epoch, desc="distill", disable=not progress)
    for epoch in range(epochs):
        if epoch == 0 or group < 2:
            order = torch.randperm(n_images, generator=generator).numpy()
        else:
            order = neighbour_order(_split_image_vectors(model, head, split_files), group, generator)
        losses = []
        for start in range(0, n_images, batch_images):
            image_ids = np.sort(order[start:start + batch_images])
            with torch.no_grad():
                img_emb, cap_emb, cap_lens = _encode_batch(model, split_files, caption_tokenizer, image_ids)
                teacher = model.forward_sim(img_emb, cap_emb, cap_lens)
            student = head.images(img_emb) @ head.captions(cap_emb, cap_lens).t()
            loss = listwise_kl(student, teacher, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    head.eval()
    return head, float(np.mean(losses))


# ---------------------------------------------------------------- files

def default_head_path(model_path):
    """Where the head of a checkpoint lives by default: `x/model_best.pth` -> `x/model_best.shortlist.pth`."""
    stem = model_path[:-len(".pth")] if model_path.endswith(".pth") else model_path
    return stem + HEAD_SUFFIX


def save_head(head, path, model_fingerprint, details):
    """Write the head, the fingerprint of the weights it imitates and `details` (a dict) atomically."""
    save_checkpoint({"format": HEAD_FORMAT, "config": dict(head.config), "state": head.state_dict(),
                     "model_fingerprint": model_fingerprint, "details": details}, path)


def load_head(path, model_fingerprint, device="cpu"):
    """A ShortlistHead from `path`, checked to belong to the weights with `model_fingerprint`."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise XDimError(f"{path}: no such shortlist head file") from None
    except Exception as err:  # torch raises many types for damaged or unsafe files
        raise XDimError(unreadable_reason(path, err)) from None
    check_versioned(saved, path, HEAD_FILE)
    if saved.get("model_fingerprint") != model_fingerprint:
        raise XDimError(f"{path}: this shortlist head was distilled from other weights than the "
                        f"checkpoint's; distill it again with retrieve.py distill")
    try:
        head = ShortlistHead(**saved["config"])
        head.load_state_dict(saved["state"])
    except (TypeError, RuntimeError, KeyError) as err:
        raise XDimError(f"{path}: damaged, or written by another version of the head "
                        f"({first_line(err)[:120]}); distill it again with retrieve.py distill") from None
    return head.to(device).eval()


def global_encoder(model, model_fingerprint, model_path=None, head_path=None):
    """The head at `head_path`, else the default head file beside `model_path` if present, else MeanPooling."""
    if head_path is None and model_path is not None and os.path.isfile(default_head_path(model_path)):
        head_path = default_head_path(model_path)
    if head_path is None:
        return MeanPooling(model.config.embed_size)
    return load_head(head_path, model_fingerprint, model.device)


def image_vectors(encoder, img_emb, lengths=None, device="cpu", batch=1024):
    """Global vectors of stored image embeddings (n, R, d), a batch at a time on `device`
    (the encoder's) -> float32 numpy (n, size)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(img_emb), batch):
            part = None if lengths is None else lengths[start:start + batch]
            out.append(encoder.images(img_emb[start:start + batch].to(device).float(), part).cpu())
    return torch.cat(out).numpy()


def caption_vectors(encoder, captions, device="cpu", batch=1024):
    """Global vectors of a RaggedCaptions, a batch at a time on `device` -> float32 numpy (n, size)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(captions), batch):
            emb, lens = captions.block(start, min(start + batch, len(captions)))
            out.append(encoder.captions(emb.to(device), lens).cpu())
    return torch.cat(out).numpy()
