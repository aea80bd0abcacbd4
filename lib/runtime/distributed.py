"""Multi-process (torchrun) training helpers.

One process per device. Every process encodes its own slice of the global
batch; `gather_captions` all-gathers the caption embeddings, each process
scores its own images against every caption (its rows of the global score
matrix), and `gather_rows` all-gathers those rows, so every process computes
the same loss over the full global batch (the triplet loss needs all
negatives) while the similarity work is split, not repeated.

Why plain gradient averaging gives exactly the single-process gradient
----------------------------------------------------------------------
Let N processes each own a slice k of the global batch (images, captions and
the score rows of those images), and let L be the full-batch loss that every
process computes identically after `gather_rows`. The backward of an autograd
all_gather sums, into the owner of each slice, the gradients that all N
processes computed for it: N identical copies. So on rank k
* the score rows k receive N * dL/dS_k, hence the image encoder's and the
  similarity module's gradients are N times their share through rows k;
* the caption slice k receives, through `gather_captions`, the sum over all
  ranks' rows of N * (their gradient w.r.t. captions k), N times the text
  encoder's share through captions k.
Every parameter's full gradient is the sum of its shares over the slices, so
averaging over ranks (DDP's all_reduce / N) gives (1/N) * sum_k N * share_k,
exactly the gradient of one process that saw the whole batch; gradient
clipping and the optimizer step then see it on every rank and keep the
replicas in sync.
"""
import contextlib
import datetime
import os
import warnings

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as autograd_all_gather
from torch.nn.parallel import DistributedDataParallel

WAIT_MINUTES = 120
# Deprecation notices recent torch prints for calls that torch 2.4 (our oldest) needs in this form.
TORCH_NOTICES = (r"`broadcast_buffers` is deprecated", r"torch\.distributed\.nn\.functional\.all_gather is deprecated")


@contextlib.contextmanager
def quiet_torch_notices():
    """Hide TORCH_NOTICES (printed once per process and call site under torchrun otherwise)."""
    with warnings.catch_warnings():
        for message in TORCH_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


def is_distributed():
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main():
    """True on the process that logs, validates and writes checkpoints."""
    return rank() == 0


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device):
    """Join the process group described by torchrun's environment variables.

    `device` is the torch.device the caller asked for; on CUDA the device index
    becomes LOCAL_RANK and the NCCL backend is used, on CPU gloo.
    Returns the device this process must use (unchanged when not under torchrun).
    """
    device = torch.device(device)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        # Validation runs on rank 0 alone while the others wait at a barrier: allow it time.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=WAIT_MINUTES))
    return device


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _all_sizes(values, device):
    """All-gather a few ints from every rank -> LongTensor (world_size, len(values))."""
    local = torch.tensor(values, dtype=torch.long, device=device)
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return torch.stack(out)


def _pad_to(x, batch, length):
    """Zero-pad x (B, T, ...) to (batch, length, ...)."""
    pad = x.new_zeros((batch, length) + tuple(x.shape[2:]))
    pad[: x.shape[0], : x.shape[1]] = x
    return pad


def _gather_padded(x, sizes, dim1_max):
    """All-gather x (B_k, T_k, ...) with autograd -> (sum_k B_k, max T, ...), rank order."""
    b_max = int(sizes[:, 0].max())
    with quiet_torch_notices():
        parts = autograd_all_gather(_pad_to(x, b_max, dim1_max))
    return torch.cat([p[: int(b)] for p, b in zip(parts, sizes[:, 0])], dim=0)


def _gather_lengths(lengths, sizes, device):
    """All-gather per-sample lengths (B_k,) -> (sum_k B_k,) long tensor (no grad)."""
    b_max = int(sizes[:, 0].max())
    local = torch.zeros(b_max, dtype=torch.long, device=device)
    local[: len(lengths)] = lengths
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return torch.cat([o[: int(b)] for o, b in zip(out, sizes[:, 0])])


def gather_captions(cap_emb, cap_lens):
    """Every rank's captions in rank order, differentiably.

    cap_emb (B_k, L_k, d), cap_lens (B_k,) long tensor -> (sum_k B_k, max L, d)
    zero-padded, and (sum_k B_k,). Identity when not distributed.
    """
    if not is_distributed():
        return cap_emb, cap_lens
    sizes = _all_sizes(list(cap_emb.shape[:2]), cap_emb.device)
    return (_gather_padded(cap_emb, sizes, int(sizes[:, 1].max())),
            _gather_lengths(cap_lens, sizes, cap_emb.device))


def gather_rows(scores):
    """Every rank's score rows in rank order, differentiably.

    scores (B_k, B) of this rank's images against all captions -> (sum_k B_k, B).
    Identity when not distributed.
    """
    if not is_distributed():
        return scores
    sizes = _all_sizes(list(scores.shape), scores.device)
    return _gather_padded(scores, sizes, scores.shape[1])


def wrap_model(model):
    """The model wrapped once in DistributedDataParallel when distributed, else the model itself.

    On CUDA the image encoder's BatchNorm layers become SyncBatchNorm first, so their
    statistics are those of the global batch. PyTorch's SyncBatchNorm refuses CPU
    tensors, so on CPU (gloo) each rank normalises with its own slice. Every
    trainable parameter takes part in the loss (BERT's pooler, which does not, is
    frozen by TextEncoder; frozen similarity parameters are skipped by DDP), so DDP
    needs no search for unused parameters after each forward. broadcast_buffers=False:
    validation runs on rank 0 alone through the bare model, so no forward may start a
    collective.
    """
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    if device.type == "cuda":
        model.img_enc = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.img_enc)
    device_ids = [device.index] if device.type == "cuda" else None
    with quiet_torch_notices():
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=False,
                                       broadcast_buffers=False)
