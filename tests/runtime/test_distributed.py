"""lib/runtime/distributed.py: gathers, shares, timeouts, DDP gradients and the device of each
process."""
import os

import pytest
import torch
from helpers import join_group, spawn

from lib.errors import XDimError
from lib.runtime import distributed


def slice_for(rank):
    """Rank 0: 2 captions of length 4, rank 1: 1 of length 5 (d=2), and each rank's score
    rows (its images against the 3 captions of the global batch); values unique per rank."""
    b, l = [(2, 4), (1, 5)][rank]
    rows = torch.arange(b * 3, dtype=torch.float64).reshape(b, 3) + 100 * rank
    cap = torch.arange(b * l * 2, dtype=torch.float64).reshape(b, l, 2) - 100 * rank
    cap_lens = torch.tensor([l - i for i in range(b)])
    return rows, cap, cap_lens


def gather_worker(rank, world, out_dir):
    join_group(rank, world, os.path.join(out_dir, "rendezvous"))
    try:
        rows, cap, cap_lens = slice_for(rank)
        rows.requires_grad_(True)
        cap.requires_grad_(True)
        g_cap, g_lens = distributed.gather_captions(cap, cap_lens)
        g_rows = distributed.gather_rows(rows)
        # Each global row i weighted by (i + 1): the gathered loss is the same on both ranks.
        w_rows = torch.arange(1, g_rows.shape[0] + 1, dtype=torch.float64)[:, None]
        w_cap = 10 * torch.arange(1, g_cap.shape[0] + 1, dtype=torch.float64)[:, None, None]
        ((g_rows * w_rows).sum() + (g_cap * w_cap).sum()).backward()
        torch.save({"rows": g_rows.detach(), "cap": g_cap.detach(), "lens": g_lens,
                    "rows_grad": rows.grad, "cap_grad": cap.grad,
                    "world": distributed.world_size(), "rank": distributed.rank()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


def test_gathers_are_identity_without_process_group():
    rows, cap, cap_lens = slice_for(0)
    assert distributed.gather_rows(rows) is rows
    out = distributed.gather_captions(cap, cap_lens)
    assert out[0] is cap and out[1] is cap_lens
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()


def test_gathers_on_two_processes(tmp_path):
    spawn(gather_worker, (2, str(tmp_path)))
    rows0, cap0, lens0 = slice_for(0)
    rows1, cap1, lens1 = slice_for(1)
    # Expected global batch, built by hand: rank 0's items then rank 1's, zero-padded.
    exp_cap = torch.zeros(3, 5, 2, dtype=torch.float64)
    exp_cap[:2, :4] = cap0
    exp_cap[2:, :5] = cap1
    for rank in range(2):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        assert res["world"] == 2 and res["rank"] == rank
        assert torch.equal(res["rows"], torch.cat([rows0, rows1]))
        assert torch.equal(res["cap"], exp_cap)
        assert res["lens"].tolist() == [4, 3, 5]
    # d loss / d slice = weight of its global row, summed over the 2 ranks' identical losses.
    res0 = torch.load(tmp_path / "rank0.pt")
    res1 = torch.load(tmp_path / "rank1.pt")
    assert torch.equal(res0["rows_grad"], torch.tensor([[2.0] * 3, [4.0] * 3], dtype=torch.float64))
    assert torch.equal(res1["rows_grad"], torch.full((1, 3), 6.0, dtype=torch.float64))
    assert torch.equal(res0["cap_grad"], 20 * torch.tensor([1.0, 2.0], dtype=torch.float64)[:, None, None].expand(2, 4, 2))
    assert torch.equal(res1["cap_grad"], torch.full((1, 5, 2), 60.0, dtype=torch.float64))


class TinyText(torch.nn.Module):
    """A text encoder with a pooler outside the loss, frozen as TextEncoder freezes BERT's
    (DDP runs without find_unused_parameters, so every trainable parameter must get a gradient)."""

    def __init__(self):
        super().__init__()
        self.used = torch.nn.Linear(3, 4)
        self.pooler = torch.nn.Linear(4, 4).requires_grad_(False)

    def forward(self, x):
        return self.used(x)


class TinyModel(torch.nn.Module):
    """Stand-in with the parts of XDimModel that wrap_model and the train step touch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.img_enc = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        self.txt_enc = TinyText()
        self.sim = torch.nn.Linear(4, 1, bias=False)

    def forward(self, x):
        """x (B_k, 3) -> this rank's image rows scored against every rank's captions (B_k, B).

        As XDimModel.forward in the train step: captions gathered between encoding and scoring.
        """
        img = self.img_enc(x)
        txt = self.txt_enc(x.cos())[:, None]
        txt, _ = distributed.gather_captions(txt, torch.ones(len(x), dtype=torch.long))
        return self.sim((img[:, None, :] * txt[None, :, 0, :]).tanh())[..., 0]


def tiny_loss(network, x):
    """The rows of every rank gathered (an identity in one process) -> a scalar loss."""
    scores = distributed.gather_rows(network(x))
    return scores.square().sum() + scores.diagonal().sum()


def inputs():
    return torch.arange(12, dtype=torch.float64).reshape(4, 3).sin()


def ddp_gradients(rank):
    """Per-rank slice -> gather -> shared loss -> backward -> the averaged grads by name."""
    model = TinyModel().double()
    network = distributed.wrap_model(model)
    assert isinstance(network, torch.nn.parallel.DistributedDataParallel)
    model.img_enc.eval()  # per-rank BN batch statistics would differ from one process's
    tiny_loss(network, inputs()[2 * rank: 2 * rank + 2]).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def ddp_worker(rank, world, out_dir):
    join_group(rank, world, os.path.join(out_dir, "rendezvous"))
    try:
        # The DDP wrappers die inside ddp_gradients, while the process group still exists:
        # a gloo group destroyed by the last wrapper's destructor can deadlock on the GIL.
        torch.save(ddp_gradients(rank), os.path.join(out_dir, f"grads{rank}.pt"))
    finally:
        distributed.cleanup()


def test_wrapped_gradients_equal_single_process(tmp_path):
    spawn(ddp_worker, (2, str(tmp_path)))
    model = TinyModel().double()
    model.img_enc.eval()
    tiny_loss(model, inputs()).backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert "txt_enc.pooler.weight" not in expected and len(expected) == 7
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        assert sorted(grads) == sorted(expected)
        for name, g in expected.items():
            assert torch.allclose(grads[name], g, rtol=0, atol=1e-12), name


def test_shares_are_whole_batches_in_rank_order(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    # 10 images in batches of 4: 3 batches, rank 0 takes 1 (4 rows), rank 1 two (6 rows).
    assert distributed.shard_sizes(10, 4) == [4, 6]
    # 50 captions: 13 batches -> 6 and 7 batches, the last one short.
    assert distributed.shard_sizes(50, 4) == [24, 26]
    # Fewer batches than processes: single items.
    assert distributed.shard_sizes(3, 128) == [1, 2]
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.shard(10, 4) == range(4, 10)
    with pytest.raises(XDimError, match=r"^1 images of x cannot be shared by 2 processes; launch at most 1$"):
        distributed.shard(1, 4, "images of x")


def test_one_process_shares_and_gathers_are_identities():
    assert distributed.shard(7, 3) == range(7)
    tokens, lengths = torch.ones(5, 2), torch.tensor([2, 3])
    assert distributed.all_gather_ragged(tokens, lengths) == (tokens, lengths)
    assert distributed.gather_to_main(tokens, [5]) is tokens
    with pytest.raises(ValueError, match="kept"):  # together() re-raises in one process
        with distributed.together():
            raise ValueError("kept")


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_bad_timeout_setting_is_one_line(monkeypatch, value):
    monkeypatch.setenv("XDIM_TIMEOUT_MINUTES", value)
    with pytest.raises(XDimError, match=rf"^XDIM_TIMEOUT_MINUTES='{value}': give a positive number of minutes$"):
        distributed.collective_timeout()


def test_timeout_setting(monkeypatch):
    monkeypatch.delenv("XDIM_TIMEOUT_MINUTES", raising=False)
    assert distributed.collective_timeout().total_seconds() == 30 * 60
    monkeypatch.setenv("XDIM_TIMEOUT_MINUTES", "0.5")
    assert distributed.collective_timeout().total_seconds() == 30


def test_ddp_does_not_search_for_unused_parameters(monkeypatch):
    seen = {}
    monkeypatch.setattr(distributed, "DistributedDataParallel", lambda module, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    distributed.wrap_model(torch.nn.Linear(2, 2))
    assert seen["find_unused_parameters"] is False and seen["broadcast_buffers"] is False


@pytest.mark.parametrize("rank, local_rank", [(5, 1), (3, 3), (4, 0)])
def test_the_cuda_device_is_the_local_rank_not_the_global_rank(monkeypatch, rank, local_rank):
    # catches: torch.device("cuda", RANK): on the second node of a multi-node run (global ranks 4..7,
    # 4 GPUs a node) it names a GPU that does not exist there.
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", "8")
    chosen, joined = [], []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: joined.append(kwargs["backend"]))
    monkeypatch.setattr(distributed, "_LAUNCH_GROUP", {})
    device = distributed.init_from_env(torch.device("cuda"))
    assert device == torch.device("cuda", local_rank) and chosen == [device] and joined == ["nccl"]
