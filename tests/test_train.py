"""Training end to end: learning, run directories, determinism, resume, early stopping, CLI."""
from __future__ import annotations

import csv
import gc
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.config import load_yaml, resolve_config
from mmrecsys.data import load_dataset
from mmrecsys.data.synthetic import write_synthetic
from mmrecsys.errors import RunError
from mmrecsys.evaluation import evaluate
from mmrecsys.models import get_model_class
from mmrecsys.train import build_model, fit, seed_everything
from mmrecsys.train.trainer import EarlyStopping

FAST = {"epochs": 3, "batch_size": 256, "lr": 0.01, "seed": 7}


@pytest.fixture(scope="module", autouse=True)
def _env(isolated_cache):
    """Before any other fixture of the module: its graph caches in a temporary folder."""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "syn", 300, 150, seed=0)


@pytest.fixture(scope="module")
def data(data_dir):
    return load_dataset(data_dir)


@pytest.fixture(scope="module")
def lgn_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "lgn"
    res = fit(data, "lightgcn", dict(FAST), run_dir=run, log=None)
    return run, res


def _strip_seconds(history):
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in history]


def _untrained_valid_recall(data, model, overrides):
    cls = get_model_class(model)
    cfg = resolve_config(cls, data.name, None, overrides)
    cfg["model"] = cls.name
    seed_everything(cfg["seed"])  # fit() seeds the same way before building its model
    net = build_model(data, cfg, "cpu")
    return evaluate(net, data, "valid").metrics["recall@20"]


# ------------------------------------------------------------------ learning
@pytest.mark.parametrize("model, overrides", [
    ("lightgcn", FAST),
    ("bpr", {**FAST, "epochs": 4, "lr": 0.05}),
])
def test_models_learn(data, model, overrides):
    before = _untrained_valid_recall(data, model, overrides)
    res = fit(data, model, dict(overrides), log=None)
    after = res["valid"]["recall@20"]
    assert after > before + 0.1, (before, after)
    assert after > 0.25  # far above random ranking (≈ 20/150 ≈ 0.13)
    losses = [h["loss"] for h in res["history"]]
    assert losses[-1] < losses[0]
    assert set(res["history"][0]) >= {"loss", "loss_bpr", "loss_reg", "valid_recall@20"}
    # the returned model holds the best weights: re-evaluating gives the reported metrics
    test = evaluate(res["model"], data, "test").metrics
    assert test == pytest.approx(res["test"], abs=1e-12)


# ------------------------------------------------------------------ run directory
def test_run_directory_files(data, lgn_run):
    run, res = lgn_run
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.json", "history.csv", "best.pt", "last.pt",
            "topk_test.tsv"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    # config.yaml is the fully resolved configuration
    cfg = load_yaml(run / "config.yaml")
    assert set(cfg.pop("versions")) == {"mmrecsys", "torch", "numpy", "python"}
    assert cfg == res["config"]
    assert cfg["model"] == "lightgcn" and cfg["epochs"] == 3 and cfg["lr"] == 0.01
    assert cfg["patience"] == 20 and cfg["n_layers"] == 2 and cfg["topk"] == [5, 10, 20, 50]
    assert cfg["data"] == str(data.path)
    # metrics.json
    m = json.loads((run / "metrics.json").read_text())
    assert m["best_epoch"] == res["best_epoch"] and 0 <= m["best_epoch"] < 3
    for split in ("valid", "test"):
        assert set(m[split]) == {f"{n}@{k}" for n in ("recall", "ndcg", "precision", "map")
                                 for k in (5, 10, 20, 50)}
        assert m[split]["recall@20"] == pytest.approx(res[split]["recall@20"])
    valid_curve = [round(h["valid_recall@20"], 4) for h in res["history"]]
    assert m["best_epoch"] == int(np.argmax(valid_curve))  # first epoch with the max (rounded)
    best_row = res["history"][m["best_epoch"]]
    assert best_row["valid_recall@20"] == pytest.approx(m["valid"]["recall@20"])
    assert m["dataset_fingerprint"] == data.fingerprint()
    # history.csv: one row per epoch with loss, valid metrics and seconds
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    for r, h in zip(rows, res["history"]):
        assert float(r["loss"]) == pytest.approx(h["loss"])
        assert float(r["valid_recall@20"]) == pytest.approx(h["valid_recall@20"])
        assert float(r["train_seconds"]) >= 0 and float(r["eval_seconds"]) >= 0
    # best.pt: the best weights reproduce the test metrics
    cls = get_model_class("lightgcn")
    net = build_model(data, cfg, "cpu")
    net.load_state_dict(torch.load(run / "best.pt", weights_only=True))
    got = evaluate(net, data, "test").metrics
    assert got == pytest.approx(m["test"], abs=1e-9)
    assert isinstance(net, cls)
    # topk_test.tsv: every evaluated test user, then 50 item ids in rank order
    lines = (run / "topk_test.tsv").read_text().splitlines()
    test_users = np.flatnonzero(np.diff(data.test.indptr) > 0)
    assert len(lines) == len(test_users)
    full = evaluate(net, data, "test", keep_topk=True)
    for line, u, top in zip(lines, test_users, full.topk):
        fields = line.split("\t")
        assert len(fields) == 51
        assert int(fields[0]) == u
        items = [int(x) for x in fields[1:]]
        assert items == top.tolist()
        assert len(set(items)) == 50 and all(0 <= i < data.n_items for i in items)
        assert not set(items) & set(data.train[u].indices.tolist())


def test_existing_run_is_not_overwritten(data, lgn_run):
    run, _ = lgn_run
    with pytest.raises(RunError, match="resume"):
        fit(data, "lightgcn", dict(FAST), run_dir=run, log=None)


# ------------------------------------------------------------------ determinism
def test_determinism_same_seed(data, lgn_run):
    _, first = lgn_run
    again = fit(data, "lightgcn", dict(FAST), log=None)
    assert _strip_seconds(again["history"]) == _strip_seconds(first["history"])
    assert again["valid"] == first["valid"] and again["test"] == first["test"]
    assert again["best_epoch"] == first["best_epoch"]
    for k, v in first["model"].state_dict().items():
        torch.testing.assert_close(again["model"].state_dict()[k], v, rtol=0, atol=0)
    other = fit(data, "lightgcn", {**FAST, "seed": 8}, log=None)
    assert _strip_seconds(other["history"]) != _strip_seconds(first["history"])


# ------------------------------------------------------------------ resume
class Interrupt(Exception):
    pass


def _interrupt_at(epoch):
    def log(msg, *a, **k):
        if re.match(rf"epoch\s+{epoch} \|", str(msg)):
            raise Interrupt(msg)
    return log


@pytest.mark.parametrize("model, stop_at, checkpoint_every", [
    ("lightgcn", 1, 1),   # crash after epoch 1's evaluation, before its checkpoint
    ("lightgcn", 3, 2),   # last checkpoint two epochs back
    ("bpr", 2, 1),
])
def test_resume_ends_where_an_uninterrupted_run_ends(data, tmp_path, model, stop_at,
                                                     checkpoint_every):
    ov = {**FAST, "epochs": 5, "checkpoint_every": checkpoint_every}
    ref = fit(data, model, dict(ov), run_dir=tmp_path / "ref", log=None)
    run = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        fit(data, model, dict(ov), run_dir=run, log=_interrupt_at(stop_at))
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["epoch"] < stop_at and not ck["finished"]  # really interrupted
    res = fit(data, model, dict(ov), run_dir=run, resume=True, log=None)
    assert len(res["history"]) == 5
    assert _strip_seconds(res["history"]) == _strip_seconds(ref["history"])
    assert res["best_epoch"] == ref["best_epoch"]
    assert res["valid"] == ref["valid"] and res["test"] == ref["test"]
    m_ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    m_res = json.loads((run / "metrics.json").read_text())
    m_ref.pop("model_build_seconds"), m_res.pop("model_build_seconds")
    assert m_res == m_ref
    assert (run / "topk_test.tsv").read_text() == (tmp_path / "ref" / "topk_test.tsv").read_text()
    with open(run / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 5
    a = torch.load(run / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "ref" / "best.pt", weights_only=True)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # resuming a finished run changes nothing
    again = fit(data, model, dict(ov), run_dir=run, resume=True, log=None)
    assert _strip_seconds(again["history"]) == _strip_seconds(ref["history"])
    assert again["test"] == ref["test"]


# ------------------------------------------------------------------ early stopping
@pytest.mark.parametrize("patience, eval_step", [(0, 1), (2, 1), (1, 2)])
def test_early_stopping(data, patience, eval_step):
    # lr 0: the model never changes, so only the first evaluation improves
    ov = {"epochs": 50, "lr": 0.0, "batch_size": 1024, "patience": patience,
          "eval_step": eval_step}
    res = fit(data, "bpr", ov, log=None)
    # evaluations at epochs eval_step-1, 2·eval_step-1, ...; stop after patience+1 bad ones
    assert res["stopped_early"]
    assert res["epochs_run"] == eval_step * (patience + 2)
    assert res["best_epoch"] == eval_step - 1
    evaluated = [h["epoch"] for h in res["history"] if "valid_recall@20" in h]
    assert evaluated == list(range(eval_step - 1, res["epochs_run"], eval_step))


def test_resume_of_early_stopped_runs(data, tmp_path):
    ov = {"epochs": 50, "lr": 0.0, "batch_size": 1024, "patience": 2}
    ref = fit(data, "bpr", dict(ov), run_dir=tmp_path / "ref", log=None)
    m_ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert m_ref["stopped_early"] and m_ref["epochs_run"] == 4
    # resuming the finished run rewrites identical results (stopped_early included)
    fit(data, "bpr", dict(ov), run_dir=tmp_path / "ref", resume=True, log=None)
    m_again = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    m_ref.pop("model_build_seconds"), m_again.pop("model_build_seconds")
    assert m_again == m_ref
    # interrupted in the middle of the patience window: the stopping state is restored
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        fit(data, "bpr", dict(ov), run_dir=run, log=_interrupt_at(2))
    res = fit(data, "bpr", dict(ov), run_dir=run, resume=True, log=None)
    assert res["stopped_early"] and res["epochs_run"] == ref["epochs_run"] == 4
    assert _strip_seconds(res["history"]) == _strip_seconds(ref["history"])


def test_nan_loss_stops_and_keeps_best(data, monkeypatch):
    from mmrecsys.models.bpr import BPR
    original = BPR.loss
    calls = {"n": 0}
    per_epoch = -(-data.train.nnz // 1024)

    def loss(self, users, pos, neg):
        calls["n"] += 1
        out = original(self, users, pos, neg)
        if calls["n"] > 2 * per_epoch:  # every batch from epoch 2 on
            out["bpr"] = out["bpr"] * float("nan")
        return out

    monkeypatch.setattr(BPR, "loss", loss)
    res = fit(data, "bpr", {"epochs": 10, "batch_size": 1024, "lr": 0.01}, log=None)
    assert res["stopped_early"] and res["epochs_run"] == 3
    assert np.isnan(res["history"][-1]["loss"]) and res["best_epoch"] in (0, 1)
    assert all(np.isfinite(v) for v in res["test"].values())
    for p in res["model"].parameters():  # the best (finite) weights are loaded
        assert torch.isfinite(p).all()
    assert evaluate(res["model"], data, "test").metrics == pytest.approx(res["test"], abs=1e-12)


def test_lr_schedule_and_optimizer(data):
    from mmrecsys.train.trainer import _optimizer
    cls = get_model_class("bpr")
    cfg = resolve_config(cls, data.name, None, {"lr": 0.1, "lr_scheduler": [0.5, 2],
                                                "optimizer": "adamw", "weight_decay": 0.01})
    cfg["model"] = "bpr"
    opt, sched = _optimizer(build_model(data, cfg, "cpu"), cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1 * 0.5 ** (e / 2) for e in range(5)])


@pytest.mark.parametrize("model, overrides", [
    ("rearm", {"optimizer": "adamw", "weight_decay": 1e-3}),  # trainable user/item feature tables
    ("mgcn", {}),                                            # trainable item feature tables
    ("lightgcn", {"lr_scheduler": [0.5, 1]}),
])
def test_step_in_backward_makes_the_same_updates(data, model, overrides):
    # every parameter stepped inside backward (threshold 1) against the plain optimiser step
    ov = {**FAST, "epochs": 2, **overrides}
    a = fit(data, model, {**ov, "step_in_backward": 0}, log=None)
    b = fit(data, model, {**ov, "step_in_backward": 1}, log=None)
    assert _strip_seconds(a["history"]) == _strip_seconds(b["history"])
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_step_in_backward_resumes_exactly(data, tmp_path):
    # the learning rate follows the schedule restored from last.pt (new group dicts)
    ov = {**FAST, "epochs": 4, "lr_scheduler": [0.5, 1], "step_in_backward": 1}
    ref = fit(data, "mgcn", dict(ov), run_dir=tmp_path / "ref", log=None)
    run = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        fit(data, "mgcn", dict(ov), run_dir=run, log=_interrupt_at(2))
    res = fit(data, "mgcn", dict(ov), run_dir=run, resume=True, log=None)
    assert _strip_seconds(res["history"]) == _strip_seconds(ref["history"])
    assert res["test"] == ref["test"]


@pytest.mark.parametrize("opt_cls, kw", [(torch.optim.Adam, {"fused": True}),
                                         (torch.optim.AdamW, {"weight_decay": 0.1}),
                                         (torch.optim.Adam, {"weight_decay": 0.1})])
def test_table_gradient_goes_block_by_block_into_adam(opt_cls, kw, monkeypatch):
    from torch import nn
    from mmrecsys.models import layers
    from mmrecsys.train.trainer import step_in_backward
    monkeypatch.setattr(layers, "PROJECT_BLOCK_BYTES", 3 * 4 * 4)   # 3 rows of 4 per block
    torch.manual_seed(0)
    x0, lin0 = torch.randn(10, 4), nn.Linear(4, 3)
    x, lin = nn.Parameter(x0.clone()), nn.Linear(4, 3)
    lin.load_state_dict(lin0.state_dict())
    ref_x, ref_lin = nn.Parameter(x0.clone()), lin0
    opt = opt_cls([x, *lin.parameters()], lr=0.05, **kw)
    ref = opt_cls([ref_x, *ref_lin.parameters()], lr=0.05, **kw)
    step_in_backward(opt, 1)
    assert x in layers.ROW_STEPS
    for _ in range(3):
        (layers.project_table(x, lin) ** 2).sum().backward()
        assert x.grad is None          # applied in backward, never materialised
        opt.step()
        opt.zero_grad(set_to_none=True)
        (ref_lin(ref_x) ** 2).sum().backward()
        ref.step()
        ref.zero_grad(set_to_none=True)
        torch.testing.assert_close(x, ref_x, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(lin.weight, ref_lin.weight, rtol=1e-6, atol=1e-7)
    # a second read is refused (or caught by autograd's version check when it comes first)
    with pytest.raises(RuntimeError, match="twice|inplace"):
        (layers.project_table(x, lin).sum() + layers.project_table(x, lin).sum()).backward()
    with pytest.raises(RuntimeError, match="elsewhere"):
        (layers.project_table(x, lin).sum() + x.sum()).backward()
    # once the optimiser is gone, the table's gradient takes the ordinary path again
    x.grad = None
    del opt
    gc.collect()
    (layers.project_table(x, lin) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * lin(x).detach() @ lin.weight.detach())


def test_no_early_stop_within_patience(data):
    res = fit(data, "bpr", {"epochs": 3, "lr": 0.0, "batch_size": 1024, "patience": 2}, log=None)
    assert not res["stopped_early"] and res["epochs_run"] == 3


def test_early_stopping_rule():
    s = EarlyStopping(["recall@20", "ndcg@20"], patience=1)
    assert s.update({"recall@20": 0.1, "ndcg@20": 0.05})          # beats the initial -1
    assert not s.update({"recall@20": 0.10004, "ndcg@20": 0.05})  # equal after rounding to 4 d.p.
    assert s.bad == 1 and not s.should_stop
    assert s.update({"recall@20": 0.09, "ndcg@20": 0.0501})       # any metric improving counts
    assert s.bad == 0
    assert not s.update({"recall@20": 0.1, "ndcg@20": 0.0501})    # strictly greater only
    assert not s.update({"recall@20": 0.1, "ndcg@20": 0.05})
    assert s.should_stop                                           # 2 bad > patience 1
    t = EarlyStopping(["recall@20", "ndcg@20"], patience=1)
    t.load_state_dict(s.state_dict())
    assert t.best == {"recall@20": 0.1, "ndcg@20": 0.0501} and t.bad == 2


# ------------------------------------------------------------------ CLI
def test_cli_train_evaluate_recommend(data_dir, data, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(main, ["train", "--model", "lightgcn", "--data", str(data_dir),
                               "--out", str(run), "--set", "epochs=2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "test metrics at best epoch" in res.output
    m = json.loads((run / "metrics.json").read_text())
    cfg = load_yaml(run / "config.yaml")
    assert cfg["epochs"] == 2 and cfg["model"] == "lightgcn"
    assert len(json.loads((run / "metrics.json").read_text())["test"]) == 16
    with open(run / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2

    res = runner.invoke(main, ["evaluate", str(run)])
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.output.splitlines() if ln.strip().startswith("recall"))
    values = [float(x) for x in row.split()[1:]]
    assert values == pytest.approx([m["test"][f"recall@{k}"] for k in (5, 10, 20, 50)], abs=5e-5)
    assert re.search(r"\(\d+ users\)", res.output)

    res = runner.invoke(main, ["recommend", str(run), "-u", "0"])
    assert res.exit_code == 0, res.output
    uid, items = res.output.strip().split("\t")
    items = [int(x) for x in items.split()]
    assert uid == "0" and len(items) == 10 and len(set(items)) == 10
    assert not set(items) & set(data.train[0].indices.tolist())
    top = {int(ln.split("\t")[0]): [int(x) for x in ln.split("\t")[1:]]
           for ln in (run / "topk_test.tsv").read_text().splitlines()}
    if 0 in top:  # same masking (training items only): the same ranking
        assert items == top[0][:10]

    res = runner.invoke(main, ["recommend", str(run), "-u", "100000"])
    assert res.exit_code == 2 and "out of range" in res.output


def test_cli_resume(data_dir, tmp_path):
    runner = CliRunner()
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = ["train", "--model", "bpr", "--data", str(data_dir), "--set", "epochs=4",
            "--set", "batch_size=512", "--quiet"]
    assert runner.invoke(main, args + ["--out", str(ref)]).exit_code == 0
    # an interrupted run: resumed from its checkpoint of epoch 1
    data = load_dataset(data_dir)
    cfg = load_yaml(ref / "config.yaml")
    with pytest.raises(Interrupt):
        fit(data, config=dict(cfg), run_dir=run, log=_interrupt_at(2))
    res = runner.invoke(main, ["train", "--resume", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    a = json.loads((ref / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    assert (a["best_epoch"], a["valid"], a["test"]) == (b["best_epoch"], b["valid"], b["test"])


def test_cli_missing_data_folder(tmp_path):
    res = CliRunner().invoke(main, ["train", "--model", "lightgcn", "--data",
                                    str(tmp_path / "missing"), "--out", str(tmp_path / "r"),
                                    "--quiet"])
    assert res.exit_code == 2
    assert "error:" in res.output and str(tmp_path / "missing") in res.output
    assert "not a directory" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_cli_errors_for_bad_run_directories(data_dir, tmp_path):
    import shutil
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(main, ["train", "--resume", str(empty), "--quiet"])
    assert res.exit_code == 2 and "config.yaml" in res.output, res.output
    res = runner.invoke(main, ["evaluate", str(empty)])
    assert res.exit_code == 2 and "not a run directory" in res.output
    # a run whose dataset folder has gone away
    moved = tmp_path / "syn"
    shutil.copytree(data_dir, moved)
    run = tmp_path / "run"
    res = runner.invoke(main, ["train", "--model", "bpr", "--data", str(moved), "--out", str(run),
                               "--set", "epochs=1", "--quiet"])
    assert res.exit_code == 0, res.output
    shutil.rmtree(moved)
    for args in (["evaluate", str(run)], ["recommend", str(run), "-u", "0"]):
        res = runner.invoke(main, args)
        assert res.exit_code == 2, (args, res.output, res.exception)
        assert "error:" in res.output and str(moved) in res.output
    # --data points the run at the dataset's new place
    res = runner.invoke(main, ["evaluate", str(run), "--data", str(data_dir)])
    assert res.exit_code == 0, res.output


def test_best_weights_kept_on_disk_with_a_run_directory(data_dir, tmp_path):
    """With a run directory the best weights are read back from best.pt (no second copy in
    memory); the returned model equals an in-memory run's."""
    from mmrecsys.train.trainer import Trainer
    from mmrecsys.config import run_config
    data = load_dataset(data_dir)
    cfg = run_config("lightgcn", data, None, {"epochs": 3, "eval_step": 1, "patience": 0})
    tr = Trainer(data, cfg, tmp_path / "run", log=None)
    tr.run.mkdir()
    res = tr.fit()
    assert tr.best_state == tmp_path / "run" / "best.pt"
    best = torch.load(tr.best_state, weights_only=True)
    mem = fit(data, "lightgcn", {"epochs": 3, "eval_step": 1, "patience": 0}, log=None)
    assert res["best_epoch"] == mem["best_epoch"]
    for k, v in res["model"].state_dict().items():
        assert torch.equal(v, best[k]) and torch.equal(v, mem["model"].state_dict()[k])
