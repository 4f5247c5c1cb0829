"""Multi-seed comparison of models: the seed papers' main table, reproducible with one call.

Each model × dataset × seed is trained with early stopping (its preset for the dataset, or the
configuration a sweep selected: ``best.json``'s fixed keys and parameters) into
``OUT/runs/<model>-<dataset>-seed<S>``. A finished run of the same configuration is reused, an
interrupted one is resumed, and a folder holding a run of another configuration is refused.

``table.md`` / ``table.csv``: mean ± std over seeds of the test metrics at the best validation
epoch (Recall/NDCG @10/@20 by default); the best mean per column in bold; the relative
improvement of the best model over the best other; a paired t-test over seeds (scipy's
``ttest_rel``, runs paired by seed) of the best model against ``baseline`` (default: the best
other model; when the baseline is the best model itself, against the best other). Plots in
``OUT/plots``: validation curves, test Recall@20 by user group, all vs new/cold items.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import pathlib
import time
from typing import Callable

from ..config import config_differences, load_yaml, run_config
from ..data import Dataset
from ..errors import ConfigError, RunError
from ..io import atomic_write_text

logger = logging.getLogger("mmrecsys")

DEFAULT_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
_SHORT = {"recall": "R", "ndcg": "N", "precision": "P", "map": "MAP"}


def parse_seeds(seeds) -> list[int]:
    """``5`` -> seeds 1..5; ``"1,7,9"`` or a list -> those seeds."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"seeds={seeds}: at least 1")
        return list(range(1, seeds + 1))
    if isinstance(seeds, str):
        parts = [p for p in seeds.replace(" ", "").split(",") if p]
        if len(parts) == 1:
            try:
                return parse_seeds(int(parts[0]))
            except ValueError:
                pass
        try:
            out = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"seeds {seeds!r}: a number of seeds (5) or a list (1,7,9)") from None
    else:
        out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"seeds {seeds!r}: give distinct seeds")
    return out


def load_best(path) -> dict:
    """A sweep's best.json (``path`` is the file or the sweep directory)."""
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / "best.json"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        doc["model"], doc["params"]  # noqa: B018 (required keys)
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{p}: not a sweep's best.json (mmrecsys sweep writes it)") from None
    doc["_path"] = str(p)
    return doc


def _finished(run: pathlib.Path) -> bool:
    from ..train.trainer import _load_checkpoint
    if not (run / "last.pt").is_file() or not (run / "metrics.json").is_file():
        return False
    try:
        return bool(_load_checkpoint(run / "last.pt", "cpu").get("finished"))
    except (RunError, AttributeError):
        return False


def run_one(ds: Dataset, model: str, file_cfg: dict, overrides: dict, run: pathlib.Path,
            device: str) -> tuple[str, dict, list[dict]]:
    """Train, resume or reuse one run; (status, metrics.json, history)."""
    from ..api import _read_history, fit
    from ..train.trainer import fit as train_fit
    cfg = run_config(model, ds, file_cfg, overrides)
    if (run / "config.yaml").is_file():
        have = load_yaml(run / "config.yaml")
        diff = config_differences(have, cfg)
        if diff:
            raise RunError(f"{run} holds a run of another configuration (differs in "
                           f"{', '.join(diff[:6])}); remove it or choose another --out")
        if _finished(run):
            metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
            return "reused", metrics, _read_history(run / "history.csv")
        res = train_fit(ds, config=have, run_dir=run, resume=True, device=device,
                        log=logger.info)
        metrics = {k: v for k, v in res.items() if k not in ("history", "model", "config",
                                                               "run_dir")}
        return "resumed", metrics, res["history"]
    m = fit(ds, model, out=run, device=device, config=file_cfg, **overrides)
    return "trained", m.metrics, m.history


def _fmt_run(ev: dict) -> str:
    eta = ev.get("eta_seconds")
    from .sweep import _duration
    left = "" if eta is None else f", about {_duration(eta)} left"
    v = ev.get("valid")
    t = ev.get("test")
    return (f"[{ev['done']}/{ev['total']}{left}] {ev['model']} on {ev['dataset']} seed "
            f"{ev['seed']}: {ev['status']}, valid {ev['metric']} "
            f"{'n/a' if v is None else f'{v:.4f}'}, test {'n/a' if t is None else f'{t:.4f}'} "
            f"(best epoch {ev['best_epoch']}), {ev['seconds']:.1f}s")


def compare(models, data=("synthetic",), seeds=5, out="compare", *, baseline: str | None = None,
            best=(), overrides: dict | None = None, metrics=DEFAULT_METRICS, device: str = "auto",
            plots: bool = True, progress: Callable[[dict], None] | None = None) -> dict:
    """Train (or reuse) every model × dataset × seed and write the table and the plots.

    Args:
        models: model names.
        data: dataset folders, ``"synthetic"`` or :class:`Dataset` objects.
        seeds: a number of seeds (1..N) or a list of seeds.
        out: the comparison directory.
        baseline: the model the t-test compares the best one with (default: the best other).
        best: sweep directories or best.json files; each applies to its model on the dataset
            of the same name.
        overrides: configuration keys for every run (e.g. ``{"epochs": 60}``); they win over
            presets and best.json.
        metrics: the test metrics of the table.
        progress: called with one event dict per finished run (``format_event`` renders it).

    Returns ``{"table_md", "table_csv", "plots", "runs", "rows"}``.
    """
    from ..api import load_dataset
    from ..models import get_model_class
    models = [get_model_class(m).name for m in models]
    if len(set(models)) != len(models):
        raise ConfigError(f"models {models}: each once")
    if baseline is not None:
        baseline = get_model_class(baseline).name
        if baseline not in models:
            raise ConfigError(f"baseline {baseline} is not among the compared models {models}")
    seeds = parse_seeds(seeds)
    overrides = dict(overrides or {})
    if "seed" in overrides:
        raise ConfigError("seed is set per run by --seeds; drop it from --set")
    datasets = [d if isinstance(d, Dataset) else load_dataset(d) for d in
                ([data] if isinstance(data, (str, pathlib.Path, Dataset)) else data)]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"datasets {names}: two have the same name")
    bests: dict[tuple[str, str], dict] = {}
    for b in best or ():
        doc = load_best(b)
        key = (get_model_class(doc["model"]).name, doc.get("dataset"))
        if key[0] not in models:
            raise ConfigError(f"{doc['_path']} is a sweep of {key[0]}, which is not compared")
        if key[1] not in names:
            raise ConfigError(f"{doc['_path']} was selected on dataset {key[1]!r}, not on "
                              f"{', '.join(names)}")
        if key in bests:
            raise ConfigError(f"two best.json for {key[0]} on {key[1]}")
        bests[key] = doc
    for d in datasets:  # every configuration is checked before anything trains
        for m in models:
            run_config(m, d, _file_cfg(bests.get((m, d.name))), {**overrides, "seed": seeds[0]})
            _check_metrics(m, d, metrics, _file_cfg(bests.get((m, d.name))), overrides)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    emit = progress or (lambda ev: None)
    total = len(datasets) * len(models) * len(seeds)
    results: list[dict] = []
    spent: dict[str, list[float]] = {}
    done = 0
    for d in datasets:
        for m in models:
            doc = bests.get((m, d.name))
            for s in seeds:
                run = out / "runs" / f"{m}-{d.name}-seed{s}"
                t0 = time.perf_counter()
                status, met, hist = run_one(d, m, _file_cfg(doc), {**overrides, "seed": s}, run,
                                            device)
                secs = time.perf_counter() - t0
                done += 1
                if status != "reused":
                    spent.setdefault(m, []).append(secs)
                vm = _valid_metric(m, d, doc, overrides)
                results.append({"model": m, "dataset": d.name, "seed": s, "run_dir": str(run),
                                "status": status, "metrics": met, "history": hist,
                                "seconds": round(secs, 3), "config": "best.json" if doc else
                                "preset"})
                ev = {"kind": "run", "model": m, "dataset": d.name, "seed": s, "status": status,
                      "metric": vm, "valid": (met.get("valid") or {}).get(vm),
                      "test": (met.get("test") or {}).get("recall@20"),
                      "best_epoch": met.get("best_epoch"), "seconds": round(secs, 3),
                      "run_dir": str(run), "done": done, "total": total,
                      "eta_seconds": _eta(spent, results, datasets, models, seeds)}
                logger.info(_fmt_run(ev))
                emit(ev)
    rows = table_rows(results, models, names, seeds, metrics, baseline)
    md = render_markdown(rows, models, names, seeds, metrics, baseline, bests, overrides)
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "table.csv", render_csv(rows))
    paths = draw(results, out / "plots", models, names) if plots else []
    return {"table_md": out / "table.md", "table_csv": out / "table.csv", "plots": paths,
            "runs": results, "rows": rows, "markdown": md}


def _file_cfg(doc: dict | None) -> dict:
    """The configuration layer of a sweep's selection: its fixed keys, then its parameters."""
    if not doc:
        return {}
    return {**(doc.get("fixed") or {}), **doc["params"]}


def _check_metrics(model, ds, metrics, file_cfg, overrides):
    cfg = run_config(model, ds, file_cfg, overrides)
    for m in metrics:
        name, _, k = m.partition("@")
        if not k.isdigit() or int(k) not in cfg["topk"]:
            raise ConfigError(f"table metric {m}: {model} computes topk={cfg['topk']}; add "
                              f"--set topk=[...] or choose other --metric")


def _valid_metric(model, ds, doc, overrides) -> str:
    if doc and doc.get("metric"):
        return doc["metric"]
    return run_config(model, ds, _file_cfg(doc), overrides)["valid_metrics"][0]


def _eta(spent, results, datasets, models, seeds) -> float | None:
    """Time left: each remaining run costs its model's mean so far (else the overall mean)."""
    allv = [x for v in spent.values() for x in v]
    if not allv:
        return None
    overall = sum(allv) / len(allv)
    done = {(r["dataset"], r["model"], r["seed"]) for r in results}
    left = 0.0
    for d in datasets:
        for m in models:
            per = spent.get(m)
            cost = sum(per) / len(per) if per else overall
            left += cost * sum((d.name, m, s) not in done for s in seeds)
    return left


# ------------------------------------------------------------------------------ the table
def table_rows(results, models, datasets, seeds, metrics, baseline=None) -> list[dict]:
    """One row per dataset × metric × model: mean, std, values by seed, and for the column's
    best model the improvement over the best other and the t-test against the baseline."""
    import numpy as np
    from scipy import stats
    by = {(r["dataset"], r["model"], r["seed"]): r["metrics"] for r in results}
    rows = []
    for d in datasets:
        for met in metrics:
            vals = {m: [((by.get((d, m, s)) or {}).get("test") or {}).get(met) for s in seeds]
                    for m in models}
            means = {m: float(np.mean([v for v in vs if v is not None])) if any(
                v is not None for v in vs) else float("nan") for m, vs in vals.items()}
            ranked = sorted((m for m in models if math.isfinite(means[m])),
                            key=lambda m: -means[m])
            best = ranked[0] if ranked else None
            other = ranked[1] if len(ranked) > 1 else None
            ref = baseline if baseline and baseline != best else other
            improvement = p_value = None
            if best and other and means[other] > 0:
                improvement = 100.0 * (means[best] - means[other]) / means[other]
            if best and ref:
                pairs = [(a, b) for a, b in zip(vals[best], vals[ref])
                         if a is not None and b is not None]
                if len(pairs) >= 2:
                    a, b = np.array(pairs).T
                    if np.allclose(a, b):
                        p_value = 1.0
                    else:
                        with np.errstate(all="ignore"):
                            p_value = float(stats.ttest_rel(a, b).pvalue)
            for m in models:
                vs = [v for v in vals[m] if v is not None]
                std = float(np.std(vs, ddof=1)) if len(vs) > 1 else 0.0
                rows.append({"dataset": d, "metric": met, "model": m, "mean": means[m],
                             "std": std, "n": len(vs),
                             "seeds": ";".join(str(s) for s in seeds),
                             "values": ";".join("" if v is None else f"{v:.6f}" for v in vals[m]),
                             "best": m == best,
                             "improvement_pct": improvement if m == best else None,
                             "vs": (other if m == best else None),
                             "baseline": ref if m == best else None,
                             "p_value": p_value if m == best else None})
    return rows


def _label(metric: str) -> str:
    name, _, k = metric.partition("@")
    return f"{_SHORT.get(name, name)}@{k}"


def render_markdown(rows, models, datasets, seeds, metrics, baseline=None, bests=None,
                    overrides=None) -> str:
    cell = {(r["dataset"], r["metric"], r["model"]): r for r in rows}
    cols = [(d, m) for d in datasets for m in metrics]
    head = ["Model"] + [f"{d} {_label(m)}" if len(datasets) > 1 else _label(m) for d, m in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        out = [model + (" (best.json)" if bests and any(k[0] == model for k in bests) else "")]
        for d, m in cols:
            r = cell[(d, m, model)]
            if not math.isfinite(r["mean"]):
                out.append("n/a")
                continue
            txt = f"{r['mean']:.4f} ± {r['std']:.4f}"
            out.append(f"**{txt}**" if r["best"] else txt)
        lines.append("| " + " | ".join(out) + " |")
    imp, pv = ["Improv."], ["p-value"]
    for d, m in cols:
        b = next((r for r in rows if r["dataset"] == d and r["metric"] == m and r["best"]), None)
        if b is None or b["improvement_pct"] is None:
            imp.append("n/a")
        else:
            imp.append(f"{b['improvement_pct']:+.2f}% ({b['model']} vs {b['vs']})")
        if b is None or b["p_value"] is None or not math.isfinite(b["p_value"]):
            pv.append("n/a")
        else:
            pv.append(f"{b['p_value']:.3g} (vs {b['baseline']})")
    lines += ["| " + " | ".join(imp) + " |", "| " + " | ".join(pv) + " |"]
    title = "Test metrics at the best validation epoch"
    note = (f"Mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))}); each run selects "
            f"its epoch on validation only. Bold: the best mean per column. Improv.: relative "
            f"improvement of the best model over the best other. p-value: paired t-test over "
            f"seeds (scipy ttest_rel) of the best model against "
            f"{baseline + ' (--baseline)' if baseline else 'the best other model'}.")
    if overrides:
        note += (" Every run with " + ", ".join(f"{k}={v}" for k, v in overrides.items())
                 + " (--set).")
    if bests:
        note += " (best.json): the configuration a sweep selected on validation (" + ", ".join(
            f"{k[0]} on {k[1]}: {v['_path']}" for k, v in bests.items()) + ")."
    return f"## {title}\n\n" + "\n".join(lines) + f"\n\n{note}\n"


def render_csv(rows) -> str:
    buf = io.StringIO()
    cols = ["dataset", "metric", "model", "mean", "std", "n", "seeds", "values", "best",
            "improvement_pct", "vs", "baseline", "p_value"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in cols})
    return buf.getvalue()


def draw(results, out: pathlib.Path, models, datasets, metric="recall@20") -> list[pathlib.Path]:
    """Validation curves, user groups and item subsets per dataset (PNG files)."""
    from .plots import plot_curves, plot_items, plot_user_groups
    paths = []
    for d in datasets:
        mine = [r for r in results if r["dataset"] == d]
        hist = {m: [r["history"] for r in mine if r["model"] == m] for m in models}
        mets = {m: [r["metrics"] for r in mine if r["model"] == m] for m in models}
        paths.append(plot_curves(hist, out / f"valid_curves_{d}.png", metric,
                                 title=f"{d}: validation {metric} (bold: mean over seeds)"))
        for fn, name in ((plot_user_groups, "user_groups"), (plot_items, "items")):
            p = fn(mets, out / f"{name}_{d}.png", metric, title=f"{d}: test {metric}"
                   + (" by user group (mean ± std over seeds)" if name == "user_groups" else
                      ": all items vs item subsets (mean ± std over seeds)"))
            if p is not None:
                paths.append(p)
    return paths

