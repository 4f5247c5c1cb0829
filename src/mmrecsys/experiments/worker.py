"""A sweep's worker process: ``python -m mmrecsys.experiments.worker INDEX EVENTS_FD``, the
pickled context on stdin (started by :func:`mmrecsys.experiments.sweep`, never by hand; to add
workers on another machine, run the same ``mmrecsys sweep`` command there with ``--storage``).
"""
from __future__ import annotations

import json
import os
import pickle
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    worker, fd = int(argv[0]), int(argv[1])
    out = os.fdopen(fd, "w", encoding="utf-8", buffering=1)

    def emit(ev: dict) -> None:
        out.write(json.dumps(ev, default=str) + "\n")

    from ..errors import MMRecError
    from .sweep import _work
    try:
        ctx = pickle.loads(sys.stdin.buffer.read())
        _work(ctx, worker, emit)
    except KeyboardInterrupt:
        emit({"kind": "stop", "worker": worker, "reason": "interrupted"})
        return 130
    except MMRecError as e:
        emit({"kind": "error", "worker": worker, "message": str(e)})
        return 2
    except BaseException as e:  # noqa: BLE001 (reported to the parent, then re-raised)
        emit({"kind": "error", "worker": worker, "message": f"{type(e).__name__}: {e}"})
        raise
    finally:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
