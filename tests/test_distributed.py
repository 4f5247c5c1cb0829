"""Data-parallel training: 2 local CPU processes (gloo) match one process on the same global
batch after one step."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mmrecsys as mr

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

# a model of each kind: batch means and EmbLoss (lightgcn), batch-independent terms (mmhcl),
# the whole global batch on every process (rearm: "replicate"); bpr and lgmrec pass too (slow)
MODELS = {"lightgcn": {}, "mmhcl": {"knn_k": 3}, "rearm": {"embedding_dim": 16}}


def _data():
    return mr.load_dataset("synthetic", n_users=60, n_items=60, seed=9)


def _one_step(model, cache):
    data = _data()
    n_train = data.train.nnz
    # one epoch = one step: the global batch holds every training row (users sampler: users)
    batch = max(n_train, data.n_users) + 1
    m = mr.fit(data, model, epochs=1, batch_size=batch, eval_step=5, seed=3, cache_dir=cache,
               **MODELS[model])
    return m.history[0]["loss"], {k: v.detach().clone() for k, v in m.model.state_dict().items()}


def _worker(rank, world, port, model, cache, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        loss, state = _one_step(model, cache)
        if rank == 0:
            torch.save({"loss": loss, "state": state}, out)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_two_processes_match_one(model, tmp_path):
    cache = str(tmp_path / "cache")
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, _free_port(), model, cache, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    loss, state = _one_step(model, cache)
    assert got["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    for k, v in state.items():
        assert torch.allclose(got["state"][k], v, rtol=1e-4, atol=1e-6), k
    assert any(not torch.equal(v, _initial(model, cache)[k]) for k, v in state.items())


def _initial(model, cache):
    from mmrecsys.config import run_config
    from mmrecsys.train import build_model, seed_everything
    data = _data()
    cfg = run_config(model, data, None, {"seed": 3, "cache_dir": cache, **MODELS[model]})
    seed_everything(3)
    return build_model(data, cfg, "cpu").state_dict()
