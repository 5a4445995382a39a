"""A local worker process of the ``optuna`` backend (``python -m attntune.search.backends.local_worker FD N``).

Started with ``subprocess`` over an inherited socket rather than ``multiprocessing``'s spawn, so it
never re-imports the user's main script (a script calling ``run_search`` needs no
``if __name__ == "__main__"`` guard). Messages are pickled over that private socket between our
own processes only.
"""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from attntune.search.schedulers import wants_decision
from attntune.search.worker import execute_trial, warm_up


def _die_with_parent() -> None:
    """Linux: the worker gets SIGKILL when the driver dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort off Linux
        pass


def main(fd: int, index: int) -> None:
    """Receive the task to warm up, then trial specs; send events; exit on None or a closed pipe."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and ends us
    conn = Connection(fd)
    task: dict[str, Any] | None = conn.recv()
    try:
        warm_up(task)
    except Exception:  # noqa: BLE001 - a bad task is reported by the driver itself
        pass
    conn.send(("ready", -1, {"pid": os.getpid(), "worker": index}))
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            # Told to stop: nothing is buffered (every message went out on the socket), so skip
            # the interpreter's teardown of torch & co., ~1 s per worker, paid at every search end.
            conn.close()
            os._exit(0)
        number = spec["number"]

        def send(kind: str, payload: Any, number: int = number, decide: Any = spec.get("decide")) -> Any:
            conn.send((kind, number, payload))
            if kind == "report" and wants_decision(decide, payload[0], payload[1]):
                return conn.recv()  # the driver's verdict: True = stop (pruned)
            return False

        try:
            outcome = execute_trial(spec, send)
            conn.send(("done", number, outcome))
        except (EOFError, OSError):
            return


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
