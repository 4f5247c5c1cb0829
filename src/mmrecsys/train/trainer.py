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

import contextlib

import copy
import csv
import functools
import io
import math
import pathlib
import platform
import random
import time
import warnings
import weakref
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import dump_yaml, model_kwargs, run_config, validate_config
from ..data import Dataset
from ..errors import ConfigError, RunError
from ..evaluation import (EvalResult, Ranking, eval_seed, evaluate, heldout_users, is_stochastic,
                          items_with_train_degree, mask_name, rank_users, user_group_report)
from ..graphs import GraphCache
from ..graphs.cache import default_cache_dir
from ..io import atomic_torch_save, atomic_write_json, atomic_write_text
from ..models import get_model_class
from ..models.layers import ROW_STEPS
from ..matmul import cpu_matmul, fixed_shape_products
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


def _distributed() -> tuple[int, int]:
    """(world size, rank) of an initialised ``torch.distributed`` group, else (1, 0)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def init_distributed(device: str | None = None) -> tuple[int, int]:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, NCCL on CUDA. Returns (world, rank); (1, 0)
    when not launched by torchrun."""
    import os

    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 1, 0
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device not in ("cpu",)
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_world_size(), dist.get_rank()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_model(data: Dataset, cfg: dict, device) -> torch.nn.Module:
    """The configured model on ``data``; a constructor's ValueError (a bad hyperparameter or a
    dataset the model cannot use) and running out of memory become a ConfigError."""
    from ..graphs import knn_settings
    cls = get_model_class(cfg["model"])
    cache = GraphCache(cfg.get("cache_dir") or default_cache_dir())
    try:
        with knn_settings(cfg.get("knn_backend", "faiss"), cfg.get("knn_index", "flat")):
            model = cls(data, cache, **model_kwargs(cls, cfg))
        model.train_batch_size = cfg.get("batch_size")
        model.train_sampler = cfg.get("sampler")
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


def _optimizer(model, cfg, world: int = 1):
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg["optimizer"]]
    try:  # the fused kernels are several times faster for large parameter sets (e.g. REARM)
        opt = opt_cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = opt_cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if world == 1 and cfg["step_in_backward"] > 0:  # data-parallel: sum the gradients first
        step_in_backward(opt, cfg["step_in_backward"])
    a, b = cfg["lr_scheduler"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: a ** (e / b))
    return opt, sched


def step_in_backward(opt: torch.optim.Optimizer, min_numel: int) -> list:
    """Let ``opt`` update each parameter of at least ``min_numel`` values inside backward, as
    soon as its gradient is complete, and free that gradient at once.

    The update is the one ``opt.step()`` would make (same state, same hyper-parameters, the same
    per-element arithmetic), only earlier: autograd runs a leaf's gradient accumulation after
    every node that uses it, so the value is not needed by backward any more (an in-place
    update of a tensor backward still needs would raise autograd's version-counter error, never
    pass silently). ``opt.step()`` after backward then updates the remaining parameters (the
    large ones have no gradient left). What it saves is memory: the large gradients (REARM's
    trainable feature tables, about 1.1 GB on Clothing) are never all alive together. A table
    read through :func:`~mmrecsys.models.layers.project_table` goes further with Adam(W): its
    gradient is computed and applied a block of rows at a time (:class:`AdamRowStep`), so it
    never exists whole. Not for data-parallel training, where gradients are summed over
    processes before the step. Returns the hook handles.
    """
    opt_ref = weakref.ref(opt)  # a strong one would make a cycle (parameter → hook → optimiser →
    # parameter) that keeps a finished run's weights and moments (GPU memory) until gc runs

    def hook(index, p):
        opt = opt_ref()
        if opt is None or p.grad is None:  # the run is over; or the gradient went block by
            return                         # block into the optimiser
        if p in ROW_STEPS and ROW_STEPS[p].used:
            raise RuntimeError(f"a feature table {tuple(p.shape)} read through project_table was "
                               f"also read elsewhere; its optimiser step would be applied twice")
        groups = opt.param_groups  # read now: load_state_dict replaces the group dicts
        opt.param_groups = [{**groups[index], "params": [p]}]  # step this one parameter only
        try:
            opt.step()
        finally:
            opt.param_groups = groups
        p.grad = None

    handles = []
    for i, g in enumerate(opt.param_groups):
        for p in g["params"]:
            if p.numel() < min_numel:
                continue
            handles.append(p.register_post_accumulate_grad_hook(functools.partial(hook, i)))
            if isinstance(opt, torch.optim.Adam) and not g["amsgrad"] and p.dim() == 2:
                ROW_STEPS[p] = AdamRowStep(opt, i, p)
    return handles


class AdamRowStep:
    """Adam(W)'s step of one 2-d parameter applied a block of rows at a time, with the
    optimiser's own state and hyper-parameters (the update ``opt.step()`` makes, per element).

    ``step(blocks)`` takes (start, stop, gradient of rows start:stop) blocks covering the rows
    once, updates each block as it comes and then counts the step; rows not covered are not
    updated. The table must be read once per backward pass (a second read would make a second
    step instead of one with the summed gradient: refused).
    """

    def __init__(self, opt: torch.optim.Adam, index: int, param: torch.Tensor):
        self._opt = weakref.ref(opt)      # the registry must not keep a finished run alive
        self._param = weakref.ref(param)
        self.index = index
        self.used = False                 # read through project_table at least once
        self._task = None                 # the backward pass of the last step

    def read(self) -> bool:
        """A forward read of the table: whether this step applies to it (False once the
        optimiser is gone: then the table's gradient takes the ordinary path)."""
        if self._opt() is None:
            return False
        self.used = True
        return True

    def __call__(self, blocks) -> None:
        from torch.optim.adam import adam
        from torch.optim.optimizer import _get_scalar_dtype
        task_id = getattr(torch._C, "_current_graph_task_id", None)   # private; -1 outside backward
        task = task_id() if task_id is not None else -1
        if task != -1 and task == self._task:
            raise RuntimeError("a feature table was read twice through project_table in one "
                               "step; read it once and index the result")
        self._task = task
        opt, p = self._opt(), self._param()
        group = opt.param_groups[self.index]
        state = opt.state[p]
        if not state:   # as Adam._init_group
            fused = bool(group["fused"])
            state["step"] = (torch.zeros((), dtype=_get_scalar_dtype(is_fused=fused), device=p.device)
                             if group["capturable"] or fused
                             else torch.tensor(0.0, dtype=_get_scalar_dtype()))
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            for s, e, g in blocks:
                adam([p[s:e]], [g], [m[s:e]], [v[s:e]], [], [step.clone()],
                     foreach=group["foreach"], capturable=group["capturable"],
                     differentiable=False, fused=group["fused"],
                     decoupled_weight_decay=group.get("decoupled_weight_decay", False),
                     amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                     weight_decay=group["weight_decay"], eps=group["eps"],
                     maximize=group["maximize"])
            step += 1


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
        # every product of a pass has a shape fixed by the dataset (representations, score
        # blocks of eval_batch_size users), the same at every epoch
        with cpu_matmul(self.cfg.get("cpu_matmul", "auto"), self.device), fixed_shape_products():
            return self._evaluate(split, keep_topk)

    def _evaluate(self, split: str, keep_topk: bool) -> EvalResult:
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
        log_every: int = 1, on_evaluate=None) -> dict[str, Any]:
    """Train a model with early stopping; return a summary dict.

    Either ``config`` (a resolved configuration, e.g. from a run directory) or ``model`` plus
    ``file_cfg``/``overrides`` is given. Returns the content of metrics.json plus ``history``,
    ``model`` (best weights loaded), ``config`` and ``run_dir``.

    The run directory is accepted before anything is written to it: a directory holding files
    is refused unless ``resume``. A run that fails before its first checkpoint removes what it
    wrote (it could not be resumed). ``log_every``: print every n-th epoch line (0: none).
    ``on_evaluate(epoch, valid_metrics)``: called after each evaluation, once the epoch's files
    are written; an exception it raises stops the run (its run directory stays resumable from
    the last checkpoint) and propagates.
    """
    if config is None:
        config = run_config(model, data, file_cfg, overrides)
    if _distributed()[1] != 0:  # data-parallel: process 0 alone writes the run directory
        run_dir = None
    run = pathlib.Path(run_dir) if run_dir is not None else None
    fresh = created = False
    if run is not None:
        fresh, created = _accept_run_dir(run, resume)
    try:
        trainer = Trainer(data, config, run, device=device, progress=progress, log=log,
                          log_every=log_every)
        trainer.on_evaluate = on_evaluate
        if resume and run is not None:
            trainer.resume()
        return trainer.fit()
    except BaseException:
        if run is not None and fresh:
            _remove_unstarted_run(run, created)
        raise


class Trainer:
    """MMRec's training loop with its steps named, in the spirit of RecBole's ``Trainer``.

    ``Trainer(data, cfg, run_dir)`` sets up (validates the configuration, prepares the data,
    seeds, builds the model, optimiser, scheduler, sampler and early stopping, in that order, so
    that a seed fixes every draw); :meth:`resume` restores a run directory's ``last.pt``;
    :meth:`fit` runs :meth:`train_epoch`, :meth:`evaluate` (every ``eval_step`` epochs) and
    :meth:`checkpoint` until early stopping or ``epochs``, then :meth:`report`.
    """

    def __init__(self, data: Dataset, cfg: dict, run_dir=None, *, device: str | None = "cpu",
                 progress: bool = False, log=print, log_every: int = 1):
        validate_config(cfg, n_items=data.n_items, model_cls=get_model_class(cfg["model"]))
        self.cfg = cfg
        self.world, self.rank = _distributed()
        if self.rank != 0:  # one process writes the run directory and the log
            run_dir, log, progress = None, None, False
        self.log = log or (lambda *a, **k: None)
        self.log_every, self.progress = log_every, progress
        self.data = prepare_data(data, cfg)
        self.device = resolve_device(device)
        if self.world > 1 and self.device.type == "cuda" and self.device.index is None:
            import os
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.run = pathlib.Path(run_dir) if run_dir is not None else None
        seed_everything(cfg["seed"])
        t_build = time.perf_counter()
        self.net = build_model(self.data, cfg, self.device)
        self.build_seconds = time.perf_counter() - t_build
        self.opt, self.sched = _optimizer(self.net, cfg, self.world)
        self.sampler = make_sampler(self.data, cfg["sampler"], cfg["batch_size"],
                                    cfg["negatives_from"], cfg["neg_exclude_heldout"],
                                    per_user=int(getattr(self.net, "samples_per_user", 40)))
        self.rng = np.random.default_rng(cfg["seed"])
        self.stopper = EarlyStopping(cfg["valid_metrics"], cfg["patience"], cfg["valid_round"])
        self.history: list[dict] = []
        self.best: dict[str, Any] = {"epoch": -1, "valid": None, "test": None, "report": {}}
        #: the best weights: a state dict, or the path of best.pt when there is a run directory
        self.best_state: dict | pathlib.Path | None = None
        self.start_epoch = 0
        self.stopped_early = False
        self.finished = False
        self.fingerprint = self.data.fingerprint(with_features=True)
        self._resumed = False
        self.on_evaluate = None  # optional callable(epoch, valid_metrics), after each evaluation

    # ------------------------------------------------------------------ resume
    def resume(self) -> None:
        """Restore the run directory's last.pt (weights, optimiser, scheduler, RNG states,
        stopping state, history); starts over, with a warning, when there is none yet."""
        run, cfg, fp = self.run, self.cfg, self.fingerprint
        if not (run / "last.pt").exists():
            warnings.warn(f"{run} holds no checkpoint (last.pt) yet: starting the run over from "
                          f"epoch 0 with its configuration", stacklevel=3)
            return
        ck = _load_checkpoint(run / "last.pt", self.device)
        if ck.get("dataset_fingerprint", fp) != fp:
            raise RunError(f"the dataset {self.data.path or self.data.name} differs from the one "
                           f"{run} was trained on (content fingerprint {fp}, the run's "
                           f"{ck['dataset_fingerprint']}); a run resumes only on the same data. "
                           f"Restore the data, or start a new run (--out)")
        if ck["epoch"] + 1 > cfg["epochs"]:
            raise RunError(f"epochs={cfg['epochs']} is below the {ck['epoch'] + 1} epochs {run} has "
                           f"already run; give at least {ck['epoch'] + 1}")
        try:
            self.net.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            self.rng.bit_generator.state = ck["numpy_rng"]
            torch.set_rng_state(ck["torch_rng"])
            random.setstate(tuple(ck["python_rng"]))
            self.stopper.load_state_dict(ck["stopper"])
            self.history, self.best = ck["history"], ck["best"]
            self.start_epoch = ck["epoch"] + 1
            self.best.setdefault("report", {})
            self.stopped_early = bool(ck.get("stopped_early", False))
            if (run / "best.pt").exists():
                self.best_state = _load_checkpoint(run / "best.pt", self.device)
                own = self.net.state_dict()
                if {k: tuple(v.shape) for k, v in self.best_state.items()} != {
                        k: tuple(v.shape) for k, v in own.items()}:
                    raise ValueError("best.pt holds other weights than the model's")
                self.best_state = run / "best.pt"      # checked; read again by report()
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise RunError(f"{run}: its checkpoint does not fit the model built from its "
                           f"config.yaml ({type(e).__name__}: {first}); was config.yaml edited? "
                           f"Restore it, or start a new run (--out)") from None
        self._resumed = True
        if ck.get("finished") and (self.stopped_early or self.start_epoch >= cfg["epochs"]):
            self.start_epoch = cfg["epochs"]  # finished: rewrite its results (a longer run goes on)
            self.log(f"{run} has finished; nothing to train")
        else:
            self.log(f"resumed {run} at epoch {self.start_epoch} of {cfg['epochs']}")

    # ------------------------------------------------------------------ steps
    def train_epoch(self, epoch: int) -> dict:
        """One pass over the sampler's batches; the history row (mean loss terms, seconds)."""
        net = self.net
        t0 = time.perf_counter()
        net.train()
        net.pre_epoch(epoch)
        sums: dict[str, float] = {}
        n_batches = 0
        for users, pos, neg in tqdm(self.sampler.epoch(self.rng), total=len(self.sampler),
                                    desc=f"epoch {epoch}", leave=False,
                                    disable=not self.progress, dynamic_ncols=True):
            terms = self.train_step(users, pos, neg)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_batches += 1
        self.sched.step()
        n = max(n_batches, 1)
        return {"epoch": epoch, "loss": sum(sums.values()) / n,
                **{f"loss_{k}": v / n for k, v in sums.items()},
                "train_seconds": round(time.perf_counter() - t0, 3)}

    def train_step(self, users, pos, neg) -> dict:
        """One optimisation step on a batch of (user, positive, negative) index arrays: loss,
        backward, optimiser step, gradients freed; returns the loss terms (tensors)."""
        whole = fixed_shape_products() if getattr(self.net, "fixed_shape_step", False) \
            else contextlib.nullcontext()
        with cpu_matmul(self.cfg.get("cpu_matmul", "auto"), self.device), whole:
            if self.world > 1:
                return self._parallel_step(users, pos, neg)
            return self._step(users, pos, neg)

    def _step(self, users, pos, neg) -> dict:
        dev = self.device
        u = torch.as_tensor(users, device=dev)
        p = torch.as_tensor(pos, device=dev)
        n = torch.as_tensor(neg, device=dev)
        terms = self.net.loss(u, p, n)
        loss = sum(terms.values())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)  # free the gradients before the next forward pass
        return terms

    def _parallel_step(self, users, pos, neg) -> dict:
        """One data-parallel step: every process draws the same global batch (same seed), takes
        its share, and the gradients are summed over processes (``torch.distributed``), so the
        step equals a single-process step on the global batch (float rounding aside).

        A model whose ``data_parallel`` is "split" computes the loss of its share (its batch
        terms are shares of the global value, its ``global_loss_terms`` count 1/world each); a
        "replicate" model computes the whole global batch's loss on every process (exact, no
        speed-up) and contributes 1/world of it. Returns the global value of each term.
        """
        import torch.distributed as dist
        from ..models.layers import data_parallel
        net, dev, world = self.net, self.device, self.world
        split = getattr(net, "data_parallel", "replicate") == "split"
        global_batch = len(users)
        if split:
            share = np.array_split(np.arange(len(users)), world)[self.rank]
            users, pos, neg = users[share], pos[share], neg[share]
        u = torch.as_tensor(users, device=dev)
        p = torch.as_tensor(pos, device=dev)
        n = torch.as_tensor(neg, device=dev)
        if split:
            with data_parallel(world, global_batch):
                terms = net.loss(u, p, n)
            glob = set(getattr(net, "global_loss_terms", ()))
            terms = {k: v / world if k in glob else v for k, v in terms.items()}
        else:
            terms = {k: v / world for k, v in net.loss(u, p, n).items()}
        loss = sum(terms.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [q for q in net.parameters() if q.requires_grad]
        # a parameter no process has a gradient for stays without one (the optimiser skips it,
        # as in a single process); the others are summed over processes
        has = torch.tensor([q.grad is not None for q in params], dtype=torch.int32)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        for q, h in zip(params, has.tolist()):
            if h:
                if q.grad is None:
                    q.grad = torch.zeros_like(q)
                dist.all_reduce(q.grad)
        self.opt.step()
        values = torch.stack([v.detach().reshape(()) for v in terms.values()])
        dist.all_reduce(values)
        return dict(zip(terms, values))

    def should_evaluate(self, epoch: int) -> bool:
        """Every ``eval_step`` epochs, and the last epoch of a run that never evaluated."""
        last = epoch + 1 == self.cfg["epochs"]
        return (epoch + 1) % self.cfg["eval_step"] == 0 or (
            last and not any("eval_seconds" in r for r in self.history))

    def evaluate(self, epoch: int, row: dict) -> bool:
        """Validation; on improvement, the test pass, its reports and the best weights (with
        topk_test.tsv and metrics.json written together). Adds the metrics to ``row``."""
        t1 = time.perf_counter()
        ev = EpochEvaluator(self.net, self.data, self.cfg, epoch, self.device)
        valid = ev("valid").metrics
        improved = self.stopper.update(valid)
        if improved:
            test_res = ev("test", keep_topk=True)
            self.best = {"epoch": epoch, "valid": valid, "test": test_res.metrics,
                         "report": reports_of_test_pass(self.net, self.data, self.cfg, test_res)}
            if self.run is None:
                self.best_state = copy.deepcopy(self.net.state_dict())
            else:  # the best weights live in best.pt, not in a second copy in memory
                atomic_torch_save(self.run / "best.pt", self.net.state_dict())
                self.best_state = self.run / "best.pt"
                write_topk(self.run / "topk_test.tsv", test_res)
                atomic_write_json(self.run / "metrics.json", self.summary(len(self.history) + 1))
        row.update({f"valid_{k}": v for k, v in valid.items()})
        row["eval_seconds"] = round(time.perf_counter() - t1, 3)
        if self.stopper.should_stop:
            self.stopped_early = self.finished = True
        return improved

    def checkpoint(self, epoch: int) -> None:
        """history.csv and last.pt: everything a resumed run needs to continue exactly."""
        _write_history(self.run / "history.csv", self.history)
        atomic_torch_save(self.run / "last.pt", {
            "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "stopper": self.stopper.state_dict(), "history": self.history, "best": self.best,
            "epoch": epoch, "finished": self.finished, "stopped_early": self.stopped_early,
            "dataset_fingerprint": self.fingerprint})

    def summary(self, epochs_run: int | None = None) -> dict:
        return summarize(self.cfg, self.data, self.best,
                         len(self.history) if epochs_run is None else epochs_run,
                         self.stopped_early, self.build_seconds, self.fingerprint,
                         getattr(self.net, "graph_seconds", None))

    def report(self) -> dict[str, Any]:
        """Best weights loaded; metrics.json and history.csv written; the summary returned."""
        if isinstance(self.best_state, pathlib.Path):
            self.net.load_state_dict(_load_checkpoint(self.best_state, self.device))
        elif self.best_state is not None:
            self.net.load_state_dict(self.best_state)
        summary = self.summary()
        if self.run is not None:
            _write_history(self.run / "history.csv", self.history)
            atomic_write_json(self.run / "metrics.json", summary)
        best = self.best
        self.log(f"best epoch {best['epoch']}: valid {_fmt(best['valid'] or {})} | test "
                 f"{_fmt(best['test'] or {})}")
        return {**summary, "history": self.history, "model": self.net, "config": self.cfg,
                "run_dir": self.run}

    # ------------------------------------------------------------------ the loop
    def _write_config(self) -> None:
        """config.yaml, written once the model is built and a resumed checkpoint accepted."""
        cfg, run = self.cfg, self.run
        vers = cfg.get("versions") or versions()
        if vers != versions():
            self.log(f"note: {run} was started with {vers}; now running with {versions()}")
        atomic_write_text(run / "config.yaml",
                          dump_yaml({**{k: v for k, v in cfg.items() if k != "versions"},
                                     "versions": vers}))

    def _log_setup(self) -> None:
        cfg, data, net = self.cfg, self.data, self.net
        preset = cfg.get("preset", "none")
        self.log(f"preset: {preset}" if preset != "none" else
                 f"preset: none (no preset of {cfg['model']} matches dataset {data.name!r})")
        if data.features:
            self.log("modalities: " + ", ".join(f"{m} ({x.shape[1]}-d)"
                                               for m, x in data.features.items()))
        else:
            self.log("modalities: none")
        self.log(f"{type(net).__name__} on {data.name}: "
                 f"{sum(p.numel() for p in net.parameters()):,} parameters, device "
                 f"{self.device}, built in {self.build_seconds:.1f}s")

    def fit(self) -> dict[str, Any]:
        """Train until early stopping or ``epochs``; return :meth:`report`'s summary."""
        cfg = self.cfg
        if self.run is not None:
            self._write_config()
        self._log_setup()
        bar = tqdm(range(self.start_epoch, cfg["epochs"]), desc="epochs",
                   disable=not self.progress, initial=self.start_epoch, total=cfg["epochs"],
                   dynamic_ncols=True)
        for epoch in bar:
            row = self.train_epoch(epoch)
            loss = row["loss"]
            if not math.isfinite(loss):
                self.log(f"epoch {epoch}: loss is {loss}; stopping (best results so far are kept)")
                self.history.append(row)
                self.stopped_early = self.finished = True
                break
            msg = f"epoch {epoch:4d} | loss {loss:.4f} | train {row['train_seconds']:.2f}s"
            if self.should_evaluate(epoch):
                improved = self.evaluate(epoch, row)
                valid = {k[len("valid_"):]: v for k, v in row.items() if k.startswith("valid_")}
                msg += (f" | valid {_fmt(valid)}{' *' if improved else ''} | "
                        f"eval {row['eval_seconds']:.2f}s")
            self.history.append(row)
            if self.log_every and ((epoch + 1) % self.log_every == 0
                                   or epoch + 1 == cfg["epochs"] or self.finished):
                (bar.write if self.progress else self.log)(msg)
            if epoch + 1 == cfg["epochs"]:
                self.finished = True
            if self.run is not None and (self.finished
                                         or (epoch + 1) % cfg["checkpoint_every"] == 0):
                self.checkpoint(epoch)
            if self.on_evaluate is not None and "eval_seconds" in row:
                self.on_evaluate(epoch, valid)
            if self.finished:
                break
        bar.close()
        return self.report()


def summarize(cfg, data, best, epochs_run, stopped_early, build_seconds, fingerprint,
              graph_seconds=None) -> dict:
    """The content of metrics.json (``build_seconds``: the whole model construction;
    ``graph_seconds``: per graph, the seconds spent building it or loading it from the cache)."""
    return {"model": cfg["model"], "dataset": data.name, "best_epoch": best["epoch"],
            "epochs_run": epochs_run, "stopped_early": stopped_early,
            "valid": best["valid"], "test": best["test"],
            "model_build_seconds": round(build_seconds, 3),
            "graph_seconds": {k: round(v, 3) for k, v in (graph_seconds or {}).items()},
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
