"""Full-ranking evaluation and metrics (protocol §4)."""
from .metrics import METRICS, per_user_metrics
from .ranking import (DEFAULT_TOPK, EvalResult, Ranking, evaluate, heldout_users,
                      items_with_train_degree, rank_users, user_group_report)

__all__ = ["METRICS", "per_user_metrics", "DEFAULT_TOPK", "EvalResult", "Ranking", "evaluate", "heldout_users", "rank_users",
           "items_with_train_degree", "user_group_report"]
