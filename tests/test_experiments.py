"""Experiments: sweeps (selection on validation only, continuation, workers, pruning, TPE,
PostgreSQL), compare tables and plots, the trainer's on_evaluate hook, the models' spaces."""
from __future__ import annotations

import csv
import importlib
import json
import math
import pathlib
import random
import sys
import types
import warnings

import pytest
import torch
from click.testing import CliRunner

optuna = pytest.importorskip("optuna")
pytest.importorskip("matplotlib")

import mmrecsys as mr  # noqa: E402
from mmrecsys.cli import main  # noqa: E402
from mmrecsys.data.synthetic import write_synthetic  # noqa: E402
from mmrecsys.errors import ConfigError  # noqa: E402
from mmrecsys.experiments import compare, select_best, sweep  # noqa: E402
sweep_mod = importlib.import_module("mmrecsys.experiments.sweep")  # the module, not the function
from mmrecsys.experiments.compare import render_markdown, table_rows  # noqa: E402
from mmrecsys.models import available_models, get_model_class  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPACE = {"n_layers": [1, 2], "reg_weight": [1e-3, 1e-4]}
FIXED = {"epochs": 2, "batch_size": 256, "lr": 0.01}


@pytest.fixture(scope="module", autouse=True)
def _env(isolated_cache):
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "tiny", 80, 50, seed=1)


@pytest.fixture(scope="module")
def data(data_dir):
    return mr.load_dataset(str(data_dir))


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _study(out, name="lightgcn-tiny-grid"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{pathlib.Path(out).resolve()}"
                                                       f"/study.db")


# ---------------------------------------------------------------------------- trainer hook
def test_on_evaluate_hook_sees_every_evaluation_and_can_stop_the_run(data, tmp_path):
    seen = []
    m = mr.fit(data, "lightgcn", out=tmp_path / "a", on_evaluate=lambda e, v: seen.append((e, v)),
               **{**FIXED, "epochs": 3})
    assert [e for e, _ in seen] == [0, 1, 2]
    assert [v["recall@20"] for _, v in seen] == [r["valid_recall@20"] for r in m.history]

    class Stop(Exception):
        pass

    def stop(epoch, valid):
        if epoch == 1:
            raise Stop
    with pytest.raises(Stop):
        mr.fit(data, "lightgcn", out=tmp_path / "b", on_evaluate=stop, **{**FIXED, "epochs": 5})
    # the run keeps its checkpoint (resumable) and the history up to the stop
    assert (tmp_path / "b" / "last.pt").is_file()
    assert len(_rows(tmp_path / "b" / "history.csv")) == 2


# ---------------------------------------------------------------------------- selection
def _fake(number, value, test, state="COMPLETE"):
    return types.SimpleNamespace(number=number, value=value, state=types.SimpleNamespace(
        name=state), user_attrs={"result": {"test": {"recall@20": test}}})


def test_selection_never_reads_test_metrics():
    rng = random.Random(0)
    trials = [_fake(i, v, rng.random()) for i, v in enumerate([0.2, 0.5, 0.4, 0.5, 0.1])]
    trials.append(_fake(5, 0.9, 0.99, state="PRUNED"))   # not complete: never selected
    trials.append(_fake(6, float("nan"), 0.99))
    assert select_best(trials).number == 1                # highest valid; tie -> lowest number
    for _ in range(200):
        for t in trials:
            t.user_attrs["result"]["test"]["recall@20"] = rng.random() * 10
        assert select_best(trials).number == 1


def test_sweep_selects_on_validation_even_when_test_metrics_say_otherwise(data, tmp_path,
                                                                          monkeypatch):
    # every trial's recorded test metrics are replaced by the opposite of its validation
    # metric: were the selection to read them, the worst trial on validation would win
    record = sweep_mod._record

    def adversarial(trial, metrics, fit_seconds, pruned=False):
        metrics = dict(metrics)
        metrics["test"] = {k: 1.0 - v for k, v in (metrics.get("valid") or {}).items()}
        record(trial, metrics, fit_seconds, pruned)
    monkeypatch.setattr(sweep_mod, "_record", adversarial)
    best = sweep("lightgcn", data, tmp_path / "s", space={"n_layers": [0, 1, 2]},
                 overrides=FIXED, device="cpu")
    rows = [r for r in _rows(tmp_path / "s" / "trials.csv") if r["state"] == "COMPLETE"]
    assert len(rows) == 3
    valid = {int(r["trial"]): float(r["valid_recall@20"]) for r in rows}
    test = {int(r["trial"]): float(r["test_recall@20"]) for r in rows}
    assert best["value"] == max(valid.values())
    assert best["trial"] == min(n for n, v in valid.items() if v == max(valid.values()))
    assert max(test, key=test.get) != best["trial"] or len(set(valid.values())) == 1
    # the objective is the validation metric of the trial's own run at its best epoch
    run = json.loads((pathlib.Path(best["run_dir"]) / "metrics.json").read_text())
    assert best["value"] == run["valid"]["recall@20"]
    assert best["best_epoch"] == run["best_epoch"]


# ---------------------------------------------------------------------------- sweeps
def test_grid_sweep_writes_outputs_and_continues(data_dir, tmp_path):
    out = tmp_path / "sweep"
    events = []
    first = sweep("lightgcn", str(data_dir), out, n_trials=2, space=SPACE, overrides=FIXED,
                  device="cpu", progress=events.append)
    assert [e["kind"] for e in events] == ["start", "trial", "trial", "stop"]
    assert first["complete_trials"] == 2
    assert all(e["overhead_seconds"] >= 0 and e["fit_seconds"] > 0 for e in events
               if e["kind"] == "trial")
    events.clear()
    best = sweep("lightgcn", str(data_dir), out, space=SPACE, overrides=FIXED, device="cpu",
                 progress=events.append)
    assert events[0]["done"] == 2 and sum(e["kind"] == "trial" for e in events) == 2
    rows = _rows(out / "trials.csv")
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    assert {(r["n_layers"], r["reg_weight"]) for r in rows} == {
        (str(a), str(b)) for a in SPACE["n_layers"] for b in SPACE["reg_weight"]}
    assert {"value", "best_epoch", "valid_recall@20", "test_recall@20", "run_dir"} <= set(rows[0])
    assert all(pathlib.Path(r["run_dir"], "best.pt").is_file() for r in rows)
    assert json.loads((out / "best.json").read_text()) == best
    assert best["value"] == max(float(r["value"]) for r in rows)
    assert set(best) >= {"params", "valid", "test", "run_dir"}
    # a third run finds nothing to do
    events.clear()
    sweep("lightgcn", str(data_dir), out, space=SPACE, overrides=FIXED, device="cpu",
          progress=events.append)
    assert not any(e["kind"] == "trial" for e in events)
    # the same study with other settings is refused
    with pytest.raises(ConfigError, match="another fixed"):
        sweep("lightgcn", str(data_dir), out, space=SPACE, overrides={**FIXED, "epochs": 3},
              device="cpu")


def test_interrupted_trial_is_queued_again_and_resumes_its_run(data_dir, tmp_path, monkeypatch):
    from mmrecsys.train.trainer import Trainer
    out = tmp_path / "sweep"
    checkpoint = Trainer.checkpoint

    def interrupt(self, epoch):
        checkpoint(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "checkpoint", interrupt)
    fixed = {**FIXED, "epochs": 4}
    with pytest.raises(KeyboardInterrupt):
        sweep("lightgcn", str(data_dir), out, space={"n_layers": [1, 2]}, overrides=fixed,
              device="cpu")
    monkeypatch.setattr(Trainer, "checkpoint", checkpoint)
    assert [t.state.name for t in _study(out).trials] == ["FAIL"]
    events = []
    sweep("lightgcn", str(data_dir), out, space={"n_layers": [1, 2]}, overrides=fixed,
          device="cpu", progress=events.append)
    assert events[0]["requeued"] == 1
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params == trials[0].params
    assert trials[1].user_attrs["run"]["resumed"]          # continued the interrupted run
    assert trials[1].user_attrs["run"]["run_dir"] == trials[0].user_attrs["run"]["run_dir"]
    assert len(_rows(pathlib.Path(trials[1].user_attrs["run"]["run_dir"]) / "history.csv")) == 4
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("trial-")) == [
        "trial-0000", "trial-0002"]


def test_trial_of_a_dead_worker_is_failed_by_heartbeat_and_retried(data_dir, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "sweep"
    space = {"n_layers": [1, 2, 3]}
    sweep("lightgcn", str(data_dir), out, n_trials=1, space=space, overrides=FIXED, device="cpu")
    done = _study(out).trials[0].params["n_layers"]
    # a worker on "another machine" takes a trial, sends one heartbeat and dies
    storage = sweep_mod.open_storage(f"sqlite:///{out.resolve()}/study.db")
    study = optuna.load_study(study_name="lightgcn-tiny-grid", storage=storage)
    orphan = next(v for v in space["n_layers"] if v != done)
    study.enqueue_trial({"n_layers": orphan})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "heartbeat is supposed to be used with optimize"
        trial = study.ask()
    trial.suggest_categorical("n_layers", space["n_layers"])
    trial.set_user_attr("run", {"run_dir": "/elsewhere/trial-0001", "host": "elsewhere"})
    storage.record_heartbeat(trial._trial_id)
    monkeypatch.setattr(sweep_mod, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(sweep_mod, "GRACE_SECONDS", 2)
    monkeypatch.setattr(sweep_mod, "POLL_SECONDS", 0.2)
    events = []
    sweep("lightgcn", str(data_dir), out, space=space, overrides=FIXED, device="cpu",
          progress=events.append)
    trials = _study(out).trials
    states = {t.number: t.state.name for t in trials}
    assert states[trial.number] == "FAIL"
    complete = sorted(t.params["n_layers"] for t in trials if t.state.name == "COMPLETE")
    assert complete == space["n_layers"]                    # each point once, the orphan's too
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == trial.number)
    assert retry.state.name == "COMPLETE" and retry.params["n_layers"] == orphan


def test_two_worker_processes_record_each_grid_point_once(data_dir, tmp_path):
    out = tmp_path / "sweep"
    events = []
    best = sweep("lightgcn", str(data_dir), out, space=SPACE, overrides=FIXED, workers=2,
                 device="cpu", progress=events.append)
    trials = _study(out).trials
    done = [tuple(t.params.values()) for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == len(set(done)) == 4
    assert {e["worker"] for e in events if e["kind"] == "stop"} == {0, 1}
    assert best["trial"] in range(len(trials))


def test_pruning_reports_validation_per_evaluation(data, tmp_path):
    sweep("lightgcn", data, tmp_path / "p", space={"n_layers": [0, 1, 2]}, prune=True,
          overrides={**FIXED, "epochs": 3}, device="cpu")
    for t in _study(tmp_path / "p").trials:
        assert t.state.name in ("COMPLETE", "PRUNED")
        assert sorted(t.intermediate_values) == [0, 1, 2] or t.state.name == "PRUNED"


def test_tpe_with_ranges(data, tmp_path):
    best = sweep("lightgcn", data, tmp_path / "t", sampler="tpe", n_trials=3,
                 space={"reg_weight": {"low": 1e-6, "high": 1e-2, "log": True},
                        "n_layers": {"low": 1, "high": 3}}, overrides=FIXED, device="cpu")
    trials = _study(tmp_path / "t", "lightgcn-tiny-tpe").trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    assert isinstance(best["params"]["n_layers"], int)
    assert 1e-6 <= best["params"]["reg_weight"] <= 1e-2


def test_space_is_checked_before_training(data, tmp_path):
    with pytest.raises(ConfigError, match="n_layerz"):
        sweep("lightgcn", data, tmp_path / "x", space={"n_layerz": [1]}, device="cpu")
    with pytest.raises(ConfigError, match="needs --sampler tpe"):
        sweep("lightgcn", data, tmp_path / "x", space={"reg_weight": {"low": 0, "high": 1}})
    with pytest.raises(ConfigError, match="reg_weight"):
        sweep("lightgcn", data, tmp_path / "x", space={"reg_weight": [-1.0]})
    with pytest.raises(ConfigError, match="both searched and fixed"):
        sweep("lightgcn", data, tmp_path / "x", space=SPACE, overrides={"n_layers": 2})
    with pytest.raises(ConfigError, match="metric"):
        sweep("lightgcn", data, tmp_path / "x", space=SPACE, metric="recall@7")
    with pytest.raises(ConfigError, match="--sampler tpe"):
        sweep("lgmrec", data, tmp_path / "x")           # its official grid: 3,261,440 settings
    assert not (tmp_path / "x" / "study.db").exists()


@pytest.mark.parametrize("name", available_models())
def test_every_model_ships_a_valid_search_space(name, data):
    from mmrecsys.experiments.sweep import check_space
    cls = get_model_class(name)
    assert cls.search_space, f"{name} has no search_space"
    check_space(cls.search_space, "grid", cls, data, {})
    for preset in cls.presets.values():        # the spaces cover the published settings
        for k, v in preset.items():
            if k in cls.search_space:
                assert v in cls.search_space[k], (name, k, v)


# ---------------------------------------------------------------------------- compare
def test_table_statistics():
    from scipy import stats
    vals = {"a": [0.10, 0.12, 0.11], "b": [0.20, 0.22, 0.25], "c": [0.19, 0.20, 0.21]}
    results = [{"model": m, "dataset": "d", "seed": s, "metrics": {"test": {"recall@20": v}}}
               for m, vs in vals.items() for s, v in zip([1, 2, 3], vs)]
    rows = table_rows(results, ["a", "b", "c"], ["d"], [1, 2, 3], ["recall@20"])
    best = next(r for r in rows if r["best"])
    assert best["model"] == "b" and best["vs"] == "c" and best["baseline"] == "c"
    assert math.isclose(best["improvement_pct"], 100 * (0.67 / 3 - 0.2) / 0.2)
    assert math.isclose(best["p_value"], stats.ttest_rel(vals["b"], vals["c"]).pvalue)
    assert math.isclose(next(r for r in rows if r["model"] == "a")["std"], 0.01)
    rows = table_rows(results, ["a", "b", "c"], ["d"], [1, 2, 3], ["recall@20"], baseline="a")
    best = next(r for r in rows if r["best"])
    assert best["baseline"] == "a" and best["vs"] == "c"
    md = render_markdown(rows, ["a", "b", "c"], ["d"], [1, 2, 3], ["recall@20"], "a")
    assert "| b | **0.2233 ± 0.0252** |" in md and "Improv." in md and "(vs a)" in md


def test_compare_trains_reuses_and_draws(data_dir, tmp_path):
    sw = tmp_path / "sweep"
    sweep("lightgcn", str(data_dir), sw, space={"n_layers": [1, 3]}, overrides=FIXED,
          device="cpu")
    out = tmp_path / "cmp"
    events = []
    res = compare(["bpr", "lightgcn"], [str(data_dir)], 2, out, best=[sw], overrides=FIXED,
                  device="cpu", progress=events.append)
    assert [e["status"] for e in events] == ["trained"] * 4
    assert events[-1]["eta_seconds"] == 0
    md = (out / "table.md").read_text()
    assert md.count("**") == 8 and "p-value" in md and "lightgcn (best.json)" in md
    rows = _rows(out / "table.csv")
    assert len(rows) == 2 * 4 and {r["metric"] for r in rows} == {
        "recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    chosen = json.loads((sw / "best.json").read_text())["params"]["n_layers"]
    cfg = mr.config.load_yaml(out / "runs" / "lightgcn-tiny-seed1" / "config.yaml")
    assert cfg["n_layers"] == chosen and cfg["seed"] == 1 and cfg["epochs"] == 2
    names = sorted(p.name for p in res["plots"])
    assert names == ["items_tiny.png", "user_groups_tiny.png", "valid_curves_tiny.png"]
    assert all(p.stat().st_size > 5000 for p in res["plots"])
    events.clear()
    again = compare(["bpr", "lightgcn"], [str(data_dir)], 2, out, best=[sw], overrides=FIXED,
                    device="cpu", plots=False, progress=events.append)
    assert [e["status"] for e in events] == ["reused"] * 4
    assert again["markdown"] == md
    with pytest.raises(mr.RunError, match="another configuration"):
        compare(["bpr"], [str(data_dir)], 1, out, overrides={**FIXED, "epochs": 3}, device="cpu")


# ---------------------------------------------------------------------------- CLI
def test_cli_sweep_compare_plot(data_dir, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("n_layers: [1, 2]\n")
    r = CliRunner().invoke(main, ["sweep", "-m", "lightgcn", "-d", str(data_dir), "-o",
                                  str(tmp_path / "s"), "--space", str(space), "--set", "epochs=2",
                                  "--set", "batch_size=256", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert r.output.count("\ntrial ") + r.output.startswith("trial ") == 2
    assert "best: trial" in r.output and "not used to select" in r.output
    r = CliRunner().invoke(main, ["compare", "--models", "bpr", "lightgcn", "-d", str(data_dir),
                                  "--seeds", "1,2", "-o", str(tmp_path / "c"), "--set", "epochs=2",
                                  "--set", "batch_size=256", "--baseline", "bpr", "--best",
                                  str(tmp_path / "s"), "--device", "cpu", "--no-plots"])
    assert r.exit_code == 0, r.output
    assert "| Model | R@10 | R@20 | N@10 | N@20 |" in r.output and "(vs bpr)" in r.output
    run = tmp_path / "c" / "runs" / "bpr-tiny-seed2"
    r = CliRunner().invoke(main, ["plot", str(run)])
    assert r.exit_code == 0, r.output
    assert {pathlib.Path(ln.split()[-1]).name for ln in r.output.splitlines()} == {
        "curves.png", "user_groups.png", "items.png"}
    r = CliRunner().invoke(main, ["sweep", "-m", "lightgcn", "-o", str(tmp_path / "z"),
                                  "--space", str(space), "--set", "n_layers=2"])
    assert r.exit_code == 2 and "both searched and fixed" in r.output
    pytest.importorskip("tensorboard")
    r = CliRunner().invoke(main, ["plot", str(run), "--out", str(tmp_path / "png"),
                                  "--tensorboard", str(tmp_path / "tb")])
    assert r.exit_code == 0, r.output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"valid/recall@20", "train/loss", "test/recall@20"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("valid/recall@20")) == 2


# ---------------------------------------------------------------------------- PostgreSQL
def test_postgres_two_workers_record_every_trial_once(capsys):
    """benchmarks/bench_sweep_postgres.py on tiny data: a real server on 127.0.0.1, 2 workers."""
    spec = importlib.util.spec_from_file_location("bench_sweep_postgres",
                                                  ROOT / "benchmarks" / "bench_sweep_postgres.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if bench.find_binaries() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl)")
    pytest.importorskip("psycopg2")
    rc = bench.main(["--users", "80", "--items", "50", "--epochs", "1"])
    out = capsys.readouterr().out
    if rc == bench.SKIP:
        pytest.skip(out.strip())
    assert rc == 0, out
    assert "ok: every grid point recorded exactly once" in out


def test_plot_colours_distinct_beyond_ten_series():
    from mmrecsys.experiments.plots import _colours
    for n in (3, 10, 11, 20, 25):
        cols = _colours(n)
        assert len(cols) == n and len(set(map(tuple, cols))) == n
