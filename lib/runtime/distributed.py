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

Evaluation, validation and gallery builds (no autograd)
-------------------------------------------------------
`shard` gives each process a contiguous share of a split's images or captions
(whole encoder batches, so every batch holds the rows one process would put in
it); `all_gather_ragged` hands every process all captions in their unpadded
layout; `gather_to_main` sends every process's rows (scores, embeddings) to
rank 0 point to point, so only rank 0 ever holds the whole. These run on CPU
tensors: under NCCL through a gloo group over the same processes (`cpu_group`).

A failing process must not leave the others waiting in a collective. Work that
can fail runs inside `together()`, apart from the exchanges: at its end every process says
whether it failed (`agree`), and when one did, every process raises the first
failure's one-line message. A process that died without saying so surfaces as
a collective error within the timeout: every collective waits at most
`collective_timeout()` ($XDIM_TIMEOUT_MINUTES, default 30 minutes) for the
slowest process.
"""
import contextlib
import datetime
import hashlib
import os
import warnings

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as autograd_all_gather
from torch.nn.parallel import DistributedDataParallel

from lib.errors import XDimError, first_line

TIMEOUT_ENV = "XDIM_TIMEOUT_MINUTES"
# Set when init_from_env opened the process group itself.
_LAUNCH_GROUP = {}
# The longest a process may wait in one collective for the slowest one: rank 0 alone
# writing a checkpoint, score files or a gallery's FAISS index while the others wait.
DEFAULT_TIMEOUT_MINUTES = 30
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


def collective_timeout():
    """How long a collective waits for the slowest process: $XDIM_TIMEOUT_MINUTES or 30 minutes."""
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_MINUTES))
    try:
        minutes = float(value)
    except ValueError:
        minutes = 0.0
    if not minutes > 0:
        raise XDimError(f"{TIMEOUT_ENV}={value!r}: give a positive number of minutes")
    return datetime.timedelta(minutes=minutes)


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
        dist.init_process_group(backend=backend, timeout=collective_timeout())
        _LAUNCH_GROUP["opened"] = True
    return device


def barrier():
    if is_distributed():
        dist.barrier()


def cleanup():
    """Leave the process group (whoever opened it)."""
    _CPU_GROUP.clear()
    _LAUNCH_GROUP.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def close_launch_group():
    """Leave the process group if `init_from_env` opened it (a script's end under torchrun); a
    group its caller opened (a test running several scripts in one group) stays."""
    if _LAUNCH_GROUP.get("opened"):
        cleanup()


def _all_sizes(values, device, group=None):
    """All-gather a few ints from every rank -> LongTensor (world_size, len(values))."""
    local = torch.tensor(values, dtype=torch.long, device=device)
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local, group=group)
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
    validation has every process encode its own share of the dev split through the bare
    model, with as many batches as that share needs (shares may differ by a batch), so no
    forward may start a collective.
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


# ---------------------------------------------------------------- evaluation: shares, agreement, gathers

_CPU_GROUP = {}


def cpu_group():
    """The process group for CPU tensors: the default one under gloo; under NCCL a gloo group
    over the same processes, created on first use (every process must reach that call)."""
    if dist.get_backend() == "gloo":
        return None
    if "group" not in _CPU_GROUP:
        _CPU_GROUP["group"] = dist.new_group(backend="gloo", timeout=collective_timeout())
    return _CPU_GROUP["group"]


def shard_sizes(n, batch_size=1, what="items"):
    """How many of `n` items each process takes (rank order): whole batches of `batch_size`
    while there are at least as many batches as processes, else single items.

    XDimError when there are fewer items than processes.
    """
    world = world_size()
    if n < world:
        raise XDimError(f"{n} {what} cannot be shared by {world} processes; launch at most {n}")
    unit = batch_size if -(-n // batch_size) >= world else 1
    units = -(-n // unit)
    bounds = [min(units * k // world * unit, n) for k in range(world + 1)]
    return [stop - start for start, stop in zip(bounds, bounds[1:])]


def shard(n, batch_size=1, what="items"):
    """This process's share of `n` items (see shard_sizes) -> range; range(n) in one process."""
    sizes = shard_sizes(n, batch_size, what)
    start = sum(sizes[:rank()])
    return range(start, start + sizes[rank()])


def agree(error=None):
    """Every process reports whether its last step failed (`error`: its exception, or None).

    When some process failed, every process that did not raises XDimError with the
    first failure's message; the failed ones go on to raise their own exception.
    A collective that times out or loses a process becomes a one-line XDimError.
    """
    if not is_distributed():
        return
    messages = [None] * world_size()
    try:
        dist.all_gather_object(messages, None if error is None else first_line(error), group=cpu_group())
    except (RuntimeError, ValueError) as err:
        raise XDimError(f"another process stopped or did not answer within "
                        f"{collective_timeout()} (${TIMEOUT_ENV}): {first_line(err)[:200]}") from None
    failed = [(k, message) for k, message in enumerate(messages) if message is not None]
    if failed and error is None:
        k, message = failed[0]
        raise OtherProcessFailed(f"{message} (in process {k})")


class OtherProcessFailed(XDimError):
    """Raised in every process that did not fail when another one did (`agree`): the failing
    process reports the error, this one only stops."""


def launched_as_several():
    """True in a process that torchrun started as one of several."""
    return launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1


def launch_rank():
    """This process's number in its torchrun launch (0 outside torchrun)."""
    return int(os.environ.get("RANK", 0))


def first_to_report(message, timeout_s=5):
    """False when another process of this torchrun launch already reported `message` (the same
    failure met by every process, e.g. a missing file), else True.

    The processes need not have met: they count through the key-value store that torchrun's
    agent serves at $MASTER_ADDR:$MASTER_PORT. True when it cannot be reached in `timeout_s`.
    """
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        digest = hashlib.sha1(message.encode("utf-8")).hexdigest()
        run = os.environ.get("TORCHELASTIC_RUN_ID", "") + "/" + os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return store.add(f"xdim/reported/{run}/{digest}", 1) == 1
    except (KeyError, ValueError, RuntimeError, OSError):
        return True


@contextlib.contextmanager
def together():
    """A step that all processes finish before any goes on: an exception in one process
    is raised in every process (see `agree`).

    A collective inside the step must be one that every process is sure to reach (e.g.
    the exchange right after an agreed step); work that can fail before a collective
    must be its own step.
    """
    try:
        yield
    except Exception as err:
        agree(err)
        raise
    agree()


def _bytes(tensor):
    """A contiguous tensor's memory as uint8 (so any dtype travels through gloo)."""
    return tensor.reshape(-1).view(torch.uint8)


def _broadcast_parts(out, local, counts, group):
    """Fill out (sum counts, ...) with every process's `local` rows, in rank order."""
    start = 0
    for k, count in enumerate(counts):
        part = out[start:start + count]
        if k == rank():
            part.copy_(local)
        if count:
            dist.broadcast(_bytes(part), src=k, group=group)
        start += count


def all_gather_ragged(tokens, lengths):
    """Every process's unpadded rows and their lengths, in rank order, on every process.

    tokens (T_k, ...) CPU in any dtype, lengths (n_k,) int64 -> ((sum T_k, ...), (sum n_k,)).
    Identity in one process.
    """
    if not is_distributed():
        return tokens, lengths
    group = cpu_group()
    sizes = _all_sizes([len(tokens), len(lengths)], torch.device("cpu"), group).tolist()
    all_tokens = tokens.new_empty((sum(s[0] for s in sizes), *tokens.shape[1:]))
    all_lengths = lengths.new_empty(sum(s[1] for s in sizes))
    _broadcast_parts(all_tokens, tokens.contiguous(), [s[0] for s in sizes], group)
    _broadcast_parts(all_lengths, lengths.contiguous(), [s[1] for s in sizes], group)
    return all_tokens, all_lengths


def gather_to_main(local, counts):
    """Every process's rows, concatenated in rank order on rank 0 alone.

    local (n_k, ...) CPU tensor; counts: every process's n_k (known to all, e.g. from
    shard_sizes); rank 0's rows give the trailing shape and dtype.
    -> (sum n_k, ...) on rank 0, None on the others; `local` itself in one process.
    Point to point: nothing is padded and no other process holds the whole.
    """
    if not is_distributed():
        return local
    group = cpu_group()
    if not is_main():
        if len(local):
            dist.send(_bytes(local.contiguous()), dst=0, group=group)
        return None
    out = local.new_empty((sum(counts), *local.shape[1:]))
    start = 0
    for k, count in enumerate(counts):
        part = out[start:start + count]
        if k == 0:
            part.copy_(local)
        elif count:
            dist.recv(_bytes(part), src=k, group=group)
        start += count
    return out
