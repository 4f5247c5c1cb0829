"""Experiments: hyperparameter sweeps that select on validation only, multi-seed comparisons,
paper-style tables and plots.

* :func:`sweep` (``mmrecsys sweep``): an Optuna study (grid or TPE) of full training runs; the
  objective is the validation metric at each trial's best epoch; test metrics are recorded and
  never read by the selection.
* :func:`compare` (``mmrecsys compare``): models × datasets × seeds with their presets or a
  sweep's ``best.json``; ``table.md``/``table.csv`` (mean ± std, best in bold, relative
  improvement, paired t-test over seeds) and plots.
* :mod:`.plots` (``mmrecsys plot``): validation curves, Recall@20 by user group, warm/new/cold
  items.

Needs the ``experiments`` extra (``pip install 'mmrecsys[experiments]'``: optuna, matplotlib).
Nothing here prints: progress goes to a callback and the ``mmrecsys`` logger.
"""
from .compare import compare
from .sweep import format_event, model_space, select_best, sweep

__all__ = ["sweep", "compare", "select_best", "model_space", "format_event"]
