"""MessagePack serializer with a stdlib-style API: ``dumps``/``loads``/``dump``/``load``.

See :mod:`rapidrpc.wire.serializer` for the full documentation; this module is the public
import path (``from rapidrpc import serializer``).
"""

from .wire.serializer import *  # noqa: F403
from .wire.serializer import __all__  # noqa: F401
