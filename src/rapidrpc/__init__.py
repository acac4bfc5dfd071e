"""rapidrpc: a high-performance RPC core for Python.

Public names only; see README.md and docs/api.md.  ``rapidrpc.BACKEND`` says which backend
is active (``"cython"`` or ``"python"``).
"""

from __future__ import annotations

from . import _backend
from .client import Client
from .errors import (
    Cancelled,
    ConnectionLost,
    DeadlineExceeded,
    FrameError,
    InvalidParams,
    LimitExceeded,
    MethodNotFound,
    ProtocolError,
    RapidRPCError,
    RemoteError,
    ResourceExhausted,
    SerializationError,
    StatusCode,
    Unavailable,
)
from .server import Server
from .wire import framing as _framing_face
from .wire import serializer as _serializer_face
from .wire.framing import Frame, FrameParser, encode_frame, encode_frames
from .wire.serializer import ExtType, Packer, Unpacker, dump, dumps, load, loads

__version__ = "0.1.0"

# Decided after every face has picked its implementation: "cython" only if all compiled
# modules loaded (a missing one has already warned, or raised under REQUIRE_EXTENSION).
BACKEND: str = _backend.active()

__all__ = [
    "BACKEND",
    "Cancelled",
    "Client",
    "ConnectionLost",
    "DeadlineExceeded",
    "ExtType",
    "Frame",
    "FrameError",
    "FrameParser",
    "InvalidParams",
    "LimitExceeded",
    "MethodNotFound",
    "Packer",
    "ProtocolError",
    "RapidRPCError",
    "RemoteError",
    "ResourceExhausted",
    "SerializationError",
    "Server",
    "StatusCode",
    "Unavailable",
    "Unpacker",
    "__version__",
    "dump",
    "dumps",
    "encode_frame",
    "encode_frames",
    "load",
    "loads",
]

del _framing_face, _serializer_face


def __getattr__(name: str) -> object:
    # ``rapidrpc.aio`` loads on first use: ``import rapidrpc`` must not import asyncio.
    if name == "aio":
        import importlib

        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
