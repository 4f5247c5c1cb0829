"""HTTP serving of a trained run (FastAPI): ``mmrecsys serve RUN_DIR``.

The model's final representations are computed once at start-up; each request scores the
asked users against all items, masks their training items and returns the top K.

Endpoints: ``GET /health``, ``GET /recommend?user=U&k=10``, ``POST /recommend``
(``{"users": [..], "k": 10, "exclude_seen": true}``), ``GET /similar-items?item=I&k=10``
(cosine neighbours in the item representation space). The OpenAPI description is at
``/openapi.json``; ``/docs`` (Swagger UI) and ``/redoc`` are served from local copies of their
assets (package ``fastapi-offline``, in the ``[serve]`` extra), never from a CDN: without that
package ``/docs`` says so and points at ``/openapi.json``.

Errors are 4xx with a ``detail`` message: 404 for an unknown user or item id, 422 for an
invalid parameter. A list never holds more items than the user has not seen (so ``k`` larger
than that returns fewer items), and never a masked item.
"""
import math

import numpy as np
import torch

from ..errors import RequestError, UnknownIdError
from ..evaluation.ranking import rank_topk


def _ids(values, kind: str, n: int) -> np.ndarray:
    """Python/NumPy integer ids checked against 0..n-1 before any int64 conversion (an id
    beyond the int64 range is an unknown id, not an overflow)."""
    if isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    elif not isinstance(values, (list, tuple)):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise RequestError(f"{kind} id {v!r} is not an integer")
        if not 0 <= int(v) < n:
            raise UnknownIdError(f"{kind} id {int(v)} out of range 0..{n - 1}")
        out.append(int(v))
    return np.asarray(out, dtype=np.int64)


def _k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RequestError(f"k={k!r}: must be an integer of at least 1")
    return int(k)


def _num(v: float):
    """A JSON-safe score: non-finite values (a diverged model) become null."""
    v = float(v)
    return v if math.isfinite(v) else None

class Recommender:
    """Top-K answers from a loaded model and its dataset (no HTTP: usable from Python)."""

    def __init__(self, model, data, run_dir=None):
        self.model, self.data, self.run_dir = model, data, str(run_dir) if run_dir else None
        self.device = next(model.parameters()).device
        with torch.no_grad():
            model.eval()
            self.reps = model.representations()

    @classmethod
    def from_run(cls, run_dir, data=None, device="cpu"):
        from ..cli import _load_run
        model, _, ds = _load_run(run_dir, data, device)
        return cls(model, ds, run_dir)

    def check_users(self, users) -> np.ndarray:
        return _ids(users, "user", self.data.n_users)

    def recommend(self, users, k: int = 10, exclude_seen: bool = True) -> dict[int, list[dict]]:
        """Top-``k`` unseen items of each user, best first: at most as many as the user has
        not seen (``exclude_seen``), never a masked item."""
        u = self.check_users(users)
        k = min(_k(k), self.data.n_items)
        mask = self.data.train if exclude_seen else _no_mask(self.data)
        n_unseen = self.data.n_items - np.diff(mask.indptr)
        out = {}
        with torch.no_grad():
            for s, e, top, vals in rank_topk(lambda x: self.model.score(x, self.reps), u,
                                             self.data.n_items, mask, k, device=self.device,
                                             with_scores=True):
                for uid, items, sc in zip(u[s:e], top.cpu().numpy(), vals.cpu().numpy()):
                    keep = min(k, int(n_unseen[uid]))  # the masked items rank last
                    out[int(uid)] = [{"item": int(i), "score": _num(v)}
                                     for i, v in zip(items[:keep], sc[:keep])]
        return out

    def similar_items(self, item: int, k: int = 10) -> list[dict]:
        item = int(_ids(item, "item", self.data.n_items)[0])
        k = min(_k(k), self.data.n_items - 1)
        if k < 1:
            return []
        items = torch.nn.functional.normalize(self.reps[1].float(), dim=1)
        sims = items @ items[item]
        sims[item] = -torch.inf
        v, i = torch.topk(sims, k)
        return [{"item": int(a), "similarity": _num(b)} for a, b in zip(i.cpu(), v.cpu())]


def _no_mask(data):
    import scipy.sparse as sp
    return sp.csr_matrix((data.n_users, data.n_items), dtype=np.float32)


def _request_model():
    from pydantic import BaseModel, Field, conlist

    class RecommendRequest(BaseModel):
        users: conlist(int, min_length=1, max_length=10000)
        k: int = Field(10, ge=1, le=1000)
        exclude_seen: bool = True

    return RecommendRequest


def _http_error(e: RequestError):
    from fastapi import HTTPException
    return HTTPException(status_code=404 if isinstance(e, UnknownIdError) else 422, detail=str(e))


def offline_docs_available() -> bool:
    try:
        import fastapi_offline  # noqa: F401
    except ImportError:
        return False
    return True


def _make_app(**kw):
    """FastAPI with /docs and /redoc served from local assets, or without them (no CDN)."""
    from fastapi import FastAPI
    if offline_docs_available():
        from fastapi_offline import FastAPIOffline
        return FastAPIOffline(**kw)
    from fastapi.responses import PlainTextResponse
    app = FastAPI(docs_url=None, redoc_url=None, **kw)

    @app.get("/docs", include_in_schema=False, response_class=PlainTextResponse)
    def no_docs():
        return ("Swagger UI is not installed here (it is served from local files, never from "
                "a CDN): pip install 'mmrecsys[serve]'. The OpenAPI description is at "
                "/openapi.json.\n")

    return app


def create_app(rec: Recommender):
    try:
        from fastapi import Query
    except ImportError as e:  # pragma: no cover
        raise ImportError("serving needs FastAPI and uvicorn: pip install 'mmrecsys[serve]'") from e
    RecommendRequest = _request_model()

    app = _make_app(title="mmrecsys", description="Top-K recommendations from a trained run.")

    @app.get("/health")
    def health():
        return {"status": "ok", "model": type(rec.model).__name__, "run": rec.run_dir,
                "users": rec.data.n_users, "items": rec.data.n_items}

    @app.get("/recommend")
    def recommend_one(user: int, k: int = Query(10, ge=1, le=1000), exclude_seen: bool = True):
        """Top-k unseen items of one user (fewer when the user has seen almost everything)."""
        try:
            return {"user": user, "items": rec.recommend([user], k, exclude_seen)[user]}
        except RequestError as e:
            raise _http_error(e) from None

    @app.post("/recommend")
    def recommend_many(req: RecommendRequest):
        """Top-k unseen items of each listed user."""
        try:
            res = rec.recommend(req.users, req.k, req.exclude_seen)
        except RequestError as e:
            raise _http_error(e) from None
        return {"results": [{"user": u, "items": res[u]} for u in req.users]}

    @app.get("/similar-items")
    def similar(item: int, k: int = Query(10, ge=1, le=1000)):
        """Nearest items by cosine similarity of the item representations."""
        try:
            return {"item": item, "items": rec.similar_items(item, k)}
        except RequestError as e:
            raise _http_error(e) from None

    return app
