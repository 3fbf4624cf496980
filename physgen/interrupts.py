"""Stopping a run: SIGTERM and Ctrl-C raise KeyboardInterrupt, and every command cleans up as it propagates.

Python drops an exception raised while it runs a weakref callback (h5py closes its objects in them, many times per
episode Minari writes), so a stop that lands there would go unnoticed. The request is therefore also remembered,
and long loops call `check()`, which raises it again.
"""

from __future__ import annotations

import contextlib
import signal

_requested = False


def _request(signum, frame):
    global _requested
    _requested = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested (it may have been dropped where it first landed)."""
    if _requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def stoppable():
    """SIGTERM and SIGINT handled as stop requests within the block; the previous handlers restored after it."""
    global _requested
    previous = {signum: signal.signal(signum, _request) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested = False
