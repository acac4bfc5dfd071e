"""The ``rapidrpc`` command line (also ``python -m rapidrpc``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
