"""ferroloop's socket and pipe transports: the Python half of the native
`StreamTransport` (src/transport/stream.rs), which does the reading,
writing, flow control and closing.  What is here runs once per connection
or on errors: construction, extra info, repr, the fatal-error report and
the unclosed-transport warning -- the same code paths as asyncio's
`_SelectorSocketTransport`, `_UnixReadPipeTransport` and
`_UnixWritePipeTransport`.
"""
import _socket
import errno
import os
import socket
import stat
import sys
import warnings
from asyncio import constants, futures, transports, trsock
from asyncio.log import logger

from . import _ferroloop

__all__ = ('SocketTransport', 'ReadPipeTransport', 'WritePipeTransport',
           'DatagramTransport')

_SERVER_ATTACH_TAKES_TRANSPORT = sys.version_info >= (3, 13)

# The C-level family and type of a socket, as plain ints: socket.socket's own
# properties convert them to enums, a third of asyncio's _set_nodelay().
_socket_family = _socket.socket.family.__get__
_socket_type = _socket.socket.type.__get__


def _set_nodelay(sock):
    """asyncio's base_events._set_nodelay: TCP_NODELAY on a TCP socket."""
    if (sock.proto == socket.IPPROTO_TCP and _socket_type(sock) == socket.SOCK_STREAM
            and _socket_family(sock) in (socket.AF_INET, socket.AF_INET6)):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _SocketTransportFacade(transports._FlowControlMixin, transports.Transport):
    """What `isinstance()` checks a `SocketTransport` against after its real
    class (see `SocketTransport.__class__`).  Never instantiated."""
    __slots__ = ()


_SocketTransportFacade.__name__ = _SocketTransportFacade.__qualname__ = 'SocketTransport'


class _NativeTransport(_ferroloop.StreamTransport):
    """What the socket and pipe transports share in Python."""

    def get_extra_info(self, name, default=None):
        """Information about the transport (see the subclass), and what the
        caller passed as extra."""
        return self._extra.get(name, default)

    def _repr_info(self):
        """The start of asyncio's repr: class name, state and fd."""
        info = [type(self).__name__]
        if self._sock is None:
            info.append('closed')
        elif self._closing:
            info.append('closing')
        info.append(f'fd={self._sock_fd}')
        return info

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._release_unclosed()

    @staticmethod
    def _quiet_error(exc):
        """Errors logged in debug mode only (the peer went away...)."""
        return isinstance(exc, OSError)

    def _report_error(self, exc, message):
        """A fatal error's report, as asyncio makes it: quiet errors go to
        the debug log, the others to the loop's exception handler."""
        if self._quiet_error(exc):
            loop = self._loop
            if loop is not None and loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._loop.call_exception_handler({
                'message': message,
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })


class _SelectorTransport(_NativeTransport):
    """What the socket and datagram transports share, as asyncio's
    `_SelectorTransport`: extra info, repr, fatal errors."""

    def _init_extra(self, sock, extra):
        if extra is None:
            extra = {}
        self._extra = extra
        extra['socket'] = trsock.TransportSocket(sock)
        try:
            extra['sockname'] = sock.getsockname()
        except OSError:
            extra['sockname'] = None
        if 'peername' not in extra:
            try:
                extra['peername'] = sock.getpeername()
            except OSError:
                extra['peername'] = None

    def __repr__(self):
        info = self._repr_info()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            info.append('read=polling' if self._reader_polling else 'read=idle')
            state = 'polling' if self._writer_polling else 'idle'
            info.append(f'write=<{state}, bufsize={self.get_write_buffer_size()}>')
        return '<{}>'.format(' '.join(info))

    def _fatal_error(self, exc, message='Fatal error on transport'):
        self._report_error(exc, message)
        self._force_close(exc)


class _Absent:
    """A native method asyncio's class for this transport does not have:
    looking it up raises AttributeError (so hasattr() is false)."""

    def __set_name__(self, owner, name):
        self._name = name

    def __get__(self, obj, objtype=None):
        owner = objtype.__name__ if obj is None else type(obj).__name__
        raise AttributeError(f"'{owner}' object has no attribute '{self._name}'")


def _without_stream_socket_parts(cls):
    """Class decorator: hide the native methods only asyncio's socket
    transport has (EOF and sendfile support)."""
    for name in ('_eof', '_make_empty_waiter', '_reset_empty_waiter',
                 '_suspend_watch', '_resume_watch'):
        absent = _Absent()
        absent.__set_name__(cls, name)
        setattr(cls, name, absent)
    return cls


class SocketTransport(_SelectorTransport):
    """A TCP or Unix stream socket transport (asyncio.Transport's API);
    get_extra_info() knows 'socket', 'sockname' and 'peername'."""

    # A native class cannot derive from asyncio.Transport (its __slots__
    # layout conflicts), so `isinstance(t, asyncio.Transport)` -- and
    # asyncio's own check for `_FlowControlMixin` in sendfile's fallback --
    # would be false.  isinstance() also consults `obj.__class__` when it
    # differs from `type(obj)` (as for unittest.mock's spec objects): it
    # names a class deriving from both, so those checks pass.  type(t) is
    # still this class; nothing on a hot path looks at __class__.
    __class__ = property(lambda self: _SocketTransportFacade)

    max_size = 256 * 1024  # asyncio's recv() size; the native reader's too
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        self._init_extra(sock, extra)
        self._attach(loop, sock, protocol, server)
        if server is not None:
            if _SERVER_ATTACH_TAKES_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        loop._transports[sock.fileno()] = self
        # Disable Nagle: small writes go out without waiting for an ACK.
        _set_nodelay(sock)
        loop.call_soon(protocol.connection_made, self)
        # Only start reading once connection_made() has run.
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    sendto = _Absent()  # datagram transports only


class _ReadPipeFacade(transports.ReadTransport):
    """isinstance() target of ReadPipeTransport (see SocketTransport)."""
    __slots__ = ()


class _WritePipeFacade(transports._FlowControlMixin, transports.WriteTransport):
    """isinstance() target of WritePipeTransport (see SocketTransport)."""
    __slots__ = ()


_ReadPipeFacade.__name__ = _ReadPipeFacade.__qualname__ = 'ReadPipeTransport'
_WritePipeFacade.__name__ = _WritePipeFacade.__qualname__ = 'WritePipeTransport'


@_without_stream_socket_parts
class _PipeTransport(_NativeTransport):
    """What the two pipe transports share: construction, repr, error
    reports.  get_extra_info() knows 'pipe'."""

    _writable = False

    # asyncio's attribute names.
    @property
    def _pipe(self):
        return self._sock

    @_pipe.setter
    def _pipe(self, pipe):
        self._sock = pipe

    _fileno = property(lambda self: self._sock_fd)

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        self._extra = {} if extra is None else extra
        self._extra['pipe'] = pipe
        fileno = pipe.fileno()
        mode = os.fstat(fileno).st_mode
        is_fifo, is_socket = stat.S_ISFIFO(mode), stat.S_ISSOCK(mode)
        if not (is_fifo or is_socket or stat.S_ISCHR(mode)):
            raise ValueError(self._not_a_pipe)
        os.set_blocking(fileno, False)
        # A write pipe learns that its reader went away by watching for
        # reads, on FIFOs and sockets (as asyncio does).
        self._attach_pipe(loop, pipe, protocol, self._writable,
                          is_fifo or is_socket)
        loop.call_soon(protocol.connection_made, self)
        if not self._writable:
            # Only start reading once connection_made() has run.
            loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = self._repr_info()
        loop = self._loop
        if self._sock is not None and loop is not None and not loop.is_closed():
            if self._writable:
                info.append('polling' if self._writer_polling else 'idle')
                info.append(f'bufsize={self.get_write_buffer_size()}')
            else:
                info.append('polling' if self._reader_polling else 'idle')
        elif self._sock is not None:
            info.append('open')
        else:
            info.append('closed')
        return '<{}>'.format(' '.join(info))

    def _fatal_error(self, exc, message='Fatal error on pipe transport'):
        self._report_error(exc, message)
        self._close(exc)

    # Not in asyncio's pipe transports.
    _server = _Absent()
    sendto = _Absent()


class ReadPipeTransport(_PipeTransport):
    """The read end of a pipe (asyncio.ReadTransport's API)."""

    __class__ = property(lambda self: _ReadPipeFacade)
    max_size = 256 * 1024  # the most one read() asks for, as asyncio's
    _not_a_pipe = "Pipe transport is for pipes/sockets only."

    @staticmethod
    def _quiet_error(exc):
        """EIO (a pty whose other side closed) is logged in debug mode only."""
        return isinstance(exc, OSError) and exc.errno == errno.EIO

    # ReadTransport has no writing side.
    write = _Absent()
    writelines = _Absent()
    write_eof = _Absent()
    can_write_eof = _Absent()
    abort = _Absent()
    get_write_buffer_size = _Absent()
    get_write_buffer_limits = _Absent()
    set_write_buffer_limits = _Absent()


class WritePipeTransport(_PipeTransport):
    """The write end of a pipe (asyncio.WriteTransport's API)."""

    __class__ = property(lambda self: _WritePipeFacade)
    _writable = True
    _not_a_pipe = "Pipe transport is only for pipes, sockets and character devices"

    def writelines(self, list_of_data):
        """Write a list (or any iterable) of bytes-like objects, joined
        first as asyncio's WriteTransport does (so any buffer goes)."""
        self.write(b''.join(list_of_data))

    # asyncio's write pipe inherits these from Transport, unimplemented.
    def is_reading(self):
        raise NotImplementedError

    def pause_reading(self):
        raise NotImplementedError

    def resume_reading(self):
        raise NotImplementedError


class _DatagramFacade(transports._FlowControlMixin, transports.DatagramTransport):
    """isinstance() target of DatagramTransport (see SocketTransport): an
    asyncio.Transport, as asyncio's datagram transport is, and an
    asyncio.DatagramTransport (asyncio's is one from 3.13)."""
    __slots__ = ()


_DatagramFacade.__name__ = _DatagramFacade.__qualname__ = 'DatagramTransport'


@_without_stream_socket_parts
class DatagramTransport(_SelectorTransport):
    """A UDP or Unix datagram socket transport (asyncio.DatagramTransport's
    API); get_extra_info() knows 'socket', 'sockname' and 'peername'.
    Receiving and sendto() are native (src/transport/stream/datagram.rs)."""

    __class__ = property(lambda self: _DatagramFacade)

    max_size = 256 * 1024  # the largest datagram received, as asyncio's

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        self._init_extra(sock, extra)
        self._address = address
        self._attach_datagram(loop, sock, protocol, address, bool(self._extra['peername']))
        loop._transports[sock.fileno()] = self
        loop.call_soon(protocol.connection_made, self)
        # Only start reading once connection_made() has run.
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    @property
    def _buffer_size(self):
        return self.get_write_buffer_size()

    # asyncio's datagram transport inherits these from Transport,
    # unimplemented.
    def write(self, data):
        raise NotImplementedError

    def writelines(self, list_of_data):
        self.write(b''.join(list_of_data))

    def write_eof(self):
        raise NotImplementedError

    def can_write_eof(self):
        raise NotImplementedError

    # Not in asyncio's datagram transport.
    _empty_waiter = _Absent()
    _start_tls_compatible = _Absent()
    _sendfile_compatible = _Absent()


# The native methods (write() above all), as each transport class's own:
# CPython specialises a C method call only on an instance of exactly the
# class holding the descriptor.
for _cls in (SocketTransport, ReadPipeTransport, WritePipeTransport, DatagramTransport):
    _ferroloop._bind_native_methods(_cls)
del _cls
