"""Builds the C reference (benchmarks/c/) with the system compiler at benchmark time.

The frame constants are read from ``rapidrpc/wire/constants.py`` and passed with ``-D``, so
the C code never re-types them.  Binaries go to a temporary directory, never into the repo.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

C_DIR = Path(__file__).resolve().parent.parent / "c"
SOURCES = {"echo_server": "echo_server.c", "echo_client": "echo_client.c"}
_REPO_CONSTANTS = Path(__file__).resolve().parents[2] / "src/rapidrpc/wire/constants.py"


class BuildUnavailable(RuntimeError):
    """The C reference cannot be built here (no compiler, or it failed); the message says why."""


@dataclass(frozen=True)
class CBinaries:
    """Paths of the built reference programs (inside a temporary directory)."""

    server: Path
    client: Path


def load_wire_constants() -> ModuleType:
    """Loads rapidrpc's constants module by path, without importing the rest of the package.

    Importing ``rapidrpc.wire.constants`` normally runs ``rapidrpc/__init__.py`` (which needs
    the backends); the constants file imports nothing, so it is loaded on its own.  The
    checkout's file wins (the benchmarks belong to it); an installed package is the fallback.
    """
    path = _REPO_CONSTANTS
    spec = importlib.util.find_spec("rapidrpc")
    if not path.is_file() and spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "wire" / "constants.py"
    file_spec = importlib.util.spec_from_file_location("_rapidrpc_bench_constants", path)
    if file_spec is None or file_spec.loader is None:
        raise BuildUnavailable(f"cannot load the wire constants from {path}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def compiler_command() -> list[str]:
    """The compiler to use: ``$CC`` when set, else ``cc``; raises when there is none."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    if not cc or shutil.which(cc[0]) is None:
        raise BuildUnavailable(
            f"no C compiler ({' '.join(cc) or 'cc'}) found: the C physical-limit reference "
            "is skipped (install gcc or set CC to run it)"
        )
    return cc


def build(out_dir: Path) -> CBinaries:
    """Compiles the server and client with ``cc -O2`` into *out_dir*."""
    cc = compiler_command()
    const = load_wire_constants()
    defines = [
        f"-DRR_HEADER_SIZE={const.HEADER_SIZE}",
        f"-DRR_KIND_REQUEST={const.KIND_REQUEST}",
        f"-DRR_KIND_RESPONSE={const.KIND_RESPONSE}",
        f"-DRR_MAX_FRAME_SIZE={const.DEFAULT_MAX_FRAME_SIZE}u",
    ]
    paths = {}
    for name, source in SOURCES.items():
        target = out_dir / name
        cmd = [*cc, "-O2", "-std=gnu11", "-Wall", *defines, "-o", str(target), str(C_DIR / source)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise BuildUnavailable(
                f"building the C reference failed ({shlex.join(cmd)}):\n{proc.stderr.strip()}"
            )
        paths[name] = target
    return CBinaries(server=paths["echo_server"], client=paths["echo_client"])


class BuildDir:
    """A temporary build directory holding the C binaries; removed by :meth:`cleanup`."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="rapidrpc-cref-")
        try:
            self.binaries = build(Path(self._tmp.name))
        except BaseException:
            self._tmp.cleanup()
            raise

    def cleanup(self) -> None:
        """Deletes the binaries."""
        self._tmp.cleanup()
