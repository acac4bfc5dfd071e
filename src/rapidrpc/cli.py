"""The ``rapidrpc`` command line (also ``python -m rapidrpc``); reference in docs/cli.md.

    rapidrpc serve MODULE[:OBJECT] [--host H] [--port P] [--workers N] ...
    rapidrpc call HOST:PORT METHOD [ARG ...] [--kw NAME=VALUE ...] [--timeout S]
    rapidrpc methods HOST:PORT
    rapidrpc bench [--seconds S] [--payload N] [--json] [--progress]

Exit codes: 0 success; 1 a remote error (``call``/``methods``), a failed benchmark, a
worker crash loop or a forced stop (second signal); 2 a usage error, a serve target that
cannot be loaded or bound, or a connection error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1  # remote error, failed run, forced stop
EXIT_USAGE = 2  # bad arguments, unloadable target, connection error


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _optional_seconds(text: str) -> float | None:
    return None if text.lower() in ("none", "off", "0") else _seconds(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rapidrpc`` command."""
    import rapidrpc

    parser = argparse.ArgumentParser(
        prog="rapidrpc",
        description="rapidrpc: a high-performance RPC core for Python.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"rapidrpc {rapidrpc.__version__} (backend: {rapidrpc.BACKEND}, "
        f"Python {sys.version.split()[0]})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve a module's functions or an object's methods",
        description="Serve the public functions of MODULE (a dotted name or a .py path), "
        "or the public methods of OBJECT inside it (a class is instantiated with no "
        "arguments). SIGINT/SIGTERM stop gracefully; a second signal forces the exit.",
    )
    serve.add_argument("target", metavar="MODULE[:OBJECT]")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)"
    )
    serve.add_argument(
        "--workers", type=_positive_int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    serve.add_argument("--max-connections", type=_positive_int, default=1024)
    serve.add_argument(
        "--max-inflight", type=_positive_int, default=100, help="in-flight calls per connection"
    )
    serve.add_argument(
        "--max-frame-size", type=_positive_int, default=None, help="largest message, in bytes"
    )
    serve.add_argument(
        "--idle-timeout",
        type=_optional_seconds,
        default=300.0,
        help="close connections without calls after this many seconds (0: never)",
    )
    serve.add_argument(
        "--grace",
        type=_seconds,
        default=5.0,
        help="seconds in-flight calls get to finish on shutdown (default: %(default)s)",
    )
    serve.add_argument(
        "--blocking",
        action="store_true",
        help="run every handler in a thread pool (for functions that block on I/O)",
    )
    serve.add_argument("--threads", type=_positive_int, default=None, help="size of that pool")
    serve.add_argument(
        "--backend", choices=("cython", "python"), default=None, help="default: the active one"
    )
    serve.set_defaults(func=_cmd_serve)

    call = sub.add_parser(
        "call",
        help="call a remote method and print the result as JSON",
        description="Arguments are JSON literals (3, true, null, '\"text\"', '[1, 2]'); "
        "anything else is sent as a plain string, and b64:<base64> as bytes. Bytes in the "
        'result print as "b64:<base64>".',
    )
    call.add_argument("address", metavar="HOST:PORT")
    call.add_argument("method", metavar="METHOD")
    call.add_argument("args", nargs="*", metavar="ARG")
    call.add_argument(
        "--kw", action="append", default=[], metavar="NAME=VALUE", help="a keyword argument"
    )
    call.add_argument("--timeout", type=_seconds, default=30.0, help="seconds (default: 30)")
    call.add_argument("--indent", type=int, default=None, help="pretty-print the JSON")
    call.set_defaults(func=_cmd_call)

    methods = sub.add_parser("methods", help="list a server's methods (rpc.methods)")
    methods.add_argument("address", metavar="HOST:PORT")
    methods.add_argument("--timeout", type=_seconds, default=30.0)
    methods.add_argument("--json", action="store_true", help="print the raw list as JSON")
    methods.set_defaults(func=_cmd_methods)

    bench = sub.add_parser(
        "bench",
        help="compare round trips: rapidrpc vs stdlib xmlrpc on this machine",
        description="Sequential add(1, 2) and a payload echo against rapidrpc (active "
        "backend) and stdlib SimpleXMLRPCServer, servers in child processes pinned to "
        "another CPU than the client when possible.",
    )
    bench.add_argument(
        "--seconds", type=_seconds, default=7.0, help="total measuring time (default: 7)"
    )
    bench.add_argument("--payload", type=int, default=1024, help="echo size in bytes")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show the progress bar even when stderr is not a terminal",
    )
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_OK
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


def _err(message: str) -> None:
    sys.stderr.write(f"rapidrpc: {message}\n")
    sys.stderr.flush()


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- serve ----------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    import rapidrpc

    from ._cli_target import TargetError, load_target, register_target
    from .transport.workers import WorkerCrashLoop

    try:
        target = load_target(args.target)
    except TargetError as exc:
        _err(f"serve: {exc}")
        return EXIT_USAGE
    except Exception:
        _err(f"serve: importing {args.target!r} failed:")
        traceback.print_exc()
        return EXIT_USAGE
    options: dict[str, Any] = {
        "workers": args.workers,
        "max_connections": args.max_connections,
        "max_inflight": args.max_inflight,
        "idle_timeout": args.idle_timeout,
        "threads": args.threads,
        "backend": args.backend,
    }
    if args.max_frame_size is not None:
        options["max_frame_size"] = args.max_frame_size
    try:
        server = rapidrpc.Server(args.host, args.port, **options)
    except OSError as exc:
        _err(f"serve: cannot listen on {_format_address(args.host, args.port)}: {exc}")
        return EXIT_USAGE
    except ValueError as exc:  # e.g. --backend cython without the compiled extension
        _err(f"serve: {exc}")
        return EXIT_USAGE
    try:
        _, skipped = register_target(server, target, blocking=args.blocking)
    except (TargetError, ValueError, TypeError) as exc:
        server.stop(grace=0)
        _err(f"serve: {exc}")
        return EXIT_USAGE
    for name in skipped:
        _err(f"serve: skipping async def {name} (serve coroutines with rapidrpc.aio.Server)")

    forced = _install_stop_signals(server, args.grace, args.workers)
    host, port = server.address
    print(
        f"rapidrpc serving on {_format_address(host, port)} "
        f"(backend: {server.backend}, workers: {args.workers})",
        flush=True,
    )
    try:
        server.serve_forever()
    except WorkerCrashLoop as exc:
        _err(str(exc).removeprefix("rapidrpc: "))
        return EXIT_ERROR
    code = EXIT_ERROR if forced.is_set() else EXIT_OK
    _exit_if_threads_linger(code)
    return code


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _install_stop_signals(server: Any, grace: float, workers: int) -> threading.Event:
    """SIGINT/SIGTERM: first a graceful stop, then (second signal) a forced one.

    Returns an event set when the stop was forced.  The handlers only set state and write
    to a wakeup pipe or socket (``server.stop``), so they are safe at any point.

    The second signal is taken by a thread of its own (``sigwait``, the stop signals then
    blocked in the main thread): a Python handler runs only when the main thread gets to
    it, and an inline handler sleeping in C would keep it waiting, the signal counted but
    never handled (CPython resumes ``time.sleep`` after running the first handler).
    """
    forced = threading.Event()
    received = []

    def force() -> None:
        forced.set()
        if workers > 1:
            server.stop(0)  # the supervisor kills the workers at once, then returns
        else:
            os._exit(EXIT_ERROR)

    def take_the_second_signal() -> None:
        signal.sigwait(_STOP_SIGNALS)
        force()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            force()
            return
        if hasattr(signal, "pthread_sigmask"):
            # Blocked here before the thread starts, so it inherits the mask sigwait needs.
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            threading.Thread(
                target=take_the_second_signal, name="rapidrpc-force-stop", daemon=True
            ).start()
        # os.write, not print: the interrupted code may be inside a print itself.
        os.write(
            2,
            f"rapidrpc: stopping (grace {grace:g} s); signal again to force\n".encode(),
        )
        server.stop(grace)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return forced


def _exit_if_threads_linger(code: int) -> None:
    """After the grace period a handler still running in the pool must not keep the
    process alive (interpreter exit would join it): leave without waiting."""
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        _err("handler threads still running after the grace period; exiting without them")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


# --- call / methods -------------------------------------------------------------------------


def _client(address: str, timeout: float) -> Any:
    import rapidrpc

    return rapidrpc.Client(address, timeout=timeout or None, connect_timeout=min(timeout or 10, 10))


def _remote_call(address: str, timeout: float, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call and map failures to (message, exit code) via _CallFailed."""
    from .errors import RapidRPCError, RemoteError

    try:
        client = _client(address, timeout)
    except ValueError as exc:  # a malformed address
        raise _CallFailed(str(exc), EXIT_USAGE) from None
    try:
        return client.call(method, *args, **kwargs)
    except RemoteError as exc:
        kind = exc.remote_type or type(exc).__name__
        raise _CallFailed(f"{kind}: {exc.message} (code {exc.code})", EXIT_ERROR) from None
    except (ConnectionError, OSError) as exc:
        raise _CallFailed(f"cannot reach {address}: {exc}", EXIT_USAGE) from None
    except RapidRPCError as exc:
        raise _CallFailed(f"{type(exc).__name__}: {exc}", EXIT_ERROR) from None
    finally:
        client.close()


class _CallFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _cmd_call(args: argparse.Namespace) -> int:
    from ._cli_json import dumps_result, parse_arg, parse_kwarg

    try:
        values = [parse_arg(a) for a in args.args]
        kwargs = dict(parse_kwarg(k) for k in args.kw)
    except ValueError as exc:
        _err(f"call: {exc}")
        return EXIT_USAGE
    try:
        result = _remote_call(args.address, args.timeout, args.method, *values, **kwargs)
    except _CallFailed as exc:
        _err(f"call: {exc}")
        return exc.code
    print(dumps_result(result, args.indent), flush=True)
    return EXIT_OK


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _cmd_methods(args: argparse.Namespace) -> int:
    from ._cli_json import dumps_result

    try:
        listing = _remote_call(args.address, args.timeout, "rpc.methods")
    except _CallFailed as exc:
        _err(f"methods: {exc}")
        return exc.code
    if args.json:
        print(dumps_result(listing, 2), flush=True)
        return EXIT_OK
    rows = [(f"{m['name']}{m['signature']}", _first_line(m.get("doc", ""))) for m in listing]
    width = max((len(sig) for sig, _ in rows), default=0)
    for sig, doc in rows:
        print(f"{sig:<{width}}  {doc}".rstrip())
    sys.stdout.flush()
    return EXIT_OK


# --- bench ----------------------------------------------------------------------------------


def _cmd_bench(args: argparse.Namespace) -> int:
    from ._cli_bench import run

    if args.payload < 0:
        _err("bench: --payload must be >= 0")
        return EXIT_USAGE
    return run(args.seconds, args.payload, args.json, args.progress)
