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
