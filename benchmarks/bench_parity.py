"""Parity with a reference run: train one of our models with the hyperparameters of a recorded
reference run (MMRec or an authors' repository) and print both side by side.

    python benchmarks/bench_parity.py --model NAME --ref FILE [--data DIR] [--epochs 30]
                                      [--seeds 999 1000 ...] [--json OUT] [--ours OUT]
                                      [--set key=value ...]

FILE is a JSON record of the reference run with the keys ``hyperparameters`` (the reference's
configuration, in its own key names) and either one run's keys at the top level or a list
``runs`` of them, one per seed: ``batch_losses`` ({"0": [...], "5": [...], "10": [...]}: the
loss of every training batch of those epochs), ``epoch_loss`` (mean batch loss per epoch),
``valid_recall@20`` (per epoch) and either ``test_at_best`` (test Recall@20 at the reference's
best epoch, with ``best_valid``/``best_epoch``) or the per-epoch curves ``test_recall@20`` and
``test_ndcg@20`` (the best epoch is then chosen here, by the same rule as ours), and
``seconds_per_epoch``. The reference's key names are mapped to ours (MMRec's trainer keys
below; model keys through the model's aliases); keys our model does not have are listed and
ignored (e.g. keys the reference code never reads, or a batch counted in users); ``--set``
sets any key of ours on top.

Ours runs on the same data (``--data``, default the folder beside FILE's dataset name under
``/work/ref/data``) for the same number of epochs, evaluated every epoch without early
stopping, one run per ``--seeds`` (the random streams of the two codes differ, so agreement is
expected within the spread over seeds, which both sides print). ``--json`` records our runs;
``--ours`` reads such a record instead of training again. Validation Recall@20 is compared
rounded to 4 decimals, as MMRec reports it; the best epoch is the first maximum (MMRec's strict
'>'); test Recall@20 / NDCG@20 are those of that epoch, averaged over the seeds.
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

from mmrecsys.config import ConfigError, canonical_keys, parse_overrides, run_config
from mmrecsys.data import load_dataset
from mmrecsys.models import get_model_class
from mmrecsys.train.trainer import Trainer

#: MMRec trainer key -> ours (``enoche/MMRec`` ``src/configs/overall.yaml``)
TRAINER_KEYS = {"learning_rate": "lr", "learning_rate_scheduler": "lr_scheduler",
                "train_batch_size": "batch_size", "weight_decay": "weight_decay",
                "learner": "optimizer", "seed": "seed", "eval_batch_size": "eval_batch_size"}
#: reference keys that configure its run loop, replaced by this benchmark's own settings
LOOP_KEYS = {"epochs", "stopping_step", "eval_step", "valid_metric", "use_neg_sampling"}
EPOCHS_SHOWN = ("0", "5", "10", "25")


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
            "test_ndcg_at_best": round(float(res["test"]["ndcg@20"]), 4),
            "seconds_per_epoch": statistics.mean(h["train_seconds"] for h in hist),
            "eval_seconds": statistics.mean(h["eval_seconds"] for h in hist),
            "total_seconds": total, "config": {k: cfg[k] for k in sorted(overrides)}}


def _mean(xs):
    return float(np.mean(xs)) if len(xs) else float("nan")


def reference_runs(ref: dict) -> list[dict]:
    """The reference's runs (one per seed), each with ``best_epoch``, ``best_valid``,
    ``test_at_best`` and (where the curves allow) ``test_ndcg_at_best``, chosen by our rule
    (first maximum of validation Recall@20 at 4 decimals) where the record has test curves."""
    runs = ref.get("runs") or [ref]
    out = []
    for r in runs:
        r = dict(r)
        valid = [round(float(v), 4) for v in r["valid_recall@20"]]
        r["valid_recall@20"] = valid
        if "test_recall@20" in r:
            best = int(np.argmax(valid))
            r["best_epoch"], r["best_valid"] = best, valid[best]
            r["test_at_best"] = round(float(r["test_recall@20"][best]), 4)
            if "test_ndcg@20" in r:
                r["test_ndcg_at_best"] = round(float(r["test_ndcg@20"][best]), 4)
        spe = r.get("seconds_per_epoch")
        if isinstance(spe, list):
            r["seconds_per_epoch"] = _mean(spe)
        out.append(r)
    return out


def _spread(xs) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "-"
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return f"{np.mean(xs):.4f} ± {sd:.4f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ref", required=True, type=pathlib.Path)
    ap.add_argument("--data", type=pathlib.Path, default=None)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[999])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=pathlib.Path, default=None, help="write our runs here")
    ap.add_argument("--ours", type=pathlib.Path, default=None,
                    help="read our runs from a --json record instead of training")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="key=value on top of the mapped reference configuration")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ref = json.loads(args.ref.read_text())
    refs = reference_runs(ref)
    data_dir = args.data or pathlib.Path("/work/ref/data") / ref.get("dataset", "synth")
    data = load_dataset(data_dir)
    cls = get_model_class(args.model)
    overrides, ignored = map_hyperparameters(cls, ref["hyperparameters"])
    overrides.update(canonical_keys(cls, parse_overrides(args.sets)))
    print(f"{args.model} on {data!r}")
    print(f"reference: {args.ref} ({ref.get('repo', '?')} {ref.get('reference_commit', '')[:10]}), "
          f"{len(refs)} run(s), seeds {[r.get('seed') for r in refs]}")
    if ref.get("shims"):
        print("reference compatibility shims: " + "; ".join(map(str, ref["shims"])))
    print(f"hyperparameters (ours): {overrides}")
    if ignored:
        print(f"reference keys without a counterpart here (ignored): {', '.join(ignored)}")
    if args.ours:
        runs = json.loads(args.ours.read_text())["runs"]
    else:
        runs = []
        for seed in args.seeds:
            try:
                runs.append(run_ours(data, args.model, overrides, args.epochs, seed))
            except ConfigError as e:
                sys.exit(f"error: {e}")
        if args.json:
            args.json.write_text(json.dumps({"model": args.model, "ref": str(args.ref), "runs": runs},
                                            indent=1))
    n_ep = min(len(x["valid_recall@20"]) for x in runs + refs)

    print("\nmean batch loss per epoch, each side's mean over its seeds (min..max over seeds)")
    print(f"{'epoch':>5} {'ours':>10} {'ref':>10} {'diff %':>8} {'batches':>9}   "
          f"{'ours seeds':>19}   {'ref seeds':>19}")
    for e in EPOCHS_SHOWN:
        o = [_mean(x["batch_losses"].get(e, [])) for x in runs]
        r = [_mean(x["batch_losses"].get(e, [])) for x in refs]
        o, r = [v for v in o if v == v], [v for v in r if v == v]
        if not o or not r:
            continue
        mo, mr = _mean(o), _mean(r)
        print(f"{e:>5} {mo:10.5f} {mr:10.5f} {100 * (mo - mr) / mr:8.2f} "
              f"{len(runs[0]['batch_losses'][e]):>4}/{len(refs[0]['batch_losses'].get(e, [])):<4}"
              f"   {min(o):.5f}..{max(o):.5f}   {min(r):.5f}..{max(r):.5f}")
    print("\nvalidation Recall@20 per epoch (4 decimals), mean over seeds")
    shown = [e for e in (0, 1, 2, 5, 10, 15, 20, 25, 29) if e < n_ep]
    print(f"{'epoch':>5} " + " ".join(f"{e:>7}" for e in shown))
    for label, side in (("ours", runs), ("ref", refs)):
        print(f"{label:>5} " + " ".join(f"{_mean([x['valid_recall@20'][e] for x in side]):7.4f}"
                                       for e in shown))
    print(f"\n{'mean ± std over seeds':28}{'ours':>18}{'reference':>18}")
    rows = [("best valid R@20", "best_valid"), ("best epoch", "best_epoch"),
            ("test R@20 at best", "test_at_best"), ("test N@20 at best", "test_ndcg_at_best")]
    for label, key in rows:
        print(f"{label:28}{_spread([x.get(key, float('nan')) for x in runs]):>18}"
              f"{_spread([x.get(key, float('nan')) for x in refs]):>18}")
    to, tr = _mean([x["test_at_best"] for x in runs]), _mean([x["test_at_best"] for x in refs])
    no = _mean([x.get("test_ndcg_at_best", float("nan")) for x in runs])
    nr = _mean([x.get("test_ndcg_at_best", float("nan")) for x in refs])
    print(f"{'ours / reference - 1':28}{'R@20 ' + format(100 * (to / tr - 1), '+.1f') + ' %':>18}"
          f"{'N@20 ' + format(100 * (no / nr - 1), '+.1f') + ' %':>18}")
    print(f"{'s / epoch (train, under load?)':28}"
          f"{_mean([x['seconds_per_epoch'] for x in runs]):>18.3f}"
          f"{_mean([x.get('seconds_per_epoch', float('nan')) for x in refs]):>18.3f}")


if __name__ == "__main__":
    main()
