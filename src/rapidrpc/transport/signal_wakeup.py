"""Wake a server loop running in the main thread as soon as a signal arrives.

Python runs signal handlers between bytecodes of the main thread.  A signal that arrives
just before the loop enters ``epoll_wait`` (or ``select``) interrupts nothing: its handler
would wait for the loop's next timeout (up to the sweep interval).  As asyncio does, the
loops give :func:`signal.set_wakeup_fd` a descriptor they watch, so the C-level handler's
byte wakes them at once and the Python handler runs next.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["install", "restore"]


def install(fd: int) -> int | None:
    """Have signals write a byte to *fd* (non-blocking) while this main-thread loop runs.

    Returns the wakeup fd to restore afterwards, or None when nothing was installed (not
    the main thread, or not the main interpreter).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except ValueError:
        return None


def restore(previous: int | None) -> None:
    """Undo :func:`install` (no-op for None)."""
    if previous is None:
        return
    try:
        signal.set_wakeup_fd(previous)
    except ValueError:
        pass
