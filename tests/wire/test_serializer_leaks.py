"""Memory stays flat over many packs, unpacks and failing unpacks (both backends)."""

from __future__ import annotations

import gc
import tracemalloc

import psutil

from rapidrpc.errors import SerializationError
from rapidrpc.wire.serializer import ExtType

VALUE = {"id": 7, "args": ["é" * 20, b"\x00" * 64, 2**70, 1.5, None], (1, 2): ExtType(9, b"x")}
BAD = [
    (b"\x82\xa1a\x01\xa1a\x02", {}),  # duplicate key
    (b"\x93\x01\x92\x02", {}),  # truncated inside nested arrays
    (b"\x81\x80\x01", {}),  # unhashable key
    (b"\x92\xa2\xff\xfe\x01", {}),  # invalid UTF-8 after a built element
    (b"\x91\x91\x91\x91\x01", {"max_depth": 3}),  # too deep
]
ROUNDS = 100_000


def _fail(obj):
    raise ZeroDivisionError


def _cycle(impl, packer, rounds):
    """*rounds* packs, unpacks and failing unpacks; every 10th round also exercises the
    Unpacker with a partial value and a default hook raising mid-pack."""
    data = impl.dumps(VALUE)
    for i in range(rounds):
        impl.loads(packer.pack(VALUE) if i % 2 else impl.dumps(VALUE))
        bad, kw = BAD[i % len(BAD)]
        try:
            impl.loads(bad, **kw)
        except SerializationError:
            pass
        else:
            raise AssertionError("bad input accepted")
        if i % 10 == 0:
            unpacker = impl.Unpacker()
            unpacker.feed(data[:7])
            assert list(unpacker) == []
            try:
                packer.pack([1, object()]) if i % 20 else impl.dumps([object()], default=_fail)
            except (TypeError, ZeroDivisionError):
                pass


def test_no_growth(backend):
    impl = backend.serializer
    packer = impl.Packer()
    process = psutil.Process()
    _cycle(impl, packer, 2000)  # warm caches and freelists
    gc.collect()
    rss_before = process.memory_info().rss
    _cycle(impl, packer, ROUNDS)
    gc.collect()
    # generous: allocator noise, not the 10s of MiB a per-call leak would show
    assert process.memory_info().rss - rss_before < 16 * 1024 * 1024
    # Python-object allocations (PyMem/PyObject, which the C code uses too): a leak of a
    # single small object per call over these rounds would exceed the bound.
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        _cycle(impl, packer, ROUNDS // 20)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024, after - before
