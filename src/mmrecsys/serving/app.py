"""HTTP serving of a trained model (FastAPI): ``mmrecsys serve RUN_DIR``.

A thin layer over :class:`mmrecsys.TrainedModel` (the public API): the model's final
representations are computed once at start-up; each request is answered from them.

Endpoints: ``GET /health``; ``GET /recommend?user=U&k=10``; ``POST /recommend`` with either
``{"users": [..], "k": 10, "exclude_seen": true}`` (known users) or
``{"histories": [[item, ...], ...], "k": 10}`` (users not in the training data: fold-in, see
``TrainedModel.recommend_for_history``); ``GET /similar-items?item=I&k=10`` (cosine
neighbours in the item representation space). The OpenAPI description is at
``/openapi.json``; ``/docs`` (Swagger UI) and ``/redoc`` are served from local copies of their
assets (package ``fastapi-offline``, in the ``[serve]`` extra), never from a CDN: without that
package ``/docs`` says so and points at ``/openapi.json``.

Errors are 4xx with a ``detail`` message: 404 for an unknown user or item id, 422 for an
invalid parameter. A list never holds more items than the user has not seen (so ``k`` larger
than that returns fewer items, and ``available`` says how many there were), never a masked
item.
"""
import math
import warnings

import numpy as np

from ..api import RecommendationWarning, TrainedModel
from ..errors import RequestError, UnknownIdError


def _num(v: float):
    """A JSON-safe score: non-finite values (a diverged model) become null."""
    v = float(v)
    return v if math.isfinite(v) else None


def _rows(ids: np.ndarray, scores: np.ndarray, key: str = "score") -> list[list[dict]]:
    """Per row, the valid entries (id ≥ 0) as [{"item": i, key: s}, ...]."""
    return [[{"item": int(i), key: _num(v)} for i, v in zip(r, sc) if i >= 0]
            for r, sc in zip(ids, scores)]


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecommendationWarning)
        return fn(*args, **kw)


def _request_models():
    from pydantic import BaseModel, Field, conlist, model_validator

    class RecommendRequest(BaseModel):
        """Known users (``users``) or new users given by their item histories (``histories``)."""
        users: conlist(int, min_length=1, max_length=10000) | None = None
        histories: conlist(conlist(int, min_length=1, max_length=10000), min_length=1,
                           max_length=1000) | None = None
        k: int = Field(10, ge=1, le=1000)
        exclude_seen: bool = True

        @model_validator(mode="after")
        def one_of(self):
            if (self.users is None) == (self.histories is None):
                raise ValueError("give exactly one of 'users' (known user ids) or 'histories' "
                                 "(lists of item ids of new users)")
            return self

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


def create_app(model: TrainedModel):
    """The FastAPI application answering from ``model`` (a :class:`mmrecsys.TrainedModel`)."""
    try:
        from fastapi import Query
    except ImportError as e:  # pragma: no cover
        raise ImportError("serving needs FastAPI and uvicorn: pip install 'mmrecsys[serve]'") from e
    RecommendRequest = _request_models()
    data = model.data
    n_unseen = data.n_items - np.diff(data.train.indptr)

    app = _make_app(title="mmrecsys", description="Top-K recommendations from a trained run.")

    def lists(users, k, exclude_seen):
        ids, scores = _quiet(model.recommend, users, k, filter_seen=exclude_seen)
        out = []
        for u, row in zip(users, _rows(ids, scores)):
            item = {"user": int(u), "items": row}
            if len(row) < k:
                item["available"] = int(n_unseen[u]) if exclude_seen else data.n_items
            out.append(item)
        return out

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model.name, "run": str(model.run_dir or ""),
                "users": data.n_users, "items": data.n_items}

    @app.get("/recommend")
    def recommend_one(user: int, k: int = Query(10, ge=1, le=1000), exclude_seen: bool = True):
        """Top-k unseen items of one user (fewer when the user has seen almost everything)."""
        try:
            return lists([user], k, exclude_seen)[0]
        except RequestError as e:
            raise _http_error(e) from None

    @app.post("/recommend")
    def recommend_many(req: RecommendRequest):
        """Top-k unseen items of each listed user, or of each item history (fold-in)."""
        try:
            if req.users is not None:
                return {"results": lists(req.users, req.k, req.exclude_seen)}
            ids, scores = _quiet(model.recommend_for_history, req.histories, req.k,
                                 filter_seen=req.exclude_seen)
            return {"results": [{"history": h, "items": row}
                                for h, row in zip(req.histories, _rows(ids, scores))]}
        except RequestError as e:
            raise _http_error(e) from None

    @app.get("/similar-items")
    def similar(item: int, k: int = Query(10, ge=1, le=1000)):
        """Nearest items by cosine similarity of the item representations."""
        try:
            ids, sims = _quiet(model.similar_items, [item], k)
        except RequestError as e:
            raise _http_error(e) from None
        return {"item": item, "items": _rows(ids, sims, "similarity")[0]}

    return app
