"""Issue 9: no command may corrupt a run, run code from a file, answer 500 or print a traceback.

One section per defect of the issue (1–11); each reproduces how it was seen.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import stat
import warnings

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.config import ConfigError, load_yaml, resolve_config
from mmrecsys.data import DataError, load_dataset
from mmrecsys.data.synthetic import write_synthetic
from mmrecsys.errors import MMRecError, RunError
from mmrecsys.models import get_model_class
from mmrecsys.train import fit

EPOCHS2 = ["--set", "epochs=2", "--set", "batch_size=512"]


@pytest.fixture(scope="module", autouse=True)
def _env(isolated_cache):
    """Before any other fixture of the module: its graph caches in a temporary folder."""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "syn", 200, 100, seed=0)


@pytest.fixture(scope="module")
def data(data_dir):
    return load_dataset(data_dir)


def cli(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    if res.exit_code not in (0, 2) or (res.exception and not isinstance(res.exception, SystemExit)):
        raise AssertionError(f"{args}: exit {res.exit_code}\n{res.output}") from res.exception
    return res


def ok(*args):
    res = cli(*args)
    assert res.exit_code == 0, res.output
    return res


def refused(*args, match=None):
    res = cli(*args)
    assert res.exit_code == 2, res.output
    assert "rror:" in res.output, res.output      # 'error: …' (ours) or 'Error: …' (click's)
    if match:
        assert re.search(match, res.output), res.output
    return res


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lgn"
    ok("train", "-m", "lightgcn", "-d", data_dir, "-o", out, *EPOCHS2, "--quiet")
    return out


def snapshot(folder: pathlib.Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def write_inter(folder: pathlib.Path, lines, encoding="utf-8", bom=False) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(["userID\titemID\tx_label", *lines]) + "\n"
    raw = text.encode(encoding)
    (folder / f"{folder.name}.inter").write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
    return folder


TINY = ["0\t0\t0", "0\t1\t0", "0\t2\t1", "1\t1\t0", "1\t2\t0", "1\t0\t2"]


# ------------------------------------------------------------------ 1. refused runs untouched
def test_refused_train_does_not_rewrite_the_run(data_dir, run):
    before = snapshot(run)
    refused("train", "-m", "lightgcn", "-d", data_dir, "-o", run, "--set", "n_layers=4",
            "--set", "epochs=50", "--quiet", match="already holds a run.*--resume")
    refused("train", "-m", "bpr", "-d", data_dir, "-o", run, "--quiet", match="already holds")
    assert snapshot(run) == before
    assert load_yaml(run / "config.yaml")["n_layers"] == 2
    ok("evaluate", run)  # still evaluates with its own configuration


def test_non_empty_folder_and_file_are_refused(data_dir, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    refused("train", "-d", data_dir, "-o", tmp_path / "notes", "--quiet", match="not empty")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]
    (tmp_path / "file").write_text("x")
    refused("train", "-d", data_dir, "-o", tmp_path / "file", "--quiet", match="is a file")


def test_default_run_directories_are_unique(data_dir, tmp_path, monkeypatch):
    import datetime
    monkeypatch.chdir(tmp_path)

    class Frozen(datetime.datetime):  # both runs "start in the same second"
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(datetime, "datetime", Frozen)
    for _ in range(2):
        ok("train", "-m", "bpr", "-d", data_dir, "--set", "epochs=1", "--quiet")
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(names) == 2
    assert all(re.fullmatch(r"bpr-syn-20300102-030405-[0-9a-f]{6}", n) for n in names), names


def test_failed_runs_leave_no_folder(data_dir, data, tmp_path, monkeypatch):
    # a model that cannot be built: nothing is written at all
    out = tmp_path / "nofeat"
    write_inter(tmp_path / "plain", TINY)
    refused("train", "-m", "lgmrec", "-d", tmp_path / "plain", "-o", out, "--set", "topk=[1,2]",
            "--set", "valid_metrics=[recall@2]", "--quiet", match="features")
    assert not out.exists()

    # a failure during the first epoch (before any checkpoint): the folder is removed
    from mmrecsys.models.bpr import BPR

    def boom(self, *a):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(BPR, "loss", boom)
    with pytest.raises(ZeroDivisionError):
        fit(data, "bpr", {"epochs": 2}, run_dir=tmp_path / "crash", log=None)
    assert not (tmp_path / "crash").exists()
    # ... and the CLI shows the bug's traceback (not an 'error:' message)
    res = CliRunner().invoke(main, ["train", "-m", "bpr", "-d", str(data_dir), "-o",
                                    str(tmp_path / "crash2"), "--quiet"])
    assert isinstance(res.exception, ZeroDivisionError) and res.exit_code == 1
    assert not (tmp_path / "crash2").exists()
    # an empty folder given by the user is kept (emptied), not removed
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZeroDivisionError):
        fit(data, "bpr", {"epochs": 2}, run_dir=tmp_path / "empty", log=None)
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())


# ------------------------------------------------------------------ 2. no code from files
class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_crafted_best_pt_is_refused_without_running_code(run, tmp_path):
    import shutil
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    marker = tmp_path / "marker"
    torch.save({"user_embedding.weight": Payload(marker)}, bad / "best.pt")
    for args in (["evaluate", bad], ["recommend", bad, "-u", "0"]):
        refused(*args, match="cannot be loaded safely")
    torch.save(Payload(marker), bad / "last.pt")
    refused("train", "--resume", bad, "--quiet", match="cannot be loaded safely")
    assert not marker.exists()


def test_run_files_load_with_weights_only(run):
    for name in ("best.pt", "last.pt"):
        obj = torch.load(run / name, weights_only=True)
        assert isinstance(obj, dict)
    ck = torch.load(run / "last.pt", weights_only=True)
    assert {"numpy_rng", "python_rng", "torch_rng", "history"} <= set(ck)


def test_planted_graph_cache_file_is_rebuilt_not_run(tmp_path):
    from mmrecsys.graphs import GraphCache
    cache = GraphCache(tmp_path)
    path = cache.path("g", {"a": 1})
    marker = tmp_path / "marker"
    torch.save(Payload(marker), path)
    got = cache.get_or_build("g", {"a": 1}, lambda: {"m": np.arange(3)})
    assert not marker.exists() and cache.misses == 1
    np.testing.assert_array_equal(got["m"], np.arange(3))
    again = GraphCache(tmp_path).get_or_build("g", {"a": 1}, lambda: 1 / 0)  # a hit now
    np.testing.assert_array_equal(again["m"], np.arange(3))
    torch.load(path, weights_only=True)  # what it wrote is plain data


# ------------------------------------------------------------------ 3./4. serving and recommend
@pytest.fixture(scope="module")
def client(run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import mmrecsys as mr
    from mmrecsys.serving.app import create_app
    rec = mr.load(run, device="cpu")
    return rec, TestClient(create_app(rec))


def test_k_beyond_the_unseen_items(client, data, run):
    rec, c = client
    u = 0
    seen = set(data.train[u].indices.tolist())
    r = c.get("/recommend", params={"user": u, "k": data.n_items})
    assert r.status_code == 200
    items = [x["item"] for x in r.json()["items"]]
    assert len(items) == data.n_items - len(seen) and not set(items) & seen
    assert all(x["score"] is not None for x in r.json()["items"])
    r = c.post("/recommend", json={"users": [u, 1], "k": 1000})
    assert r.status_code == 200
    assert [x["item"] for x in r.json()["results"][0]["items"]] == items
    res = ok("recommend", run, "-u", u, "-k", data.n_items, "--json")
    got = json.loads(res.output)[str(u)]
    assert got == items
    # exclude_seen=false: every item
    r = c.get("/recommend", params={"user": u, "k": data.n_items, "exclude_seen": "false"})
    assert len(r.json()["items"]) == data.n_items


@pytest.mark.parametrize("k", [0, -3])
def test_recommend_k_must_be_positive(run, client, k):
    refused("recommend", run, "-u", 0, "-k", k, match="-k")
    _, c = client
    assert c.get("/recommend", params={"user": 0, "k": k}).status_code == 422


def test_huge_ids(client, run, tmp_path):
    _, c = client
    huge = 99999999999999999999
    for r in (c.get("/recommend", params={"user": huge}),
              c.post("/recommend", json={"users": [0, huge]}),
              c.get("/similar-items", params={"item": huge}),
              c.get("/recommend", params={"user": -1})):
        assert r.status_code == 404 and "out of range" in r.json()["detail"]
    refused("recommend", run, "-u", huge, match="out of range")
    # a .inter with an item id of 10**12 (or beyond int64) is refused, naming the line
    d = write_inter(tmp_path / "big", TINY + [f"1\t{10 ** 12}\t0"])
    refused("data", "stats", d, match=r"line 8, column itemID: id 1,000,000,000,000 .*Re-index")
    d = write_inter(tmp_path / "beyond", TINY + [f"{huge}\t1\t0"])
    refused("data", "stats", d, match=r"line 8, column userID: .* beyond the 64-bit")


# ------------------------------------------------------------------ 5. resume rules
def test_resume_rules(data_dir, run, tmp_path):
    import shutil
    r = tmp_path / "r"
    shutil.copytree(run, r)
    before = snapshot(r)
    other = write_synthetic(tmp_path / "other", 200, 100, seed=1)
    refused("train", "--resume", r, "-m", "bpr", "--quiet", match="trained with model lightgcn")
    refused("train", "--resume", r, "--set", "lr=5", "--quiet", match="only --set epochs=N.*not lr")
    refused("train", "--resume", r, "--seed", "3", "--quiet", match="not seed")
    refused("train", "--resume", r, "-c", r / "config.yaml", "--quiet", match="--config")
    refused("train", "--resume", r, "--data", other, "--quiet", match="differs from the one")
    refused("train", "--resume", r, "--set", "epochs=1", "--quiet", match="below the 2 epochs")
    assert snapshot(r) == before
    ok("train", "--resume", r, "-m", "lightgcn", "--quiet")  # same model: fine
    # the dataset regenerated in place with other content
    moved = tmp_path / "syn"
    shutil.copytree(data_dir, moved)
    r2 = tmp_path / "r2"
    ok("train", "-m", "lightgcn", "-d", moved, "-o", r2, *EPOCHS2, "--quiet")
    shutil.rmtree(moved)
    write_synthetic(moved, 200, 100, seed=5)
    refused("train", "--resume", r2, "--quiet", match="differs from the one")
    # a moved dataset with the same content is accepted with --data
    ok("train", "--resume", r2, "--data", data_dir, "--quiet")
    assert load_yaml(r2 / "config.yaml")["data"] == str(data_dir.resolve())


def test_resume_extends_a_finished_run_exactly(data_dir, run, tmp_path):
    import shutil
    r = tmp_path / "r"
    shutil.copytree(run, r)
    ok("train", "--resume", r, "--set", "epochs=4", "--quiet")
    ref = tmp_path / "ref"
    ok("train", "-m", "lightgcn", "-d", data_dir, "-o", ref, "--set", "epochs=4",
       "--set", "batch_size=512", "--quiet")
    a, b = (json.loads((x / "metrics.json").read_text()) for x in (r, ref))
    a.pop("model_build_seconds"), b.pop("model_build_seconds")
    assert a == b and a["epochs_run"] == 4
    assert load_yaml(r / "config.yaml")["epochs"] == 4
    assert (r / "topk_test.tsv").read_text() == (ref / "topk_test.tsv").read_text()


def test_resume_of_an_early_stopped_run_is_not_extended(data_dir, tmp_path):
    r = tmp_path / "r"
    ok("train", "-m", "bpr", "-d", data_dir, "-o", r, "--set", "lr=0", "--set", "patience=0",
       "--set", "epochs=20", "--quiet")
    assert json.loads((r / "metrics.json").read_text())["stopped_early"]
    refused("train", "--resume", r, "--set", "epochs=40", "--quiet", match="stopped early")


def test_resume_of_a_folder_with_only_config_starts_over(run, tmp_path):
    r = tmp_path / "r"
    r.mkdir()
    (r / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
    with pytest.warns(UserWarning, match="starting the run over from epoch 0"):
        ok("train", "--resume", r, "--quiet")
    assert (r / "last.pt").exists()


# ------------------------------------------------------------------ 6. messages, not tracebacks
def test_messages_instead_of_tracebacks(data_dir, run, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: [0.1\nepochs: 3\n")
    refused("train", "-d", data_dir, "-c", bad_yaml, "-o", tmp_path / "a", "--quiet",
            match=r"bad.yaml: not valid YAML at line \d+")
    refused("train", "-m", "bpr", "-d", data_dir, "-o", tmp_path / "b", "--set",
            "checkpoint_every=0", "--quiet", match="checkpoint_every=0: must be")
    refused("data", "synth", "-o", tmp_path / "s", "--users", "5", match="--users")
    # a string-dtype feature file and a Latin-1 .inter
    d = write_inter(tmp_path / "strfeat", TINY)
    np.save(d / "image_feat.npy", np.array([["a", "b"]] * 3))
    refused("data", "stats", d, match=r"image_feat.npy: holds strings")
    d = write_inter(tmp_path / "latin", TINY + ["1\t2\t1  # caf\u00e9"], encoding="latin-1")
    refused("data", "stats", d, match=r"line 8 is not UTF-8 text \(byte 0xe9\)")
    # evaluate a run on a dataset of another size
    small = write_synthetic(tmp_path / "small", 120, 60, seed=0)
    refused("evaluate", run, "--data", small, match=r"best.pt does not fit lightgcn")
    refused("train", "-d", data_dir, "--device", "nonsense", "--quiet", match="--device nonsense")


def test_real_bugs_keep_their_traceback(data_dir, monkeypatch):
    import mmrecsys.data.dataset as ds

    def broken(*a, **k):
        raise KeyError("a bug")
    monkeypatch.setattr(ds, "read_inter", broken)
    res = CliRunner().invoke(main, ["data", "stats", str(data_dir)])
    assert isinstance(res.exception, KeyError) and res.exit_code == 1


# ------------------------------------------------------------------ 7. ranges
@pytest.mark.parametrize("pair, pattern", [
    ("topk=[0,20]", r"topk=\[0, 20\]: must be a non-empty list of integers of at least 1"),
    ("topk=[-5,20]", r"topk=\[-5, 20\]"),
    ("topk=[]", r"topk=\[\]"),
    ("embedding_size=0", r"embedding_(size|dim)=0: must be an integer of at least 1"),
    ("n_layers=-1", r"n_layers=-1: must be an integer of at least 0"),
    ("patience=-5", r"patience=-5: must be an integer of at least 0"),
    ("seed=-1", r"seed=-1: must be an integer from 0"),
    ("lr=-0.1", r"lr=-0.1: must be a finite number"),
    ("lr=.nan", r"lr=nan: must be a finite number"),
    ("lr_scheduler=5", r"lr_scheduler=\[5\]: must be two positive numbers"),
    ("lr_scheduler=[1,0]", r"lr_scheduler=\[1, 0\]: must be two positive numbers"),
    ("valid_metrics=[]", r"valid_metrics=\[\]: must be a non-empty list"),
    ("reg_weight=-1", r"reg_weight=-1.0: must be at least 0"),
])
def test_bad_values_name_the_key(pair, pattern):
    from mmrecsys.config import parse_overrides
    with pytest.raises(ConfigError, match=pattern):
        resolve_config(get_model_class("lightgcn"), "x", overrides=parse_overrides([pair]))


@pytest.mark.parametrize("model, overrides, pattern", [
    ("lgmrec", {"cf_model": "xx"}, r"lgmrec: cf_model='xx'"),            # constructor ValueError
    ("lightgcn", {"embedding_size": 10 ** 12}, r"needs more memory than there is"),
])
def test_model_constructor_errors_become_config_errors(data, model, overrides, pattern):
    from mmrecsys.train import build_model
    cls = get_model_class(model)
    cfg = resolve_config(cls, data.name, overrides=overrides)
    cfg["model"] = model
    with pytest.raises(ConfigError, match=pattern):
        build_model(data, cfg, "cpu")


@pytest.mark.parametrize("array, pattern", [
    (np.zeros((6, 0), np.float32), r"zero feature columns"),
    (np.ones((6, 2), np.complex64), r"holds complex numbers"),
    (np.array([[b"x"]] * 6), r"holds byte strings"),
])
def test_bad_feature_files(tmp_path, array, pattern):
    d = write_inter(tmp_path / "f", TINY)
    np.save(d / "image_feat.npy", array[:3])
    with pytest.raises(DataError, match=pattern):
        load_dataset(d)


# ------------------------------------------------------------------ 8. messages that mislead
def test_topk_advice_on_a_small_dataset_works(tmp_path):
    d = write_synthetic(tmp_path / "tiny40", 60, 40, seed=0)
    res = refused("train", "-m", "bpr", "-d", d, "-o", tmp_path / "r", "--quiet",
                  match=r"topk=\[5, 10, 20, 50\]: asks for lists longer than the 40 items")
    advice = re.search(r"e\.g\. (--set .*)$", res.output.strip()).group(1).split()
    assert advice == ["--set", "topk=[5,10,20]"]
    ok("train", "-m", "bpr", "-d", d, "-o", tmp_path / "r", "--set", "epochs=1", "--quiet", *advice)
    res = refused("train", "-m", "bpr", "-d", d, "-o", tmp_path / "r2", "--quiet",
                  "--set", "topk=[5,500]", match=r"topk=\[5, 500\]: asks for lists longer")
    advice = re.search(r"e\.g\. (--set .*)$", res.output.strip()).group(1).split()
    assert advice == ["--set", "topk=[5]", "--set", "valid_metrics=[recall@5]"]
    ok("train", "-m", "bpr", "-d", d, "-o", tmp_path / "r2", "--set", "epochs=1", "--quiet", *advice)


def test_bom_is_accepted_and_messages_are_plain(tmp_path):
    d = write_inter(tmp_path / "bom", TINY, bom=True)
    assert load_dataset(d).n_users == 2
    d = write_inter(tmp_path / "str", TINY + ["u0\t1\t0"])
    with pytest.raises(DataError) as ei:
        load_dataset(d)
    assert "line 8, column userID: 'u0' is not an integer" in str(ei.value)
    assert "np.str_" not in str(ei.value)
    with pytest.raises(ConfigError, match="expected an integer"):
        resolve_config(get_model_class("bpr"), "x", overrides={"epochs": "many"})


# ------------------------------------------------------------------ 9. layering
def test_command_line_model_wins_over_the_config_file(data_dir, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: bpr\nepochs: 1\n")
    ok("train", "-c", f, "-m", "lightgcn", "-d", data_dir, "-o", tmp_path / "a", "--quiet")
    assert load_yaml(tmp_path / "a" / "config.yaml")["model"] == "lightgcn"
    ok("train", "-c", f, "-d", data_dir, "-o", tmp_path / "b", "--quiet")
    assert load_yaml(tmp_path / "b" / "config.yaml")["model"] == "bpr"


# ------------------------------------------------------------------ 10. file modes
def test_atomic_writes_respect_the_umask(tmp_path):
    from mmrecsys.io import atomic_write_text
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
        os.chmod(tmp_path / "a.txt", 0o640)  # an existing file keeps its mode
        atomic_write_text(tmp_path / "a.txt", "y")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    finally:
        os.umask(old)


# ------------------------------------------------------------------ 11. smaller things
def test_quiet_and_log_every(data_dir, tmp_path):
    res = ok("train", "-m", "bpr", "-d", data_dir, "-o", tmp_path / "q", "--set", "epochs=3",
             "--quiet")
    assert not re.search(r"^epoch", res.output, re.M) and "\r" not in res.output
    assert res.output.startswith("test metrics at best epoch")
    res = ok("train", "-m", "bpr", "-d", data_dir, "-o", tmp_path / "l", "--set", "epochs=5",
             "--log-every", "2")
    epochs = [int(m) for m in re.findall(r"^epoch\s+(\d+) \|", res.output, re.M)]
    assert epochs == [1, 3, 4] and "\r" not in res.output  # not a TTY: no progress bars


def test_warnings_are_one_line(tmp_path):
    import subprocess
    import sys
    d = write_inter(tmp_path / "dup", TINY + ["0\t0\t0"])
    src = pathlib.Path(__file__).parents[1] / "src"
    res = subprocess.run([sys.executable, "-m", "mmrecsys.cli", "data", "stats", str(d)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)})
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("warning: ") and "duplicate" in res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr  # no source line under it


def test_topk_test_tsv_holds_max_topk_items(data_dir, tmp_path):
    ok("train", "-m", "bpr", "-d", data_dir, "-o", tmp_path / "r", "--set", "epochs=1",
       "--set", "topk=[5,10]", "--set", "valid_metrics=[recall@10]", "--quiet")
    line = (tmp_path / "r" / "topk_test.tsv").read_text().splitlines()[0]
    assert len(line.split("\t")) == 1 + 10
    assert "max(topk)" in (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def test_cache_info_and_clear(tmp_path):
    from mmrecsys.graphs import GraphCache
    c = GraphCache(tmp_path / "c")
    c.get_or_build("g", {"a": 1}, lambda: np.zeros(10))
    (tmp_path / "c" / "keep.txt").write_text("not ours")
    res = ok("cache", "info", "--dir", tmp_path / "c")
    assert "files        1" in res.output and str(tmp_path / "c") in res.output
    res = ok("cache", "clear", "--dir", tmp_path / "c")
    assert "removed 1 cached graphs" in res.output
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["keep.txt"]
    ok("cache", "info")  # the default place ($MMRECSYS_CACHE here)


def test_config_records_versions_and_loads_back(run, data_dir, tmp_path):
    cfg = load_yaml(run / "config.yaml")
    assert cfg["versions"]["torch"] == str(torch.__version__)
    assert set(cfg["versions"]) == {"mmrecsys", "torch", "numpy", "python"}
    # a run's config.yaml is a valid --config file (versions, model and data are taken apart)
    ok("train", "-c", run / "config.yaml", "-o", tmp_path / "again", "--set", "epochs=1", "--quiet")
    again = load_yaml(tmp_path / "again" / "config.yaml")
    assert again["model"] == "lightgcn" and again["data"] == cfg["data"]


def test_docs_do_not_need_the_internet(client):
    _, c = client
    r = c.get("/docs")
    assert r.status_code == 200
    assert not re.search(r"https?://", r.text), "no CDN (or other remote) asset"
    from mmrecsys.serving.app import offline_docs_available
    if offline_docs_available():
        for url in re.findall(r'(?:src|href)="([^"]+)"', r.text):
            assert c.get(url).status_code == 200, url
    else:
        assert "/openapi.json" in r.text
    assert c.get("/openapi.json").status_code == 200


def test_no_httpx_deprecation_warning_with_the_test_extra():
    pytest.importorskip("httpx2")
    import importlib
    import sys
    sys.modules.pop("starlette.testclient", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module("starlette.testclient")
