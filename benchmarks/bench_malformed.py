"""Malformed inputs (files, command-line arguments, HTTP requests) and what each one gets.

    python benchmarks/bench_malformed.py [--keep]

Every case must end with a clear outcome: a command exits with status 2 and one
``error: …`` line (or click's usage error), never a Python traceback; an HTTP request gets a
4xx with a ``detail`` message, never a 5xx; a run directory that a refused command names is
byte-for-byte unchanged. A few inputs that used to be refused or mishandled are now accepted
(UTF-8 BOM, ``k`` beyond the unseen items); their cases check the answer instead.

Commands run as subprocesses (``python -m mmrecsys.cli`` with PYTHONPATH=src); HTTP requests go
through FastAPI's TestClient on a small trained run. Prints one line per case —
``PASS|FAIL  kind  name: outcome`` — then a count line. Takes about two minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from mmrecsys.data.synthetic import write_synthetic  # noqa: E402

WORK = pathlib.Path(tempfile.mkdtemp(prefix="mmrecsys-malformed-"))
ENV = {**os.environ, "PYTHONPATH": str(SRC), "MMRECSYS_CACHE": str(WORK / "cache")}
RESULTS: list[tuple[bool, str, str, str]] = []
HUGE = 99999999999999999999


def snapshot(*folders) -> dict:
    out = {}
    for f in folders:
        for p in sorted(pathlib.Path(f).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(*args, cwd=WORK):
    p = subprocess.run([sys.executable, "-m", "mmrecsys.cli", *map(str, args)], cwd=cwd, env=ENV,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def record(ok: bool, kind: str, name: str, outcome: str):
    RESULTS.append((ok, kind, name, outcome))
    print(f"{'PASS' if ok else 'FAIL'}  {kind:4s}  {name}: {outcome}", flush=True)


def cli_case(name: str, *args, rc=2, match=None, guard=(), absent=(), check=None, kind="cli"):
    """A command and what it must give: exit status ``rc``, no traceback, ``match`` (regex) in
    its output, the ``guard`` folders unchanged, the ``absent`` paths not created."""
    before = snapshot(*guard)
    code, out, err = run_cli(*args)
    text = out + err
    problems = []
    if "Traceback" in text:
        problems.append("TRACEBACK")
    if code != rc:
        problems.append(f"exit {code} (expected {rc})")
    if rc != 0 and not re.search(r"^(error|Error): ", err, re.M):
        problems.append("no 'error:' line")
    if match and not re.search(match, text, re.S):
        problems.append(f"no /{match}/")
    if guard and snapshot(*guard) != before:
        problems.append("RUN DIRECTORY CHANGED")
    for a in absent:
        if pathlib.Path(a).exists():
            problems.append(f"{a} was created")
    if check is not None:
        msg = check(out, err)
        if msg:
            problems.append(msg)
    first = next((ln for ln in err.splitlines() if re.match(r"(error|Error): ", ln)), "")
    shown = first or (out.strip().splitlines() or [""])[0]
    outcome = f"exit {code}: {shown[:150]}"
    if guard:
        outcome += " [run unchanged]" if "RUN DIRECTORY CHANGED" not in problems else ""
    record(not problems, kind, name, outcome + (f"  <-- {'; '.join(problems)}" if problems else ""))


def dataset(name: str, lines=None, header="userID\titemID\tx_label", raw: bytes | None = None,
            features: dict | None = None, extra: dict | None = None) -> pathlib.Path:
    d = WORK / "data" / name
    d.mkdir(parents=True, exist_ok=True)
    if raw is None:
        lines = lines if lines is not None else TINY
        raw = ("\n".join([header, *lines]) + "\n").encode("utf-8")
    (d / f"{name}.inter").write_bytes(raw)
    for mod, x in (features or {}).items():
        if isinstance(x, bytes):
            (d / f"{mod}.npy").write_bytes(x)
        else:
            np.save(d / f"{mod}.npy", x, allow_pickle=True)
    for fname, content in (extra or {}).items():
        (d / fname).write_text(content)
    return d


TINY = ["0\t0\t0", "0\t1\t0", "0\t2\t1", "1\t1\t0", "1\t2\t0", "1\t0\t2"]


def file_cases():
    stats = lambda name, d, match=None, rc=2: cli_case(name, "data", "stats", d, rc=rc, match=match,  # noqa: E731
                                                       kind="file")
    stats("missing userID column", dataset("nocol", header="user\titemID\tx_label"), r"lacks column\(s\) userID")
    stats("UTF-8 BOM before the header (accepted)", dataset("bom", raw=b"\xef\xbb\xbf" + (
        "userID\titemID\tx_label\n" + "\n".join(TINY) + "\n").encode()), r"users\s+2", rc=0)
    stats("Latin-1 byte in .inter", dataset("latin", raw=("userID\titemID\tx_label\n" + "\n".join(TINY)
                                                          + "\n1\t2\t1\tcaf\xe9\n").encode("latin-1")),
          r"line 8 is not UTF-8")
    stats("string user id 'u0'", dataset("strid", TINY + ["u0\t1\t0"]), r"line 8, column userID: 'u0' is not an integer")
    stats("fractional item id 1.5", dataset("frac", TINY + ["1\t1.5\t0"]), r"'1.5' is not an integer")
    stats("user id beyond int64", dataset("beyond", TINY + [f"{HUGE}\t1\t0"]), r"beyond the 64-bit")
    stats("item id 10**12 (implausible)", dataset("sparse", TINY + [f"1\t{10 ** 12}\t0"]), r"Re-index")
    stats("negative item id", dataset("neg", TINY + ["1\t-4\t0"]), r"negative id -4")
    stats("x_label 3", dataset("lab", TINY + ["1\t3\t3"]), r"not a split label")
    stats("short line", dataset("short", TINY + ["1\t3"]), r"line 8 has 2 fields")
    stats("header only", dataset("hdr", []), r"no interaction rows")
    stats("empty .inter file", dataset("empty", raw=b""), r"lacks column")
    stats("no training rows", dataset("notrain", ["0\t0\t1", "0\t1\t2"]), r"training split is empty")
    d = dataset("two")
    (d / "two.inter").rename(d / "a.inter")
    (d / "b.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n")
    stats("two .inter files", d, r"several .inter files")
    stats("not a directory", WORK / "data" / "nope", r"not a directory")
    stats("string-dtype image_feat.npy", dataset("strfeat", features={"image_feat": np.array([["a"]] * 3)}), r"holds strings")
    stats("complex image_feat.npy", dataset("cplx", features={"image_feat": np.ones((3, 2), np.complex64)}), r"complex numbers")
    stats("zero-width (3, 0) feature file", dataset("zw", features={"image_feat": np.zeros((3, 0), np.float32)}), r"zero feature columns")
    stats("1-d feature file", dataset("oned", features={"image_feat": np.zeros(3, np.float32)}), r"expected a 2-d array")
    stats("NaN in features", dataset("nan", features={"image_feat": np.array([[1.0], [np.nan], [0.0]], np.float32)}), r"NaN")
    stats("feature rows != items", dataset("rows", features={"image_feat": np.zeros((5, 2), np.float32)}), r"has 5 rows but the dataset has 3 items")
    stats("pickled object .npy", dataset("obj", features={"image_feat": np.array([{"a": 1}] * 3, dtype=object)}), r"cannot be read as a .npy")
    stats("garbage .npy bytes", dataset("garb", features={"image_feat": b"not numpy at all"}), r"cannot be read as a .npy")
    stats("cold_items.txt with words", dataset("cold", extra={"cold_items.txt": "apple\n"}), r"cold_items.txt: expected one integer")
    stats("cold_items.txt out of range", dataset("cold2", extra={"cold_items.txt": "77\n"}), r"item ids must lie in 0..2")


def config_cases(syn, small40):
    def train(name, *sets, match=None, data=syn, extra=()):
        out = WORK / "runs" / re.sub(r"\W+", "_", name)
        cli_case(name, "train", "-m", "lightgcn", "-d", data, "-o", out, "--quiet",
                 *[a for s in sets for a in ("--set", s)], *extra, match=match, absent=[out])

    train("--set topk=[0,20]", "topk=[0,20]", match=r"topk=\[0, 20\]: must be")
    train("--set topk=[-5,20]", "topk=[-5,20]", match=r"topk=\[-5, 20\]")
    train("--set topk=[5,500] on 100 items", "topk=[5,500]", match=r"asks for lists longer than the 100 items")
    train("default topk on a 40-item dataset", data=small40, match=r"e\.g\. --set topk=\[5,10,20\]")
    train("--set embedding_size=0", "embedding_size=0", match=r"embedding_size=0: must be")
    train("--set n_layers=-1", "n_layers=-1", match=r"n_layers=-1")
    train("--set patience=-5", "patience=-5", match=r"patience=-5")
    train("--set lr_scheduler=5", "lr_scheduler=5", match=r"lr_scheduler=\[5\]: must be two")
    train("--set seed=-1", "seed=-1", match=r"seed=-1")
    train("--set checkpoint_every=0", "checkpoint_every=0", match=r"checkpoint_every=0")
    train("--set lr=.nan", "lr=.nan", match=r"lr=nan")
    train("--set epochs=abc", "epochs=abc", match=r"expected an integer")
    train("--set epoch=2 (unknown key)", "epoch=2", match=r"Did you mean epochs")
    train("--set optimizer=sgd", "optimizer=sgd", match=r"choose one of adam, adamw")
    train("--set without '='", "epochs", match=r"expected key=value")
    train("--set valid_metrics=[hits@20]", "valid_metrics=[hits@20]", match=r"is not computed")
    train("--set embedding_size=10**12 (memory)", f"embedding_size={10 ** 12}", match=r"needs more memory")
    bad = WORK / "bad.yaml"
    bad.write_text("lr: [0.1\nepochs: 3\n")
    train("malformed --config YAML", extra=("-c", bad), match=r"not valid YAML at line")
    lst = WORK / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    train("--config holding a list", extra=("-c", lst), match=r"must be a mapping")
    lat = WORK / "latin.yaml"
    lat.write_bytes("lr: 0.1 # caf\xe9\n".encode("latin-1"))
    train("Latin-1 --config file", extra=("-c", lat), match=r"not UTF-8")
    cli_case("--model nosuchmodel", "train", "-m", "nosuchmodel", "-d", syn, "--quiet",
             match=r"unknown model 'nosuchmodel'")
    cli_case("--device nonsense", "train", "-d", syn, "--device", "nonsense", "--quiet",
             match=r"--device nonsense")
    cli_case("--device cuda without CUDA", "train", "-d", syn, "--device", "cuda:3", "--quiet",
             match=r"--device cuda:3")
    cli_case("--log-every -1", "train", "-d", syn, "--log-every", "-1", match=r"--log-every")
    cli_case("lgmrec on data without features", "train", "-m", "lgmrec", "-d",
             dataset("plain"), "--set", "topk=[1,2]", "--set", "valid_metrics=[recall@2]",
             "-o", WORK / "runs" / "nofeat", "--quiet", match=r"needs item modality features",
             absent=[WORK / "runs" / "nofeat"])
    cli_case("data synth --users 5", "data", "synth", "-o", WORK / "s5", "--users", "5",
             match=r"--users", absent=[WORK / "s5"])
    cli_case("models nosuchmodel", "models", "nosuchmodel", match=r"unknown model")
    cli_case("serve --port 70000", "serve", WORK / "runs" / "base", "--port", "70000",
             match=r"--port")


def run_cases(syn, other, run):
    cfg_only = WORK / "runs" / "cfg-only-copy"
    cli_case("train -o an existing run (other n_layers)", "train", "-m", "lightgcn", "-d", syn,
             "-o", run, "--set", "n_layers=4", "--set", "epochs=50", "--quiet",
             match=r"already holds a run", guard=[run])
    cli_case("train -o an existing run (other model)", "train", "-m", "bpr", "-d", syn, "-o", run,
             "--quiet", match=r"already holds a run", guard=[run])
    notes = WORK / "notes"
    notes.mkdir(exist_ok=True)
    (notes / "todo.txt").write_text("keep me")
    cli_case("train -o a non-empty folder", "train", "-d", syn, "-o", notes, "--quiet",
             match=r"not empty", guard=[notes])
    cli_case("train -o a file", "train", "-d", syn, "-o", notes / "todo.txt", "--quiet",
             match=r"is a file", guard=[notes])
    cli_case("--resume with another --model", "train", "--resume", run, "-m", "bpr", "--quiet",
             match=r"trained with model lightgcn", guard=[run])
    cli_case("--resume with --set lr=5", "train", "--resume", run, "--set", "lr=5", "--quiet",
             match=r"not lr", guard=[run])
    cli_case("--resume with --config", "train", "--resume", run, "-c", run / "config.yaml",
             "--quiet", match=r"--config cannot", guard=[run])
    cli_case("--resume with other --data", "train", "--resume", run, "--data", other, "--quiet",
             match=r"differs from the one", guard=[run])
    cli_case("--resume --set epochs=1 (below run)", "train", "--resume", run, "--set", "epochs=1",
             "--quiet", match=r"below the 2 epochs", guard=[run])
    empty = WORK / "runs" / "empty"
    empty.mkdir(parents=True, exist_ok=True)
    cli_case("--resume an empty folder", "train", "--resume", empty, "--quiet",
             match=r"no config.yaml", guard=[empty])
    cfg_only.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "config.yaml", cfg_only / "config.yaml")
    cli_case("--resume a folder with only config.yaml (starts over)", "train", "--resume",
             cfg_only, "--quiet", rc=0, match=r"starting the run over from epoch 0")
    cli_case("evaluate a folder without config.yaml", "evaluate", empty,
             match=r"not a run directory")
    small = write_synthetic(WORK / "data" / "small", 120, 60, seed=0)
    cli_case("evaluate --data of another size", "evaluate", run, "--data", small,
             match=r"does not fit lightgcn", guard=[run])
    evil = WORK / "runs" / "evil"
    shutil.copytree(run, evil, dirs_exist_ok=True)
    marker = WORK / "pwned"
    payload = ("import torch, sys\n"
               "class P:\n"
               "    def __reduce__(self):\n"
               f"        return (exec, (\"open({str(marker)!r}, 'w').write('x')\",))\n"
               f"torch.save({{'user_embedding.weight': P()}}, {str(evil / 'best.pt')!r})\n")
    subprocess.run([sys.executable, "-c", payload], check=True, env=ENV)
    cli_case("evaluate a crafted best.pt (__reduce__ payload)", "evaluate", evil,
             match=r"cannot be loaded safely", absent=[marker])
    trunc = WORK / "runs" / "trunc"
    shutil.copytree(run, trunc, dirs_exist_ok=True)
    (trunc / "best.pt").write_bytes((run / "best.pt").read_bytes()[:100])
    cli_case("recommend with a truncated best.pt", "recommend", trunc, "-u", "0",
             match=r"cannot be loaded safely")
    cli_case("recommend -k 0", "recommend", run, "-u", "0", "-k", "0", match=r"-k")
    cli_case("recommend -k -3", "recommend", run, "-u", "0", "-k", "-3", match=r"-k")
    cli_case("recommend -u 99999999999999999999", "recommend", run, "-u", HUGE,
             match=r"out of range")
    cli_case("recommend -u -1", "recommend", run, "-u", "-1", match=r"out of range")
    cli_case("recommend -u abc", "recommend", run, "-u", "abc", match=r"not a valid integer")

    def at_most_unseen(out, err):
        items = json.loads(out)["0"]
        return None if len(items) <= 100 and len(set(items)) == len(items) else f"{len(items)} items"
    cli_case("recommend -k 200 on 100 items (answers the unseen)", "recommend", run, "-u", "0",
             "-k", "200", "--json", rc=0, check=at_most_unseen)


def http_cases(run):
    from fastapi.testclient import TestClient

    from mmrecsys.serving.app import Recommender, create_app
    rec = Recommender.from_run(run, device="cpu")
    c = TestClient(create_app(rec))
    n_items = rec.data.n_items
    seen0 = set(rec.data.train[0].indices.tolist())

    def case(name, method, url, expect, check=None, **kw):
        r = c.request(method, url, **kw)
        problems = []
        if r.status_code >= 500:
            problems.append("5xx")
        if r.status_code != expect:
            problems.append(f"expected {expect}")
        detail = ""
        if r.status_code >= 400:
            try:
                detail = json.dumps(r.json().get("detail"))[:110]
            except ValueError:
                problems.append("no JSON detail")
        if check is not None:
            msg = check(r)
            if msg:
                problems.append(msg)
        record(not problems, "http", name, f"{r.status_code} {detail}"
               + (f"  <-- {'; '.join(problems)}" if problems else ""))

    def unseen_only(r):
        items = [x["item"] for x in r.json()["items"]]
        if len(items) != n_items - len(seen0) or set(items) & seen0:
            return f"{len(items)} items, {len(set(items) & seen0)} seen"
    case("GET k=n_items (more than the unseen)", "GET", "/recommend", 200, unseen_only,
         params={"user": 0, "k": n_items})
    case("GET user=99999999999999999999", "GET", "/recommend", 404, params={"user": HUGE})
    case("POST users=[99999999999999999999]", "POST", "/recommend", 404, json={"users": [HUGE]})
    case("GET user=-1", "GET", "/recommend", 404, params={"user": -1})
    case("GET user=abc", "GET", "/recommend", 422, params={"user": "abc"})
    case("GET user=1.5", "GET", "/recommend", 422, params={"user": "1.5"})
    case("GET without user", "GET", "/recommend", 422)
    case("GET k=0", "GET", "/recommend", 422, params={"user": 0, "k": 0})
    case("GET k=-3", "GET", "/recommend", 422, params={"user": 0, "k": -3})
    case("GET k=100000", "GET", "/recommend", 422, params={"user": 0, "k": 100000})
    case("GET exclude_seen=maybe", "GET", "/recommend", 422,
         params={"user": 0, "exclude_seen": "maybe"})
    case("POST body not JSON", "POST", "/recommend", 422, content=b"{users: [1",
         headers={"content-type": "application/json"})
    case("POST users=[]", "POST", "/recommend", 422, json={"users": []})
    case("POST users='x'", "POST", "/recommend", 422, json={"users": "x"})
    case("POST users=[0.5]", "POST", "/recommend", 422, json={"users": [0.5]})
    case("POST k=-1", "POST", "/recommend", 422, json={"users": [0], "k": -1})
    case("POST 10001 users", "POST", "/recommend", 422, json={"users": [0] * 10001})
    case("POST k=1000 (more than the unseen)", "POST", "/recommend", 200,
         lambda r: None if len(r.json()["results"][0]["items"]) <= n_items else "too many",
         json={"users": [0, 1], "k": 1000})
    case("GET similar-items item=99999999999999999999", "GET", "/similar-items", 404,
         params={"item": HUGE})
    case("GET similar-items k=0", "GET", "/similar-items", 422, params={"item": 0, "k": 0})
    case("GET similar-items k=1000", "GET", "/similar-items", 200,
         lambda r: None if len(r.json()["items"]) == n_items - 1 else "wrong length",
         params={"item": 0, "k": 1000})
    case("DELETE /recommend", "DELETE", "/recommend", 405)
    case("GET /nonexistent", "GET", "/nonexistent", 404)
    case("GET /docs (no CDN)", "GET", "/docs", 200,
         lambda r: "remote asset" if re.search(r"https?://", r.text) else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    t0 = time.perf_counter()
    try:
        syn = write_synthetic(WORK / "data" / "syn", 200, 100, seed=0)
        other = write_synthetic(WORK / "data" / "other", 200, 100, seed=1)
        small40 = write_synthetic(WORK / "data" / "tiny40", 60, 40, seed=0)
        run = WORK / "runs" / "base"
        code, out, err = run_cli("train", "-m", "lightgcn", "-d", syn, "-o", run, "--set",
                                 "epochs=2", "--quiet")
        if code != 0:
            sys.exit(f"could not train the base run:\n{out}{err}")
        file_cases()
        config_cases(syn, small40)
        run_cases(syn, other, run)
        http_cases(run)
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    n_ok = sum(r[0] for r in RESULTS)
    kinds = {k: sum(1 for r in RESULTS if r[1] == k) for k in ("file", "cli", "http")}
    print(f"{len(RESULTS)} malformed inputs ({kinds['file']} files, {kinds['cli']} command lines, "
          f"{kinds['http']} HTTP requests): {n_ok} passed, {len(RESULTS) - n_ok} failed "
          f"in {time.perf_counter() - t0:.0f}s")
    sys.exit(0 if n_ok == len(RESULTS) else 1)


if __name__ == "__main__":
    main()
