"""MessagePack serializer: ``dumps``/``loads``, ``dump``/``load``, ``Packer``, ``Unpacker``.

The functions and classes come from the active backend (Cython when built, else pure
Python; see :mod:`rapidrpc._backend`).  Both backends implement ``PUBLIC_API`` with the same
signatures, emit identical bytes and raise the same errors; ``IMPLEMENTATIONS`` maps
``"cython"``/``"python"`` to the loaded backend modules for tests and benchmarks.

Format, type mapping, limits and error rules: docs/serializer.md.
"""

from __future__ import annotations

from typing import IO, Any

from .._select import pick
from ._ext import ExtType

__all__ = ["ExtType", "Packer", "Unpacker", "dump", "dumps", "load", "loads"]

_impl, IMPLEMENTATIONS = pick(__package__, "_serializer_c", "_serializer_py")

# What every backend module defines (a test checks both export it, with equal signatures).
PUBLIC_API = ("dumps", "loads", "Packer", "Unpacker")

dumps = _impl.dumps
loads = _impl.loads
Packer = _impl.Packer
Unpacker = _impl.Unpacker


def dump(obj: Any, fp: IO[bytes], **kw: Any) -> None:
    """Serialize *obj* and write the bytes to the binary file *fp* (``dumps`` keywords)."""
    fp.write(dumps(obj, **kw))


def load(fp: IO[bytes], **kw: Any) -> Any:
    """Read the rest of the binary file *fp* and decode one value (``loads`` keywords)."""
    return loads(fp.read(), **kw)
