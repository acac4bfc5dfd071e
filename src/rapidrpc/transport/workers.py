"""``workers=N``: N forked processes serving one address, supervised by the parent.

Socket sharing: the parent binds one listening socket **per worker slot**, all on the same
address with ``SO_REUSEPORT``, before it forks; the kernel spreads new connections across
them (by a hash of the connection's addresses), so no worker wakes for another's
connection.  The parent keeps every slot's socket open: a worker that dies leaves its
socket's queued connections in place for its replacement, and the port never closes
while the server runs.  Where ``SO_REUSEPORT`` is missing (or an extra bind fails) all
workers share the one listening socket instead (``Supervisor.sharing == "shared"``).

Fork-safety by construction: the parent forks after binding and before it starts any
thread; each worker builds its own event loop after the fork, so no lock, connection or
thread pool crosses a fork.  A warning says so when other threads are alive at fork time
(e.g. ``Server.start()`` with workers, which supervises from a background thread).

Supervision: a worker that dies is restarted at once, at most *max_restarts* times per
*restart_window* seconds (beyond that the workers are stopped and :meth:`Supervisor.run`
raises :class:`WorkerCrashLoop`: a crash loop is a bug to fix, not load to absorb).

Shutdown: :meth:`Supervisor.stop` (thread- and signal-safe), or SIGTERM/SIGINT to the parent
when it supervises from the main thread and the application has not installed handlers of
its own: the parent stops restarting, closes its copies of the listening sockets and
forwards the stop to every worker over that worker's control pipe, *grace* included.  Each
worker stops accepting, sends goaway, lets in-flight calls finish within *grace* and exits
0; a worker still alive *kill_margin* seconds after the grace period is killed (SIGKILL).
``grace=0`` (or a second signal) kills at once.

Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group; the parent
coordinates), stop gracefully on a SIGTERM sent to them directly (the parent then replaces
them), and stop on their own when the parent dies (their control pipe reaches EOF).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

__all__ = ["LoopLike", "Supervisor", "WorkerCrashLoop", "bind_listeners", "reuseport_supported"]

_log = logging.getLogger("rapidrpc.workers")

#: Longest sleep of the supervision loop; SIGCHLD (main thread) or this poll finds deaths.
_TICK_MAIN = 1.0
_TICK_THREAD = 0.1  # no SIGCHLD handler outside the main thread: poll more often


class LoopLike(Protocol):
    """What a worker runs: a server loop over one listening socket."""

    def run(self) -> None:
        """Serve until stopped."""

    def stop(self, grace: float = 0.0) -> None:
        """Stop accepting, goaway, finish in-flight calls within *grace*, return from run."""


class WorkerCrashLoop(RuntimeError):
    """Workers died faster than the restart bound allows; the supervisor gave up."""


def reuseport_supported() -> bool:
    """True when this platform has ``SO_REUSEPORT`` (Linux >= 3.9, the BSDs, macOS)."""
    return hasattr(socket, "SO_REUSEPORT")


def bind_listeners(
    first: socket.socket, count: int, backlog: int = 1024
) -> tuple[list[socket.socket], str]:
    """*count* listening sockets on *first*'s address: ``(sockets, sharing)``.

    With ``SO_REUSEPORT`` (and *first* bound with it) these are *first* plus ``count - 1``
    new sockets and sharing is ``"reuseport"``; otherwise *first* repeated, ``"shared"``.
    """
    if count > 1 and reuseport_supported():
        socks = [first]
        try:
            if not first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
                raise OSError("the first listening socket was bound without SO_REUSEPORT")
            addr = first.getsockname()[:2]
            for _ in range(count - 1):
                socks.append(
                    socket.create_server(
                        addr, family=first.family, backlog=backlog, reuse_port=True
                    )
                )
            return socks, "reuseport"
        except OSError as exc:
            for sock in socks[1:]:
                sock.close()
            _log.warning("rapidrpc: SO_REUSEPORT unavailable (%s); workers share one socket", exc)
    return [first] * count, "shared"


class _Slot:
    """One worker position: its listening socket and, while it runs, its process."""

    __slots__ = ("ctl_w", "index", "listener", "pid", "retry_at", "started", "told")

    def __init__(self, index: int, listener: socket.socket) -> None:
        self.index = index
        self.listener = listener
        self.pid = 0  # 0: no live process
        self.ctl_w = -1  # the parent's end of this worker's control pipe
        self.started = 0.0
        self.told: float | None = None  # grace of the last stop sent to this worker
        self.retry_at: float | None = None  # fork failed: try again at this time


class Supervisor:
    """Fork *workers* processes that each run ``make_loop(listener).run()``.

    *listener* is a bound, listening socket (created with ``reuse_port=True`` for the
    per-worker sockets to share its address).  *make_loop* is called in each worker, after
    the fork, with that worker's listening socket.  *grace* is used for SIGTERM/SIGINT.

    The same surface as a server loop (``run``, ``stop``, ``wait_running``, ``join``), so
    :class:`rapidrpc.Server` drives it in place of its event loop.
    """

    def __init__(
        self,
        listener: socket.socket,
        workers: int,
        make_loop: Callable[[socket.socket], LoopLike],
        *,
        grace: float = 5.0,
        max_restarts: int = 10,
        restart_window: float = 60.0,
        kill_margin: float = 2.0,
        backlog: int = 1024,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not hasattr(os, "fork"):
            raise RuntimeError("workers > 1 needs os.fork (POSIX); run one process per port")
        self.workers = workers
        self.grace = grace
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.kill_margin = kill_margin
        #: ``"reuseport"`` (one socket per worker) or ``"shared"`` (one socket for all).
        self.sharing = "shared"
        #: Workers restarted after dying.
        self.restarts = 0
        self._make_loop = make_loop
        self._listener = listener
        self._backlog = backlog
        # Sockets, slots and the wake pipe exist while run() runs (it releases them all).
        self._slots: list[_Slot] = []
        self._wake_r = self._wake_w = -1
        self._restart_times: deque[float] = deque()
        self._stop_grace: float | None = None  # requested; read by the supervision loop
        self._stopping_grace: float | None = None  # acted on
        self._kill_at: float | None = None
        self._crash: WorkerCrashLoop | None = None
        self._signals = 0  # SIGTERM/SIGINT received by our own handlers
        self._running = threading.Event()
        self._finished = threading.Event()

    # --- public control (any thread, or a signal handler) ---------------------------------

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [s.pid for s in self._slots if s.pid]

    def stop(self, grace: float = 5.0) -> None:
        """Stop every worker gracefully within *grace* seconds (returns at once).

        A later call with a shorter grace shortens the wait; ``grace=0`` kills the
        workers at once.
        """
        grace = max(0.0, grace)
        current = self._stop_grace
        if current is None or grace < current:
            self._stop_grace = grace
        self._wake()

    def wait_running(self, timeout: float | None = None) -> bool:
        """Block until the first workers are forked; False on timeout."""
        return self._running.wait(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`run` has returned; False on timeout."""
        return self._finished.wait(timeout)

    def _wake(self) -> None:
        fd = self._wake_w
        if fd < 0:  # not running: run() checks the request before it first waits
            return
        try:
            os.write(fd, b"\0")
        except OSError:  # full (a wakeup is pending anyway) or closed (run has ended)
            pass

    # --- the supervision loop ---------------------------------------------------------------

    def run(self) -> None:
        """Fork the workers and supervise them until stopped; then return.

        Raises :class:`WorkerCrashLoop` when the restart bound was exceeded (the workers
        have been stopped by then).
        """
        others = threading.active_count() - 1
        if others:
            warnings.warn(
                f"rapidrpc: forking {self.workers} workers while {others} other thread(s) "
                "run in this process; fork is only safe from a thread-free process (call "
                "serve_forever() from the main thread before starting threads)",
                RuntimeWarning,
                stacklevel=2,
            )
        restore = None
        try:
            socks, self.sharing = bind_listeners(self._listener, self.workers, self._backlog)
            self._slots = [_Slot(i, sock) for i, sock in enumerate(socks)]
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            restore = self._install_signals()
            tick = _TICK_MAIN if restore is not None else _TICK_THREAD
            if self._stop_grace is None:  # (stop() may have come first)
                for slot in self._slots:
                    self._spawn(slot)
            self._running.set()
            while True:
                self._reap()
                now = time.monotonic()
                if self._stop_grace is not None:
                    self._stopping(self._stop_grace, now)
                if self._stopping_grace is None:
                    self._respawn(now)
                elif not self.pids:
                    break
                elif self._kill_at is not None and now >= self._kill_at:
                    self._kill_all()
                    continue
                poller.poll(self._sleep(now, tick) * 1000.0)
                self._drain_wake()
        finally:
            self._kill_all()  # only does something when leaving on an exception
            for slot in self._slots:
                if slot.ctl_w >= 0:
                    os.close(slot.ctl_w)
                    slot.ctl_w = -1
            self._close_listeners()
            if restore is not None:
                restore()
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
            for fd in (wake_r, wake_w):
                if fd >= 0:
                    os.close(fd)
            self._running.set()  # never leave wait_running() hanging
            self._finished.set()
        if self._crash is not None:
            raise self._crash

    def _sleep(self, now: float, tick: float) -> float:
        wake_at = now + tick
        if self._kill_at is not None:
            wake_at = min(wake_at, self._kill_at)
        for slot in self._slots:
            if slot.retry_at is not None:
                wake_at = min(wake_at, slot.retry_at)
        return max(0.0, wake_at - now)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _install_signals(self) -> Callable[[], None] | None:
        """Handlers for SIGCHLD (prompt restarts) and, unless the application has its own,
        SIGTERM/SIGINT.  Only possible in the main thread; returns the undo, or None."""
        if threading.current_thread() is not threading.main_thread():
            return None
        saved: dict[int, Any] = {signal.SIGCHLD: signal.signal(signal.SIGCHLD, self._on_child)}
        defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
        for sig, default in defaults.items():
            if signal.getsignal(sig) is default:
                saved[sig] = signal.signal(sig, self._on_stop_signal)

        def restore() -> None:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

        return restore

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        self._wake()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        # First signal: graceful stop; a second one: kill the workers now.
        self.stop(self.grace if self._signals == 1 else 0.0)

    # --- workers ----------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        ctl_r, ctl_w = os.pipe()
        # Output buffered before the fork would otherwise be written twice.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(ctl_r)
            os.close(ctl_w)
            slot.retry_at = time.monotonic() + 1.0
            _log.error("rapidrpc: cannot fork worker %d (%s); retrying in 1 s", slot.index, exc)
            return
        if pid == 0:  # the worker: never returns into the caller's code
            code = 1
            try:
                os.close(ctl_w)
                code = self._worker_main(slot, ctl_r)
            except BaseException:
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (AttributeError, OSError, ValueError):
                        pass
                os._exit(code)
        os.close(ctl_r)
        slot.pid = pid
        slot.ctl_w = ctl_w
        slot.started = time.monotonic()
        slot.told = None
        slot.retry_at = None

    def _reap(self) -> None:
        for slot in self._slots:
            if not slot.pid:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (a SIGCHLD=SIG_IGN app)
                pid, status = slot.pid, 0
            if pid == 0:
                continue
            os.close(slot.ctl_w)
            slot.ctl_w = -1
            slot.pid = 0
            if self._stopping_grace is None:
                _log.warning(
                    "rapidrpc: worker %d (pid %d) %s after %.1f s; restarting it",
                    slot.index,
                    pid,
                    _describe(status),
                    time.monotonic() - slot.started,
                )
                slot.retry_at = time.monotonic()

    def _respawn(self, now: float) -> None:
        for slot in self._slots:
            if slot.pid or slot.retry_at is None or slot.retry_at > now:
                continue
            times = self._restart_times
            while times and times[0] <= now - self.restart_window:
                times.popleft()
            if len(times) >= self.max_restarts:
                self._crash = WorkerCrashLoop(
                    f"rapidrpc: workers died {len(times) + 1} times within "
                    f"{self.restart_window:g} s (the bound is {self.max_restarts}); giving up. "
                    "See the workers' errors above."
                )
                _log.error("%s", self._crash)
                self.stop(self.grace)
                return
            times.append(now)
            self.restarts += 1
            self._spawn(slot)

    def _stopping(self, grace: float, now: float) -> None:
        """Act on a stop request: first time, or a shorter grace than the one in force."""
        if self._stopping_grace is not None and grace >= self._stopping_grace:
            return
        first = self._stopping_grace is None
        self._stopping_grace = grace
        if first:
            # The port must stop taking connections once the workers close theirs.
            self._close_listeners()
        self._kill_at = now if grace <= 0 else now + grace + self.kill_margin
        message = f"stop {grace!r}\n".encode()
        for slot in self._slots:
            slot.retry_at = None
            if slot.pid and slot.ctl_w >= 0 and (slot.told is None or grace < slot.told):
                slot.told = grace
                try:
                    os.write(slot.ctl_w, message)
                except OSError:  # the worker is gone already: reaped on the next turn
                    pass

    def _kill_all(self) -> None:
        for slot in self._slots:
            if slot.pid:
                try:
                    os.kill(slot.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _log.warning("rapidrpc: worker %d (pid %d) killed", slot.index, slot.pid)
                try:
                    os.waitpid(slot.pid, 0)
                except ChildProcessError:
                    pass
                slot.pid = 0

    def _close_listeners(self) -> None:
        socks = {id(s.listener): s.listener for s in self._slots}
        socks[id(self._listener)] = self._listener
        for sock in socks.values():
            try:
                sock.close()
            except OSError:
                pass

    # --- inside a worker process ------------------------------------------------------------

    def _worker_main(self, slot: _Slot, ctl_r: int) -> int:
        """Run one worker (in the forked child); returns its exit code."""
        # The parent's handlers would write into the parent's wake pipe: replace them first.
        pending: list[float] = []
        loop: LoopLike | None = None

        def on_term(signum: int, frame: FrameType | None) -> None:
            if loop is None:
                pending.append(self.grace)
            else:
                loop.stop(self.grace)

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for other in self._slots:
            if other.ctl_w >= 0:
                os.close(other.ctl_w)  # other workers' control pipes belong to the parent
            if other.listener is not slot.listener:
                other.listener.close()
        loop = self._make_loop(slot.listener)
        threading.Thread(
            target=_watch_control,
            args=(ctl_r, loop, self.grace),
            name="rapidrpc-control",
            daemon=True,
        ).start()
        if pending:
            loop.stop(pending[0])
        loop.run()
        return 0


def _watch_control(fd: int, loop: LoopLike, default_grace: float) -> None:
    """Worker side of the control pipe: ``stop <grace>`` lines; EOF means the parent died."""
    buf = b""
    while True:
        try:
            data = os.read(fd, 256)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            loop.stop(default_grace)
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"stop":
                loop.stop(float(parts[1]))


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
