"""Seed models vs LightGCN on the synthetic default, over several seeds: overall, new items, cold.

    python benchmarks/bench_synthetic_seeds.py [--models lightgcn lgmrec mmhcl rearm]
        [--seeds 0 1 2 3 4] [--out results.jsonl] [--max-epochs N]

For each seed s: the synthetic default generated with seed s (2,000 users, 1,000 items, 15% new
items with 0–2 training rows and held-out rows from matching users), and its item cold-start
split (`data cold-split`: LATTICE's protocol, 20% of the items, seed 123). Every model trains
with its own defaults (its official behaviour) and training seed s, with early stopping on
validation. Reported (test Recall@20, mean ± std over seeds):

* overall: the main test metric on the synthetic default;
* new items: test Recall@20 over the new items' held-out rows (``metrics.json``'s
  ``test_new_items``, read from the same ranking as the main metric);
* cold: the main test metric on the cold split (its valid/test rows are all cold items). On
  the cold split held-out users without training rows are evaluated
  (``keep_users_without_train``), as MMHCL's cold-start runs do, for every model alike.

A seed model "beats LightGCN by more than 2 std" when the difference of the means exceeds twice
the larger of the two standard deviations. Results are appended to ``--out`` (JSON lines) as
they finish; a re-run skips the (model, seed, setting) triples already there. ``--max-epochs``
caps training (then labelled as capped in the table).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import WORK  # noqa: E402

import mmrecsys as mr  # noqa: E402
from mmrecsys.data.cold import cold_split, write_cold_split  # noqa: E402
from mmrecsys.data.synthetic import write_synthetic  # noqa: E402


def datasets(seed: int) -> tuple[pathlib.Path, pathlib.Path]:
    base = WORK / f"synthetic-s{seed}"
    if not (base / f"{base.name}.inter").exists():
        write_synthetic(base, seed=seed)
    cold = WORK / f"synthetic-s{seed}-cold"
    if not (cold / f"{cold.name}.inter").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mmrecsys.data.cold import load_all_rows
            new, ids = cold_split(load_all_rows(base))
        write_cold_split(new, ids, cold, name=cold.name)
    return base, cold


def run_one(model: str, path: pathlib.Path, seed: int, cold: bool, max_epochs: int | None):
    over = {"seed": seed}
    if cold:
        over["keep_users_without_train"] = True
    if max_epochs:
        over["epochs"] = max_epochs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = mr.load_dataset(path)
        t = time.perf_counter()
        m = mr.fit(data, model, **over)
    out = {"model": model, "seed": seed, "setting": "cold" if cold else "default",
           "recall@20": m.metrics["test"]["recall@20"], "ndcg@20": m.metrics["test"]["ndcg@20"],
           "best_epoch": m.metrics["best_epoch"], "epochs_run": m.metrics["epochs_run"],
           "seconds": round(time.perf_counter() - t, 1), "max_epochs": max_epochs}
    if not cold:
        out["new_items_recall@20"] = m.metrics.get("test_new_items", {}).get("recall@20")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lightgcn", "lgmrec", "mmhcl", "rearm"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default=str(WORK / "synthetic_seeds.jsonl"))
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--table-only", action="store_true", help="print the table of --out")
    ap.add_argument("--verbose", action="store_true", help="log every epoch (to stderr)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--explain", action="store_true",
                    help="train each model once (first seed) and print how it scores new/cold items")
    args = ap.parse_args(argv)
    if args.explain:
        return explain(args.models, args.seeds[0], args.max_epochs, args.threads)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    have = {(r["model"], r["seed"], r["setting"]) for r in done}
    if not args.table_only:
        import logging

        import torch
        torch.set_num_threads(args.threads)
        if args.verbose:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        for seed in args.seeds:
            base, cold = datasets(seed)
            for model in args.models:
                for is_cold, path in ((False, base), (True, cold)):
                    key = (model, seed, "cold" if is_cold else "default")
                    if key in have:
                        continue
                    r = run_one(model, path, seed, is_cold, args.max_epochs)
                    print(json.dumps(r), flush=True)
                    with open(out, "a") as fh:
                        fh.write(json.dumps(r) + "\n")
                    done.append(r)
    table(done, args.models)


def diagnose(m, items: np.ndarray) -> dict:
    """How a trained model scores an item subset against the other items.

    share_top20: share of the test users' top-20 slots the subset takes (vs its share of the
    catalogue); median_rank: median rank, among the user's unseen items, of held-out rows with a
    subset item (1 = top); norm ratio: mean ‖item representation‖ of the subset / of the others.
    """
    import torch
    data = m.data
    test = data.test
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    in_set = np.zeros(data.n_items, dtype=bool)
    in_set[items] = True
    ids, _ = m.recommend(users, k=20)
    user_repr, item_repr = m._reps
    with torch.no_grad():
        scores = (user_repr[torch.as_tensor(users)] @ item_repr.T).float()
    tr = data.train[users]
    r = np.repeat(np.arange(len(users)), np.diff(tr.indptr))
    scores[torch.as_tensor(r), torch.as_tensor(tr.indices.astype(np.int64))] = -torch.inf
    order = torch.argsort(scores, dim=1, descending=True).numpy()
    rank = np.empty_like(order)
    rank[np.arange(len(users))[:, None], order] = np.arange(1, data.n_items + 1)[None, :]
    te = test[users]
    rows = np.repeat(np.arange(len(users)), np.diff(te.indptr))
    cols = te.indices
    sel = in_set[cols]
    norms = item_repr.norm(dim=1).numpy()
    return {"share_top20": float(in_set[ids[ids >= 0]].mean()),
            "catalogue_share": float(in_set.mean()),
            "median_rank": float(np.median(rank[rows[sel], cols[sel]])) if sel.any() else None,
            "median_rank_others": float(np.median(rank[rows[~sel], cols[~sel]])) if (~sel).any() else None,
            "norm_ratio": float(norms[in_set].mean() / norms[~in_set].mean())}


def explain(models, seed, max_epochs, threads: int = 2):
    import torch
    torch.set_num_threads(threads)
    base, cold = datasets(seed)
    for model in models:
        for setting, path, key in (("new items", base, "new_items"), ("cold", cold, "cold_items")):
            over = {"seed": seed, **({"epochs": max_epochs} if max_epochs else {})}
            if setting == "cold":
                over["keep_users_without_train"] = True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = mr.load_dataset(path)
                m = mr.fit(data, model, **over)
            d = diagnose(m, getattr(m.data, key))
            print(f"{model:8s} {setting:9s}: top-20 share {d['share_top20']:.3f} (catalogue "
                  f"{d['catalogue_share']:.3f}), median rank of their held-out rows "
                  f"{d['median_rank']} (other held-out rows {d['median_rank_others']}), "
                  f"item-representation norm ratio {d['norm_ratio']:.3f}", flush=True)


def table(rows, models):
    def stats(model, setting, key):
        v = [r[key] for r in rows if r["model"] == model and r["setting"] == setting
             and r.get(key) is not None]
        return (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)) \
            if v else None

    cols = [("overall", "default", "recall@20"), ("new items", "default", "new_items_recall@20"),
            ("cold split", "cold", "recall@20")]
    print("\ntest Recall@20, mean ± std over seeds (n)")
    print("| model | " + " | ".join(c[0] for c in cols) + " | epochs (default) |")
    print("|---|" + "---|" * (len(cols) + 1))
    for m in models:
        cells = []
        for _, setting, key in cols:
            s = stats(m, setting, key)
            cells.append("—" if s is None else f"{s[0]:.4f} ± {s[1]:.4f} ({s[2]})")
        ep = [r["epochs_run"] for r in rows if r["model"] == m and r["setting"] == "default"]
        capped = any(r.get("max_epochs") for r in rows if r["model"] == m)
        cells.append(f"{np.mean(ep):.0f}{' (capped)' if capped else ''}" if ep else "—")
        print(f"| {m} | " + " | ".join(cells) + " |")
    print("\nvs LightGCN (difference of means; > 2 × the larger std?)")
    for m in models:
        if m == "lightgcn":
            continue
        for name, setting, key in cols[1:]:
            a, b = stats(m, setting, key), stats("lightgcn", setting, key)
            if a and b:
                diff = a[0] - b[0]
                ok = diff > 2 * max(a[1], b[1])
                print(f"  {m:8s} {name:10s} {diff:+.4f}  ({'yes' if ok else 'no'}: 2 std = "
                      f"{2 * max(a[1], b[1]):.4f})")


if __name__ == "__main__":
    main()
