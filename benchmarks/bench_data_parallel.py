"""Data-parallel training on one machine: 2 processes vs 1 (issue 15).

    python benchmarks/bench_data_parallel.py [--models lightgcn lgmrec] [--epochs 4]

On the synthetic default, per model:

* one step: an epoch of exactly one step (the global batch holds every training row), by one
  process and by 2 gloo processes (``torch.distributed``, what ``mmrecsys train --nproc 2``
  launches through torchrun): the loss of that step and the largest difference of any weight
  after it;
* speed: ``--epochs`` epochs with the model's own batch size, 1 process with 2 threads vs 2
  processes with 1 thread each (this machine has 2 cores); median training seconds per epoch
  over the epochs after the first.

Take timings under ``flock /tmp/mmrecsys-heavy.lock``.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import socket
import statistics
import sys
import tempfile
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import mmrecsys as mr  # noqa: E402


def _run(model: str, one_step: bool, epochs: int, cache: str):
    data = mr.load_dataset("synthetic")
    over = {"seed": 3, "cache_dir": cache, "eval_step": 10_000}
    if one_step:
        over.update(epochs=1, batch_size=max(data.train.nnz, data.n_users) + 1)
    else:
        over.update(epochs=epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = mr.fit(data, model, **over)
    secs = [h["train_seconds"] for h in m.history]
    return {"loss": m.history[0]["loss"], "secs": secs,
            "state": {k: v.detach().clone() for k, v in m.model.state_dict().items()}}


def _worker(rank, world, port, model, one_step, epochs, cache, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        r = _run(model, one_step, epochs, cache)
        if rank == 0:
            torch.save(r, out)
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_procs(model, one_step, epochs, cache, tmp):
    out = str(pathlib.Path(tmp) / f"{model}-{one_step}.pt")
    mp.spawn(_worker, args=(2, _port(), model, one_step, epochs, cache, out), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lightgcn", "lgmrec"])
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args(argv)
    print(f"bench_data_parallel: synthetic default; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(pathlib.Path(tmp) / "cache")
        for model in args.models:
            torch.set_num_threads(2)
            one = _run(model, True, 1, cache)
            two = two_procs(model, True, 1, cache, tmp)
            dw = max(float((one["state"][k].float() - two["state"][k].float()).abs().max())
                     for k in one["state"] if one["state"][k].is_floating_point())
            print(f"{model:9s} one step: loss 1 proc {one['loss']:.8f}, 2 procs {two['loss']:.8f}"
                  f" (|diff| {abs(one['loss'] - two['loss']):.2e}); max |weight diff| {dw:.2e}",
                  flush=True)
            torch.set_num_threads(2)
            s1 = _run(model, False, args.epochs, cache)["secs"][1:]
            s2 = two_procs(model, False, args.epochs, cache, tmp)["secs"][1:]
            a, b = statistics.median(s1), statistics.median(s2)
            print(f"{model:9s} s/epoch: 1 process x 2 threads {a:.3f}, 2 processes x 1 thread "
                  f"{b:.3f} (speed-up {a / b:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
