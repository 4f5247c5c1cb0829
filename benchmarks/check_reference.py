"""Deterministic parity of LATTICE, MGCN and SMORE with the reference *code* itself.

    python benchmarks/check_reference.py [--model lattice mgcn smore] [--data /work/ref/data/synth]
        [--mmrec /work/.mirror/enoche+MMRec/repo] [--smore /work/.mirror/kennethorq+SMORE/repo]

The reference model classes (``enoche/MMRec`` ``src/models/{lattice,mgcn}.py``,
``kennethorq/SMORE`` ``src/models/smore.py``) are exported from their git mirrors into a
temporary folder and imported (nothing of them enters this repository); each is built on the
same dataset, **our weights are copied into it**, and both compute, on the same batches:
the loss and the gradient of every parameter (the first batch of an epoch, then a later batch
after an optimiser step, where LATTICE propagates on its epoch's detached graph) and the
full-ranking scores of ``full_sort_predict``. With identical weights and batches the two must
agree to float32 rounding; any remaining difference in training runs is then the RNG streams
(batch order, negatives, initial draws, SMORE's dropout masks).

Compatibility shims applied here only: ``Tensor.cuda`` is the identity on a CPU-only torch (the
reference calls ``.cuda()`` on its item graphs) and a ``torch_scatter.scatter_add`` stand-in
(``index_add_``) for the reference's sparse Laplacian. SMORE is compared with
``dropout_rate`` 0 (its masks come from the RNG) and, separately, in eval mode.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
import torch

from mmrecsys.data import load_dataset
from mmrecsys.models import get_model_class


def export(repo: str, dest: pathlib.Path) -> pathlib.Path:
    dest.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["git", "-C", repo, "archive", "HEAD", "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest / "src"


def shims():
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    if "torch_scatter" not in sys.modules:
        ts = types.ModuleType("torch_scatter")

        def scatter_add(src, index, dim=-1, out=None, dim_size=None):
            n = int(index.max()) + 1 if dim_size is None else dim_size
            return torch.zeros(n, dtype=src.dtype).index_add_(0, index, src)
        ts.scatter_add = scatter_add
        sys.modules["torch_scatter"] = ts


class _DS:
    def __init__(self, data):
        self.data = data

    def inter_matrix(self, form="coo"):
        return self.data.train.tocoo().astype(np.float32)

    def get_user_num(self):
        return self.data.n_users

    def get_item_num(self):
        return self.data.n_items


class _Loader(_DS):
    """What the reference constructors read: ``loader.dataset.get_user_num()`` (the base class)
    and ``loader.inter_matrix()`` (the models)."""

    def __init__(self, data):
        super().__init__(data)
        self.dataset = _DS(data)


def ref_config(data_dir: pathlib.Path, extra: dict) -> dict:
    return {"USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "NEG_PREFIX": "neg__",
            "train_batch_size": 2048, "device": "cpu", "end2end": False, "is_multimodal_model": True,
            "data_path": str(data_dir.parent) + "/", "dataset": data_dir.name,
            "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy",
            "embedding_size": 64, **extra}


# ours -> reference: (our hyperparameters, reference config, parameter name map)
def lattice_setup(ours_kw):
    ref = {"feat_embed_dim": 64, "weight_size": [64, 64], "knn_k": 10, "lambda_coeff": 0.9,
           "cf_model": "lightgcn", "n_layers": 1, "reg_weight": 1e-3, "mess_dropout": [0.1, 0.1]}
    ours = {"knn_k": 10, "reg_weight": 1e-3, **ours_kw}
    names = {"user_embedding": "user_embedding.weight", "item_embedding": "item_id_embedding.weight",
             "raw_features.image_feat": "image_embedding.weight", "raw_features.text_feat": "text_embedding.weight",
             "projection.image_feat.weight": "image_trs.weight", "projection.image_feat.bias": "image_trs.bias",
             "projection.text_feat.weight": "text_trs.weight", "projection.text_feat.bias": "text_trs.bias",
             "modal_weight": "modal_weight"}
    return ours, ref, names


def _views_names(n_gates, gate_names, prefer_names):
    names = {"user_embedding": "user_embedding.weight", "item_embedding": "item_id_embedding.weight",
             "raw_features.image_feat": "image_embedding.weight", "raw_features.text_feat": "text_embedding.weight",
             "projection.0.weight": "image_trs.weight", "projection.0.bias": "image_trs.bias",
             "projection.1.weight": "text_trs.weight", "projection.1.bias": "text_trs.bias"}
    for i, g in enumerate(gate_names):
        names[f"gate.{i}.weight"], names[f"gate.{i}.bias"] = f"{g}.0.weight", f"{g}.0.bias"
    for i, g in enumerate(prefer_names):
        names[f"gate_prefer.{i}.weight"], names[f"gate_prefer.{i}.bias"] = f"{g}.0.weight", f"{g}.0.bias"
    return names


def mgcn_setup(ours_kw):
    ref = {"n_ui_layers": 2, "n_layers": 1, "knn_k": 10, "reg_weight": 1e-3, "cl_loss": 0.1}
    ours = {"n_layers": 2, "n_item_layers": 1, "knn_k": 10, "reg_weight": 1e-3, "cl_weight": 0.1, **ours_kw}
    names = _views_names(2, ["gate_v", "gate_t"], ["gate_image_prefer", "gate_text_prefer"])
    for k in ("0.weight", "0.bias", "2.weight"):
        names[f"query_common.{k}"] = f"query_common.{k}"
    return ours, ref, names


def smore_setup(ours_kw):
    ref = {"n_ui_layers": 3, "n_layers": 1, "image_knn_k": 12, "text_knn_k": 7, "reg_weight": 1e-3,
           "cl_loss": 0.1, "dropout_rate": 0.0}
    ours = {"n_layers": 3, "n_item_layers": 1, "image_knn_k": 12, "text_knn_k": 7, "reg_weight": 1e-3,
            "cl_weight": 0.1, "dropout": 0.0, **ours_kw}
    names = _views_names(3, ["gate_v", "gate_t", "gate_f"],
                         ["gate_image_prefer", "gate_text_prefer", "gate_fusion_prefer"])
    for q in ("query_v", "query_t"):
        for k in ("0.weight", "0.bias", "2.weight"):
            names[f"{q}.{k}"] = f"{q}.{k}"
    for i, w in enumerate(("image", "text", "fusion")):
        names[f"spectral_filter.{i}"] = f"{w}_complex_weight"
    return ours, ref, names


SETUPS = {"lattice": (lattice_setup, "mmrec", "lattice", "LATTICE"),
          "mgcn": (mgcn_setup, "mmrec", "mgcn", "MGCN"),
          "smore": (smore_setup, "smore", "smore", "SMORE")}


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare(name, data, data_dir, src, seed=0, steps=3):
    setup, _, module, cls_name = SETUPS[name]
    ours_kw, ref_cfg, names = setup({})
    # the reference's packages have no __init__.py (namespace packages): keep this folder's
    # common.py from shadowing them
    saved = list(sys.path)
    here = str(pathlib.Path(__file__).resolve().parent)
    sys.path[:] = [str(src)] + [p for p in sys.path if p not in ("", here)]
    try:
        for mod in [m for m in sys.modules if m.split(".")[0] in ("models", "common", "utils")]:
            del sys.modules[mod]
        ref_cls = getattr(__import__(f"models.{module}", fromlist=[cls_name]), cls_name)
        torch.manual_seed(seed)
        ours = get_model_class(name)(data, None, **ours_kw)
        ours.train_batch_size = 2048
        ref = ref_cls(ref_config(data_dir, ref_cfg), _Loader(data))
    finally:
        sys.path[:] = saved
    ref_params = dict(ref.named_parameters())
    our_params = dict(ours.named_parameters())
    assert set(names) == set(our_params), set(our_params) ^ set(names)
    assert set(names.values()) <= set(ref_params), set(names.values()) - set(ref_params)
    unmapped = set(ref_params) - set(names.values())
    with torch.no_grad():
        for k, rk in names.items():
            ref_params[rk].copy_(our_params[k].reshape(ref_params[rk].shape))
    opt_o = torch.optim.Adam(ours.parameters(), lr=1e-2)
    opt_r = torch.optim.Adam([ref_params[names[k]] for k in our_params], lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    worst = {"loss": 0.0, "grad": 0.0, "scores": 0.0}
    print(f"{name}: reference {cls_name} ({sum(p.numel() for p in ref.parameters()):,} parameters"
          f"{', unused: ' + ', '.join(sorted(unmapped)) if unmapped else ''}) vs ours")
    ours.train()
    ref.train()
    if hasattr(ref, "pre_epoch_processing"):
        ref.pre_epoch_processing()
    ours.pre_epoch(0)
    for step in range(steps):
        b = 2048
        users = torch.randint(0, data.n_users, (b,), generator=g)
        pos = torch.randint(0, data.n_items, (b,), generator=g)
        neg = torch.randint(0, data.n_items, (b,), generator=g)
        opt_o.zero_grad()
        opt_r.zero_grad()
        lo = sum(ours.loss(users, pos, neg).values())
        lo.backward()
        lr_ = ref.calculate_loss(torch.stack([users, pos, neg]))
        lr_.backward()
        d_loss = abs(float(lo) - float(lr_)) / abs(float(lr_))
        d_grad = {}
        for k, rk in names.items():
            go, gr = our_params[k].grad, ref_params[rk].grad
            if go is None and gr is None:
                continue
            if go is None or gr is None:
                d_grad[k] = float("inf") if (gr if go is None else go).abs().max() > 0 else 0.0
                continue
            d_grad[k] = rel(go.reshape(gr.shape), gr)
        k_worst = max(d_grad, key=d_grad.get)
        print(f"  step {step}: loss ours {float(lo):.7f} ref {float(lr_):.7f} (rel {d_loss:.1e}); "
              f"{len(d_grad)} gradients, worst rel diff {d_grad[k_worst]:.1e} ({k_worst})")
        worst["loss"] = max(worst["loss"], d_loss)
        worst["grad"] = max(worst["grad"], d_grad[k_worst])
        opt_o.step()
        opt_r.step()
    ours.eval()
    ref.eval()
    with torch.no_grad():
        users = torch.arange(min(data.n_users, 500))
        s_ref = ref.full_sort_predict(torch.stack([users]))
        u, i = ours.representations()
        s_ours = u[users] @ i.T
    worst["scores"] = rel(s_ours, s_ref)
    print(f"  full_sort_predict after {steps} steps: max rel diff {worst['scores']:.1e}")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["lattice", "mgcn", "smore"])
    ap.add_argument("--data", default="/work/ref/data/synth")
    ap.add_argument("--mmrec", default="/work/.mirror/enoche+MMRec/repo")
    ap.add_argument("--smore", default="/work/.mirror/kennethorq+SMORE/repo")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shims()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        src = {"mmrec": export(args.mmrec, tmp / "mmrec"), "smore": export(args.smore, tmp / "smore")}
        # the reference caches its item graphs beside the data: give it a private copy
        data_dir = tmp / "data" / pathlib.Path(args.data).name
        data_dir.mkdir(parents=True)
        for f in pathlib.Path(args.data).iterdir():
            if f.suffix in (".npy", ".inter"):
                shutil.copy(f, data_dir / f.name)
        data = load_dataset(data_dir)
        if list(data.features) != ["image_feat", "text_feat"]:
            sys.exit("the check expects the modalities image_feat and text_feat")
        res = {m: compare(m, data, data_dir, src[SETUPS[m][1]]) for m in args.model}
    print("\nworst relative differences (loss, gradients, scores):")
    for m, w in res.items():
        print(f"  {m:8s} {w['loss']:.1e}  {w['grad']:.1e}  {w['scores']:.1e}")


if __name__ == "__main__":
    sys.exit(main())
