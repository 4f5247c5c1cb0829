"""The CPU float32 product library switch (``cpu_matmul``): oneDNN only where it is checked to
compute exact float32 products, and only for the products marked fixed-shape; the setting is
restored after each block."""
import pytest
import torch

from mmrecsys import matmul


def test_probe_data_detect_any_rounding_to_bfloat16():
    # the probe's inputs: float32 gives the exact products; bfloat16 inputs do not
    g = torch.Generator().manual_seed(0)
    a, b = matmul._grid((64, 4096), g, True), matmul._grid((4096, 8), g, False)
    exact = (a.double() @ b.double()).float()
    assert torch.equal(a @ b, exact)
    assert not torch.equal(a.bfloat16().float() @ b, exact)
    assert not torch.equal((a.bfloat16() @ b.bfloat16()).float(), exact)


def test_modes_and_restoring_the_setting():
    with pytest.raises(ValueError, match="cpu_matmul"):
        matmul.resolve("blas")
    assert matmul.resolve("mkl") is False
    assert matmul.resolve("auto", device="cuda") is False    # CUDA products are untouched
    sw = matmul._switch()
    before = sw.fp32_precision if sw is not None else None
    with matmul.fixed_shape_products():             # outside cpu_matmul: nothing changes
        assert (sw.fp32_precision if sw is not None else None) == before
    with matmul.cpu_matmul("onednn"):
        assert (sw.fp32_precision if sw is not None else None) == before  # products in general
        with matmul.fixed_shape_products():          # the fixed-shape ones
            if matmul.onednn_is_exact():
                assert sw.fp32_precision == "bf16"
        assert (sw.fp32_precision if sw is not None else None) == before
    assert (sw.fp32_precision if sw is not None else None) == before


def test_not_exact_means_mkl(monkeypatch):
    monkeypatch.setattr(matmul, "onednn_is_exact", lambda: False)
    assert matmul.resolve("auto") is False
    with pytest.warns(UserWarning, match="using MKL"):
        assert matmul.resolve("onednn") is False


@pytest.mark.parametrize("name,extra", [("mmhcl", {}), ("hccf", {"batch_size": 256}),
                                        ("sht", {"batch_size": 256})])
def test_training_is_the_same_with_either_library(name, extra):
    """Also the models whose whole step is marked fixed-shape (HCCF, SHT: padded contrast)."""
    import mmrecsys as mr
    data = mr.load_dataset("synthetic", n_users=150, n_items=120, seed=3)
    a = mr.fit(data, name, epochs=2, cpu_matmul="mkl", **extra)
    b = mr.fit(data, name, epochs=2, cpu_matmul="onednn", **extra)
    for ra, rb in zip(a.history, b.history):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)


def test_auto_follows_the_processor(monkeypatch):
    monkeypatch.setattr(matmul, "onednn_is_exact", lambda: True)
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "GenuineIntel")   # MKL's fast code
    assert matmul.resolve("auto") is False and matmul.resolve("onednn") is True
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "AuthenticAMD")
    assert matmul.resolve("auto") is True
