"""Every benchmarked system, in table order (the C reference first: ratios are against it).

To add a system: write one :class:`~rpc.systems.base.SyncSystem` or
:class:`~rpc.systems.base.AsyncSystem` subclass and list it here.
"""

from __future__ import annotations

from .asyncio_msgpack import AsyncioMsgpack
from .base import AsyncSystem, SyncSystem, System, Unsupported, WrongResult
from .c_reference import CReference
from .grpc_systems import GrpcAio, GrpcSync
from .rapidrpc_systems import RapidrpcAio, RapidrpcCython, RapidrpcCythonFutures, RapidrpcPython
from .xmlrpc_stdlib import XmlRpcStdlib

ALL: tuple[type[System], ...] = (
    CReference,
    RapidrpcCython,
    RapidrpcCythonFutures,
    RapidrpcPython,
    RapidrpcAio,
    AsyncioMsgpack,
    GrpcSync,
    GrpcAio,
    XmlRpcStdlib,
)
BY_KEY: dict[str, type[System]] = {cls.key: cls for cls in ALL}
REFERENCE = CReference.key  # "ratio vs C"
BASELINE = AsyncioMsgpack.key  # "ratio vs uvloop+msgpack"

__all__ = [
    "ALL",
    "BASELINE",
    "BY_KEY",
    "REFERENCE",
    "AsyncSystem",
    "SyncSystem",
    "System",
    "Unsupported",
    "WrongResult",
]
