"""The shared trainer: sampling → step → scheduled lr → evaluation → early stopping → run files.

MMRec's loop (``enoche/MMRec``, ``src/common/trainer.py``): Adam(W) with ``lr_e = lr · a^(e/b)``
stepped per epoch; validation every ``eval_step`` epochs; an evaluation improves when one of
``valid_metrics`` is strictly above its running maximum, compared after rounding to
``valid_round`` decimals (4 in MMRec and REARM; ``null`` compares raw floats, as MMHCL's
``main.py``); training stops when the number of consecutive non-improving evaluations exceeds
``patience``. Test is evaluated only when validation improves (the reported numbers equal
MMRec's test-at-best-validation, at half the cost), and the weights of that epoch are kept as
the best weights. A run that would end without any evaluation (fewer epochs than
``eval_step``) evaluates its last epoch.

One ranking per reported result: the best epoch's test pass produces the test metrics, the
per-group and item-subset reports and ``topk_test.tsv`` together; nothing is re-ranked after
training. Each evaluation pass draws the inference noise of a stochastic model (LGMRec) from
its own seed, ``eval_seed(seed, epoch, split)``, so ``mmrecsys evaluate`` replays the best
test pass exactly.

A run directory receives ``config.yaml``, ``history.csv``, ``best.pt`` (weights), ``last.pt``
(everything needed to resume: weights, optimiser, scheduler, RNG states, stopping state),
``metrics.json`` and ``topk_test.tsv``. All writes are atomic. ``resume=True`` continues from
``last.pt`` and ends exactly where an uninterrupted run would have.
"""
from __future__ import annotations

import copy
import csv
import io
import math
import pathlib
import platform
import random
import time
import warnings
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import dump_yaml, model_kwargs, resolve_config, validate_config
from ..data import Dataset
from ..errors import ConfigError, RunError
from ..evaluation import (EvalResult, Ranking, eval_seed, evaluate, heldout_users, is_stochastic,
                          items_with_train_degree, mask_name, rank_users, user_group_report)
from ..graphs import GraphCache
from ..graphs.cache import default_cache_dir
from ..io import atomic_torch_save, atomic_write_json, atomic_write_text
from ..models import get_model_class
from .sampler import make_sampler


def resolve_device(device: str | None) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; ConfigError otherwise."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {device}: not a device (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device}: CUDA is not available on this machine; use cpu")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_model(data: Dataset, cfg: dict, device) -> torch.nn.Module:
    """The configured model on ``data``; a constructor's ValueError (a bad hyperparameter or a
    dataset the model cannot use) and running out of memory become a ConfigError."""
    cls = get_model_class(cfg["model"])
    cache = GraphCache(cfg.get("cache_dir") or default_cache_dir())
    try:
        model = cls(data, cache, **model_kwargs(cls, cfg))
        return model.to(device)
    except ValueError as e:
        raise ConfigError(f"{cls.name}: {e}") from e
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise ConfigError(f"{cls.name} on {data.name} ({data.n_users:,} users, {data.n_items:,} "
                          f"items) needs more memory than there is ({str(e).splitlines()[0][:200]});"
                          f" lower its sizes (e.g. embedding_size) or use a larger device") from e
    except RuntimeError as e:
        if "allocate" not in str(e) and "out of memory" not in str(e):
            raise
        raise ConfigError(f"{cls.name} on {data.name} ({data.n_users:,} users, {data.n_items:,} "
                          f"items) needs more memory than there is ({str(e).splitlines()[0][:200]});"
                          f" lower its sizes (e.g. embedding_size) or use a larger device") from e


def versions() -> dict[str, str]:
    """Versions recorded in a run's config.yaml (key ``versions``, ignored when it is read)."""
    return {"mmrecsys": str(__version__), "torch": str(torch.__version__), "numpy": str(np.__version__),
            "python": platform.python_version()}


#: the files a run writes into its directory
RUN_FILES = ("config.yaml", "history.csv", "best.pt", "last.pt", "metrics.json", "topk_test.tsv")


def _accept_run_dir(run: pathlib.Path, resume: bool) -> tuple[bool, bool]:
    """Check that ``run`` may be written, before anything is written to it.

    Returns (fresh, created): whether it held nothing, and whether it did not exist. A
    directory holding anything is refused unless ``resume``.
    """
    if run.exists() and not run.is_dir():
        raise RunError(f"{run} is a file, not a run directory; choose another --out")
    existing = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    if existing and not resume:
        if any(n in RUN_FILES for n in existing):
            raise RunError(f"{run} already holds a run ({', '.join(existing[:6])}); pass "
                           f"--resume {run} to continue it, or choose another --out directory")
        raise RunError(f"{run} is not empty ({', '.join(existing[:6])}"
                       f"{', …' if len(existing) > 6 else ''}); choose a new or empty --out "
                       f"directory")
    created = not run.exists()
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the run directory {run}: {e.strerror or e}") from None
    return not existing, created


def _remove_unstarted_run(run: pathlib.Path, created: bool) -> None:
    """After a failure before the first checkpoint: remove what the run wrote (it cannot be
    resumed), and the directory itself if this run created it."""
    if (run / "last.pt").exists():
        return
    for name in RUN_FILES:
        (run / name).unlink(missing_ok=True)
    for tmp in run.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    if created:
        try:
            run.rmdir()
        except OSError:
            pass


def _load_checkpoint(path: pathlib.Path, device):
    """torch.load with weights_only=True: tensors and plain data only, never code."""
    try:
        return torch.load(path, weights_only=True, map_location=device)
    except Exception as e:  # noqa: BLE001 (unpickling, truncated file, foreign format)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise RunError(f"{path} cannot be loaded safely ({first}); it is damaged or was not "
                       f"written by mmrecsys. Restore it, or start a new run") from None


def _optimizer(model, cfg):
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg["optimizer"]]
    try:  # the fused kernels are several times faster for large parameter sets (e.g. REARM)
        opt = opt_cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = opt_cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    a, b = cfg["lr_scheduler"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: a ** (e / b))
    return opt, sched


class EarlyStopping:
    """Running maxima of the validation metrics and a patience counter.

    An evaluation improves when any metric, rounded to ``round_to`` decimals (``None``: raw
    floats), is strictly above its running maximum (initially −1). Stop once more than
    ``patience`` consecutive evaluations did not improve.
    """

    def __init__(self, metrics, patience, round_to: int | None = 4):
        self.metrics = list(metrics)
        self.patience = patience
        self.round_to = round_to
        self.best = {m: -1.0 for m in self.metrics}
        self.bad = 0

    def update(self, valid: dict) -> bool:
        improved = False
        for m in self.metrics:
            v = float(valid[m]) if self.round_to is None else round(valid[m], self.round_to)
            if v > self.best[m]:
                self.best[m] = v
                improved = True
        self.bad = 0 if improved else self.bad + 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad > self.patience

    def state_dict(self):
        return {"best": dict(self.best), "bad": self.bad}

    def load_state_dict(self, s):
        self.best, self.bad = dict(s["best"]), s["bad"]


def prepare_data(data: Dataset, cfg: dict) -> Dataset:
    """The dataset as a run sees it: modality selection and evaluation population.

    ``modalities`` (a list of names; empty = all, sorted by file name) selects and orders the
    feature matrices; ``keep_users_without_train`` restores the held-out rows of users with no
    training row that loading dropped (the MMHCL population).
    """
    if cfg.get("keep_users_without_train"):
        data = data.with_users_without_train()
    if cfg.get("modalities"):
        data = data.select_modalities(cfg["modalities"])
    return data


class EpochEvaluator:
    """The evaluation passes of one epoch's weights: ``ev("valid")``, ``ev("test")``.

    A deterministic model ranks every held-out user once and both splits read that ranking
    (their masks are equal unless ``mask_valid_at_test``). A stochastic model (LGMRec) ranks
    each split in its own pass with its own noise seed, ``eval_seed(seed, epoch, split)``, as the
    official code runs validation and test separately. ``mmrecsys evaluate`` builds the same
    evaluator for the best epoch, so it reproduces the reported test metrics exactly.
    """

    def __init__(self, net, data: Dataset, cfg: dict, epoch: int, device=None):
        self.net, self.data, self.cfg, self.epoch, self.device = net, data, cfg, epoch, device
        self.kw = dict(topk=cfg["topk"], mask_valid_at_test=cfg["mask_valid_at_test"],
                       chunk_size=cfg["eval_batch_size"], extra_metrics=cfg["extra_metrics"])
        self._shared: Ranking | None = None

    def __call__(self, split: str, keep_topk: bool = False) -> EvalResult:
        ranking = None
        if not is_stochastic(self.net) and not self.cfg["mask_valid_at_test"]:
            if self._shared is None:
                self._shared = rank_users(self.net, self.data, heldout_users(self.data),
                                          max(self.cfg["topk"]), "train",
                                          chunk_size=self.cfg["eval_batch_size"],
                                          device=self.device)
            ranking = self._shared
        return evaluate(self.net, self.data, split, ranking=ranking, keep_topk=keep_topk,
                        seed=eval_seed(self.cfg["seed"], self.epoch, split), device=self.device,
                        **self.kw)


def item_subsets(data: Dataset) -> dict[str, np.ndarray]:
    """Named item subsets reported beside the test metrics (when the data has them)."""
    out = {}
    sparse = items_with_train_degree(data, 1, 2)
    if len(sparse):
        out["test_items_1_2_train"] = sparse
    for key, attr in (("test_new_items", "new_items"), ("test_cold_items", "cold_items")):
        ids = getattr(data, attr, None)
        if ids is not None and len(ids):
            out[key] = np.asarray(ids, dtype=np.int64)
    return out


def reports_of_test_pass(net, data: Dataset, cfg: dict, result: EvalResult) -> dict[str, Any]:
    """Per-group and item-subset reports read from one test pass's ranked lists (no re-ranking)."""
    ranking = Ranking(result.users, torch.as_tensor(result.topk),
                      mask_name("test", cfg["mask_valid_at_test"]))
    kw = dict(topk=cfg["topk"], mask_valid_at_test=cfg["mask_valid_at_test"],
              chunk_size=cfg["eval_batch_size"], extra_metrics=cfg["extra_metrics"])
    report: dict[str, Any] = {"test_user_groups": user_group_report(result, data)}
    for key, items in item_subsets(data).items():
        r = evaluate(net, data, "test", item_subset=items, ranking=ranking, **kw)
        report[key] = {"users": int(len(r.users)), "items": int(len(items)), **r.metrics}
    return report


def _fmt(d: dict, keys=("recall@20", "ndcg@20")) -> str:
    return " ".join(f"{k} {d[k]:.4f}" for k in keys if k in d)


def fit(data: Dataset, model: str | None = None, overrides: dict | None = None, run_dir=None,
        device: str | None = "cpu", progress: bool = False, config: dict | None = None,
        resume: bool = False, log=print, file_cfg: dict | None = None,
        log_every: int = 1) -> dict[str, Any]:
    """Train a model with early stopping; see :func:`_fit` for the arguments and the result.

    The run directory is accepted before anything is written to it: a directory holding files
    is refused unless ``resume``. A run that fails before its first checkpoint removes what it
    wrote (it could not be resumed). ``log_every``: print every n-th epoch line (0: none).
    """
    run = pathlib.Path(run_dir) if run_dir is not None else None
    fresh = created = False
    if run is not None:
        fresh, created = _accept_run_dir(run, resume)
    try:
        return _fit(data, model, overrides, run, device, progress, config, resume, log, file_cfg,
                    log_every)
    except BaseException:
        if run is not None and fresh:
            _remove_unstarted_run(run, created)
        raise


def _fit(data: Dataset, model: str | None = None, overrides: dict | None = None, run_dir=None,
         device: str | None = "cpu", progress: bool = False, config: dict | None = None,
         resume: bool = False, log=print, file_cfg: dict | None = None,
         log_every: int = 1) -> dict[str, Any]:
    """Train a model with early stopping; return a summary dict (see module docstring).

    Either ``config`` (a resolved configuration, e.g. from a run directory) or ``model`` plus
    ``file_cfg``/``overrides`` is given. Returns keys ``best_epoch``, ``valid``, ``test``,
    ``history``, ``model`` (best weights loaded), ``config`` and ``run_dir``.
    """
    if config is None:
        cls = get_model_class(model)
        config = resolve_config(cls, data.name, file_cfg, overrides)
        config["model"] = cls.name
        config.setdefault("data", str(data.path) if data.path else data.name)
    cfg = config
    validate_config(cfg, n_items=data.n_items, model_cls=get_model_class(cfg["model"]))
    log = log or (lambda *a, **k: None)
    data = prepare_data(data, cfg)
    dev = resolve_device(device)
    run = pathlib.Path(run_dir) if run_dir is not None else None

    seed_everything(cfg["seed"])
    t_build = time.perf_counter()
    net = build_model(data, cfg, dev)
    build_seconds = time.perf_counter() - t_build
    opt, sched = _optimizer(net, cfg)
    sampler = make_sampler(data, cfg["sampler"], cfg["batch_size"], cfg["negatives_from"],
                           cfg["neg_exclude_heldout"])
    rng = np.random.default_rng(cfg["seed"])
    stopper = EarlyStopping(cfg["valid_metrics"], cfg["patience"], cfg["valid_round"])
    history: list[dict] = []
    best: dict[str, Any] = {"epoch": -1, "valid": None, "test": None, "report": {}}
    best_state = None
    start_epoch = 0
    stopped_early = False
    fp = data.fingerprint(with_features=True)
    if resume and run is not None and (run / "last.pt").exists():
        ck = _load_checkpoint(run / "last.pt", dev)
        if ck.get("dataset_fingerprint", fp) != fp:
            raise RunError(f"the dataset {data.path or data.name} differs from the one {run} was "
                           f"trained on (content fingerprint {fp}, the run's "
                           f"{ck['dataset_fingerprint']}); a run resumes only on the same data. "
                           f"Restore the data, or start a new run (--out)")
        if ck["epoch"] + 1 > cfg["epochs"]:
            raise RunError(f"epochs={cfg['epochs']} is below the {ck['epoch'] + 1} epochs {run} has "
                           f"already run; give at least {ck['epoch'] + 1}")
        try:
            net.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            rng.bit_generator.state = ck["numpy_rng"]
            torch.set_rng_state(ck["torch_rng"])
            random.setstate(tuple(ck["python_rng"]))
            stopper.load_state_dict(ck["stopper"])
            history, best, start_epoch = ck["history"], ck["best"], ck["epoch"] + 1
            best.setdefault("report", {})
            stopped_early = bool(ck.get("stopped_early", False))
            if (run / "best.pt").exists():
                best_state = _load_checkpoint(run / "best.pt", dev)
                own = net.state_dict()
                if {k: tuple(v.shape) for k, v in best_state.items()} != {
                        k: tuple(v.shape) for k, v in own.items()}:
                    raise ValueError("best.pt holds other weights than the model's")
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise RunError(f"{run}: its checkpoint does not fit the model built from its "
                           f"config.yaml ({type(e).__name__}: {first}); was config.yaml edited? "
                           f"Restore it, or start a new run (--out)") from None
        if ck.get("finished") and (stopped_early or start_epoch >= cfg["epochs"]):
            start_epoch = cfg["epochs"]  # finished: rewrite its results (a longer run goes on)
            log(f"{run} has finished; nothing to train")
        else:
            log(f"resumed {run} at epoch {start_epoch} of {cfg['epochs']}")
    elif resume and run is not None:
        warnings.warn(f"{run} holds no checkpoint (last.pt) yet: starting the run over from "
                      f"epoch 0 with its configuration", stacklevel=2)

    if run is not None:  # written once the model is built and a resumed run's checkpoint accepted
        vers = cfg.get("versions") or versions()
        if vers != versions():
            log(f"note: {run} was started with {vers}; now running with {versions()}")
        atomic_write_text(run / "config.yaml",
                          dump_yaml({**{k: v for k, v in cfg.items() if k != "versions"},
                                     "versions": vers}))

    preset = cfg.get("preset", "none")
    log(f"preset: {preset}" if preset != "none" else
        f"preset: none (no preset of {cfg['model']} matches dataset {data.name!r})")
    if data.features:
        log("modalities: " + ", ".join(f"{m} ({x.shape[1]}-d)" for m, x in data.features.items()))
    else:
        log("modalities: none")
    log(f"{type(net).__name__} on {data.name}: {sum(p.numel() for p in net.parameters()):,} "
        f"parameters, device {dev}, built in {build_seconds:.1f}s")
    epochs_bar = tqdm(range(start_epoch, cfg["epochs"]), desc="epochs", disable=not progress,
                      initial=start_epoch, total=cfg["epochs"], dynamic_ncols=True)
    finished = False
    for epoch in epochs_bar:
        t0 = time.perf_counter()
        net.train()
        net.pre_epoch(epoch)
        sums: dict[str, float] = {}
        n_batches = 0
        for users, pos, neg in tqdm(sampler.epoch(rng), total=len(sampler), desc=f"epoch {epoch}",
                                    leave=False, disable=not progress, dynamic_ncols=True):
            u = torch.as_tensor(users, device=dev)
            p = torch.as_tensor(pos, device=dev)
            n = torch.as_tensor(neg, device=dev)
            terms = net.loss(u, p, n)
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_batches += 1
        sched.step()
        train_seconds = time.perf_counter() - t0
        total_loss = sum(sums.values()) / max(n_batches, 1)
        row = {"epoch": epoch, "loss": total_loss,
               **{f"loss_{k}": v / max(n_batches, 1) for k, v in sums.items()},
               "train_seconds": round(train_seconds, 3)}
        if not math.isfinite(total_loss):
            log(f"epoch {epoch}: loss is {total_loss}; stopping (best results so far are kept)")
            history.append(row)
            stopped_early = True
            finished = True
            break
        msg = f"epoch {epoch:4d} | loss {total_loss:.4f} | train {train_seconds:.2f}s"
        evaluated_before = any("eval_seconds" in r for r in history)
        if (epoch + 1) % cfg["eval_step"] == 0 or (epoch + 1 == cfg["epochs"] and not evaluated_before):
            t1 = time.perf_counter()
            ev = EpochEvaluator(net, data, cfg, epoch, dev)
            valid = ev("valid").metrics
            improved = stopper.update(valid)
            if improved:
                test_res = ev("test", keep_topk=True)
                best = {"epoch": epoch, "valid": valid, "test": test_res.metrics,
                        "report": reports_of_test_pass(net, data, cfg, test_res)}
                best_state = copy.deepcopy(net.state_dict())
                if run is not None:  # the best weights, their ranked lists and metrics together
                    atomic_torch_save(run / "best.pt", best_state)
                    write_topk(run / "topk_test.tsv", test_res)
                    atomic_write_json(run / "metrics.json", summarize(
                        cfg, data, best, len(history) + 1, False, build_seconds, fp))
            eval_seconds = time.perf_counter() - t1
            row.update({f"valid_{k}": v for k, v in valid.items()})
            row["eval_seconds"] = round(eval_seconds, 3)
            msg += (f" | valid {_fmt(valid)}{' *' if improved else ''} | eval {eval_seconds:.2f}s")
            if stopper.should_stop:
                stopped_early = True
                finished = True
        history.append(row)
        if log_every and ((epoch + 1) % log_every == 0 or epoch + 1 == cfg["epochs"] or finished):
            (epochs_bar.write if progress else log)(msg)
        if epoch + 1 == cfg["epochs"]:
            finished = True
        if run is not None and (finished or (epoch + 1) % cfg["checkpoint_every"] == 0):
            _write_history(run / "history.csv", history)
            atomic_torch_save(run / "last.pt", {
                "model": net.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                "stopper": stopper.state_dict(), "history": history, "best": best,
                "epoch": epoch, "finished": finished, "stopped_early": stopped_early,
                "dataset_fingerprint": fp})
        if finished:
            break
    epochs_bar.close()

    if best_state is not None:
        net.load_state_dict(best_state)
    summary = summarize(cfg, data, best, len(history), stopped_early, build_seconds, fp)
    if run is not None:
        _write_history(run / "history.csv", history)
        atomic_write_json(run / "metrics.json", summary)
    log(f"best epoch {best['epoch']}: valid {_fmt(best['valid'] or {})} | test "
        f"{_fmt(best['test'] or {})}")
    return {**summary, "history": history, "model": net, "config": cfg, "run_dir": run}


def summarize(cfg, data, best, epochs_run, stopped_early, build_seconds, fingerprint) -> dict:
    """The content of metrics.json."""
    return {"model": cfg["model"], "dataset": data.name, "best_epoch": best["epoch"],
            "epochs_run": epochs_run, "stopped_early": stopped_early,
            "valid": best["valid"], "test": best["test"],
            "graph_build_seconds": round(build_seconds, 3),
            "dataset_fingerprint": fingerprint, **best["report"]}


def write_topk(path, result) -> None:
    buf = io.StringIO()
    for u, items in zip(result.users, result.topk):
        buf.write(f"{u}\t" + "\t".join(map(str, items)) + "\n")
    atomic_write_text(path, buf.getvalue())


def _write_history(path, history) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(path, buf.getvalue())
