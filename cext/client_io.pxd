# C declarations of the calls the compiled client core makes (cext/client.pyx).
# Only `cdef extern` blocks: cimporting this file needs no module at run time.

from posix.uio cimport iovec


cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t


cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags

    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents

    int poll(pollfd* fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from *:
    """
    #include <errno.h>
    /* EAGAIN and EWOULDBLOCK may be one value (Linux) or two: test both, once. */
    static inline int rapidrpc_would_block(int err) {
        return err == EAGAIN || err == EWOULDBLOCK;
    }
    """
    bint would_block "rapidrpc_would_block" (int err) nogil


cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char* mem, Py_ssize_t size, int flags)
    enum:
        PyBUF_READ


cdef extern from *:
    """
    #include <structmember.h>
    /* Offset of the writable object slot *name* (a __slots__ entry) of *type*, or -1 with
       TypeError set when *name* is anything else there (a property, a class attribute...). */
    static Py_ssize_t rapidrpc_slot_offset(PyObject* type, PyObject* name) {
        Py_ssize_t offset = -1;
        PyObject* d = PyObject_GetAttr(type, name);
        if (d == NULL)
            return -1;
        if (Py_TYPE(d) == &PyMemberDescr_Type) {
            PyMemberDef* m = ((PyMemberDescrObject*)d)->d_member;
            if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
                offset = m->offset;
        }
        Py_DECREF(d);
        if (offset < 0)
            PyErr_Format(PyExc_TypeError, "%R.%U is not a writable __slots__ entry",
                         type, name);
        return offset;
    }
    /* The value in the slot at *offset* of *obj* (new reference), AttributeError if unset. */
    static inline PyObject* rapidrpc_slot_get(PyObject* obj, Py_ssize_t offset) {
        PyObject* v = *(PyObject**)((char*)obj + offset);
        if (v == NULL) {
            PyErr_SetString(PyExc_AttributeError, "a protocol slot the client core reads is unset");
            return NULL;
        }
        Py_INCREF(v);
        return v;
    }
    /* Store *v* in the slot at *offset* of *obj*. */
    static inline void rapidrpc_slot_set(PyObject* obj, Py_ssize_t offset, PyObject* v) {
        PyObject** p = (PyObject**)((char*)obj + offset);
        PyObject* old = *p;
        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
    }
    """
    Py_ssize_t slot_offset "rapidrpc_slot_offset" (object type, object name) except -1
    object slot_get "rapidrpc_slot_get" (object obj, Py_ssize_t offset)
    void slot_set "rapidrpc_slot_set" (object obj, Py_ssize_t offset, object value)
