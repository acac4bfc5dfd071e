"""rapidrpc quickstart: a server and a client in one script.

Run it with ``python examples/quickstart.py``; it starts a server on a free port in a
background thread, calls it, and exits.
"""

from __future__ import annotations

import time

import rapidrpc


class Calculator:
    """Methods of an object become a service: ``calc.add``, ``calc.mul``."""

    def add(self, a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    def mul(self, a: float, b: float) -> float:
        """Multiply two numbers."""
        return a * b

    def _internal(self) -> None:  # never callable remotely
        pass


def main() -> None:
    """Serve a few functions, call them, shut down cleanly."""
    server = rapidrpc.Server("127.0.0.1", 0)  # port 0: pick a free port

    @server.export
    def hello(name: str) -> str:
        """Greet someone."""
        return f"Hello, {name}!"

    @server.export(name="files.slow_read", blocking=True)  # runs in a thread pool
    def slow_read(seconds: float) -> str:
        time.sleep(seconds)
        return "done"

    server.register_instance(Calculator(), prefix="calc")
    server.start()
    host, port = server.address
    print(f"serving on {host}:{port} (backend: {rapidrpc.BACKEND})")

    with rapidrpc.Client(f"{host}:{port}", timeout=5) as client:
        print(client.hello("world"))  # attribute proxy
        print("2 + 3 =", client.calc.add(2, 3))  # dotted names reach services
        print("6 * 7 =", client.call("calc.mul", 6, 7))
        futures = [client.call_async("calc.add", i, i) for i in range(5)]  # pipelined
        print("doubles:", [f.result() for f in futures])
        try:
            client.call("files.slow_read", 0.5, timeout=0.1)
        except rapidrpc.DeadlineExceeded:
            print("slow_read: deadline exceeded, as asked")
        try:
            client.calc.div(1, 0)
        except rapidrpc.MethodNotFound as exc:
            print("error:", exc)
        names = [m["name"] for m in client.call("rpc.methods")]
        print("methods:", ", ".join(names))

    server.stop(grace=1.0)
    print("stopped")


if __name__ == "__main__":
    main()
