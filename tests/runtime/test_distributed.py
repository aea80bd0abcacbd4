"""lib.runtime.distributed: the CUDA device of a torchrun process on a node of several."""
import pytest
import torch

from lib.runtime import distributed


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
