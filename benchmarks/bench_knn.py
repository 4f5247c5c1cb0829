"""FAISS vs torch kNN graphs: seconds, peak memory and recall@k (issue 15).

    python benchmarks/bench_knn.py --dataset clothing            # Clothing, proxy features
    python benchmarks/bench_knn.py --items 1000000 [--dim 512]  # a 1 M-item catalogue

Every (backend, index) runs in its own process, so each peak RSS (``ru_maxrss``) is its own.
For each feature matrix:

* ``torch exact``: the package's chunked exact top-k (:func:`mmrecsys.graphs.knn.knn_graph`,
  backend ``torch``). On the 1 M-item catalogue the full N × N product does not fit in this
  benchmark's time, so it is timed on ``--sample`` query rows against all N rows and
  **extrapolated** to N rows (labelled); those exact rows are also the ground truth;
* ``faiss flat`` (exact inner product, the default backend), ``faiss hnsw`` and ``faiss ivf``: the
  whole graph (build + search of every row), with recall@k of the approximate lists against the
  exact ones on the sample rows (flat is exact: its recall checks the backend, 1.0 expected).
  On the 1 M-item catalogue flat is, like torch, timed on the sample rows and **extrapolated**
  (its rows near a tie re-decided by the torch path, as ``knn_graph`` does).

Clothing: the proxy features of ``benchmarks/common.py`` (image 4096-d, text 384-d; **proxy
features, not real content**). 1 M items: the image features of ``mmrecsys data synth
--interactions`` (:func:`mmrecsys.data.synthetic_scale.write_synthetic_scale`, clustered,
``--dim`` wide), made once under the benchmark cache. A run that exceeds ``--timeout`` seconds is
reported as not finished. Take timings under ``flock /tmp/mmrecsys-heavy.lock``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

K = 10


def features_path(args) -> pathlib.Path:
    from common import WORK
    if args.dataset:
        from common import proxy_dataset
        return proxy_dataset(args.dataset) / f"{args.modality}.npy"
    from mmrecsys.data.synthetic_scale import write_synthetic_scale
    out = WORK / f"knn-{args.items}-{args.dim}"
    f = out / "image_feat.npy"
    if not f.exists():
        n_users = 10
        write_synthetic_scale(out, n_users=n_users, n_items=args.items, n_interactions=5 * n_users,
                              modalities=[("image_feat", args.dim, "relu")])
    return f


def stage(args) -> dict:
    """One backend in this process."""
    import numpy as np
    import torch

    from mmrecsys.graphs.knn import knn_graph
    torch.set_num_threads(args.threads)
    x = np.load(args.features, mmap_mode="r")
    n = x.shape[0]
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n, size=min(args.sample, n), replace=False))
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = {"n": n, "d": x.shape[1]}
    t = time.perf_counter()
    if args.backend == "torch":
        xt = torch.nn.functional.normalize(torch.as_tensor(x), dim=1)
        if args.full:
            idx, _ = knn_graph(xt, K, backend="torch")
            out["seconds"] = time.perf_counter() - t
            exact = idx[torch.as_tensor(sample)]
        else:  # sample rows against all rows, extrapolated
            q = xt[torch.as_tensor(sample)]
            exact_rows = []
            with torch.no_grad():
                for s in range(0, len(q), 2048):
                    exact_rows.append(torch.topk(q[s:s + 2048] @ xt.T, K, dim=1).indices)
            exact = torch.cat(exact_rows)
            out["seconds"] = (time.perf_counter() - t) * n / len(sample)
            out["extrapolated"] = f"from {len(sample)} query rows"
        np.save(args.exact_out, exact.numpy())
    elif args.index == "flat" and not args.full:
        out.update(flat_sample(x, sample, args.exact_out))
    else:
        params = {"m": 16, "ef_construction": 40} if args.index == "hnsw" and n > 200_000 else {}
        if args.params_json:
            params = json.loads(args.params_json)
        idx, _ = knn_graph(x, K, backend="faiss", index=args.index, **params)
        out["seconds"] = time.perf_counter() - t
        if params:
            out["params"] = params
        if os.path.exists(args.exact_out):
            from mmrecsys.graphs.knn import knn_recall
            out["recall@10"] = knn_recall(idx[torch.as_tensor(sample)],
                                          torch.as_tensor(np.load(args.exact_out)))
    from common import peak_rss_gb
    out["peak_rss_gib"] = peak_rss_gb()
    return out


def flat_sample(x, sample, exact_out) -> dict:
    """The exact FAISS flat graph on the sample rows, as :func:`knn_graph` builds it (the index
    over all rows, k + 1 candidates, rows near a tie at the k-th place re-decided by the torch
    rows schedule), timed and extrapolated to all rows; its lists against the torch path's."""
    import numpy as np
    import torch

    from mmrecsys.graphs import knn as knn_mod
    n = x.shape[0]
    t = time.perf_counter()
    xt = torch.nn.functional.normalize(torch.as_tensor(x), dim=1)
    index = knn_mod.faiss_index(np.ascontiguousarray(xt.numpy()), "flat")
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    vals, ids = index.search(np.ascontiguousarray(xt.numpy()[sample]), K + 1)
    ids, vals = torch.as_tensor(ids), torch.as_tensor(vals)
    near = knn_mod.near_ties(xt, vals, K, rows=sample)
    ids = ids[:, :K].contiguous()
    if len(near):
        ids[near] = knn_mod._torch_rows(xt, K, False, 2048, rows=torch.as_tensor(sample)[near])[0]
    t_rows = time.perf_counter() - t
    out = {"seconds": t_build + t_rows * n / len(sample),
           "extrapolated": f"from {len(sample)} query rows; {len(near)} re-decided by torch",
           "near_ties": len(near) / len(sample)}
    if os.path.exists(exact_out):
        exact = np.load(exact_out)
        out["recall@10"] = float(np.mean([len(set(a) & set(b)) / K
                                          for a, b in zip(ids.tolist(), exact.tolist())]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["baby", "clothing"], default=None)
    ap.add_argument("--modality", default="image_feat", help="feature file of --dataset")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--sample", type=int, default=2000, help="query rows for recall (and the "
                    "extrapolated exact timing at 1 M items)")
    ap.add_argument("--backends", nargs="+", default=["torch", "faiss:flat", "faiss:hnsw", "faiss:ivf"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--index-params", nargs="*", default=[], metavar="KEY=VALUE",
                    help="FAISS index parameters for the faiss runs, e.g. m=32 ef_construction=200 "
                         "(default above 200k rows for hnsw: m=16 ef_construction=40)")
    ap.add_argument("--params-json", help=argparse.SUPPRESS)
    ap.add_argument("--stage", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    ap.add_argument("--features", help=argparse.SUPPRESS)
    ap.add_argument("--exact-out", help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        print(json.dumps(stage(args)))
        return
    feats = features_path(args)
    import numpy as np
    n, d = np.load(feats, mmap_mode="r").shape
    label = f"{args.dataset} {args.modality} (PROXY FEATURES)" if args.dataset else \
        f"synthetic catalogue of {n:,} items"
    print(f"bench_knn: {label}, {n:,} x {d}, k={K}, {args.threads} threads; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    exact_out = str(feats.parent / f"knn-exact-{feats.stem}-{args.sample}.npy")
    full = n <= 100_000
    for spec in args.backends:
        backend, _, index = spec.partition(":")
        cmd = [sys.executable, __file__, "--stage", "--backend", backend, "--index", index or "flat",
               "--features", str(feats), "--exact-out", exact_out, "--sample", str(args.sample),
               "--threads", str(args.threads)] + (["--full"] if full else [])
        if args.index_params and backend == "faiss":
            cmd += ["--params-json", json.dumps({k: int(v) for k, v in
                                                 (kv.split("=", 1) for kv in args.index_params)})]
        t = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{spec:12s} did not finish in {args.timeout} s", flush=True)
            continue
        if p.returncode != 0:
            print(f"{spec:12s} failed (rc {p.returncode}): {p.stderr.strip().splitlines()[-1:]}",
                  flush=True)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        extra = f"  ({r['extrapolated']}, EXTRAPOLATED)" if r.get("extrapolated") else ""
        rec = f"  recall@10 {r['recall@10']:.4f}" if "recall@10" in r else ""
        par = f"  {r['params']}" if r.get("params") else ""
        print(f"{spec:12s} {r['seconds']:9.1f} s  peak RSS {r['peak_rss_gib']:.2f} GiB{rec}{extra}"
              f"{par}  (process wall {time.perf_counter() - t:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
