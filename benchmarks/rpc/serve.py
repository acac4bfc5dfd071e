"""Child entry point: ``python -m rpc.serve SYSTEM_KEY [--cpu N]`` runs one system's server.

The process pins itself before importing any system, so every thread a server library starts
later inherits the server CPU.
"""

from __future__ import annotations

import argparse

from .affinity import pin_self


def main(argv: list[str] | None = None) -> None:
    """Pins to ``--cpu``, then serves until the harness lets go (see :mod:`rpc.proc`)."""
    parser = argparse.ArgumentParser(prog="python -m rpc.serve")
    parser.add_argument("system")
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    pin_self(args.cpu)

    from .systems import BY_KEY

    BY_KEY[args.system].serve()


if __name__ == "__main__":
    main()
