"""Build script: compiles the Cython sources in cext/ into the rapidrpc package.

Switches (environment variables, read at build time):

RAPIDRPC_PURE_PYTHON=1      install without compiling anything (pure-Python backend).
RAPIDRPC_CYTHON_ANNOTATE=1  write cython -a HTML next to each .pyx (for hot-path review).
RAPIDRPC_DEBUG=1            compile with invariant checks (RAPIDRPC_DEBUG C macro), -O0 -g.

A failed extension build stops the install with a message naming the missing piece: we never
fall back silently to the slow backend (see README, "Backends").
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

PURE = os.environ.get("RAPIDRPC_PURE_PYTHON", "") not in ("", "0")
ANNOTATE = os.environ.get("RAPIDRPC_CYTHON_ANNOTATE", "") not in ("", "0")
DEBUG = os.environ.get("RAPIDRPC_DEBUG", "") not in ("", "0")

# A pure install leaves this file in the package, so that at run time the missing extension
# is known to be a choice (no warning) rather than a broken install.
PURE_MARKER = "_PURE_INSTALL"

HOW_TO_GO_PURE = (
    "To install the (much slower) pure-Python backend instead, ask for it explicitly:\n"
    "    RAPIDRPC_PURE_PYTHON=1 pip install .\n"
)

# (module name inside the package, Cython source)
EXTENSIONS = [
    ("rapidrpc.wire._serializer_c", "cext/serializer.pyx"),
    ("rapidrpc.wire._framing_c", "cext/framing.pyx"),
    ("rapidrpc.transport._eventloop_c", "cext/eventloop.pyx"),
    ("rapidrpc.transport._client_c", "cext/client.pyx"),
]

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
    "embedsignature": True,
    "freethreading_compatible": False,
}


def _fail(what: str, detail: str) -> None:
    sys.stderr.write(
        "\n" + "=" * 78 + "\n"
        f"rapidrpc: {what}\n{detail}\n\n"
        "The C extension is what makes rapidrpc fast; the build does not fall back silently.\n"
        "Install a C compiler and the Python headers (Debian/Ubuntu: apt-get install gcc "
        "python3-dev),\nthen retry. " + HOW_TO_GO_PURE + "=" * 78 + "\n"
    )
    raise SystemExit(1)


class LoudBuildExt(build_ext):
    """build_ext that turns any compiler failure into one clear, actionable message."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # distutils raises several unrelated classes here
            _fail("building the C extension failed.", f"{type(exc).__name__}: {exc}")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _fail(f"compiling {ext.name} failed.", f"{type(exc).__name__}: {exc}")


class MarkPureBuildPy(build_py):
    """build_py that records a deliberate pure-Python install in the package."""

    def run(self) -> None:
        super().run()
        if PURE:
            marker = os.path.join(self.build_lib, "rapidrpc", PURE_MARKER)
            with open(marker, "w") as fp:
                fp.write("installed with RAPIDRPC_PURE_PYTHON=1: no compiled extension\n")


def _extensions() -> list[Extension]:
    if PURE:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _fail(
            "Cython is not installed in the build environment.",
            "pip normally installs it from pyproject.toml's build requirements; with "
            "--no-build-isolation, `pip install 'Cython>=3.0.10,<3.3'` first.",
        )
    sources = [src for _, src in EXTENSIONS]
    missing = [src for src in sources if not os.path.exists(src)]
    if missing:
        _fail("Cython sources are missing.", "Not found: " + ", ".join(missing))
    if DEBUG:
        cflags, macros = ["-O0", "-g"], [("RAPIDRPC_DEBUG", "1")]
    else:
        cflags, macros = ["-O3"], [("RAPIDRPC_DEBUG", "0")]
    exts = [
        Extension(
            name,
            [src],
            include_dirs=["cext"],
            extra_compile_args=cflags,
            define_macros=macros,
        )
        for name, src in EXTENSIONS
    ]
    return cythonize(
        exts,
        compiler_directives=DIRECTIVES,
        annotate=ANNOTATE,
        include_path=["cext"],
        compile_time_env={"RAPIDRPC_DEBUG": DEBUG},
        quiet=True,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": LoudBuildExt, "build_py": MarkPureBuildPy})
