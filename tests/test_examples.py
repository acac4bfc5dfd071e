"""The examples run and exit cleanly on each backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart(backend_name: str) -> None:
    env = dict(os.environ)
    if backend_name == "python":
        env["RAPIDRPC_PURE_PYTHON"] = "1"
    else:
        env["RAPIDRPC_REQUIRE_EXTENSION"] = "1"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"(backend: {backend_name})" in out
    assert "Hello, world!" in out and "2 + 3 = 5" in out and "6 * 7 = 42" in out
    assert "doubles: [0, 2, 4, 6, 8]" in out
    assert "deadline exceeded" in out and "MethodNotFound" in out
    assert "calc.add" in out and "rpc.methods" in out and "_internal" not in out
    assert out.rstrip().endswith("stopped")
