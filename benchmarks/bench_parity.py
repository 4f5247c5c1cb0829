"""Parity with a reference run: train one of our models with the hyperparameters of a recorded
reference run (MMRec or an authors' repository) and print both side by side.

    python benchmarks/bench_parity.py --model NAME --ref FILE [--data DIR] [--epochs 30]
                                      [--seeds 999 1000 ...] [--json OUT]

FILE is a JSON record of the reference run with the keys ``hyperparameters`` (the reference's
configuration, in its own key names), ``batch_losses`` ({"0": [...], "5": [...], "10": [...]}:
the loss of every training batch of those epochs), ``epoch_loss`` (mean batch loss per epoch),
``valid_recall@20`` (per epoch), ``best_valid``, ``best_epoch``, ``test_at_best`` and
``seconds_per_epoch``. The reference's key names are mapped to ours (MMRec's trainer keys
below; model keys through the model's aliases); keys our model does not have are listed and
ignored (e.g. keys the reference code never reads).

Ours runs on the same data (``--data``, default the folder beside FILE's dataset name under
``/work/ref/data``) for the same number of epochs, evaluated every epoch without early
stopping, seed 999 (``--seeds`` adds runs with other seeds, to show the sampling noise: the
random streams of the two codes differ, so only agreement within that noise is expected).
Validation Recall@20 is compared rounded to 4 decimals, as MMRec reports it; the best epoch is
the first maximum (MMRec's strict '>').
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np
import torch

from mmrecsys.config import ConfigError, canonical_keys, run_config
from mmrecsys.data import load_dataset
from mmrecsys.models import get_model_class
from mmrecsys.train.trainer import Trainer

#: MMRec trainer key -> ours (``enoche/MMRec`` ``src/configs/overall.yaml``)
TRAINER_KEYS = {"learning_rate": "lr", "learning_rate_scheduler": "lr_scheduler",
                "train_batch_size": "batch_size", "weight_decay": "weight_decay",
                "learner": "optimizer", "seed": "seed", "eval_batch_size": "eval_batch_size"}
#: reference keys that configure its run loop, replaced by this benchmark's own settings
LOOP_KEYS = {"epochs", "stopping_step", "eval_step", "valid_metric", "use_neg_sampling"}
EPOCHS_SHOWN = ("0", "5", "10")


def _mmrec_common(hp: dict) -> dict:
    return {"lr": hp["learning_rate"], "lr_scheduler": list(hp["learning_rate_scheduler"]),
            "batch_size": hp["train_batch_size"], "weight_decay": float(hp.get("weight_decay") or 0.0),
            "optimizer": str(hp.get("learner", "adam")).lower(), "embedding_dim": hp["embedding_size"]}


#: models whose reference keys do not map one to one: the reference's ``n_layers`` counts the
#: item-graph layers of LATTICE, MGCN and SMORE (ours: ``n_item_layers``), and LATTICE's
#: user-item layers are ``len(weight_size)``
REFERENCE_MAPS = {
    "lattice": lambda hp: {**_mmrec_common(hp), "feat_embed_dim": hp["feat_embed_dim"],
                           "n_layers": len(hp["weight_size"]), "n_item_layers": hp["n_layers"],
                           "knn_k": hp["knn_k"], "lambda_coeff": hp["lambda_coeff"],
                           "reg_weight": hp["reg_weight"], "cf_model": hp["cf_model"]},
    "mgcn": lambda hp: {**_mmrec_common(hp), "n_layers": hp["n_ui_layers"],
                        "n_item_layers": hp["n_layers"], "knn_k": hp["knn_k"],
                        "reg_weight": hp["reg_weight"], "cl_weight": hp["cl_loss"]},
    "smore": lambda hp: {**_mmrec_common(hp), "n_layers": hp["n_ui_layers"],
                         "n_item_layers": hp["n_layers"], "image_knn_k": hp["image_knn_k"],
                         "text_knn_k": hp["text_knn_k"], "reg_weight": hp["reg_weight"],
                         "cl_weight": hp["cl_loss"], "dropout": hp["dropout_rate"]},
}


def map_hyperparameters(cls, ref_hp: dict) -> tuple[dict, list[str]]:
    """Our overrides for the reference's configuration, and the reference keys ignored."""
    if cls.name in REFERENCE_MAPS:
        out = REFERENCE_MAPS[cls.name](ref_hp)
        if "seed" in ref_hp:
            out["seed"] = ref_hp["seed"]
        return canonical_keys(cls, out), []
    known = set(cls.hyperparameters()) | set(cls.aliases)
    out, ignored = {}, []
    for k, v in ref_hp.items():
        if k in TRAINER_KEYS:
            out[TRAINER_KEYS[k]] = v
        elif k in known:
            out[k] = v
        elif k not in LOOP_KEYS:
            ignored.append(f"{k}={v!r}")
    if isinstance(out.get("optimizer"), str):
        out["optimizer"] = out["optimizer"].lower()
    return canonical_keys(cls, out), ignored


def run_ours(data, model: str, overrides: dict, epochs: int, seed: int) -> dict:
    """Train ``epochs`` epochs, evaluating every epoch, no early stopping; per-batch losses of
    the shown epochs, the loss and valid Recall@20 per epoch, test at the best epoch."""
    cfg = run_config(model, data, None, {**overrides, "epochs": epochs, "eval_step": 1,
                                         "patience": epochs + 1, "seed": seed, "preset": "none"})
    trainer = Trainer(data, cfg, None, log=lambda *a, **k: None)
    net = trainer.net
    batch_losses: dict[str, list[float]] = {e: [] for e in EPOCHS_SHOWN}
    state = {"epoch": -1}
    pre_epoch, loss_fn = net.pre_epoch, net.loss

    def pre(epoch):
        state["epoch"] = epoch
        return pre_epoch(epoch)

    def loss(users, pos, neg):
        terms = loss_fn(users, pos, neg)
        key = str(state["epoch"])
        if key in batch_losses:
            batch_losses[key].append(float(sum(t.detach() for t in terms.values())))
        return terms

    net.pre_epoch, net.loss = pre, loss
    t0 = time.perf_counter()
    res = trainer.fit()
    total = time.perf_counter() - t0
    hist = res["history"]
    valid = [round(float(h["valid_recall@20"]), 4) for h in hist]
    best_epoch = int(np.argmax(valid))                      # first maximum: MMRec's strict '>'
    return {"seed": seed, "batch_losses": batch_losses,
            "epoch_loss": [float(h["loss"]) for h in hist], "valid_recall@20": valid,
            "best_valid": valid[best_epoch], "best_epoch": best_epoch,
            "best_epoch_trainer": res["best_epoch"],
            "test_at_best": round(float(res["test"]["recall@20"]), 4),
            "seconds_per_epoch": statistics.mean(h["train_seconds"] for h in hist),
            "eval_seconds": statistics.mean(h["eval_seconds"] for h in hist),
            "total_seconds": total, "config": {k: cfg[k] for k in sorted(overrides)}}


def _mean(xs):
    return float(np.mean(xs)) if len(xs) else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ref", required=True, type=pathlib.Path)
    ap.add_argument("--data", type=pathlib.Path, default=None)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[999])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=pathlib.Path, default=None, help="write our runs here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ref = json.loads(args.ref.read_text())
    data_dir = args.data or pathlib.Path("/work/ref/data") / ref.get("dataset", "synth")
    data = load_dataset(data_dir)
    cls = get_model_class(args.model)
    overrides, ignored = map_hyperparameters(cls, ref["hyperparameters"])
    print(f"{args.model} on {data!r}")
    print(f"reference: {args.ref} ({ref.get('repo', '?')} {ref.get('reference_commit', '')[:10]})")
    print(f"hyperparameters (ours): {overrides}")
    if ignored:
        print(f"reference keys without a counterpart here (ignored): {', '.join(ignored)}")
    runs = []
    for seed in args.seeds:
        try:
            runs.append(run_ours(data, args.model, overrides, args.epochs, seed))
        except ConfigError as e:
            sys.exit(f"error: {e}")
    ours = runs[0]

    print(f"\nmean batch loss (ours seed {ours['seed']} vs reference; ours over seeds: min..max)")
    print(f"{'epoch':>5} {'ours':>10} {'ref':>10} {'diff %':>8} {'batches':>9}   seeds")
    for e in EPOCHS_SHOWN:
        o, r = _mean(ours["batch_losses"][e]), _mean(ref["batch_losses"].get(e, []))
        spread = [_mean(x["batch_losses"][e]) for x in runs]
        print(f"{e:>5} {o:10.5f} {r:10.5f} {100 * (o - r) / r:8.2f} "
              f"{len(ours['batch_losses'][e]):>4}/{len(ref['batch_losses'].get(e, [])):<4}"
              f"   {min(spread):.5f}..{max(spread):.5f}")
    print("\nvalidation Recall@20 per epoch (4 decimals)")
    shown = [e for e in (0, 1, 2, 5, 10, 15, 20, 25, 29) if e < args.epochs]
    print(f"{'epoch':>5} " + " ".join(f"{e:>7}" for e in shown))
    print(f"{'ours':>5} " + " ".join(f"{ours['valid_recall@20'][e]:7.4f}" for e in shown))
    ref_valid = ref["valid_recall@20"]
    print(f"{'ref':>5} " + " ".join(f"{ref_valid[e]:7.4f}" if e < len(ref_valid) else "      -"
                                     for e in shown))
    print(f"\n{'':26}{'ours':>16}{'reference':>16}")
    print(f"{'best valid R@20 (epoch)':26}{ours['best_valid']:>10.4f} ({ours['best_epoch']:2d})"
          f"{ref['best_valid']:>10.4f} ({ref['best_epoch']:2d})")
    print(f"{'test R@20 at best':26}{ours['test_at_best']:>16.4f}{ref['test_at_best']:>16.4f}")
    print(f"{'s / epoch (train)':26}{ours['seconds_per_epoch']:>16.3f}{ref['seconds_per_epoch']:>16.3f}")
    if len(runs) > 1:
        bv = [x["best_valid"] for x in runs]
        ta = [x["test_at_best"] for x in runs]
        print(f"\nours over seeds {args.seeds}: best valid R@20 {np.mean(bv):.4f} ± {np.std(bv):.4f} "
              f"(min {min(bv):.4f}, max {max(bv):.4f}); test at best {np.mean(ta):.4f} ± {np.std(ta):.4f}")
        last = [x["valid_recall@20"][-1] for x in runs]
        print(f"valid R@20 at the last epoch: {', '.join(f'{v:.4f}' for v in last)} "
              f"(reference {ref_valid[-1]:.4f})")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "ref": str(args.ref), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
