"""Frame encoding and incremental parsing of the rapidrpc wire protocol.

See :mod:`rapidrpc.wire.framing` for the full documentation; this module is the public
import path (``from rapidrpc import framing``).
"""

from .wire.framing import *  # noqa: F403
from .wire.framing import __all__  # noqa: F401
