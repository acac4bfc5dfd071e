"""stdlib ``SimpleXMLRPCServer`` + ``ServerProxy``, as shipped (bytes travel as ``Binary``)."""

from __future__ import annotations

import functools
import http.client
import xmlrpc.client
from collections.abc import Callable

from ..affinity import Placement
from ..proc import announce, exit_when_released
from ..timing import CALL_TIMEOUT_S
from .base import SyncSystem


class _BoundedTransport(xmlrpc.client.Transport):
    """The stock transport with a socket timeout, so no call can hang the harness."""

    def make_connection(self, host: object) -> http.client.HTTPConnection:
        conn = super().make_connection(host)  # type: ignore[arg-type]
        conn.timeout = CALL_TIMEOUT_S
        return conn


class XmlRpcStdlib(SyncSystem):
    """The incumbent everyone has: one request per HTTP/1.0 connection, XML bodies."""

    key = "xmlrpc"
    title = "stdlib xmlrpc"

    def __init__(self, placement: Placement) -> None:
        super().__init__(placement)
        self.proxy: xmlrpc.client.ServerProxy | None = None

    @classmethod
    def serve(cls) -> None:
        from xmlrpc.server import SimpleXMLRPCServer

        server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
        server.register_function(lambda a, b: a + b, "add")
        server.register_function(lambda data: xmlrpc.client.Binary(data.data), "echo")
        announce(server.server_address[1])
        exit_when_released()
        server.serve_forever()

    def start(self) -> None:
        self.start_server()
        assert self.server is not None
        self.proxy = xmlrpc.client.ServerProxy(
            f"http://127.0.0.1:{self.server.port}/", transport=_BoundedTransport()
        )

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy("close")()
            self.proxy = None
        self._stop_server()

    def add_fn(self) -> Callable[[], object]:
        assert self.proxy is not None
        return functools.partial(self.proxy.add, 1, 2)

    def echo_fn(self, data: bytes) -> Callable[[], object]:
        assert self.proxy is not None
        call = functools.partial(self.proxy.echo, xmlrpc.client.Binary(data))
        return lambda: call().data
