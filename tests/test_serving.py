"""The HTTP service and the Recommender it wraps, on a tiny trained run."""
import numpy as np
import pytest

from mmrecsys.data.synthetic import make_synthetic
from mmrecsys.serving.app import Recommender, create_app
from mmrecsys.train import fit

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def rec():
    data = make_synthetic(200, 80, seed=3)
    res = fit(data, "lightgcn", {"epochs": 2, "topk": [5, 10, 20]}, log=None)
    return Recommender(res["model"], data)


def test_recommend_excludes_training_items_and_is_sorted(rec):
    out = rec.recommend([0, 5, 7], k=10)
    assert set(out) == {0, 5, 7}
    for u, rows in out.items():
        items = [r["item"] for r in rows]
        scores = [r["score"] for r in rows]
        assert len(items) == 10 == len(set(items))
        assert not set(items) & set(rec.data.train[u].indices)
        assert scores == sorted(scores, reverse=True)
        user_repr, item_repr = rec.reps
        np.testing.assert_allclose(scores, (item_repr[items] @ user_repr[u]).numpy(), rtol=1e-5)


def test_exclude_seen_false_ranks_everything(rec):
    u = 1
    user_repr, item_repr = rec.reps
    best = int((item_repr @ user_repr[u]).argmax())
    assert rec.recommend([u], k=1, exclude_seen=False)[u][0]["item"] == best


def test_http_endpoints(rec):
    client = TestClient(create_app(rec))
    assert client.get("/health").json()["items"] == 80
    one = client.get("/recommend", params={"user": 3, "k": 4}).json()
    assert one["user"] == 3 and len(one["items"]) == 4
    many = client.post("/recommend", json={"users": [3, 4], "k": 4}).json()
    assert [r["user"] for r in many["results"]] == [3, 4]
    assert [r["item"] for r in many["results"][0]["items"]] == [r["item"] for r in one["items"]]
    np.testing.assert_allclose([r["score"] for r in many["results"][0]["items"]],
                               [r["score"] for r in one["items"]], rtol=1e-5)
    sim = client.get("/similar-items", params={"item": 2, "k": 3}).json()
    assert len(sim["items"]) == 3 and all(r["item"] != 2 for r in sim["items"])
    assert client.get("/recommend", params={"user": 10 ** 6}).status_code == 404
    assert client.post("/recommend", json={"users": [], "k": 4}).status_code == 422
    assert client.get("/recommend", params={"user": 1, "k": 0}).status_code == 422
