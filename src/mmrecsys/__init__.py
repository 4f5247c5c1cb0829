"""mmrecsys: multimodal graph recommendation (LGMRec, MMHCL, REARM and baselines).

The public API (see :mod:`mmrecsys.api`)::

    import mmrecsys as mr
    data = mr.load_dataset("synthetic")
    model = mr.fit(data, "lightgcn", epochs=50, seed=1)
    ids, scores = model.recommend([0, 7], k=10)
"""
__version__ = "0.1.0"

from .api import (RecommendationWarning, RunError, TrainedModel, fit, load,  # noqa: E402
                  load_dataset)

__all__ = ["load_dataset", "fit", "load", "TrainedModel", "RunError", "RecommendationWarning",
           "__version__"]
