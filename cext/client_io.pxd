# C declarations of the calls the compiled client core makes (cext/client.pyx).
# Only `cdef extern` blocks: cimporting this file needs no module at run time.

cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t


cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    ssize_t send(int fd, const void* buf, size_t n, int flags)
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


cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char* mem, Py_ssize_t size, int flags)
    enum:
        PyBUF_READ



cdef extern from *:
    """
    #include <errno.h>
    /* EAGAIN and EWOULDBLOCK may be one value (Linux) or two: test both, once. */
    static inline int rapidrpc_would_block(int err) {
        return err == EAGAIN || err == EWOULDBLOCK;
    }
    """
    bint would_block "rapidrpc_would_block" (int err) nogil
