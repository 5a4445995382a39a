"""Test-only fault injection (docs/RELIABILITY.md): faults a test cannot cause from outside.

- ``ATTNTUNE_FAULTS="3:raise,5:nan@2,7:oom,9:kill"`` makes trial 3 raise, trial 5 report a NaN
  loss at epoch 2, trial 7 raise a simulated out-of-memory error and trial 9 kill its own worker
  process. Each fires on a trial's first attempt only, so a retry can succeed.
- ``ATTNTUNE_DRIVER_FAULT=POINT[@TRIAL]`` SIGKILLs the driver at a named point between two writes
  of one record, a window too short to hit from outside. Points: parent, infeasible, asked, run,
  finishing, ended, told.

Standard library only: worker processes import it before torch.
"""

from __future__ import annotations

import os
import signal

FAULTS_ENV = "ATTNTUNE_FAULTS"
DRIVER_FAULT_ENV = "ATTNTUNE_DRIVER_FAULT"


class InjectedFault(RuntimeError):
    """Raised by the trial fault hook."""


class SimulatedOOM(RuntimeError):
    """Stands in for ``torch.OutOfMemoryError`` in fault-injection tests."""


def parse_faults(text: str | None) -> dict[int, tuple[str, int | None]]:
    """``"3:raise,5:nan@2"`` -> {3: ("raise", None), 5: ("nan", 2)}."""
    out: dict[int, tuple[str, int | None]] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        number, _, kind = part.partition(":")
        kind, _, at = kind.partition("@")
        out[int(number)] = (kind.strip(), int(at) if at else None)
    return out


def trial_fault(number: int, attempt: int) -> tuple[str, int | None] | None:
    """The fault to inject into trial ``number``, on its first attempt only."""
    if attempt != 1:
        return None
    return parse_faults(os.environ.get(FAULTS_ENV)).get(int(number))


def driver_fault(point: str, number: int | None = None) -> None:
    """SIGKILL this driver when ``ATTNTUNE_DRIVER_FAULT`` names ``point`` (and trial ``number``)."""
    spec = os.environ.get(DRIVER_FAULT_ENV)
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name == point and (not at or (number is not None and int(at) == number)):
        os.kill(os.getpid(), signal.SIGKILL)
