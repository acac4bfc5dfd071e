"""Server processes: started by the harness, announce their port, die with the harness.

Parent side: :class:`ServerProcess` starts a command, reads ``{"port": N}`` from its stdout
(bounded wait) and in :meth:`ServerProcess.stop` closes the child's stdin, then terminates,
then kills.  Child side: :func:`announce` and :func:`wait_for_release` /
:func:`exit_when_released`; a child whose stdin closes (harness gone) exits, and no child
outlives :data:`LIFETIME_S`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent  # benchmarks/, the root of package `rpc`
STARTUP_TIMEOUT_S = 30.0
LIFETIME_S = 3600  # hard bound on any server child


class ChildError(RuntimeError):
    """A child process exited or stayed silent instead of answering."""


def read_json_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> dict:
    """Reads one JSON line from *proc*'s stdout within *timeout* seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise ChildError(f"{what}: no answer within {timeout:.0f} s")
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            code = proc.poll()
            raise ChildError(f"{what}: exited (code {code}) before answering")
        buf += chunk
    return json.loads(buf)


def python_server_command(system_key: str, cpu: int | None) -> list[str]:
    """The command that runs system *system_key*'s server in a fresh interpreter."""
    cmd = [sys.executable, "-m", "rpc.serve", system_key]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    return cmd


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment (plus *extra*) with ``benchmarks/`` on PYTHONPATH for ``rpc``."""
    env = {**os.environ, **(extra or {})}
    extra = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(BENCH_DIR) + (os.pathsep + extra if extra else "")
    return env


class ServerProcess:
    """One running server child; ``port`` is what it announced."""

    def __init__(self, cmd: list[str], what: str, env: Mapping[str, str] | None = None) -> None:
        self.what = what
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(env),
            close_fds=True,
        )
        try:
            self.port = int(read_json_line(self.proc, STARTUP_TIMEOUT_S, what)["port"])
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 3.0) -> None:
        """Lets go of the child (stdin EOF), then SIGTERM, then SIGKILL; always reaps it."""
        proc = self.proc
        for step in (self._close_stdin, proc.terminate, proc.kill):
            if proc.poll() is not None:
                break
            step()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


# --- child side -------------------------------------------------------------------------------


def announce(port: int) -> None:
    """Tells the harness which port this server listens on."""
    sys.stdout.write(json.dumps({"port": port}) + "\n")
    sys.stdout.flush()


def wait_for_release(lifetime: float = LIFETIME_S) -> None:
    """Blocks until stdin closes (the harness let go or died) or *lifetime* passes."""
    fd = sys.stdin.fileno()
    deadline = time.monotonic() + lifetime
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0] and not os.read(fd, 4096):
            return


def exit_when_released(lifetime: float = LIFETIME_S) -> None:
    """For servers that need the main thread: a daemon thread ends the process on release."""

    def watch() -> None:
        wait_for_release(lifetime)
        os._exit(0)  # the server loop owns the main thread; sockets close with the process

    threading.Thread(target=watch, name="release-watch", daemon=True).start()
