"""The backend switch: BACKEND, RAPIDRPC_PURE_PYTHON, RAPIDRPC_REQUIRE_EXTENSION, --version,
and the build's refusal to degrade silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rapidrpc
from rapidrpc import _backend
from rapidrpc.wire import framing, serializer

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter with extra environment variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RAPIDRPC_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        cwd="/",
    )


def test_extension_loaded_unless_pure_forced() -> None:
    # The test that fails when the extension was expected but not loaded.
    if _backend.PURE_PYTHON:
        assert rapidrpc.BACKEND == "python"
        assert "cython" not in serializer.IMPLEMENTATIONS
    else:
        assert rapidrpc.BACKEND == "cython", "extension expected but not loaded"
        assert serializer.dumps is serializer.IMPLEMENTATIONS["cython"].dumps
        assert framing.FrameParser is framing.IMPLEMENTATIONS["cython"].FrameParser


def test_pure_python_env_forces_fallback() -> None:
    proc = run_python(
        "import rapidrpc, rapidrpc.wire.serializer as s;"
        "print(rapidrpc.BACKEND, sorted(s.IMPLEMENTATIONS))",
        RAPIDRPC_PURE_PYTHON="1",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python", "['python']"]
    assert "RuntimeWarning" not in proc.stderr  # forced pure is asked for: no warning


def test_default_backend_in_fresh_process() -> None:
    # The child gets no RAPIDRPC_* variables: only a pure *install* makes it pure.
    proc = run_python("import rapidrpc; print(rapidrpc.BACKEND)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("python" if _backend.PURE_INSTALL else "cython")


# Simulates a missing extension: a meta-path finder refuses the compiled modules.
_BLOCK_EXTENSIONS = """
import sys, warnings
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.endswith('_c') and name.startswith('rapidrpc.'):
            raise ImportError('simulated: no compiled module ' + name)
sys.meta_path.insert(0, Block())
"""


def test_missing_extension_warns_once_and_falls_back() -> None:
    code = _BLOCK_EXTENSIONS + (
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import rapidrpc\n"
        "msgs = [str(x.message) for x in w if x.category is RuntimeWarning]\n"
        "print(rapidrpc.BACKEND, len(msgs))\n"
        "print(msgs[0])\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    first, message = proc.stdout.splitlines()[:2]
    assert first == "python 1"
    assert "pure-Python" in message and "RAPIDRPC_REQUIRE_EXTENSION" in message


def test_require_extension_turns_missing_into_import_error() -> None:
    code = _BLOCK_EXTENSIONS + "import rapidrpc\n"
    proc = run_python(code, RAPIDRPC_REQUIRE_EXTENSION="1")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "RAPIDRPC_REQUIRE_EXTENSION" in proc.stderr


def test_version_and_cli_version() -> None:
    assert isinstance(rapidrpc.__version__, str) and rapidrpc.__version__.count(".") == 2
    proc = subprocess.run(
        [sys.executable, "-m", "rapidrpc", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert rapidrpc.__version__ in proc.stdout
    assert f"backend: {rapidrpc.BACKEND}" in proc.stdout


def test_public_names_exist() -> None:
    for name in rapidrpc.__all__:
        assert hasattr(rapidrpc, name), name
        assert getattr(rapidrpc, name).__doc__ or name in ("BACKEND", "__version__"), name


def _copy_sources(dest: Path) -> None:
    for name in ("setup.py", "pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "cext", dest / "cext")
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("*.so", "*.c"))


needs_build_tree = pytest.mark.skipif(
    not (ROOT / "setup.py").exists() or not (ROOT / "cext").is_dir(),
    reason="runs from a source checkout only",
)


@needs_build_tree
def test_failed_extension_build_stops_with_clear_message(tmp_path: Path) -> None:
    pytest.importorskip("Cython")
    _copy_sources(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAPIDRPC_")}
    env["CC"] = "/bin/false"  # a compiler that always fails
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "building the C extension failed" in proc.stderr or "compiling" in proc.stderr
    assert "RAPIDRPC_PURE_PYTHON=1 pip install ." in proc.stderr
    assert not list((tmp_path / "src").rglob("*.so"))


@needs_build_tree
def test_pure_build_compiles_nothing_and_runs_pure_without_warning(tmp_path: Path) -> None:
    _copy_sources(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAPIDRPC_")}
    env["RAPIDRPC_PURE_PYTHON"] = "1"
    env["CC"] = "/bin/false"  # would fail if anything were compiled
    lib = tmp_path / "lib"
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build", "--build-lib", str(lib)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert not list(lib.rglob("*.so"))
    assert (lib / "rapidrpc" / "_PURE_INSTALL").exists()

    # The installed-pure package runs pure without being told again, and without a warning
    # (the user asked for it at install time) ...
    code = (
        f"import sys, warnings; sys.path.insert(0, {str(lib)!r}); "
        "warnings.simplefilter('error'); import rapidrpc;"
        "print(rapidrpc.BACKEND, rapidrpc.__file__)"
    )
    ok = run_python(code)
    assert ok.returncode == 0, ok.stderr
    backend, path = ok.stdout.split()
    assert backend == "python" and path.startswith(str(lib))
    # ... and RAPIDRPC_REQUIRE_EXTENSION still refuses it.
    refused = run_python(code, RAPIDRPC_REQUIRE_EXTENSION="1")
    assert refused.returncode != 0 and "ImportError" in refused.stderr
