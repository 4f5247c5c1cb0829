"""Atomic file writes: a crash never leaves a half-written file (temp file + rename)."""
from __future__ import annotations

import io
import json
import os
import pathlib
import stat
import tempfile
import threading

import numpy as np


_umask_lock = threading.Lock()


def _umask() -> int:
    with _umask_lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _file_mode(path: pathlib.Path) -> int:
    """The mode an ordinary ``open(path, 'w')`` would leave: the existing file's, else
    0666 less the umask (mkstemp's temporary file is 0600)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _atomic_write_bytes(path, data: bytes) -> None:
    _atomic_write(path, lambda fh: fh.write(data))


def _atomic_write(path, write) -> None:
    """``write(fh)`` into a temporary file beside ``path``, synced, then renamed over it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path, array) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    _atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path, obj) -> None:
    """``torch.save`` streamed into the temporary file (no in-memory copy of the serialised
    checkpoint: a REARM checkpoint on Clothing is 3 GiB)."""
    import torch
    _atomic_write(path, lambda fh: torch.save(obj, fh))
