"""mmrecsys: multimodal graph recommendation (LGMRec, MMHCL, REARM and baselines).

The public API (see :mod:`mmrecsys.api`)::

    import mmrecsys as mr
    data = mr.load_dataset("synthetic")
    model = mr.fit(data, "lightgcn", epochs=50, seed=1)
    ids, scores = model.recommend([0, 7], k=10)
"""
__version__ = "0.1.0"

from .api import RecommendationWarning, TrainedModel, fit, load, load_dataset  # noqa: E402
from .errors import (ConfigError, DataError, MMRecError, RequestError, RunError,  # noqa: E402
                     UnknownIdError)

__all__ = ["load_dataset", "fit", "load", "TrainedModel", "RecommendationWarning", "MMRecError",
           "ConfigError", "DataError", "RunError", "RequestError", "UnknownIdError",
           "__version__"]
