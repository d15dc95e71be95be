"""SIGTERM/SIGINT (stop) and SIGHUP (reload) for the daemon.

Python runs signal handlers in the main thread between bytecodes, at any point of whatever
that thread was doing. So the handlers here do no work: they call the given callbacks, which
must only set a flag or an Event (e.g. `threading.Event.set`, `Reloader.request`). The audio
loop sees the flag and does the stopping or reloading itself, at a point where its state is
consistent and nothing queued can be lost. The handlers do not even log: a signal landing
while the main thread writes to stderr would make the handler's write a reentrant call on the
same buffered stream, which Python refuses with RuntimeError. Log in the loop instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["STOP_SIGNALS", "RELOAD_SIGNALS", "install_handlers"]

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGHUP,)

_Handler = Callable[[int, FrameType | None], object] | int | None


def install_handlers(
    on_stop: Callable[[], None], on_reload: Callable[[], None]
) -> Callable[[], None]:
    """Route stop and reload signals to the callbacks; returns a function that restores the
    previous handlers (tests, or a daemon embedded in something else).

    A second SIGINT while already stopping raises KeyboardInterrupt, so Ctrl-C twice always
    gets you out of a daemon whose shutdown hangs. (systemd escalates SIGTERM to SIGKILL after
    TimeoutStopSec= on its own.)

    Must be called from the main thread: Python only delivers signals there.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("install_handlers() must be called from the main thread")

    stopping = False

    def handle_stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stopping = True
        on_stop()

    def handle_reload(_signum: int, _frame: FrameType | None) -> None:
        on_reload()

    previous: dict[signal.Signals, _Handler] = {}
    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, handle_stop)
    for sig in RELOAD_SIGNALS:
        previous[sig] = signal.signal(sig, handle_reload)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore
