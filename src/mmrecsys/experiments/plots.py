"""Figures of runs (matplotlib, PNG; no display needed and no global state touched: figures
are drawn with the object API on the Agg canvas, never through pyplot).

* :func:`plot_curves`: validation metric per epoch of several runs (one line per run; runs of
  one label, e.g. the seeds of a model, share a colour and their mean is drawn bold).
* :func:`plot_user_groups`: a test metric by user group (number of training interactions,
  ``metrics["test_user_groups"]``), one bar per label, mean ± std over its runs.
* :func:`plot_items`: a test metric on all test items vs the item subsets the run reports
  (items with 1–2 training rows, new items, cold items).
* :func:`plot_run`: the three figures of one run directory (``mmrecsys plot RUN_DIR``).
"""
from __future__ import annotations

import json
import pathlib
from typing import Iterable

from ..errors import ConfigError, RunError

#: item subsets reported in metrics.json beside the test metrics, and their labels
ITEM_SUBSETS = (("test", "all test items"), ("test_items_1_2_train", "items with 1-2 train rows"),
                ("test_new_items", "new items"), ("test_cold_items", "cold items"))


def _figure(width=7.0, height=4.2):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'mmrecsys[experiments]'") from None
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _colours(n):
    """n distinct colours: tab10 up to 10 series, tab20 up to 20 (tab10 repeats its colours
    from the 11th series on, which made two models' curves indistinguishable)."""
    from matplotlib import colormaps
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _mean_std(values):
    import numpy as np
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(a):
        return float("nan"), 0.0
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def plot_curves(runs: dict[str, list[list[dict]]], path, metric: str = "recall@20",
                title: str = "") -> pathlib.Path:
    """``runs``: label -> histories (one list of per-epoch rows per run)."""
    import numpy as np
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    col = f"valid_{metric}"
    for colour, (label, histories) in zip(_colours(len(runs)), runs.items()):
        series = []
        for h in histories:
            pts = {int(r["epoch"]): float(r[col]) for r in h
                   if r.get(col) not in (None, "") and r.get("epoch") not in (None, "")}
            if pts:
                series.append(pts)
                xs = sorted(pts)
                ax.plot(xs, [pts[x] for x in xs], color=colour, alpha=0.25, linewidth=0.8)
        if not series:
            continue
        # the mean over runs at each epoch all of them reached
        common = sorted(set.intersection(*(set(s) for s in series)))
        if common:
            ax.plot(common, [np.mean([s[x] for s in series]) for x in common], color=colour,
                    linewidth=2, label=f"{label} (n={len(series)})" if len(series) > 1 else label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title or f"validation {metric}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _bars(ax, categories, labelled: dict[str, list[list]], colours):
    """Grouped bars: ``labelled``: label -> one list of values per category (over runs)."""
    import numpy as np
    n = max(len(labelled), 1)
    width = 0.8 / n
    x = np.arange(len(categories))
    for i, (colour, (label, per_cat)) in enumerate(zip(colours, labelled.items())):
        stats = [_mean_std(v) for v in per_cat]
        means = [m for m, _ in stats]
        errs = [s for _, s in stats]
        bars = ax.bar(x + (i - (n - 1) / 2) * width, means, width, label=label, color=colour,
                      yerr=errs if any(errs) else None, capsize=2)
        ax.bar_label(bars, labels=["" if m != m else f"{m:.3f}" for m in means], fontsize=6,
                     padding=2)
    ax.set_xticks(x)
    ax.set_xticklabels(categories, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_user_groups(metrics: dict[str, list[dict]], path, metric: str = "recall@20",
                     title: str = "") -> pathlib.Path | None:
    """``metrics``: label -> metrics.json dicts (one per run). None when no run reports groups."""
    groups: list[str] = []
    users: dict[str, int] = {}
    for ms in metrics.values():
        for m in ms:
            for g in m.get("test_user_groups") or []:
                if g["group"] not in groups and g.get("users"):
                    groups.append(g["group"])
                users.setdefault(g["group"], g.get("users", 0))
    if not groups:
        return None
    labelled = {}
    for label, ms in metrics.items():
        labelled[label] = [[next((g.get(metric) for g in (m.get("test_user_groups") or [])
                                  if g["group"] == grp), None) for m in ms] for grp in groups]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    _bars(ax, [f"{g}\n({users[g]} users)" for g in groups], labelled, _colours(len(labelled)))
    ax.set_xlabel("users by number of training interactions")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title or f"test {metric} by user group")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_items(metrics: dict[str, list[dict]], path, metric: str = "recall@20",
               title: str = "") -> pathlib.Path | None:
    """All test items vs the reported item subsets. None when no run reports a subset."""
    present = [(k, lab) for k, lab in ITEM_SUBSETS
               if any(isinstance(m.get(k), dict) and metric in m[k]
                      for ms in metrics.values() for m in ms)]
    if len(present) < 2:
        return None
    cats = []
    for k, lab in present:
        n = next((m[k].get("items") for ms in metrics.values() for m in ms
                  if isinstance(m.get(k), dict) and m[k].get("items")), None)
        cats.append(f"{lab}\n({n} items)" if n else lab)
    labelled = {label: [[(m.get(k) or {}).get(metric) for m in ms] for k, _ in present]
                for label, ms in metrics.items()}
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    _bars(ax, cats, labelled, _colours(len(labelled)))
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title or f"test {metric}: all items vs item subsets")
    ax.legend(fontsize=8)
    return _save(fig, path)


def read_run(run_dir) -> tuple[dict, list[dict]]:
    """(metrics.json, history.csv rows) of a run directory."""
    from ..api import _read_history
    run = pathlib.Path(run_dir)
    try:
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RunError(f"{run}: no readable metrics.json; not a run directory that has "
                       f"evaluated") from None
    return metrics, _read_history(run / "history.csv")


def plot_loss_and_metrics(history: list[dict], path, metrics: Iterable[str] = ("recall@20",
                                                                                "ndcg@20"),
                          title: str = "") -> pathlib.Path:
    """One run: training loss (left) and validation metrics (right) per epoch."""
    fig = _figure(9.0, 3.8)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ep = [int(r["epoch"]) for r in history if r.get("loss") not in (None, "")]
    ax1.plot(ep, [float(r["loss"]) for r in history if r.get("loss") not in (None, "")])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.grid(alpha=0.3)
    for colour, m in zip(_colours(len(tuple(metrics))), metrics):
        pts = [(int(r["epoch"]), float(r[f"valid_{m}"])) for r in history
               if r.get(f"valid_{m}") not in (None, "")]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=colour,
                     label=f"valid {m}")
    ax2.set_xlabel("epoch")
    ax2.grid(alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_run(run_dir, out=None, metric: str = "recall@20") -> list[pathlib.Path]:
    """The figures of one run: ``curves.png`` (loss and validation metrics), ``user_groups.png``
    and ``items.png`` (when the run reports them), in ``out`` (default RUN_DIR/plots)."""
    run = pathlib.Path(run_dir)
    metrics, history = read_run(run)
    out = pathlib.Path(out) if out is not None else run / "plots"
    label = f"{metrics.get('model', '?')} on {metrics.get('dataset', '?')}"
    ndcg = metric.replace("recall", "ndcg") if metric.startswith("recall") else "ndcg@20"
    paths = [plot_loss_and_metrics(history, out / "curves.png", (metric, ndcg),
                                   title=f"{label} (best epoch {metrics.get('best_epoch')})")]
    for fn, name in ((plot_user_groups, "user_groups.png"), (plot_items, "items.png")):
        p = fn({label: [metrics]}, out / name, metric, title=f"{label}: test {metric}")
        if p is not None:
            paths.append(p)
    return paths


def write_tensorboard(run_dir, logdir=None) -> pathlib.Path:
    """A run's history as TensorBoard scalars (``loss*``, ``valid/<metric>``, ``seconds/*`` per
    epoch; the best epoch's test metrics at that epoch), in ``logdir`` (default
    RUN_DIR/tensorboard). Needs the ``tensorboard`` package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("TensorBoard logs need tensorboard: pip install "
                          "'mmrecsys[tensorboard]'") from None
    run = pathlib.Path(run_dir)
    metrics, history = read_run(run)
    logdir = pathlib.Path(logdir) if logdir is not None else run / "tensorboard"
    with SummaryWriter(log_dir=str(logdir)) as w:
        for row in history:
            step = int(row["epoch"])
            for k, v in row.items():
                if k == "epoch" or not isinstance(v, (int, float)):
                    continue
                tag = (f"valid/{k[len('valid_'):]}" if k.startswith("valid_") else
                       f"seconds/{k[:-len('_seconds')]}" if k.endswith("_seconds") else
                       f"train/{k}")
                w.add_scalar(tag, float(v), step)
        best = metrics.get("best_epoch")
        for k, v in (metrics.get("test") or {}).items():
            if best is not None and best >= 0:
                w.add_scalar(f"test/{k}", float(v), int(best))
    return logdir
