"""Two CPU processes under torch.distributed (gloo) train one recipe with DDP: both ranks must end with the
same weights (gradients are averaged across ranks) and only rank 0 writes the run folder."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from engine_fixtures import make_pair_folder, tiny_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from cdtool.engine.loop import train
    from cdtool.engine.recipe import load_recipe

    res = train(load_recipe(tiny_recipe(Path(root), **{"schedule.epochs": 1, "data.train.pairs.args.samples": 16})), Path(out) / "run", quiet=True)
    # parameters, not BatchNorm running stats: DDP re-broadcasts rank 0's buffers at each forward, so after
    # the last step each rank still holds its own local statistics (rank 0's are the ones saved)
    torch.save({k: v.detach().clone() for k, v in res.modules["model"].named_parameters()},
               Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_agree(tmp_path):
    root = make_pair_folder(tmp_path / "pairs")
    mp.spawn(_worker, args=(2, _free_port(), str(root), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert (tmp_path / "run" / "best.safetensors").is_file() and (tmp_path / "run" / "metrics.json").is_file()


def test_each_rank_takes_its_own_gpu(monkeypatch):
    """Under torchrun a bare `cuda` must become cuda:LOCAL_RANK (NCCL refuses two ranks on one GPU); a single
    process, the CPU and an explicit index are left alone."""
    from cdtool.engine import distributed

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.rank_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert distributed.rank_device(torch.device("cuda:1")) == torch.device("cuda", 1)
    assert distributed.rank_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.rank_device(torch.device("cuda")) == torch.device("cuda")
    assert chosen == [torch.device("cuda", 3), torch.device("cuda", 1), torch.device("cuda")]
