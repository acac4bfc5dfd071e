"""The public surface: both backends export the same names and signatures; the face works."""

from __future__ import annotations

import inspect
import io

import pytest

import rapidrpc
from rapidrpc import _backend
from rapidrpc import serializer as public_serializer
from rapidrpc.errors import SerializationError
from rapidrpc.wire import _ext, serializer


def _signature(obj):
    sig = inspect.signature(obj)
    # annotations are a pure-Python nicety; names, kinds and defaults must match
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize("name", serializer.PUBLIC_API)
def test_every_backend_exports_the_public_api(name):
    impls = serializer.IMPLEMENTATIONS
    if not _backend.PURE_PYTHON:
        assert set(impls) == {"cython", "python"}, "the Cython extension is not loaded"
    signatures = {backend: _signature(getattr(impl, name)) for backend, impl in impls.items()}
    assert len({repr(s) for s in signatures.values()}) == 1, signatures


@pytest.mark.parametrize(
    ("cls", "methods"), [("Packer", ["pack"]), ("Unpacker", ["feed", "reset"])]
)
def test_methods_have_the_same_signatures(cls, methods):
    for method in methods:
        signatures = {
            repr(_signature(getattr(getattr(impl, cls), method)))
            for impl in serializer.IMPLEMENTATIONS.values()
        }
        assert len(signatures) == 1, (cls, method, signatures)


def test_all_lists_module_exports():
    for impl in serializer.IMPLEMENTATIONS.values():
        assert sorted(impl.__all__) == sorted(serializer.PUBLIC_API)


def test_face_uses_the_active_backend():
    active = serializer.IMPLEMENTATIONS["cython" if rapidrpc.BACKEND == "cython" else "python"]
    for name in serializer.PUBLIC_API:
        assert getattr(serializer, name) is getattr(active, name)
    assert serializer.ExtType is _ext.ExtType


def test_public_import_paths():
    for name in ("ExtType", "Packer", "Unpacker", "dump", "dumps", "load", "loads"):
        assert getattr(rapidrpc, name) is getattr(serializer, name)
        assert getattr(public_serializer, name) is getattr(serializer, name)
    assert sorted(public_serializer.__all__) == sorted(serializer.__all__)


def test_dump_and_load_files():
    buf = io.BytesIO()
    serializer.dump({"a": [1, 2]}, buf)
    serializer.dump("second", buf)
    buf.seek(0)
    with pytest.raises(SerializationError, match="trailing data"):
        serializer.load(buf)
    buf = io.BytesIO()
    serializer.dump({"a": object()}, buf, default=repr)
    buf.seek(0)
    assert serializer.load(buf, max_depth=2)["a"].startswith("<object")


def test_ext_type_is_a_named_tuple():
    ext = _ext.ExtType(5, b"x")
    assert ext.code == 5 and ext.data == b"x" and tuple(ext) == (5, b"x")
    assert ext == _ext.ExtType(code=5, data=b"x")


def test_argument_validation(backend):
    impl = backend.serializer
    with pytest.raises(TypeError, match="default must be callable"):
        impl.dumps(1, default=3)
    with pytest.raises(TypeError, match="default must be callable"):
        impl.Packer(default="x")
    with pytest.raises(TypeError, match="ext_hook must be callable"):
        impl.loads(b"\x01", ext_hook=1)
    with pytest.raises(ValueError, match="max_str_len must be >= 0, got -1"):
        impl.loads(b"\x01", max_str_len=-1)
    with pytest.raises(TypeError):
        impl.loads(b"\x01", max_depth=2.0)
    with pytest.raises(OverflowError):
        impl.loads(b"\x01", max_bin_len=2**70)
    with pytest.raises(TypeError):
        impl.dumps(1, None)  # keyword-only
    assert impl.loads(b"\x01", max_depth=0) == 1  # scalars need no depth


def test_extension_is_the_default_backend():
    if _backend.PURE_PYTHON:
        pytest.skip("RAPIDRPC_PURE_PYTHON=1")
    assert serializer.dumps is serializer.IMPLEMENTATIONS["cython"].dumps
