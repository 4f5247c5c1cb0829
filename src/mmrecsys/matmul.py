"""Which library computes float32 matrix products on the CPU: MKL (PyTorch's default) or oneDNN.

PyTorch's CPU builds hand float32 ``mm``/``addmm``/``bmm``/``linear`` to MKL. MKL picks its
fast AVX-512 kernels only on Intel processors; on AMD Zen 4/5 it runs slower code, about
2.5 times under what the same cores do with oneDNN (also shipped in PyTorch): a 7,050 × 4,096 ×
64 product takes 22 ms through MKL and 9 ms through oneDNN on a 2-core AMD EPYC (Zen 5).

PyTorch routes float32 products to oneDNN only under its reduced-precision switch
(``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``), which *allows* oneDNN to round the
inputs to bfloat16. Whether it does depends on the processor (it does on Intel's AMX). So
:func:`onednn_is_exact` checks, once per process, that oneDNN computes IEEE float32 products
here: on integer-grid inputs whose exact products and sums are representable in float32 (any
rounding to bfloat16, in the inputs or the accumulation, changes them) for the product shapes
the models use, and bit-for-bit MKL's results on random inputs of short inner dimension (where
both sum in the same order). Only then, and only on AMD processors (where MKL is slow;
decided by the processor, not a timing, so a machine always uses the same library),
``cpu_matmul: auto`` (the default) uses it; ``mkl`` never does; ``onednn`` does whenever exact.
It is used for the products whose shapes repeat from step to step (:func:`fixed_shape_products`).

The results are the same products in float32; only the summation order of long inner
dimensions (e.g. the 4,096-d features) differs, as between any two BLAS libraries.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings

import torch

MODES = ("auto", "mkl", "onednn")


def _switch():
    m = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    if m is None or not hasattr(m, "fp32_precision") or not torch.backends.mkldnn.is_available():
        return None
    return m


@contextlib.contextmanager
def _routed(on: bool):
    m = _switch()
    if m is None:
        yield
        return
    old = m.fp32_precision
    m.fp32_precision = "bf16" if on else "ieee"
    try:
        yield
    finally:
        m.fp32_precision = old


# (rows, inner, columns) of the products the models compute: feature projections (4,096-d and
# 384-d), their gradients, block-wise table gradients, in-batch InfoNCE, evaluation scoring
_SHAPES = ((2048, 4096, 64), (64, 2048, 4096), (256, 64, 4096), (4096, 384, 64),
           (147, 128, 7050), (1899, 64, 1899), (2048, 64, 64), (7, 3, 5))


def _grid(shape, gen, ones_plus: bool) -> torch.Tensor:
    """Entries 1 + r/512 (r = 0..3) or small integers 0..3: every product and partial sum of
    an inner dimension ≤ 4,096 is a multiple of 2^-9 below 2^14, exact in float32."""
    r = torch.randint(0, 4, shape, generator=gen).float()
    return 1.0 + r / 512.0 if ones_plus else r


@functools.lru_cache(maxsize=1)
def onednn_is_exact() -> bool:
    """Whether oneDNN (under PyTorch's switch) computes IEEE float32 products on this CPU
    (module docstring). Cached for the process."""
    if _switch() is None:
        return False
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad(), _routed(True):
            for m, k, n in _SHAPES:
                a, b = _grid((m, k), gen, True), _grid((k, n), gen, False)
                exact = (a.double() @ b.double()).float()
                bias = _grid((n,), gen, False)
                if not (torch.equal(a @ b, exact) and torch.equal(b.T @ a.T, exact.T)
                        and torch.equal(torch.addmm(bias, a, b), exact + bias)
                        and torch.equal(torch.nn.functional.linear(a, b.T.contiguous(), bias),
                                        exact + bias)):
                    return False
            a, b = _grid((6, 33, 17), gen, True), _grid((6, 17, 5), gen, False)
            if not torch.equal(torch.bmm(a, b), (a.double() @ b.double()).float()):
                return False
            x, y = torch.randn(300, 64, generator=gen), torch.randn(64, 500, generator=gen)
            with _routed(False):
                ref = x @ y
            return torch.equal(x @ y, ref)
    except RuntimeError:   # an unsupported build or processor
        return False


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """The processor's vendor string (``AuthenticAMD``, ``GenuineIntel``; "" when unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def resolve(mode: str, device=None) -> bool:
    """Whether ``mode`` (``auto``, ``mkl`` or ``onednn``) routes CPU float32 products to oneDNN
    here. ``onednn`` where oneDNN is not exact warns and keeps MKL."""
    if mode not in MODES:
        raise ValueError(f"cpu_matmul {mode!r}: use one of {', '.join(MODES)}")
    if mode == "mkl" or (device is not None and torch.device(device).type != "cpu"):
        return False
    if not onednn_is_exact():
        if mode == "onednn":
            warnings.warn("cpu_matmul onednn: oneDNN does not compute exact float32 products on "
                          "this CPU (or this PyTorch lacks the switch); using MKL", stacklevel=2)
        return False
    # auto: where MKL runs its slow code (AMD); decided by the processor, not by a timing, so
    # the same machine always computes with the same library
    return mode == "onednn" or cpu_vendor() == "AuthenticAMD"


#: whether the current block may route fixed-shape products to oneDNN (set by cpu_matmul)
_ALLOWED: contextvars.ContextVar = contextvars.ContextVar("cpu_matmul_onednn", default=False)


@contextlib.contextmanager
def cpu_matmul(mode: str = "auto", device=None):
    """Within the block, the products the package marks as fixed-shape
    (:func:`fixed_shape_products`) go to oneDNN when :func:`resolve` says so."""
    token = _ALLOWED.set(resolve(mode, device))
    try:
        yield
    finally:
        _ALLOWED.reset(token)


@contextlib.contextmanager
def fixed_shape_products():
    """The products of this block go to oneDNN when the enclosing :func:`cpu_matmul` allows it.

    For products whose shapes repeat from step to step (feature-table projections, the
    chunks of an all-node contrastive loss, evaluation's score blocks) only: oneDNN generates
    and keeps a kernel for every new shape, so products shaped by each batch's distinct
    nodes (e.g. an in-batch InfoNCE) would grow the process by about 0.25 MB per new shape
    (measured: MGCN on Baby grew from 0.96 to 2.09 GiB in 232 steps when every product went
    to oneDNN); they stay with MKL."""
    if _ALLOWED.get():
        with _routed(True):
            yield
    else:
        yield
