"""Hyperparameter sweeps on Optuna that select on validation only.

Each trial is a full training run with early stopping (:func:`mmrecsys.fit`, its run directory
``DIR/trial-NNNN``); its objective value is the validation metric at the trial's best epoch,
``metrics["valid"][metric]``. Test metrics are stored beside it (trial user attribute
``result``) and written to ``trials.csv`` and ``best.json``, but :func:`select_best` reads only
the objective value: a trial's test numbers never change which trial is selected (MMRec's grid
search selects on test, its issue #64).

The study lives in an Optuna storage: ``DIR/study.db`` (SQLite) by default, so that running the
same command again continues it; any database URL Optuna supports (PostgreSQL for workers on
several machines) with ``storage=``. ``workers=K`` runs K trial processes on this machine that
share the study (each with ``max(1, cores // K)`` torch threads).

Bookkeeping that keeps a study consistent across processes and machines:

* ``n_trials`` is the number of finished (complete or pruned) trials the study should hold, not
  a number to add: re-running the same command after an interruption runs only what is missing.
* Parameters whose trial failed (an interrupted process fails its running trial) are queued
  again when a sweep starts, with the failed trial's run directory: the new trial resumes it
  (same machine and configuration). A trial left running by a killed process is failed by
  Optuna's heartbeat check after ``GRACE_SECONDS`` and queued again the same way.
* A worker with nothing left to start waits for the trials running elsewhere before it ends,
  so that every machine's ``trials.csv``/``best.json`` end complete, and it takes over a dead
  worker's trial once that is queued again.
* The grid sampler gives trial number n the n-th point of one seeded permutation of the grid, so
  concurrent workers draw distinct points; a trial that still finds its parameters already
  trained or being trained (two workers racing at the very end) is skipped without training:
  it is marked pruned with the user attribute ``skipped`` and left out of ``trials.csv``.
"""
from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import logging
import math
import os
import pathlib
import queue as queue_mod
import socket
import time
from typing import Any, Callable

from ..config import config_differences, resolve_config, run_config
from ..data import Dataset
from ..errors import ConfigError, MMRecError, RunError
from ..io import atomic_write_json, atomic_write_text

logger = logging.getLogger("mmrecsys")

SAMPLERS = ("grid", "tpe")
#: a running trial writes a heartbeat this often; one silent for GRACE_SECONDS is failed
HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60
#: how often a worker with nothing left to start checks the trials running elsewhere
POLL_SECONDS = 2.0
#: a worker stops after this many failed or skipped trials in a row
MAX_FAILURES_IN_ROW = 3
#: the largest grid searched exhaustively (Optuna's grid sampler lists every setting)
MAX_GRID = 100_000
#: TPE's trial budget when none is given
DEFAULT_TPE_TRIALS = 20


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("sweeps need optuna: pip install 'mmrecsys[experiments]'") from None
    return optuna


def model_space(model: str) -> dict[str, list]:
    """The search space a model ships (``search_space`` of its class: the official grid)."""
    from ..models import get_model_class
    return {k: list(v) for k, v in get_model_class(model).search_space.items()}


def load_space(path) -> dict[str, Any]:
    """A search space from a YAML file: ``key: [v1, v2, ...]`` (a grid) or, for TPE,
    ``key: {low: 1e-4, high: 1e-2, log: true}`` (a range; ``step`` optional; integer bounds
    give integer values)."""
    from ..config import load_yaml
    space = load_yaml(path)
    if not space:
        raise ConfigError(f"{path}: an empty search space; give key: [values] lines")
    return space


def grid_size(space: dict) -> int:
    return math.prod(len(v) for v in space.values()) if space else 0


def _jsonable(x):
    return json.loads(json.dumps(x))


def check_space(space: dict, sampler: str, model_cls, data: Dataset, fixed: dict) -> dict:
    """The space normalised (lists; ranges as dicts) after checking every value against the
    configuration (ConfigError naming the key)."""
    optuna = _optuna()
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{model_cls.name} ships no search space; give one with --space FILE "
                          f"(key: [values] lines)")
    out = {}
    for key, spec in space.items():
        key = str(key)
        if key in ("model", "data"):
            raise ConfigError(f"search space key {key!r}: sweep one model on one dataset")
        if isinstance(spec, (list, tuple)):
            values = list(spec)
            if not values:
                raise ConfigError(f"search space key {key!r} has no values")
            for v in values:
                if v is not None and not isinstance(v, (str, int, float, bool)):
                    raise ConfigError(f"search space {key}: value {v!r} is not a number, string, "
                                      f"boolean or null (Optuna stores only those)")
            if len(set(map(repr, values))) != len(values):
                raise ConfigError(f"search space {key}: repeated values {values}")
            out[key] = values
        elif isinstance(spec, dict):
            if sampler == "grid":
                raise ConfigError(f"search space {key}: a range ({spec}) needs --sampler tpe; the "
                                  f"grid sampler takes lists of values")
            extra = set(spec) - {"low", "high", "log", "step"}
            if extra or not {"low", "high"} <= set(spec):
                raise ConfigError(f"search space {key}: a range is {{low: L, high: H}} with "
                                  f"optional log: true or step: S, not {spec}")
            try:
                if isinstance(spec["low"], int) and isinstance(spec["high"], int):
                    optuna.distributions.IntDistribution(spec["low"], spec["high"],
                                                         log=bool(spec.get("log", False)),
                                                         step=spec.get("step", 1))
                else:
                    optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]),
                                                           log=bool(spec.get("log", False)),
                                                           step=spec.get("step"))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"search space {key}: {e}") from None
            values = [spec["low"], spec["high"]]
            out[key] = dict(spec)
        else:
            raise ConfigError(f"search space {key}: expected a list of values or a range "
                              f"{{low, high}}, not {spec!r}")
        for v in values:
            try:
                resolve_config(model_cls, data.name, {}, {**fixed, key: v}, n_items=data.n_items)
            except ConfigError as e:
                raise ConfigError(f"search space {key}={v!r}: {e}") from None
    return out


def _suggest(trial, space: dict) -> dict:
    params = {}
    for key, spec in space.items():
        if isinstance(spec, dict):
            log = bool(spec.get("log", False))
            if isinstance(spec["low"], int) and isinstance(spec["high"], int):
                params[key] = trial.suggest_int(key, spec["low"], spec["high"],
                                                step=spec.get("step", 1), log=log)
            else:
                params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                                  step=spec.get("step"), log=log)
        else:
            params[key] = trial.suggest_categorical(key, spec)
    return params


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def open_storage(url: str):
    """An Optuna RDB storage with heartbeats (a killed worker's trial is failed and queued
    again after GRACE_SECONDS)."""
    optuna = _optuna()
    import warnings
    kw: dict[str, Any] = {}
    sqlite = url.startswith("sqlite")
    if sqlite:
        kw["engine_kwargs"] = {"connect_args": {"timeout": 120}}
        _sqlite_wal(url)
    # Optuna 4.9 renamed the retry callback (the old name still works, with a FutureWarning)
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
               inspect.signature(optuna.storages.RDBStorage).parameters else "failed_trial_callback")
        for attempt in range(3):
            try:
                storage = optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                    **{key: retry(max_retry=2)}, **kw)
                if sqlite:
                    _sqlite_sync_normal(storage)
                return storage
            except ImportError as e:
                raise ConfigError(f"storage {_safe_url(url)}: a database driver is missing "
                                  f"({e}); for PostgreSQL: pip install psycopg2-binary") from None
            except Exception as e:  # noqa: BLE001 (sqlalchemy: bad URL, unreachable server)
                # workers started together on an empty database race to create its tables:
                # the loser finds them created on its next attempt
                racing = "already exists" in str(e) or "UniqueViolation" in str(e)
                if attempt < 2 and racing:
                    time.sleep(1.0 + attempt)
                    continue
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise ConfigError(f"storage {_safe_url(url)} cannot be opened: {first}") from None


def _sqlite_wal(url: str) -> None:
    """Write-ahead logging for a study file (persistent): readers never block the writer, and
    with synchronous=NORMAL a commit does not wait for the disk (a crash can lose the last
    commits, never corrupt the file). Skipped for in-memory and unusual URLs."""
    import sqlite3
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if not path or path.startswith(":memory:") or "?" in path:
        return
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        con = sqlite3.connect(path, timeout=120)
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
    except sqlite3.Error:
        pass  # e.g. a file system without shared memory: the default journal still works


def _sqlite_sync_normal(storage) -> None:
    engine = getattr(storage, "engine", None)
    if engine is None:
        return
    from sqlalchemy import event

    def on_connect(dbapi_con, _record):
        dbapi_con.execute("PRAGMA synchronous=NORMAL")
    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened while creating the tables get the pragma too


def _safe_url(url: str) -> str:
    """The URL without its password."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def _grid_sampler(space: dict, seed: int):
    """Optuna's GridSampler without its ``after_trial`` (which stops the study when the grid is
    covered, and fails on a queued trial: it has no grid id): the sweep's loop decides when to
    stop."""
    optuna = _optuna()

    class Grid(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values):
            pass

    return Grid(space, seed=seed)


def _make_sampler(spec: dict, worker_key: str = ""):
    optuna = _optuna()
    if spec["sampler"] == "grid":
        # every worker, on every machine, must use the same seed: trial n gets point n
        return _grid_sampler(spec["space"], spec["seed"])
    # TPE: each worker draws from its own stream, or parallel workers propose the same points
    s = spec["seed"]
    if worker_key:
        s = int(hashlib.sha256(f"{s}/{worker_key}".encode()).hexdigest()[:8], 16)
    return optuna.samplers.TPESampler(seed=s)


def _pruner(prune: bool):
    optuna = _optuna()
    if prune:
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=10)
    return optuna.pruners.NopPruner()


# ------------------------------------------------------------------------------ selection
def select_best(trials) -> Any | None:
    """The complete trial with the highest objective value (the validation metric at its best
    epoch); ties go to the lowest trial number. Reads only ``state``, ``value`` and ``number``:
    test metrics cannot influence the selection."""
    best = None
    for t in trials:
        if getattr(t.state, "name", t.state) != "COMPLETE" or t.value is None:
            continue
        v = float(t.value)
        if not math.isfinite(v):
            continue
        if best is None or v > best[0] or (v == best[0] and t.number < best[1].number):
            best = (v, t)
    return None if best is None else best[1]


def _skipped(t) -> bool:
    return "skipped" in t.user_attrs


def _point(t, keys) -> tuple | None:
    """A trial's parameters as a hashable point (also before they are set: an enqueued trial's
    fixed parameters)."""
    params = t.params if set(keys) <= set(t.params) else t.system_attrs.get("fixed_params")
    if not params or not set(keys) <= set(params):
        return None
    return tuple(repr(params[k]) for k in keys)


# ------------------------------------------------------------------------------ the study
def _study_spec(model_cls, data: Dataset, space, sampler, metric, fixed, seed) -> dict:
    return _jsonable({"model": model_cls.name, "dataset": data.name,
                      "fingerprint": data.fingerprint(with_features=True), "space": space,
                      "sampler": sampler, "metric": metric, "fixed": fixed, "seed": seed})


def _open_study(url: str, name: str, spec: dict, prune: bool, worker_key: str = ""):
    optuna = _optuna()
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                sampler=_make_sampler(spec, worker_key), pruner=_pruner(prune),
                                load_if_exists=True)
    have = study.user_attrs.get("mmrecsys")
    if have is None:
        study.set_user_attr("mmrecsys", spec)
    else:
        for key in ("model", "fingerprint", "space", "sampler", "metric", "fixed", "seed"):
            if have.get(key) != spec.get(key):
                what = {"fingerprint": "dataset content"}.get(key, key)
                raise ConfigError(f"study {name!r} in {_safe_url(url)} was started with another "
                                  f"{what} ({have.get(key)!r}, now {spec.get(key)!r}); run the "
                                  f"same sweep to continue it, or start another one (--out, "
                                  f"--study)")
    return study


def _fail_stale_trials(study) -> None:
    """Fail the running trials whose heartbeat stopped (a killed worker); they are queued again."""
    import warnings
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _requeue_failed(study, space: dict) -> int:
    """Queue again the parameters whose trials all failed (an interrupted run), with the last
    failed trial's run directory: the new trial resumes it when it is on this machine. Returns
    how many were queued."""
    keys = list(space)
    live, failed = set(), {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        p = _point(t, keys)
        if p is None or _skipped(t):
            continue
        if t.state.name == "FAIL":
            failed[p] = t
        else:
            live.add(p)
    n = 0
    for p, t in failed.items():
        if p not in live:
            params = t.params if set(keys) <= set(t.params) else t.system_attrs["fixed_params"]
            run = t.user_attrs.get("run")
            study.enqueue_trial({k: params[k] for k in keys},
                                user_attrs={"run": run} if run else None)
            n += 1
    return n


def _counts(study, space: dict, grid: bool) -> dict:
    trials = [t for t in study.get_trials(deepcopy=False) if not _skipped(t)]
    by = {}
    for t in trials:
        by[t.state.name] = by.get(t.state.name, 0) + 1
    out = {"done": by.get("COMPLETE", 0) + by.get("PRUNED", 0), "running": by.get("RUNNING", 0),
           "waiting": by.get("WAITING", 0), "failed": by.get("FAIL", 0), "unvisited": None}
    if grid:
        keys = list(space)
        seen = {_point(t, keys) for t in trials} - {None}
        out["unvisited"] = max(0, grid_size(space) - len(seen))
    return out


def _more_to_do(counts: dict, n_target: int) -> bool:
    if counts["waiting"]:
        return True
    if counts["done"] + counts["running"] >= n_target:
        return False
    return counts["unvisited"] is None or counts["unvisited"] > 0


def _trial_dir(out: pathlib.Path, number: int) -> pathlib.Path:
    d = out / f"trial-{number:04d}"
    k = 1
    while d.exists() and any(d.iterdir()):  # a folder left by a deleted study
        d = out / f"trial-{number:04d}-{k}"
        k += 1
    return d


def _read_metrics(run_dir: pathlib.Path) -> dict:
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class _Context:
    """What a worker needs (picklable: sent to worker processes)."""

    def __init__(self, url, study_name, spec, prune, data, out, n_target, device, threads,
                 log_level):
        self.url, self.study_name, self.spec, self.prune = url, study_name, spec, prune
        self.data, self.out, self.n_target, self.device = data, out, n_target, device
        self.threads, self.log_level = threads, log_level


def _objective(ctx: _Context, study, ds: Dataset, holder: dict, worker: int):
    from ..api import fit
    optuna = _optuna()
    space, metric, keys = ctx.spec["space"], ctx.spec["metric"], list(ctx.spec["space"])

    def objective(trial):
        holder["trial_id"] = trial._trial_id
        params = _suggest(trial, space)
        mine = tuple(repr(params[k]) for k in keys)
        for t in study.get_trials(deepcopy=False):
            if t.number != trial.number and not _skipped(t) and _point(t, keys) == mine and (
                    t.state.name in ("COMPLETE", "PRUNED")
                    or (t.state.name == "RUNNING" and t.number < trial.number)):
                # pruned without training (no traceback in the log), left out of trials.csv
                trial.set_user_attr("skipped", f"same parameters as trial {t.number}")
                raise optuna.TrialPruned(f"same parameters as trial {t.number}; skipped")
        # a trial queued again after a failure resumes its predecessor's run when it can
        prev = trial.user_attrs.get("run") or {}
        run_dir = None
        if prev.get("host") == socket.gethostname() and prev.get("run_dir"):
            d = pathlib.Path(prev["run_dir"])
            if (d / "last.pt").is_file() and _same_config(d, ds, ctx.spec, params):
                run_dir = d
        resume = run_dir is not None
        if run_dir is None:
            run_dir = _trial_dir(pathlib.Path(ctx.out), trial.number)
        trial.set_user_attr("run", {"run_dir": str(run_dir), "host": socket.gethostname(),
                                    "pid": os.getpid(), "worker": worker, "resumed": resume})

        def on_evaluate(epoch, valid):
            if ctx.prune and metric in valid:
                trial.report(float(valid[metric]), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch}: {metric} {valid[metric]:.4f} "
                                             f"below the median of earlier trials")

        t0 = time.perf_counter()
        try:
            if resume:
                from ..config import load_yaml
                from ..train.trainer import fit as train_fit
                res = train_fit(ds, config=load_yaml(run_dir / "config.yaml"), run_dir=run_dir,
                                resume=True, device=ctx.device, log=logger.info,
                                on_evaluate=on_evaluate)
                metrics = {k: v for k, v in res.items()
                           if k not in ("history", "model", "config", "run_dir")}
            else:
                model = fit(ds, ctx.spec["model"], out=run_dir, device=ctx.device,
                            on_evaluate=on_evaluate, **{**ctx.spec["fixed"], **params})
                metrics = model.metrics
        except optuna.TrialPruned:
            metrics = _read_metrics(run_dir)
            _record(trial, metrics, time.perf_counter() - t0, pruned=True)
            raise
        fit_seconds = time.perf_counter() - t0
        valid = metrics.get("valid") or {}
        _record(trial, metrics, fit_seconds)
        if metric not in valid:
            raise RunError(f"trial {trial.number}: no validation metric {metric} (the run did not "
                           f"evaluate)")
        return float(valid[metric])

    return objective


def _same_config(run_dir: pathlib.Path, ds: Dataset, spec: dict, params: dict) -> bool:
    """Whether a run directory was started with the configuration these parameters resolve to."""
    from ..config import load_yaml
    try:
        have = load_yaml(run_dir / "config.yaml")
    except MMRecError:
        return False
    want = run_config(spec["model"], ds, {}, {**spec["fixed"], **params})
    return not config_differences(have, want)


def _record(trial, metrics: dict, fit_seconds: float, pruned: bool = False) -> None:
    """One write: what the trial's run produced (test metrics for the record only)."""
    trial.set_user_attr("result", _jsonable({
        "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run"),
        "stopped_early": metrics.get("stopped_early"), "valid": metrics.get("valid"),
        "test": metrics.get("test"), "fit_seconds": round(fit_seconds, 3), "pruned": pruned}))


def _work(ctx: _Context, worker: int, emit: Callable[[dict], None], study=None) -> None:
    """A worker: trials one after another until the study has what it needs."""
    optuna = _optuna()
    optuna.logging.set_verbosity(ctx.log_level)
    if ctx.threads:
        import torch
        torch.set_num_threads(ctx.threads)
    from ..api import load_dataset
    ds = ctx.data if isinstance(ctx.data, Dataset) else load_dataset(ctx.data)
    if study is None:
        study = _open_study(ctx.url, ctx.study_name, ctx.spec, ctx.prune,
                            worker_key=f"{socket.gethostname()}/{os.getpid()}/{worker}")
    grid = ctx.spec["sampler"] == "grid"
    space = ctx.spec["space"]
    bad_in_row = 0
    waiting = False
    while True:
        counts = _counts(study, space, grid)
        if not _more_to_do(counts, ctx.n_target):
            if counts["running"]:
                # other workers (here or elsewhere) still train: wait for them, so that this
                # machine's outputs end complete, and take over a trial whose worker died
                # (failed by the heartbeat check and queued again)
                if not waiting:
                    emit({"kind": "wait", "worker": worker, **counts})
                    waiting = True
                time.sleep(POLL_SECONDS)
                _fail_stale_trials(study)
                continue
            emit({"kind": "stop", "worker": worker, "reason": "done", **counts})
            return
        waiting = False
        holder: dict = {}
        t0 = time.perf_counter()
        study.optimize(_objective(ctx, study, ds, holder, worker), n_trials=1,
                       catch=(Exception,), gc_after_trial=False)
        wall = time.perf_counter() - t0
        if "trial_id" not in holder:  # the objective never ran (cannot happen with optimize)
            continue
        t = study._storage.get_trial(holder["trial_id"])
        counts = _counts(study, space, grid)
        ev = _event(t, ctx.spec["metric"], wall, worker, counts, ctx.n_target)
        emit(ev)
        bad_in_row = bad_in_row + 1 if ev["state"] in ("FAIL", "SKIPPED") else 0
        if bad_in_row >= MAX_FAILURES_IN_ROW:
            emit({"kind": "stop", "worker": worker, **counts,
                  "reason": f"{bad_in_row} trials in a row failed or were skipped"})
            return


def _event(t, metric, wall, worker, counts, n_target) -> dict:
    res = t.user_attrs.get("result") or {}
    fit_s = res.get("fit_seconds")
    state = "SKIPPED" if _skipped(t) else t.state.name
    return {"kind": "trial", "number": t.number, "state": state, "params": dict(t.params),
            "value": t.value, "metric": metric, "best_epoch": res.get("best_epoch"),
            "seconds": round(wall, 3), "fit_seconds": fit_s,
            "overhead_seconds": None if fit_s is None else round(wall - fit_s, 3),
            "run_dir": (t.user_attrs.get("run") or {}).get("run_dir"), "worker": worker,
            "done": counts["done"], "total": n_target,
            "note": t.user_attrs.get("skipped") or t.system_attrs.get("fail_reason")}


# ------------------------------------------------------------------------------ outputs
def _flat(prefix: str, d: dict | None) -> dict:
    return {f"{prefix}{k}": v for k, v in (d or {}).items()}


def write_outputs(study, out: pathlib.Path, spec: dict) -> dict | None:
    """``trials.csv`` (one row per trial, skipped ones left out) and ``best.json`` (the complete
    trial with the best validation metric). Returns best.json's content (None: no complete
    trial yet)."""
    trials = [t for t in study.get_trials(deepcopy=False) if not _skipped(t)]
    trials.sort(key=lambda t: t.number)
    keys = list(spec["space"])
    rows = []
    for t in trials:
        res = t.user_attrs.get("result") or {}
        run = t.user_attrs.get("run") or {}
        secs = (t.datetime_complete - t.datetime_start).total_seconds() if (
            t.datetime_complete and t.datetime_start) else None
        rows.append({"trial": t.number, "state": t.state.name,
                     **{k: t.params.get(k) for k in keys},
                     "value": t.value, "best_epoch": res.get("best_epoch"),
                     "epochs_run": res.get("epochs_run"),
                     **_flat("valid_", res.get("valid")), **_flat("test_", res.get("test")),
                     "fit_seconds": res.get("fit_seconds"),
                     "seconds": None if secs is None else round(secs, 3),
                     "run_dir": run.get("run_dir"), "host": run.get("host")})
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols or ["trial"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "trials.csv", buf.getvalue())
    best = select_best(trials)
    if best is None:
        return None
    res = best.user_attrs.get("result") or {}
    run = best.user_attrs.get("run") or {}
    doc = {"model": spec["model"], "dataset": spec["dataset"], "study": study.study_name,
           "metric": spec["metric"], "trial": best.number, "value": best.value,
           "params": dict(best.params), "fixed": spec["fixed"], "best_epoch": res.get("best_epoch"),
           "valid": res.get("valid"), "test": res.get("test"), "run_dir": run.get("run_dir"),
           "host": run.get("host"),
           "complete_trials": sum(t.state.name == "COMPLETE" for t in trials)}
    atomic_write_json(out / "best.json", doc)
    return doc


def format_event(ev: dict) -> str:
    """One line for a progress event of :func:`sweep` (what the CLI prints)."""
    if ev["kind"] == "trial":
        params = " ".join(f"{k}={v}" for k, v in ev["params"].items())
        if ev["state"] == "COMPLETE":
            what = f"valid {ev['metric']} {ev['value']:.4f} (best epoch {ev['best_epoch']})"
        elif ev["state"] == "PRUNED":
            what = "pruned" + (f" at {ev['metric']} {ev['value']:.4f}"
                               if ev.get("value") is not None else "")
        else:
            what = ev["state"].lower() + (f": {ev['note']}" if ev.get("note") else "")
        eta = ev.get("eta_seconds")
        left = "" if eta is None else f", about {_duration(eta)} left"
        over = ev.get("overhead_seconds")
        over = "" if over is None else f" (+{over:.2f}s bookkeeping)"
        return (f"trial {ev['number']:3d} [{ev['done']}/{ev['total']}{left}] {params}: {what}, "
                f"{ev['seconds']:.1f}s{over}")
    if ev["kind"] == "stop":
        return f"worker {ev['worker']} stopped: {ev['reason']}"
    if ev["kind"] == "wait":
        return (f"worker {ev['worker']}: nothing left to start; waiting for {ev['running']} "
                f"running trial(s)")
    if ev["kind"] == "start":
        size = (f"grid of {ev['grid_size']} settings" if ev["sampler"] == "grid" else "TPE")
        keys = " × ".join(ev["space"])
        line = (f"sweep {ev['study']}: {ev['model']} on {ev['dataset']}, {size} ({keys}), "
                f"{ev['total']} trials, {ev['done']} already finished"
                + (f", {ev['running']} running elsewhere" if ev["running"] else "")
                + (f", {ev['requeued']} failed ones queued again" if ev["requeued"] else "")
                + f"; {ev['workers']} worker(s) here; maximising valid {ev['metric']}"
                + ("; pruning" if ev["prune"] else "") + f"; storage {ev['storage']}")
        return line
    return f"worker {ev['worker']}: {ev.get('message', ev)}"


def _duration(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 90:
        return f"{s}s"
    if s < 5400:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"


# ------------------------------------------------------------------------------ sweep
def sweep(model: str, data: str | Dataset = "synthetic", out="sweep", *,
          n_trials: int | None = None, space: dict | str | None = None, sampler: str = "grid",
          storage: str | None = None, study_name: str | None = None, workers: int = 1,
          prune: bool = False, metric: str | None = None, overrides: dict | None = None,
          device: str = "auto", seed: int = 0,
          progress: Callable[[dict], None] | None = None) -> dict | None:
    """Run (or continue) a hyperparameter sweep; return best.json's content.

    Args:
        model: a registered model name.
        data: a dataset folder, ``"synthetic"``, or a :class:`Dataset` (workers on other
            machines must be given the same data: its content fingerprint is checked).
        out: the sweep directory (``study.db``, ``trials.csv``, ``best.json``, trial runs).
        n_trials: finished trials the study should hold (grid: at most, and by default, the
            grid's size; TPE: default 20).
        space: ``{key: [values]}`` (or ranges for TPE), a YAML file, or None for the model's
            ``search_space``.
        sampler: ``"grid"`` or ``"tpe"``.
        storage: an Optuna storage URL (default ``sqlite:///OUT/study.db``).
        study_name: default ``<model>-<dataset>-<sampler>``.
        workers: trial processes on this machine (each with max(1, cores // workers) threads).
        prune: stop hopeless trials early (median of earlier trials at the same epoch, on the
            validation metric reported after each evaluation).
        metric: the validation metric maximised (default: the model's first valid_metrics).
        overrides: configuration keys fixed for every trial (e.g. ``{"epochs": 60}``).
        progress: called with one event dict per finished trial (``format_event`` renders it)
            and per stopped worker; events carry ``eta_seconds``, an estimate of the time left.
    """
    optuna = _optuna()
    from ..api import load_dataset
    from ..models import get_model_class
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler {sampler!r}: choose {' or '.join(SAMPLERS)}")
    if workers < 1:
        raise ConfigError(f"workers={workers}: at least 1")
    cls = get_model_class(model)
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    fixed = dict(overrides or {})
    base = run_config(cls.name, ds, {}, fixed)
    metric = metric or base["valid_metrics"][0]
    name, _, k = metric.partition("@")
    if not k.isdigit() or int(k) not in base["topk"] or name not in (
            "recall", "ndcg", "precision", "map", *base["extra_metrics"]):
        raise ConfigError(f"metric {metric!r} is not computed: <metric>@<k> with k in topk="
                          f"{base['topk']} (e.g. recall@20)")
    if space is None:
        space = model_space(cls.name)
    elif isinstance(space, (str, pathlib.Path)):
        space = load_space(space)
    space = check_space(space, sampler, cls, ds, fixed)
    both = sorted(set(space) & set(fixed))
    if both:
        raise ConfigError(f"{', '.join(both)}: both searched and fixed (--set); drop one")
    if sampler == "grid":
        size = grid_size(space)
        if size > MAX_GRID:
            dims = " × ".join(f"{len(v)} {k}" for k, v in space.items())
            raise ConfigError(f"the grid has {size:,} settings ({dims}); search it with "
                              f"--sampler tpe --trials N, or give a smaller --space (at most "
                              f"{MAX_GRID:,} settings)")
        n_target = size if n_trials is None else min(int(n_trials), size)
    else:
        n_target = DEFAULT_TPE_TRIALS if n_trials is None else int(n_trials)
    if n_target < 1:
        raise ConfigError(f"n_trials={n_trials}: at least 1")
    out = pathlib.Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{out / 'study.db'}"
    study_name = study_name or f"{cls.name}-{ds.name}-{sampler}"
    spec = _study_spec(cls, ds, space, sampler, metric, fixed, seed)
    study = _open_study(url, study_name, spec, prune, worker_key=f"{socket.gethostname()}/main")
    emit = progress or (lambda ev: None)
    _fail_stale_trials(study)
    n_requeued = _requeue_failed(study, space)
    counts = _counts(study, space, sampler == "grid")
    start = {"kind": "start", "model": cls.name, "dataset": ds.name, "study": study_name,
             "storage": _safe_url(url), "sampler": sampler, "space": space,
             "grid_size": grid_size(space) if sampler == "grid" else None, "total": n_target,
             "done": counts["done"], "running": counts["running"], "requeued": n_requeued,
             "workers": workers, "metric": metric, "prune": prune}
    logger.info(format_event(start))
    emit(start)
    ctx = _Context(url, study_name, spec, prune,
                   # in process: the loaded dataset; worker processes load a path themselves
                   ds if workers == 1 or isinstance(data, Dataset) else data, str(out),
                   n_target, device, max(1, _cores() // workers) if workers > 1 else 0,
                   optuna.logging.get_verbosity())
    walls: list[float] = []

    def handle(ev: dict) -> None:
        if ev["kind"] == "trial":
            t0 = time.perf_counter()
            write_outputs(study, out, spec)
            ev["write_seconds"] = round(time.perf_counter() - t0, 3)
            if ev["state"] in ("COMPLETE", "PRUNED"):
                walls.append(ev["seconds"])
            left = max(0, n_target - ev["done"])
            ev["eta_seconds"] = (math.ceil(left / workers) * sum(walls) / len(walls)
                                 if walls else None)
        logger.info(format_event(ev))
        emit(ev)

    try:
        if workers == 1:
            _work(ctx, 0, handle, study=study)
        elif not _more_to_do(counts, n_target):
            handle({"kind": "stop", "worker": 0, "reason": "done", **counts})
        else:
            _run_workers(ctx, workers, handle)
    finally:
        best = write_outputs(study, out, spec)
    return best


def _run_workers(ctx: _Context, workers: int, handle) -> None:
    """K worker processes (``python -m mmrecsys.experiments.worker``: a fresh interpreter, so
    that the caller's ``__main__`` is never re-imported and torch is never forked). Each gets
    the context on stdin and sends its events as JSON lines on a pipe of its own."""
    import pickle
    import subprocess
    import sys
    import threading
    src = str(pathlib.Path(__file__).resolve().parents[2])   # the folder holding mmrecsys/
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    events: queue_mod.Queue = queue_mod.Queue()
    procs, readers = [], []
    try:
        for w in range(workers):
            r, wfd = os.pipe()
            p = subprocess.Popen([sys.executable, "-m", "mmrecsys.experiments.worker", str(w),
                                  str(wfd)], stdin=subprocess.PIPE, pass_fds=(wfd,), env=env)
            os.close(wfd)
            p.stdin.write(pickle.dumps(ctx))
            p.stdin.close()
            procs.append(p)

            def read(fd=r, w=w):
                with os.fdopen(fd, encoding="utf-8") as fh:
                    for line in fh:
                        try:
                            events.put(json.loads(line))
                        except ValueError:
                            pass
                events.put({"kind": "eof", "worker": w})
            th = threading.Thread(target=read, daemon=True)
            th.start()
            readers.append(th)
        errors, open_pipes = [], workers
        while open_pipes:
            ev = events.get()
            if ev["kind"] == "eof":
                open_pipes -= 1
                continue
            if ev["kind"] == "error":
                errors.append(f"worker {ev['worker']}: {ev['message']}")
            handle(ev)
    except KeyboardInterrupt:
        for p in procs:  # they got the interrupt too: each fails its running trial and exits
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.terminate()
        raise
    finally:
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.terminate()
                p.wait()
    bad = [p.returncode for p in procs if p.returncode != 0]
    if errors or bad:
        raise RunError("; ".join(errors) or f"worker processes exited with status {bad}")
