"""Test helper: test metrics recomputed independently from a run's ``topk_test.tsv``."""
import numpy as np


def recompute_from_topk(run, data, topk=(5, 10, 20, 50),
                        metrics=("recall", "ndcg", "precision")):
    """Recall/NDCG/Precision@K from topk_test.tsv and the test split alone (MMRec's definitions).

    Also checks that the file lists exactly the users with test rows.
    """
    lists = {}
    for line in (run / "topk_test.tsv").read_text().splitlines():
        u, *items = map(int, line.split("\t"))
        lists[u] = items
    test = data.test
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    assert sorted(lists) == users.tolist()
    out = {f"{m}@{k}": [] for m in metrics for k in topk}
    for u in users:
        truth = set(test.indices[test.indptr[u]:test.indptr[u + 1]].tolist())
        for k in topk:
            hits = [i in truth for i in lists[u][:k]]
            dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1 / np.log2(r + 2) for r in range(min(k, len(truth))))
            value = {"recall": sum(hits) / len(truth), "precision": sum(hits) / k,
                     "ndcg": dcg / idcg}
            for m in metrics:
                out[f"{m}@{k}"].append(value[m])
    return {k: float(np.mean(v)) for k, v in out.items()}
