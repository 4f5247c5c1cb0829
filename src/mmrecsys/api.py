"""The public Python API: load data, fit a model, recommend, save and load.

.. code-block:: python

    import mmrecsys as mr
    data = mr.load_dataset("data/baby")                 # or "synthetic"
    model = mr.fit(data, "lgmrec", epochs=50, seed=1)   # keyword overrides = config keys
    ids, scores = model.recommend([0, 7], k=10)         # (2, 10) arrays; training items excluded
    ids, scores = model.similar_items([3], k=10)
    model.metrics                                       # the same dict as metrics.json
    model.save("runs/x"); model = mr.load("runs/x")     # a run directory

The CLI and the web service are thin layers over this module. Nothing here prints or exits:
progress goes to the ``mmrecsys`` logger (silent unless the application configures logging)
and errors are exceptions of :mod:`mmrecsys.errors` (``DataError``, ``ConfigError``,
``RunError``, ``RequestError``), all subclasses of ``MMRecError``.
"""
from __future__ import annotations

import json
import logging
import pathlib
import shutil
import warnings

import numpy as np
import torch

from .config import load_yaml
from .data import Dataset
from .errors import DataError, RequestError, RunError, UnknownIdError

logger = logging.getLogger("mmrecsys")
logger.addHandler(logging.NullHandler())

#: keyword arguments of :func:`fit` that are not configuration keys
_FIT_OPTIONS = ("out", "device", "progress", "config", "resume", "on_evaluate")


class RecommendationWarning(UserWarning):
    """Fewer items could be recommended than asked (e.g. a user has seen almost every item)."""


def load_dataset(path="synthetic", **kwargs) -> Dataset:
    """A dataset folder in the standard format, or ``"synthetic"`` (the embedded default).

    Keyword arguments go to :func:`mmrecsys.data.load_dataset` (a folder) or
    :func:`mmrecsys.data.synthetic.make_synthetic` (``"synthetic"``).
    """
    if path in (None, "", "synthetic"):
        from .data.synthetic import make_synthetic
        return make_synthetic(**kwargs)
    from .data import load_dataset as _load
    return _load(path, **kwargs)


def fit(data: Dataset | str, model: str = "lightgcn", *, out=None, device: str = "auto",
        progress: bool = False, config: dict | str | None = None, on_evaluate=None,
        **overrides) -> "TrainedModel":
    """Train ``model`` on ``data`` with early stopping; return the trained model.

    Args:
        data: a :class:`Dataset` or a path accepted by :func:`load_dataset`.
        model: a registered model name (``mmrecsys models`` lists them).
        out: optional run directory written during training (resumable, see the README).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        progress: show progress bars (tqdm).
        config: a mapping or YAML file of configuration keys (below the keyword overrides).
        on_evaluate: optional ``f(epoch, valid_metrics)`` called after each evaluation (e.g. to
            report to a hyperparameter search); an exception it raises stops training (the run
            directory keeps its last checkpoint) and propagates.
        **overrides: configuration keys (``epochs=50``, ``seed=1``, ``lr=1e-3``, ...).
    """
    from .train.trainer import fit as _fit
    if not isinstance(data, Dataset):
        data = load_dataset(data)
    file_cfg = load_yaml(config) if isinstance(config, (str, pathlib.Path)) else dict(config or {})
    res = _fit(data, model, overrides, run_dir=out, device=device, progress=progress,
               log=logger.info, file_cfg=file_cfg, on_evaluate=on_evaluate)
    metrics = {k: v for k, v in res.items() if k not in ("history", "model", "config", "run_dir")}
    return TrainedModel(res["model"], data, res["config"], metrics, res["history"],
                        res["run_dir"])


def load(run_dir, data: Dataset | str | None = None, device: str = "cpu") -> "TrainedModel":
    """A trained model from a run directory (its best weights), on its own dataset or ``data``.

    ``best.pt`` is read with ``weights_only=True``: a crafted file cannot run code.
    """
    from .train.trainer import _load_checkpoint, build_model, prepare_data, resolve_device
    run = pathlib.Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise RunError(f"{run}: no config.yaml; not a run directory written by `mmrecsys train`")
    if not (run / "best.pt").is_file():
        raise RunError(f"{run}: no best.pt; the run has not evaluated yet (train longer or "
                       f"resume it)")
    cfg = load_yaml(run / "config.yaml")
    if "model" not in cfg:
        raise RunError(f"{run}/config.yaml names no model; it was not written by mmrecsys train")
    try:
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        int(metrics["best_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        raise RunError(f"{run}: metrics.json is missing or unreadable; it records the best epoch. "
                       f"Re-run or resume the training.") from None
    try:
        ds = data if isinstance(data, Dataset) else load_dataset(data or cfg.get("data"))
    except DataError as e:
        raise DataError(f"{e}\n(the run's dataset; pass data=... / --data DIR if it has "
                        f"moved)") from None
    ds = prepare_data(ds, cfg)
    dev = resolve_device(device)
    net = build_model(ds, cfg, dev)
    state = _load_checkpoint(run / "best.pt", dev)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{run}/best.pt is not a state dict of weights; it was not written by "
                       f"mmrecsys train")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in lines[1:] if ln.strip()), lines[0] if lines else "")
        raise RunError(f"{run}/best.pt does not fit {cfg['model']} on {ds.name} ({ds.n_users} "
                       f"users, {ds.n_items} items): the weights were trained on other data or "
                       f"with another configuration ({detail[:200]}). Pass the run's own "
                       f"dataset") from None
    fp = metrics.get("dataset_fingerprint")
    if fp and fp != ds.fingerprint(with_features=True):
        warnings.warn(f"the dataset {ds.path or ds.name} differs from the one {run} was trained "
                      f"on (content fingerprint {ds.fingerprint()} vs {fp})", stacklevel=2)
    net.eval()
    return TrainedModel(net, ds, cfg, metrics, _read_history(run / "history.csv"), run)


def check_ids(values, kind: str, n: int) -> np.ndarray:
    """Integer ids checked against 0..n-1 before any int64 conversion (an id beyond the int64
    range is an unknown id, not an overflow): :class:`UnknownIdError` / :class:`RequestError`."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "iu":
            a = values.ravel().astype(np.int64, copy=False)
            bad = (a < 0) | (a >= n)
            if bad.any():
                raise UnknownIdError(f"{kind} id {int(a[bad][0])} out of range 0..{n - 1}")
            return a
        values = values.ravel().tolist()
    elif not isinstance(values, (list, tuple, range)):
        values = [values]
    out = np.empty(len(values), dtype=np.int64)
    for j, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise RequestError(f"{kind} id {v!r} is not an integer")
        if not 0 <= int(v) < n:
            raise UnknownIdError(f"{kind} id {int(v)} out of range 0..{n - 1}")
        out[j] = int(v)
    return out


def check_k(k) -> int:
    """``k`` as a positive int, or :class:`RequestError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RequestError(f"k={k!r}: ask for at least 1 item (an integer of at least 1)")
    return int(k)


def _read_history(path: pathlib.Path) -> list[dict]:
    import csv
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) and "e" not in str(v).lower() else f


class TrainedModel:
    """A trained recommender with its dataset: ``recommend``, ``similar_items``, ``save``.

    Attributes:
        model: the ``torch.nn.Module`` (best weights, eval mode).
        data: the :class:`Dataset` it was trained on (as the run saw it).
        config: the resolved configuration (a flat dict).
        metrics: the content of ``metrics.json`` (best epoch, valid and test metrics, reports).
        history: one dict per epoch (losses, validation metrics, seconds).
        run_dir: the run directory, if any.
    """

    def __init__(self, model, data: Dataset, config: dict, metrics: dict, history: list,
                 run_dir=None):
        from .evaluation import eval_seed, representations
        self.model, self.data, self.config = model, data, config
        self.metrics, self.history = metrics, history
        self.run_dir = pathlib.Path(run_dir) if run_dir is not None else None
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        best = metrics.get("best_epoch", -1)
        # a stochastic model (LGMRec) answers from one draw: the best epoch's test-pass seed
        self.seed = eval_seed(config["seed"], max(int(best), 0), "test")
        model.eval()
        self._reps = representations(model, self.seed)
        self._ann = None  # see use_ann()

    def __repr__(self) -> str:
        test = (self.metrics.get("test") or {}).get("recall@20")
        return (f"TrainedModel({self.config['model']!r} on {self.data.name!r}, best epoch "
                f"{self.metrics.get('best_epoch')}, test recall@20 "
                f"{'n/a' if test is None else f'{test:.4f}'})")

    @property
    def name(self) -> str:
        return self.config["model"]

    # ------------------------------------------------------------------ answers
    def _top(self, score_fn, n: int, seen, k: int, filter_seen: bool):
        """Top-k of ``score_fn(rows[, items=slice])`` for rows 0..n-1, the ``seen`` CSR rows
        masked, ranked by the evaluator's blocked top-k (bounded memory for any catalogue)."""
        import scipy.sparse as sp
        from .evaluation.ranking import rank_topk
        k_eff = min(k, self.data.n_items)
        mask = seen if filter_seen else sp.csr_matrix((n, self.data.n_items), dtype=np.float32)
        ids = np.empty((n, k_eff), dtype=np.int64)
        sc = np.empty((n, k_eff), dtype=np.float32)
        for a, b, top, vals in rank_topk(score_fn, np.arange(n), self.data.n_items, mask, k_eff,
                                         device=self.device, with_scores=True):
            ids[a:b] = top.cpu().numpy()
            sc[a:b] = vals.cpu().numpy()
        short = ~np.isfinite(sc)
        if k_eff < k or short.any():
            ids = np.pad(ids, ((0, 0), (0, k - k_eff)), constant_values=-1)
            sc = np.pad(sc, ((0, 0), (0, k - k_eff)), constant_values=np.nan)
            ids[:, :k_eff][short] = -1
            sc[:, :k_eff][short] = np.nan
            n_short = int((ids == -1).any(1).sum())
            warnings.warn(f"{n_short} of {len(ids)} users have fewer than k={k} items left to "
                          f"recommend; their lists are padded with id -1 (score NaN)",
                          RecommendationWarning, stacklevel=3)
        return ids, sc

    @torch.no_grad()
    def recommend(self, users, k: int = 10, filter_seen: bool = True):
        """Top-``k`` items for known ``users``: (ids, scores), NumPy arrays of shape (n, k).

        Training items are excluded unless ``filter_seen=False``. When a user has fewer than
        ``k`` unseen items the row is padded with id -1 and score NaN, with a
        :class:`RecommendationWarning`.
        """
        from .evaluation.ranking import accepts_items, model_scorer
        u = check_ids(users, "user", self.data.n_users)
        k = check_k(k)
        if self._ann is not None:
            return self._ann_top(self._reps[0][torch.as_tensor(u, device=self.device)],
                                 self.data.train[u] if filter_seen else None, k)
        scorer = model_scorer(self.model, self._reps)
        ut = torch.as_tensor(u, device=self.device)
        if accepts_items(scorer):
            def score(rows, items=None):
                return scorer(ut[rows], items=items)
        else:
            def score(rows):
                return scorer(ut[rows])
        return self._top(score, len(u), self.data.train[u], k, filter_seen)

    @torch.no_grad()
    def recommend_for_history(self, histories, k: int = 10, filter_seen: bool = True):
        """Top-``k`` items for users not in the training data, from their item histories.

        Fold-in: a new user's representation is the mean of the final representations of the
        items in their history (every model here scores by an inner product of final user and
        item representations; for the LightGCN family this is one normalised aggregation step
        of the user–item graph, the same form as a trained user's propagated embedding). The
        history items are excluded unless ``filter_seen=False``. ``histories``: one list of item
        ids per user. Returns (ids, scores) of shape (n, k).
        """
        import scipy.sparse as sp
        k = check_k(k)
        rows = [check_ids(h, "item", self.data.n_items) for h in histories]
        if any(len(r) == 0 for r in rows):
            raise RequestError("every history needs at least one item id")
        item_repr = self._reps[1]
        vec = torch.stack([item_repr[torch.as_tensor(r, device=item_repr.device)].mean(0)
                           for r in rows])
        indptr = np.r_[0, np.cumsum([len(np.unique(r)) for r in rows])]
        indices = np.concatenate([np.unique(r) for r in rows])
        seen = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr),
                             shape=(len(rows), self.data.n_items))

        def score(r, items=None):
            reps = item_repr if items is None else item_repr[items]
            return vec[r] @ reps.T
        return self._top(score, len(rows), seen, k, filter_seen)

    @torch.no_grad()
    def similar_items(self, items, k: int = 10):
        """The ``k`` most similar items to each of ``items`` by cosine of the final item
        representations (the item itself excluded): (ids, scores), arrays of shape (n, k);
        padded with -1 / NaN (and a :class:`RecommendationWarning`) beyond the other items."""
        it = check_ids(items, "item", self.data.n_items)
        k = check_k(k)
        k_eff = min(k, self.data.n_items - 1)
        rep = torch.nn.functional.normalize(self._reps[1].float(), dim=1)
        sims = rep[torch.as_tensor(it, device=rep.device)] @ rep.T
        sims[torch.arange(len(it)), torch.as_tensor(it, device=rep.device)] = -torch.inf
        val, idx = torch.topk(sims, k_eff, dim=1)
        ids = idx.cpu().numpy().astype(np.int64)
        sc = val.cpu().numpy().astype(np.float32)
        if k_eff < k:
            warnings.warn(f"k={k}: there are only {k_eff} other items; lists padded with id -1",
                          RecommendationWarning, stacklevel=2)
            ids = np.pad(ids, ((0, 0), (0, k - k_eff)), constant_values=-1)
            sc = np.pad(sc, ((0, 0), (0, k - k_eff)), constant_values=np.nan)
        return ids, sc

    # ------------------------------------------------------------------ approximate search
    def use_ann(self, index: str = "hnsw", *, m: int = 32, ef_search: int = 256,
                nlist: int | None = None, nprobe: int = 32) -> "TrainedModel":
        """Answer :meth:`recommend` from an approximate inner-product index over the item
        representations (FAISS ``hnsw`` or ``ivf``; ``flat`` is exact) instead of scoring every
        item. For models that score by the inner product of final representations (all of the
        built-in ones); :meth:`ann_recall` measures it against exact ranking. Returns self."""
        from .graphs.knn import faiss_available
        if not faiss_available():
            raise RequestError("approximate search needs FAISS (a dependency of mmrecsys): pip install faiss-cpu")
        from .models.base import Recommender
        if type(self.model).score is not Recommender.score:
            raise RequestError(f"{self.name} scores with its own function, not an inner product of "
                               f"representations: it cannot be served from an ANN index")
        from .graphs.knn import INDEXES, faiss_index
        if index not in INDEXES:
            raise RequestError(f"ann index {index!r}: use hnsw, ivf or flat")
        items = np.ascontiguousarray(self._reps[1].detach().float().cpu().numpy())
        self._ann = faiss_index(items, index, nlist=nlist, nprobe=nprobe, m=m,
                                ef_search=ef_search)
        return self

    def _ann_top(self, vectors: torch.Tensor, seen, k: int):
        """Top-k from the ANN index: ask for k + (most seen items of these users) candidates,
        drop the seen ones, keep k."""
        q = np.ascontiguousarray(vectors.detach().float().cpu().numpy())
        n_seen = np.diff(seen.indptr) if seen is not None else np.zeros(len(q), dtype=np.int64)
        want = int(min(self.data.n_items, k + (n_seen.max() if len(n_seen) else 0)))
        if hasattr(self._ann, "hnsw"):
            self._ann.hnsw.efSearch = max(self._ann.hnsw.efSearch, want)
        vals, ids = self._ann.search(q, want)
        keep = ids >= 0
        if seen is not None and seen.nnz:
            n_items = self.data.n_items
            seen_keys = np.repeat(np.arange(len(q)), n_seen) * n_items + seen.indices
            cand = np.arange(len(q))[:, None] * n_items + np.maximum(ids, 0)
            keep &= ~np.isin(cand, seen_keys)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]     # kept first, in rank order
        out_i = np.take_along_axis(ids, order, 1).astype(np.int64)
        out_v = np.take_along_axis(vals, order, 1).astype(np.float32)
        kept = np.take_along_axis(keep, order, 1)
        out_i[~kept], out_v[~kept] = -1, np.nan
        if out_i.shape[1] < k:
            out_i = np.pad(out_i, ((0, 0), (0, k - out_i.shape[1])), constant_values=-1)
            out_v = np.pad(out_v, ((0, 0), (0, k - out_v.shape[1])), constant_values=np.nan)
        if (out_i < 0).any():
            warnings.warn(f"{int((out_i < 0).any(1).sum())} of {len(q)} users got fewer than k={k} "
                          f"items from the ANN index; padded with id -1", RecommendationWarning,
                          stacklevel=3)
        return out_i, out_v

    def ann_recall(self, k: int = 10, users=None, sample: int = 2000, seed: int = 0) -> float:
        """Recall@k of the ANN answers against exact ranking (mean share of the exact top-k
        found) over ``users`` (default: a seeded sample of ``sample`` users)."""
        if self._ann is None:
            raise RequestError("no ANN index: call use_ann() first")
        if users is None:
            rng = np.random.default_rng(seed)
            users = np.sort(rng.choice(self.data.n_users, min(sample, self.data.n_users),
                                       replace=False))
        ann, self._ann = self._ann, None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RecommendationWarning)
                exact, _ = self.recommend(users, k)
        finally:
            self._ann = ann
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecommendationWarning)
            approx, _ = self.recommend(users, k)
        hits = ((approx[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)).any(1).sum()
        return float(hits / max(1, (exact >= 0).sum()))

    def recommend_all(self, k: int = 10, path=None, *, filter_seen: bool = True,
                      chunk_size: int = 4096):
        """Every user's top-``k``, written to ``path`` (``.parquet`` via pyarrow, else TSV:
        ``user``, ``rank``, ``item``, ``score``) in user chunks; returns the path, or the
        (ids, scores) arrays when ``path`` is None."""
        k = check_k(k)
        parts_ids, parts_sc = [], []
        for start in range(0, self.data.n_users, chunk_size):
            users = np.arange(start, min(start + chunk_size, self.data.n_users))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RecommendationWarning)
                ids, sc = self.recommend(users, k, filter_seen)
            parts_ids.append(ids)
            parts_sc.append(sc)
        ids, sc = np.concatenate(parts_ids), np.concatenate(parts_sc)
        if path is None:
            return ids, sc
        path = pathlib.Path(path)
        users = np.repeat(np.arange(len(ids)), k)
        ranks = np.tile(np.arange(1, k + 1), len(ids))
        keep = ids.ravel() >= 0
        cols = {"user": users[keep], "rank": ranks[keep], "item": ids.ravel()[keep],
                "score": sc.ravel()[keep]}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise ImportError("writing Parquet needs pyarrow: pip install 'mmrecsys[parquet]' "
                                  "(or give a .tsv path)") from None
            pq.write_table(pa.table(cols), path)
        else:
            from .io import atomic_write_text
            lines = ["user\trank\titem\tscore"] + [
                f"{u}\t{r}\t{i}\t{s:.6g}" for u, r, i, s in zip(*cols.values())]
            atomic_write_text(path, "\n".join(lines) + "\n")
        return path

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> pathlib.Path:
        """Write a run directory (config.yaml, best.pt, metrics.json, history.csv and the
        training run's topk_test.tsv when there is one); ``mmrecsys.load(path)`` reads it back."""
        from .config import dump_yaml
        from .io import atomic_torch_save, atomic_write_json, atomic_write_text
        from .train.trainer import _write_history
        path = pathlib.Path(path)
        if self.run_dir is not None and path.resolve() == self.run_dir.resolve():
            return path
        if (path / "best.pt").exists() or (path / "last.pt").exists():
            raise RunError(f"{path} already holds a run; choose another folder")
        path.mkdir(parents=True, exist_ok=True)
        cfg = dict(self.config)
        if isinstance(cfg.get("data"), str) and cfg["data"] not in ("synthetic",) and \
                self.data.path is not None:
            cfg["data"] = str(pathlib.Path(self.data.path).resolve())
        atomic_write_text(path / "config.yaml", dump_yaml(cfg))
        atomic_torch_save(path / "best.pt", self.model.state_dict())
        atomic_write_json(path / "metrics.json", self.metrics)
        if self.history:
            _write_history(path / "history.csv", self.history)
        if self.run_dir is not None and (self.run_dir / "topk_test.tsv").is_file():
            shutil.copyfile(self.run_dir / "topk_test.tsv", path / "topk_test.tsv")
        self.run_dir = path
        return path


__all__ = ["load_dataset", "fit", "load", "TrainedModel", "RecommendationWarning", "check_ids",
           "check_k"]
