"""Full-ranking evaluation and metrics, as MMRec's (``enoche/MMRec`` ``src/common/trainer.py``
``evaluate``, ``src/utils/topk_evaluator.py``, ``src/utils/metrics.py``)."""
from .metrics import METRICS, per_user_metrics
from .ranking import (DEFAULT_TOPK, EvalResult, Ranking, eval_seed, evaluate, heldout_users,
                      is_stochastic, items_with_train_degree, mask_name, rank_users,
                      representations, seeded, user_group_report)

__all__ = ["METRICS", "per_user_metrics", "DEFAULT_TOPK", "EvalResult", "Ranking", "eval_seed",
           "evaluate", "heldout_users", "is_stochastic", "items_with_train_degree", "mask_name",
           "rank_users", "representations", "seeded", "user_group_report"]
