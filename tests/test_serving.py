"""The HTTP service over the public API's TrainedModel, on a tiny trained model."""
import numpy as np
import pytest
import torch

import mmrecsys as mr
from mmrecsys.serving.app import create_app

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def model():
    data = mr.load_dataset("synthetic", n_users=200, n_items=80, seed=3)
    return mr.fit(data, "lightgcn", epochs=2, topk=[5, 10, 20])


@pytest.fixture(scope="module")
def client(model):
    return TestClient(create_app(model))


def test_recommend_excludes_training_items_and_is_sorted(model, client):
    out = client.post("/recommend", json={"users": [0, 5, 7], "k": 10}).json()["results"]
    assert [r["user"] for r in out] == [0, 5, 7]
    with torch.no_grad():
        user_repr, item_repr = model.model.representations()
    for r in out:
        u = r["user"]
        items = [x["item"] for x in r["items"]]
        scores = [x["score"] for x in r["items"]]
        assert len(items) == 10 == len(set(items))
        assert not set(items) & set(model.data.train[u].indices)
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, (item_repr[items] @ user_repr[u]).numpy(), rtol=1e-5)


def test_exclude_seen_false_ranks_everything(model, client):
    u = 1
    with torch.no_grad():
        user_repr, item_repr = model.model.representations()
    best = int((item_repr @ user_repr[u]).argmax())
    r = client.get("/recommend", params={"user": u, "k": 1, "exclude_seen": "false"}).json()
    assert r["items"][0]["item"] == best


def test_http_endpoints(client):
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
    assert client.get("/openapi.json").json()["paths"]["/recommend"]


def test_fold_in_history_over_http(model, client):
    r = client.post("/recommend", json={"histories": [[1, 2, 3], [7]], "k": 5})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    ids, _ = model.recommend_for_history([[1, 2, 3], [7]], k=5)
    assert [x["item"] for x in res[0]["items"]] == ids[0].tolist()
    assert not {1, 2, 3} & {x["item"] for x in res[0]["items"]}
    # exactly one of users / histories; bad item ids are 404
    assert client.post("/recommend", json={"k": 5}).status_code == 422
    assert client.post("/recommend", json={"users": [1], "histories": [[1]]}).status_code == 422
    assert client.post("/recommend", json={"histories": [[10 ** 30]]}).status_code == 404
    assert client.post("/recommend", json={"histories": [[]]}).status_code == 422
