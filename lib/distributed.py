"""Multi-process (torchrun) training helpers.

One process per device. Every process encodes its own slice of the global
batch, `gather_batch` all-gathers the embeddings, and every process computes
the same loss over the full global batch (the triplet loss needs all negatives).

Why plain gradient averaging gives exactly the single-process gradient
----------------------------------------------------------------------
Let N processes each encode a slice k of the global batch, and let L be the
full-batch loss that every process computes identically after the gather.

* Encoder parameters (image encoder, text encoder): on rank k they only reach
  L through slice k, contributing g_k = dL/dtheta via slice k. The autograd
  all_gather's backward sums, into the owner of slice k, the gradients that all
  N processes computed for that slice: N identical copies, so rank k holds
  N * g_k. Averaging over ranks (DDP's all_reduce / N) gives
  (1/N) * sum_k N * g_k = sum_k g_k, the gradient of one process that saw the
  whole batch.
* Similarity module: it runs on the full gathered batch on every rank, so
  every rank already holds the full gradient G; the average of N copies of G
  is G. Averaging it anyway keeps the parameters bit-identical across ranks
  despite any floating-point nondeterminism.

So gradient clipping and the optimizer step, run after backward on each rank,
see the single-process gradient on every rank and keep the replicas in sync.
"""
import datetime
import os

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as autograd_all_gather
from torch.nn.parallel import DistributedDataParallel

WAIT_MINUTES = 120


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
    """All-gather x (B_k, T_k, d) with autograd -> (sum_k B_k, max T, d), rank order."""
    b_max = int(sizes[:, 0].max())
    parts = autograd_all_gather(_pad_to(x, b_max, dim1_max))
    return torch.cat([p[: int(b)] for p, b in zip(parts, sizes[:, 0])], dim=0)


def _gather_lengths(lengths, sizes, device):
    """All-gather per-sample lengths (B_k,) -> (sum_k B_k,) long tensor (no grad)."""
    b_max = int(sizes[:, 0].max())
    local = torch.zeros(b_max, dtype=torch.long, device=device)
    local[: len(lengths)] = torch.as_tensor(lengths, dtype=torch.long, device=device)
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return torch.cat([o[: int(b)] for o, b in zip(out, sizes[:, 0])])


def gather_batch(img_emb, cap_emb, cap_lens, image_lengths=None):
    """Concatenate every rank's embeddings in rank order, differentiably.

    img_emb (B, R, d), cap_emb (B, L, d), cap_lens (B,) tensor or list of ints,
    image_lengths (B,) or None. Returns the same four for the global batch:
    (B_total, R_max, d), (B_total, L_max, d), cap_lens (same kind as given),
    image_lengths (long tensor, or None when None was given). R and L are
    zero-padded to the largest over ranks; ranks may hold different B.
    Identity when not distributed. Gradients flow back to each slice's owner
    (see the module docstring for why averaging them is then exact).
    """
    if not is_distributed():
        return img_emb, cap_emb, cap_lens, image_lengths
    device = img_emb.device
    sizes = _all_sizes([img_emb.shape[0], img_emb.shape[1], cap_emb.shape[1]], device)
    img_all = _gather_padded(img_emb, sizes, int(sizes[:, 1].max()))
    cap_all = _gather_padded(cap_emb, sizes, int(sizes[:, 2].max()))
    lens_all = _gather_lengths(cap_lens, sizes, device)
    if not torch.is_tensor(cap_lens):
        lens_all = lens_all.tolist()
    elif cap_lens.device != device:
        lens_all = lens_all.to(cap_lens.device)
    if image_lengths is not None:
        image_lengths = _gather_lengths(image_lengths, sizes, device)
    return img_all, cap_all, lens_all, image_lengths


def unwrap(module):
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def _ddp(module, device):
    # find_unused_parameters: any parameter outside the loss (e.g. BERT's pooler, if
    # trainable) would otherwise make DDP wait for its gradient forever.
    # broadcast_buffers=False: validation runs on rank 0 alone, so a forward
    # must never start a collective; SyncBatchNorm keeps BN statistics global.
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids,
                                   find_unused_parameters=True,
                                   broadcast_buffers=False)


def wrap_encoders(model):
    """Wrap model.img_enc, model.txt_enc and model.sim in DDP when distributed.

    On CUDA the image encoder's BatchNorm layers become SyncBatchNorm, so their
    statistics are those of the global batch. PyTorch's SyncBatchNorm refuses
    CPU tensors, so on CPU (gloo) each rank normalises with its own slice.
    The similarity module is wrapped too so that its (already identical)
    gradients are averaged and the replicas stay bit-identical.
    No-op outside a process group. Returns the model.
    """
    if not is_distributed():
        return model
    device = next(model.img_enc.parameters()).device
    if device.type == "cuda":
        model.img_enc = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.img_enc)
    model.img_enc = _ddp(model.img_enc, device)
    model.txt_enc = _ddp(model.txt_enc, device)
    if any(p.requires_grad for p in model.sim.parameters()):
        model.sim = _ddp(model.sim, device)
    return model
