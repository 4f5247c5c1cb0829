"""HTTP serving of a trained run (FastAPI): ``mmrecsys serve RUN_DIR``.

The model's final representations are computed once at start-up; each request scores the
asked users against all items, masks their training items and returns the top K.

Endpoints: ``GET /health``, ``GET /recommend?user=U&k=10``, ``POST /recommend``
(``{"users": [..], "k": 10, "exclude_seen": true}``), ``GET /similar-items?item=I&k=10``
(cosine neighbours in the item representation space). OpenAPI docs at ``/docs``.
"""
import numpy as np
import torch

from ..evaluation.ranking import rank_topk, representations


class Recommender:
    """Top-K answers from a loaded model and its dataset (no HTTP: usable from Python)."""

    def __init__(self, model, data, run_dir=None, seed: int | None = None):
        """``seed``: the inference noise of a stochastic model (LGMRec) is drawn once from it."""
        self.model, self.data, self.run_dir = model, data, str(run_dir) if run_dir else None
        self.device = next(model.parameters()).device
        model.eval()
        self.reps = representations(model, seed)

    def check_users(self, users) -> np.ndarray:
        u = np.asarray(users, dtype=np.int64).ravel()
        bad = u[(u < 0) | (u >= self.data.n_users)]
        if len(bad):
            raise ValueError(f"user id {int(bad[0])} out of range 0..{self.data.n_users - 1}")
        return u

    def recommend(self, users, k: int = 10, exclude_seen: bool = True) -> dict[int, list[dict]]:
        u = self.check_users(users)
        k = int(min(max(k, 1), self.data.n_items))
        mask = self.data.train if exclude_seen else _no_mask(self.data)
        out = {}
        with torch.no_grad():
            for s, e, top, vals in rank_topk(lambda x: self.model.score(x, self.reps), u,
                                             self.data.n_items, mask, k, device=self.device,
                                             with_scores=True):
                for uid, items, sc in zip(u[s:e], top.cpu().numpy(), vals.cpu().numpy()):
                    out[int(uid)] = [{"item": int(i), "score": float(v)} for i, v in zip(items, sc)]
        return out

    def similar_items(self, item: int, k: int = 10) -> list[dict]:
        if not 0 <= item < self.data.n_items:
            raise ValueError(f"item id {item} out of range 0..{self.data.n_items - 1}")
        items = torch.nn.functional.normalize(self.reps[1].float(), dim=1)
        sims = items @ items[item]
        sims[item] = -torch.inf
        v, i = torch.topk(sims, min(k, self.data.n_items - 1))
        return [{"item": int(a), "similarity": float(b)} for a, b in zip(i.cpu(), v.cpu())]


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


def create_app(rec: Recommender):
    try:
        from fastapi import FastAPI, HTTPException, Query
    except ImportError as e:  # pragma: no cover
        raise ImportError("serving needs FastAPI and uvicorn: pip install 'mmrecsys[serve]'") from e
    RecommendRequest = _request_model()

    app = FastAPI(title="mmrecsys", description="Top-K recommendations from a trained run.")

    @app.get("/health")
    def health():
        return {"status": "ok", "model": type(rec.model).__name__, "run": rec.run_dir,
                "users": rec.data.n_users, "items": rec.data.n_items}

    @app.get("/recommend")
    def recommend_one(user: int, k: int = Query(10, ge=1, le=1000), exclude_seen: bool = True):
        try:
            return {"user": user, "items": rec.recommend([user], k, exclude_seen)[user]}
        except ValueError as e:
            raise HTTPException(status_code=404, detail=str(e)) from None

    @app.post("/recommend")
    def recommend_many(req: RecommendRequest):
        try:
            res = rec.recommend(req.users, req.k, req.exclude_seen)
        except ValueError as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        return {"results": [{"user": u, "items": res[u]} for u in req.users]}

    @app.get("/similar-items")
    def similar(item: int, k: int = Query(10, ge=1, le=1000)):
        try:
            return {"item": item, "items": rec.similar_items(item, k)}
        except ValueError as e:
            raise HTTPException(status_code=404, detail=str(e)) from None

    return app
