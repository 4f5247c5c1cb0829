"""A sweep against a real PostgreSQL server: every trial recorded exactly once.

    python benchmarks/bench_sweep_postgres.py [--users 600 --items 300] [--epochs 5]
        [--mode workers|machines] [--keep]

Finds the server binaries (``initdb``, ``pg_ctl`` on PATH, else /usr/lib/postgresql/*/bin or
/usr/local/pgsql/bin; ``$PG_BIN`` overrides), creates a cluster in a temporary folder, starts it
on 127.0.0.1 on a free port (trust authentication, loopback only; as an unprivileged user when
run as root, because postgres refuses to run as root: the existing ``postgres`` account, else
one created with ``useradd --system``), creates a database and runs a LightGCN grid sweep of
``n_layers × reg_weight`` (6 settings) on a small synthetic dataset against
``postgresql+psycopg2://…``:

* ``--mode workers`` (default): one sweep with 2 worker processes (``mmrecsys.experiments.
  sweep(..., workers=2)``, what ``mmrecsys sweep --workers 2`` runs);
* ``--mode machines``: two separate ``mmrecsys sweep --workers 1`` commands with their own
  ``--out`` folders started together, as two machines would be.

Then it reads the study back from the server and checks that every grid point has exactly one
complete trial, that no trial number repeats, that no trial is left running or failed, and that
both worker processes trained; prints trials, workers, seconds; stops the server and removes the
cluster (``--keep`` keeps it). Exits 0 on success, 1 on a failed check, 77 when no server
binaries (or no way to run them unprivileged) exist.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SKIP = 77
SPACE = {"n_layers": [1, 2, 3], "reg_weight": [1e-3, 1e-4]}


def find_binaries() -> pathlib.Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    cands = [os.environ.get("PG_BIN")] if os.environ.get("PG_BIN") else []
    w = shutil.which("initdb")
    if w:
        cands.append(str(pathlib.Path(w).parent))
    cands += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    cands += ["/usr/local/pgsql/bin"]
    for c in cands:
        d = pathlib.Path(c)
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def server_user() -> str | None:
    """The account the server runs as: ourselves unless root (postgres refuses root)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("postgres", "mmrecsys-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    if shutil.which("useradd"):
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            "mmrecsys-pg"], capture_output=True, text=True)
        if r.returncode == 0:
            return "mmrecsys-pg"
    return None


def as_user(user: str, cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    return ["su", user, "-s", "/bin/sh", "-c", " ".join(map(str, cmd))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A throw-away PostgreSQL cluster on 127.0.0.1."""

    def __init__(self, bin_dir: pathlib.Path, user: str, keep: bool = False):
        self.bin, self.user, self.keep = bin_dir, user, keep
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="mmrecsys-pg-"))
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.sock.mkdir()
        self.port = free_port()
        if os.geteuid() == 0:
            pw = pwd.getpwnam(user)
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o700)

    def run(self, *args):
        r = subprocess.run(as_user(self.user, list(map(str, args))), capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args[:2]))} failed: "
                               f"{(r.stderr or r.stdout).strip()[-800:]}")
        return r

    def start(self):
        self.run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "mmrecsys",
                 "-E", "UTF8", "--no-sync")
        self.run(self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w",
                 "-o", f"-h 127.0.0.1 -p {self.port} -k {self.sock}", "start")

    def create_db(self, name: str):
        import psycopg2
        con = psycopg2.connect(host="127.0.0.1", port=self.port, user="mmrecsys",
                               dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        con.close()
        return f"postgresql+psycopg2://mmrecsys@127.0.0.1:{self.port}/{name}"

    def stop(self):
        try:
            self.run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)


def sweep_cmd(data, out, url, study, epochs, workers) -> list[str]:
    return [sys.executable, "-m", "mmrecsys.cli", "sweep", "--model", "lightgcn", "--data",
            str(data), "--out", str(out), "--storage", url, "--study", study, "--space",
            str(out.parent / "space.yaml"), "--workers", str(workers), "--set",
            f"epochs={epochs}", "--set", "batch_size=512", "--device", "cpu"]


def check(url: str, study: str) -> dict:
    """Read the study back from the server and check it."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name=study, storage=url)
    trials = s.get_trials(deepcopy=False)
    points: dict[tuple, list[int]] = {}
    for t in trials:
        if t.state.name == "COMPLETE":
            points.setdefault(tuple(t.params[k] for k in SPACE), []).append(t.number)
    grid = [(a, b) for a in SPACE["n_layers"] for b in SPACE["reg_weight"]]
    numbers = [t.number for t in trials]
    procs: dict[str, int] = {}
    for t in trials:
        run = t.user_attrs.get("run") or {}
        key = f"{run.get('host')}/pid {run.get('pid')}"
        procs[key] = procs.get(key, 0) + (t.state.name == "COMPLETE")
    problems = []
    missing = [p for p in grid if p not in points]
    twice = {p: n for p, n in points.items() if len(n) > 1}
    if missing:
        problems.append(f"grid points without a complete trial: {missing}")
    if twice:
        problems.append(f"grid points trained more than once: {twice}")
    if len(set(numbers)) != len(numbers):
        problems.append("repeated trial numbers")
    other = [(t.number, t.state.name) for t in trials if t.state.name != "COMPLETE"
             and "skipped" not in t.user_attrs]
    if other:
        problems.append(f"trials not complete: {other}")
    if len([k for k, n in procs.items() if n]) < 2:
        problems.append(f"only one worker process trained: {procs}")
    return {"trials": len(trials), "complete": sum(len(v) for v in points.values()),
            "grid": len(grid), "skipped": sum("skipped" in t.user_attrs for t in trials),
            "workers": procs, "problems": problems}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=600)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--mode", choices=["workers", "machines"], default="workers")
    ap.add_argument("--keep", action="store_true", help="Keep the cluster folder.")
    args = ap.parse_args(argv)
    bin_dir = find_binaries()
    if bin_dir is None:
        print("skip: no PostgreSQL server binaries (initdb, pg_ctl) found; set PG_BIN")
        return SKIP
    try:
        import optuna  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError as e:
        print(f"skip: {e.name} is not installed (pip install 'mmrecsys[experiments,postgres]')")
        return SKIP
    user = server_user()
    if user is None:
        print("skip: running as root and no unprivileged account to run postgres as")
        return SKIP
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    server = Server(bin_dir, user, keep=args.keep)
    work = pathlib.Path(tempfile.mkdtemp(prefix="mmrecsys-pg-sweep-"))
    t_all = time.perf_counter()
    try:
        server.start()
        url = server.create_db("mmrecsys_sweep")
        print(f"server: {bin_dir}/postgres as {user} on 127.0.0.1:{server.port} "
              f"({time.perf_counter() - t_all:.1f}s to start)")
        from mmrecsys.data.synthetic import write_synthetic
        data = write_synthetic(work / "data", args.users, args.items, seed=0)
        (work / "space.yaml").write_text(json.dumps(SPACE))   # JSON is YAML
        study = f"lightgcn-{args.mode}"
        t0 = time.perf_counter()
        if args.mode == "workers":
            import optuna
            from mmrecsys.experiments import format_event, sweep
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sweep("lightgcn", str(data), work / "sweep", space=SPACE, storage=url,
                  study_name=study, workers=2, device="cpu",
                  overrides={"epochs": args.epochs, "batch_size": 512},
                  progress=lambda ev: print(format_event(ev), flush=True))
        else:
            cmds = [sweep_cmd(data, work / f"machine{i}", url, study, args.epochs, 1)
                    for i in (1, 2)]
            # two "machines" sharing this one: one torch thread each (as --workers 2 sets)
            procs = [subprocess.Popen(c, env=dict(env, OMP_NUM_THREADS="1"),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for c in cmds]
            outs = [p.communicate()[0] for p in procs]
            for i, (p, o) in enumerate(zip(procs, outs)):
                for line in o.strip().splitlines():
                    print(f"[command {i + 1}] {line}")
                if p.returncode != 0:
                    print(f"[command {i + 1}] exit status {p.returncode}")
                    return 1
        seconds = time.perf_counter() - t0
        res = check(url, study)
        print(f"trials recorded: {res['trials']} ({res['complete']} complete for a grid of "
              f"{res['grid']}; {res['skipped']} skipped as duplicates)")
        print(f"workers: {len([k for k, n in res['workers'].items() if n])} processes "
              + ", ".join(f"{k}: {n} trials" for k, n in res["workers"].items()))
        print(f"seconds: {seconds:.1f} for the sweep ({args.mode}), "
              f"{time.perf_counter() - t_all:.1f} in all")
        if res["problems"]:
            for p in res["problems"]:
                print(f"FAILED: {p}")
            return 1
        print("ok: every grid point recorded exactly once")
        return 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
