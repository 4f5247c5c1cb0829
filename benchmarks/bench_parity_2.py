"""Parity of LATTICE, MGCN and SMORE with their reference implementations on the same data.

    python benchmarks/bench_parity_2.py --model lattice --ref /work/ref/results/lattice_synth.json
        [--data /work/ref/data/synth] [--epochs 30] [--seeds 999 1 2] [--out parity.json]

The reference run (a JSON written by the reference harness: ``hyperparameters``,
``batch_losses`` {"0": [...], "5": [...], "10": [...]}, ``epoch_loss``, ``valid_recall@20`` per
epoch, ``best_valid``, ``best_epoch``, ``test_at_best``, ``seconds_per_epoch``) fixes the
hyperparameters; ours trains on the same dataset folder with the same values (official names
mapped to ours), the same trainer settings (Adam, lr schedule, batch size 2048, negatives from
the training items), ``epochs`` epochs, validation every epoch, no early stopping, seed 999.
The first seed is the comparison run; further ``--seeds`` give the spread of our runs (RNG
streams differ from the reference's, so agreement is expected within that spread).

Prints: mean batch loss at epochs 0, 5 and 10 (± the std over the epoch's batches), the
validation Recall@20 curve at a few epochs, best validation Recall@20 and its epoch (strict
'>' on 4-decimal values, as MMRec) and test Recall@20 at that epoch, ours beside the reference's.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

from mmrecsys.config import run_config
from mmrecsys.data import load_dataset
from mmrecsys.train.trainer import Trainer

BATCH_EPOCHS = (0, 5, 10)
SHOW_EPOCHS = (0, 4, 9, 14, 19, 24, 29)


def _common(hp: dict) -> dict:
    out = {"lr": hp["learning_rate"], "lr_scheduler": list(hp["learning_rate_scheduler"]),
           "batch_size": hp["train_batch_size"], "weight_decay": float(hp.get("weight_decay") or 0.0),
           "embedding_dim": hp["embedding_size"]}
    if hp.get("learner", "adam").lower() != "adam":
        raise SystemExit(f"reference optimiser {hp['learner']!r}: only adam is mapped")
    return out


def map_lattice(hp: dict) -> dict:
    return {**_common(hp), "feat_embed_dim": hp["feat_embed_dim"], "n_layers": len(hp["weight_size"]),
            "n_item_layers": hp["n_layers"], "knn_k": hp["knn_k"], "lambda_coeff": hp["lambda_coeff"],
            "reg_weight": hp["reg_weight"], "cf_model": hp["cf_model"]}


def map_mgcn(hp: dict) -> dict:
    return {**_common(hp), "n_layers": hp["n_ui_layers"], "n_item_layers": hp["n_layers"],
            "knn_k": hp["knn_k"], "reg_weight": hp["reg_weight"], "cl_weight": hp["cl_loss"]}


def map_smore(hp: dict) -> dict:
    return {**_common(hp), "n_layers": hp["n_ui_layers"], "n_item_layers": hp["n_layers"],
            "image_knn_k": hp["image_knn_k"], "text_knn_k": hp["text_knn_k"],
            "reg_weight": hp["reg_weight"], "cl_weight": hp["cl_loss"],
            "dropout": hp["dropout_rate"]}


MAPS = {"lattice": map_lattice, "mgcn": map_mgcn, "smore": map_smore}


def train_ours(model: str, data, overrides: dict, epochs: int, seed: int, cache_dir: str) -> dict:
    cfg = run_config(model, data, overrides={
        **overrides, "epochs": epochs, "eval_step": 1, "patience": epochs + 1000, "seed": seed,
        "valid_round": 4, "sampler": "interactions", "negatives_from": "train_items",
        "optimizer": "adam", "preset": "none", "cache_dir": cache_dir})
    tr = Trainer(data, cfg, None, device="cpu", log=None)
    batch_losses: dict[int, list[float]] = {}
    state = {"epoch": 0}
    loss_fn, pre_fn = tr.net.loss, tr.net.pre_epoch

    def pre(epoch):
        state["epoch"] = epoch
        return pre_fn(epoch)

    def loss(u, p, n):
        terms = loss_fn(u, p, n)
        if state["epoch"] in BATCH_EPOCHS:
            batch_losses.setdefault(state["epoch"], []).append(float(sum(t.detach() for t in terms.values())))
        return terms
    tr.net.loss, tr.net.pre_epoch = loss, pre
    t0 = time.perf_counter()
    res = tr.fit()
    hist = res["history"]
    valid = [round(r["valid_recall@20"], 4) for r in hist]
    return {"config": {k: cfg[k] for k in overrides}, "seed": seed,
            "batch_losses": {str(k): v for k, v in batch_losses.items()},
            "epoch_loss": [r["loss"] for r in hist], "valid_recall@20": valid,
            "best_valid": round(res["valid"]["recall@20"], 4), "best_epoch": res["best_epoch"],
            "test_at_best": round(res["test"]["recall@20"], 4),
            "seconds_per_epoch": float(np.mean([r["train_seconds"] for r in hist])),
            "eval_seconds": float(np.mean([r["eval_seconds"] for r in hist])),
            "total_seconds": time.perf_counter() - t0}


def _ms(v):
    return f"{np.mean(v):.4f} ± {np.std(v):.4f}" if v else "—"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(MAPS))
    ap.add_argument("--ref", required=True, help="the reference run's JSON")
    ap.add_argument("--data", default="/work/ref/data/synth")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[999])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write our runs (and the comparison) as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref = json.loads(pathlib.Path(args.ref).read_text())
    if ref.get("status", "done") != "done":
        raise SystemExit(f"{args.ref}: the reference run is not finished (status {ref.get('status')!r}, "
                         f"{len(ref.get('valid_recall@20', []))} epochs); wait for it")
    hp = ref["hyperparameters"]
    overrides = MAPS[args.model](hp)
    if int(hp.get("seed", 999)) != args.seeds[0]:
        print(f"note: the reference ran with seed {hp.get('seed')}, ours with {args.seeds[0]}")
    data = load_dataset(args.data)
    print(f"{args.model} on {data.name} ({data.n_users} users, {data.n_items} items, "
          f"{data.train.nnz} training rows), {args.epochs} epochs; load {os.getloadavg()[0]:.2f}")
    print("reference hyperparameters -> ours:", json.dumps(overrides))
    runs = []
    with tempfile.TemporaryDirectory() as cache:
        for s in args.seeds:
            runs.append(train_ours(args.model, data, overrides, args.epochs, s, cache))
    ours = runs[0]
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps({"model": args.model, "ref": args.ref,
                                                      "runs": runs}, indent=1))

    print(f"\n{'':26s}{'ours (seed %d)' % ours['seed']:>22s}{'reference':>22s}")
    for e in BATCH_EPOCHS:
        print(f"mean batch loss, epoch {e:<3d}{_ms(ours['batch_losses'].get(str(e), [])):>22s}"
              f"{_ms(ref['batch_losses'].get(str(e), [])):>22s}")
    for e in SHOW_EPOCHS:
        if e < len(ours["valid_recall@20"]) and e < len(ref["valid_recall@20"]):
            print(f"valid R@20, epoch {e:<8d}{ours['valid_recall@20'][e]:>22.4f}"
                  f"{ref['valid_recall@20'][e]:>22.4f}")
    print(f"{'best valid R@20 (epoch)':26s}{ours['best_valid']:>15.4f} ({ours['best_epoch']:2d})"
          f"{ref['best_valid']:>15.4f} ({ref['best_epoch']:2d})")
    print(f"{'test R@20 at best':26s}{ours['test_at_best']:>22.4f}{ref['test_at_best']:>22.4f}")
    print(f"{'s/epoch (train)':26s}{ours['seconds_per_epoch']:>22.3f}{ref['seconds_per_epoch']:>22.3f}")
    if len(runs) > 1:
        print(f"\nour spread over seeds {[r['seed'] for r in runs]}:")
        for e in BATCH_EPOCHS:
            v = [float(np.mean(r["batch_losses"][str(e)])) for r in runs]
            print(f"  mean batch loss epoch {e:<3d} {np.mean(v):.4f} ± {np.std(v):.4f}  {['%.4f' % x for x in v]}")
        for key in ("best_valid", "test_at_best"):
            v = [r[key] for r in runs]
            print(f"  {key:22s} {np.mean(v):.4f} ± {np.std(v):.4f}  {v}")
        n = min(len(ref["valid_recall@20"]), len(runs[0]["valid_recall@20"]))
        curves = np.array([r["valid_recall@20"][:n] for r in runs])
        refc = np.array(ref["valid_recall@20"][:n])
        lo, hi = curves.min(0), curves.max(0)
        inside = ((refc >= lo) & (refc <= hi)).mean()
        print(f"  reference valid curve inside our min–max band at {inside:.0%} of the epochs; "
              f"mean |ours − ref| {np.abs(curves.mean(0) - refc).mean():.4f}")


if __name__ == "__main__":
    sys.exit(main())
