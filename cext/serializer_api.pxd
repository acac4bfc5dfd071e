# The serializer's C entry points, for the other compiled modules (cext/client.pyx and
# cext/eventloop.pyx): cext/serializer.pyx fills one of these and publishes it as the
# capsule rapidrpc.wire._serializer_c._C_API (name: SERIALIZER_API_NAME).  Each entry is
# exactly the Python-level call named beside it (same bytes, same errors), without the
# argument parsing.

from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_GetPointer


cdef extern from *:
    """
    #define RAPIDRPC_SERIALIZER_API "rapidrpc.wire._serializer_c._C_API"
    """
    const char* SERIALIZER_API_NAME "RAPIDRPC_SERIALIZER_API"

ctypedef struct SerializerAPI:
    # dumps(obj)
    object (*dumps)(object obj)
    # dumps(tuple(items[:n])): the items borrowed, kept alive by the caller
    object (*dumps_array)(PyObject** items, Py_ssize_t n)
    # loads(the size bytes at buf, max_depth=max_depth): the other limits at their defaults
    object (*loads)(const unsigned char* buf, Py_ssize_t size, Py_ssize_t max_depth)
    # the same for the one value at offset pos[0], bytes allowed after it: pos[0] moves
    # past it (its containers count from depth 0, whatever encloses it)
    object (*decode_one)(const unsigned char* buf, Py_ssize_t size, Py_ssize_t* pos,
                         Py_ssize_t max_depth)


cdef inline SerializerAPI* import_serializer_api() except NULL:
    """The compiled serializer's table (imports rapidrpc.wire._serializer_c)."""
    from rapidrpc.wire import _serializer_c
    return <SerializerAPI*>PyCapsule_GetPointer(_serializer_c._C_API, SERIALIZER_API_NAME)
