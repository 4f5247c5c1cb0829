"""Other tools' features: Ducho's output, and MMRec's finished dataset folders.

Ducho (sisinflab/Ducho) writes one ``.npy`` per item, named after the item, under
``<dataset>/<output>/<backend>/<model>/<layer>/<item>.npy`` (e.g.
``visual_embeddings/torch/ResNet50/avgpool/B000123.npy``). :func:`import_ducho` turns every
such layer folder into a row-aligned ``<modality>_feat.npy`` of a prepared dataset through its
``i_id_mapping.csv``; items without a file get the mean vector (as MMRec does for images).

MMRec's finished folders (``<name>.inter``, ``image_feat.npy``, ``text_feat.npy``, the id maps)
are already in the standard format: :func:`import_mmrec` validates one, copies it under a new
name and records the files' hashes in ``features.json``.
"""
from __future__ import annotations

import hashlib
import pathlib
import shutil

import numpy as np

from .dataset import DataError, find_inter_file, load_dataset

#: Ducho output folder name (lower case) → modality
DUCHO_MODALITIES = (("visual", "image_feat"), ("image", "image_feat"), ("textual", "text_feat"),
                    ("text", "text_feat"), ("audio", "audio_feat"))


def read_ducho_folder(folder) -> tuple[list, np.ndarray]:
    """(item ids, vectors) of a folder of ``<item>.npy`` files (one vector each, any shape that
    flattens to the same width)."""
    folder = pathlib.Path(folder)
    files = sorted(folder.glob("*.npy"))
    if not files:
        leaves = ducho_layer_folders(folder)
        if len(leaves) == 1:
            return read_ducho_folder(leaves[0])
        if not leaves:
            raise DataError(f"{folder}: holds no <item>.npy file (Ducho writes "
                            f"<output>/<backend>/<model>/<layer>/<item>.npy).")
        raise DataError(f"{folder}: holds several layer folders "
                        f"({', '.join(str(p.relative_to(folder)) for p in leaves)}); pass one.")
    vecs, width = [], None
    for f in files:
        try:
            v = np.load(f, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{f}: cannot be read as a .npy array ({e}).") from None
        v = np.asarray(v, dtype=np.float32).ravel()
        if width is None:
            width = v.size
        elif v.size != width:
            raise DataError(f"{f}: holds {v.size} values, {files[0].name} holds {width}; every "
                            f"item of a layer folder must have the same width.")
        vecs.append(v)
    return [f.name[:-len(".npy")] for f in files], np.stack(vecs)


def ducho_layer_folders(root) -> list[pathlib.Path]:
    """Folders under ``root`` (itself included) that hold ``.npy`` files."""
    root = pathlib.Path(root)
    found = {p.parent for p in root.rglob("*.npy")}
    return sorted(found)


def ducho_provenance(folder) -> dict:
    """Encoder description from the path (…/<output>/<backend>/<model>/<layer>) and a hash of
    the folder's files."""
    folder = pathlib.Path(folder).resolve()
    if not any(folder.glob("*.npy")):
        leaves = ducho_layer_folders(folder)
        folder = leaves[0] if len(leaves) == 1 else folder
    parts = folder.parts
    h = hashlib.sha256()
    files = sorted(folder.glob("*.npy"))
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    enc = {"kind": "ducho", "layer_folder": str(folder)}
    if len(parts) >= 4:
        enc.update({"output": parts[-4], "backend": parts[-3], "model": parts[-2],
                    "layer": parts[-1]})
    return {"encoder": enc, "source_sha256": h.hexdigest(), "source_files": len(files)}


def _modality_of(layer: pathlib.Path, root: pathlib.Path) -> str:
    rel = layer.relative_to(root).parts
    out_name = rel[-4] if len(rel) >= 4 else (rel[0] if rel else root.name)
    for key, mod in DUCHO_MODALITIES:
        if key in out_name.lower():
            return mod
    return out_name.lower().replace(" ", "_") + "_feat"


def import_ducho(src, dataset_dir, modality: str | None = None, log=None) -> list[dict]:
    """Write a ``*_feat.npy`` into the prepared dataset ``dataset_dir`` for each Ducho layer
    folder under ``src`` (modality from the output folder: visual → image_feat, textual →
    text_feat, audio → audio_feat; ``modality`` names it when there is one folder)."""
    from .features import dataset_items, table_modality
    src = pathlib.Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder. Pass Ducho's dataset folder or one of its "
                        f"<output>/<backend>/<model>/<layer> folders.")
    leaves = ducho_layer_folders(src)
    if not leaves:
        raise DataError(f"{src}: no .npy file under it (Ducho writes "
                        f"<output>/<backend>/<model>/<layer>/<item>.npy).")
    root = src.resolve()
    mods = {}
    for leaf in leaves:
        mod = modality if (modality and len(leaves) == 1) else _modality_of(leaf.resolve(), root)
        mods.setdefault(mod, []).append(leaf)
    if modality and len(leaves) > 1:
        raise DataError(f"{src}: {len(leaves)} layer folders; --modality names one; pass the "
                        f"layer folder itself.")
    clash = {m: v for m, v in mods.items() if len(v) > 1}
    if clash:
        m, v = next(iter(clash.items()))
        raise DataError(f"{src}: several layer folders give {m} ({', '.join(str(p) for p in v)}); "
                        f"import one at a time: `mmrecsys data features DIR --modality NAME=LAYER`.")
    raw_ids, _ = dataset_items(dataset_dir)
    return [table_modality(dataset_dir, mod, v[0], raw_ids=raw_ids, log=log)
            for mod, v in mods.items()]


def import_mmrec(src, out, name: str | None = None) -> pathlib.Path:
    """Validate MMRec's finished folder ``src`` and copy it to ``out`` as ``<name>.inter`` plus
    its feature files and id maps, unchanged; returns the path of the new .inter file."""
    from ..io import atomic_write_json
    from .rawfiles import file_sha256
    src, out = pathlib.Path(src), pathlib.Path(out)
    if out.resolve() == src.resolve():
        raise DataError(f"{out}: is the source folder; import into a new folder.")
    inter = find_inter_file(src)
    data = load_dataset(src)  # raises DataError with the fix on any malformed file
    name = name or out.name
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.inter"
    shutil.copyfile(inter, target)
    copied = [inter.name]
    for pat in ("*_feat.npy", "*_mapping.csv", "missed_*_itemIDs.csv"):
        for f in sorted(src.glob(pat)):
            shutil.copyfile(f, out / f.name)
            copied.append(f.name)
    meta = {}
    for mod, x in data.features.items():
        f = src / f"{mod}.npy"
        meta[mod] = {"file": f.name, "shape": list(x.shape), "source": str(f.resolve()),
                     "source_sha256": file_sha256(f), "format": "mmrec",
                     "encoder": {"kind": "mmrec-release", "description":
                                 "as released with the MMRec dataset (its data/README: "
                                 "Sentence-Transformers text and CNN image features)"}}
    atomic_write_json(out / "features.json", meta)
    skipped = sorted(p.name for p in src.iterdir() if p.is_file() and p.name not in copied)
    if skipped:
        import warnings
        warnings.warn(f"{src}: not copied: {', '.join(skipped)} (model caches and files the "
                      f"loader does not read).", stacklevel=2)
    return target
