"""Shared helpers for the benchmarks: locate ../shared, prepare proxy-feature copies, measure.

Real splits are read from ``$MMRECSYS_SHARED`` (default: ``../shared`` beside the checkout).
Proxy features are written into a copy of the dataset folder under the cache directory, never
into the project. Every figure obtained with them must be labelled "proxy features".
"""
from __future__ import annotations

import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MMRECSYS_SHARED", ROOT.parent / "shared"))
WORK = pathlib.Path(os.environ.get("MMRECSYS_BENCH_DIR",
                                   pathlib.Path.home() / ".cache" / "mmrecsys" / "bench"))


def shared_dataset(name: str) -> pathlib.Path:
    d = SHARED / "data" / name
    if not (d / f"{name}.inter").exists():
        sys.exit(f"skip: {d}/{name}.inter not found (set MMRECSYS_SHARED to the shared folder)")
    return d


def proxy_dataset(name: str, modalities: list[str] | None = None, seed: int = 0) -> pathlib.Path:
    """A copy of shared/data/<name> with proxy features from shared/tools/make_proxy_features.py.

    ``modalities``: NAME:WIDTH:NOISE[:POST] specs (None = the tool's defaults: image 4096-d,
    text 384-d). Built once and reused (keyed by the modality specs and seed).
    """
    src = shared_dataset(name)
    tag = "default" if not modalities else "_".join(m.replace(":", "-") for m in modalities)
    out = WORK / f"{name}-proxy-{tag}-s{seed}"
    marker = out / ".done"
    if marker.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / f"{name}.inter", out / f"{name}.inter")
    cmd = [sys.executable, str(SHARED / "tools" / "make_proxy_features.py"), str(out), "--seed", str(seed)]
    for m in modalities or []:
        cmd += ["--modality", m]
    subprocess.run(cmd, check=True)
    marker.write_text("ok\n")
    return out


def plain_dataset(name: str) -> pathlib.Path:
    """shared/data/<name> itself (interactions only, no features)."""
    return shared_dataset(name)


def processor() -> str:
    """The processor as lscpu names it, with vendor, family and model (speed figures are only
    comparable on the same one)."""
    fields = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    import platform
    name = fields.get("Model name") or platform.processor() or "unknown processor"
    extra = ", ".join(f"{k.lower()} {fields[k]}" for k in ("CPU family", "Model") if k in fields)
    vendor = fields.get("Vendor ID", "")
    return f"{name} ({vendor}{', ' if vendor and extra else ''}{extra})" if vendor or extra else name


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux ru_maxrss is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
